"""Fragmentation of messages into ATT-sized frames, and their reassembly.

A frame is one ATT write or notification payload::

    wire_version:u8 | control:u8 | [total_length:u16, first frame only] | chunk

``control`` bit 7 marks the first frame of a message, bit 6 the last, and bits
0-5 hold the frame's index within its message. At ATT MTU 247 a whole request
fits one frame; at MTU 23 (20-byte payloads) it takes about nine.

Reassembly is bounded in size (``MAX_MESSAGE_SIZE``) and time: a message whose
fragments stop arriving for ``timeout`` seconds, or that is not complete
``deadline`` seconds after its first frame, is dropped with an error, and a
frame must carry at least one byte of the message. So a peer cannot park a
half-sent message in the vehicle's memory forever, not even by trickling
bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .codec import MAX_MESSAGE_SIZE, WIRE_VERSION
from .errors import (
    LocalProtocolError,
    MessageTooLarge,
    ReassemblyError,
    ReassemblyTimeout,
    TruncatedMessage,
    UnsupportedWireVersion,
)

Clock = Callable[[], float]
"""Monotonic seconds; ``time.monotonic`` outside tests."""

ATT_MTU_MIN: Final = 23
ATT_MTU_MAX: Final = 517
ATT_HEADER_LEN: Final = 3  # opcode + handle of a write or notification

_FIRST: Final = 0x80
_LAST: Final = 0x40
_INDEX_MASK: Final = 0x3F
_FRAME_HEADER_LEN: Final = 2
_LENGTH_LEN: Final = 2
DEFAULT_REASSEMBLY_TIMEOUT: Final = 2.0  # longest gap between two frames
DEFAULT_REASSEMBLY_DEADLINE: Final = 5.0  # longest time for a whole message


def payload_size(att_mtu: int) -> int:
    """Bytes of one ATT write/notification payload at this MTU."""
    if not ATT_MTU_MIN <= att_mtu <= ATT_MTU_MAX:
        raise LocalProtocolError(f"ATT MTU {att_mtu} outside {ATT_MTU_MIN}..{ATT_MTU_MAX}")
    return att_mtu - ATT_HEADER_LEN


def fragment(message: bytes, att_mtu: int) -> list[bytes]:
    """Split an encoded message into frames that each fit one ATT payload."""
    if not message:
        raise LocalProtocolError("cannot send an empty message")
    if len(message) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE_SIZE}")
    size = payload_size(att_mtu)
    if len(message) <= size - _FRAME_HEADER_LEN - _LENGTH_LEN:
        # One frame, the common case at a negotiated MTU: the loop below gives
        # the same bytes (tests/protocol/test_codec.py), one call per message.
        header = bytes((WIRE_VERSION, _FIRST | _LAST)) + len(message).to_bytes(_LENGTH_LEN, "big")
        return [header + message]
    frames: list[bytes] = []
    offset = 0
    index = 0
    while offset < len(message):
        control = index & _INDEX_MASK
        header = bytes([WIRE_VERSION])
        room = size - _FRAME_HEADER_LEN
        if index == 0:
            control |= _FIRST
            room -= _LENGTH_LEN
            extra = len(message).to_bytes(_LENGTH_LEN, "big")
        else:
            extra = b""
        chunk = message[offset : offset + room]
        offset += len(chunk)
        if offset == len(message):
            control |= _LAST
        frames.append(header + bytes([control]) + extra + chunk)
        index += 1
    return frames


class Reassembler:
    """Collects frames into messages; raises on anything out of order.

    After an error it refuses further input: the session that owns it is
    expected to enter its ERROR state.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_size: int = MAX_MESSAGE_SIZE,
        timeout: float = DEFAULT_REASSEMBLY_TIMEOUT,
        deadline: float = DEFAULT_REASSEMBLY_DEADLINE,
    ) -> None:
        self._clock = clock
        self._max_size = max_size
        self._timeout = timeout
        self._deadline = deadline
        self._started_at = 0.0
        self._buffer = bytearray()
        self._expected = 0
        self._next_index = 0
        self._last_frame_at = 0.0
        self._failed = False

    @property
    def in_progress(self) -> bool:
        return self._expected > 0

    def check_timeout(self) -> None:
        """Raise ``ReassemblyTimeout`` if a partial message has gone stale."""
        if not self.in_progress:
            return
        now = self._clock()
        progress = f"{len(self._buffer)} of {self._expected} bytes"
        if now - self._last_frame_at > self._timeout:
            self._fail()
            raise ReassemblyTimeout(
                f"message incomplete: {progress}, no frame for {self._timeout:g} s"
            )
        if now - self._started_at > self._deadline:
            self._fail()
            raise ReassemblyTimeout(
                f"message incomplete: {progress} after the {self._deadline:g} s deadline"
            )

    def feed(self, frame: bytes) -> bytes | None:
        """Add one frame; return the message once its last frame arrived."""
        if self._failed:
            raise LocalProtocolError("reassembler already failed")
        self.check_timeout()
        if len(frame) < _FRAME_HEADER_LEN:
            self._fail()
            raise TruncatedMessage(f"frame of {len(frame)} bytes has no header")
        if frame[0] != WIRE_VERSION:
            self._fail()
            raise UnsupportedWireVersion(f"frame of wire version {frame[0]} (this side speaks 1)")
        control = frame[1]
        index = control & _INDEX_MASK
        body = frame[_FRAME_HEADER_LEN:]
        if control & _FIRST:
            if self.in_progress:
                self._fail()
                raise ReassemblyError("a new message started before the previous one ended")
            if index != 0 or len(body) < _LENGTH_LEN:
                self._fail()
                raise ReassemblyError("malformed first frame")
            total = int.from_bytes(body[:_LENGTH_LEN], "big")
            body = body[_LENGTH_LEN:]
            if total > self._max_size:
                self._fail()
                raise MessageTooLarge(
                    f"announced message of {total} bytes exceeds {self._max_size}"
                )
            if total == 0:
                self._fail()
                raise ReassemblyError("announced an empty message")
            self._expected = total
            self._next_index = 0
            self._started_at = self._clock()
        elif not self.in_progress:
            self._fail()
            raise ReassemblyError("continuation frame without a first frame")
        if not body:
            self._fail()
            raise ReassemblyError("a frame must carry at least one byte of the message")
        if index != self._next_index & _INDEX_MASK:
            self._fail()
            raise ReassemblyError(f"frame {index} arrived, expected {self._next_index}")
        self._buffer += body
        self._next_index += 1
        self._last_frame_at = self._clock()
        if len(self._buffer) > self._expected:
            self._fail()
            raise ReassemblyError("fragments exceed the announced length")
        is_last = bool(control & _LAST)
        if is_last != (len(self._buffer) == self._expected):
            self._fail()
            raise ReassemblyError("last-frame flag disagrees with the announced length")
        if not is_last:
            return None
        message = bytes(self._buffer)
        self._reset()
        return message

    def _reset(self) -> None:
        self._buffer.clear()
        self._expected = 0
        self._next_index = 0

    def _fail(self) -> None:
        self._reset()
        self._failed = True
