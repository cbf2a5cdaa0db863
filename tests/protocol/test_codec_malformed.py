"""The codec on malformed messages: truncated at every length, trailing bytes, too
large, unknown types and wire versions, undefined field values, and what
``encode`` refuses to produce."""

from __future__ import annotations

import pytest
from codec_samples import (
    EPH,
    KEY_ID,
    MAC,
    NONCE,
    SAMPLE_IDS,
    SAMPLES,
    SIG,
    VID,
    command_request,
)

from protocol import (
    MAX_MESSAGE_SIZE,
    WIRE_VERSION,
    Challenge,
    Command,
    CommandResponse,
    ErrorMessage,
    LockState,
    Message,
    MessageTooLarge,
    ResultCode,
    TrailingBytes,
    TruncatedMessage,
    UnknownMessageType,
    UnsupportedWireVersion,
    decode,
    encode,
)
from protocol.errors import FieldValueError


# --- malformed inputs ------------------------------------------------------------
@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_truncation_at_every_length(message: Message) -> None:
    data = encode(message)
    for length in range(len(data)):
        with pytest.raises(TruncatedMessage):
            decode(data[:length])


@pytest.mark.parametrize("message", SAMPLES, ids=SAMPLE_IDS)
def test_trailing_bytes(message: Message) -> None:
    data = encode(message)
    for extra in (b"\x00", b"\x01", b"\xff" * 7):
        with pytest.raises(TrailingBytes):
            decode(data + extra)


def test_oversized() -> None:
    challenge = encode(Challenge((1,), VID, NONCE))
    with pytest.raises(MessageTooLarge):
        decode(challenge + bytes(MAX_MESSAGE_SIZE + 1 - len(challenge)))
    with pytest.raises(MessageTooLarge):
        decode(bytes([1, 0xFF]) + bytes(4096))
    # exactly at the limit it is not "too large", just a message with trailing bytes
    with pytest.raises(TrailingBytes):
        decode(challenge + bytes(MAX_MESSAGE_SIZE - len(challenge)))


def test_unknown_message_type() -> None:
    known = set(range(0x01, 0x0F))  # 0x01..0x0E are defined (docs/protocol.md)
    for msg_type in range(256):
        if msg_type in known:
            continue
        for body in (b"", bytes(50)):
            with pytest.raises(UnknownMessageType):
                decode(bytes([WIRE_VERSION, msg_type]) + body)


@pytest.mark.parametrize("message", SAMPLES[:8], ids=SAMPLE_IDS[:8])
def test_bad_wire_version(message: Message) -> None:
    data = encode(message)
    for version in range(256):
        if version == WIRE_VERSION:
            continue
        with pytest.raises(UnsupportedWireVersion):
            decode(bytes([version]) + data[1:])


def _field_value_cases() -> list[tuple[str, bytes]]:
    challenge_tail = VID + NONCE
    request_tail = NONCE + KEY_ID + (1).to_bytes(8, "big")
    response_head = bytes([1, 0x04])
    mac_tail = MAC

    def response(result: int, command: int, state: int) -> bytes:
        return (
            response_head
            + bytes([result, command])
            + (1).to_bytes(8, "big")
            + bytes([state])
            + mac_tail
        )

    def request(version: int, offer: bytes, command: int) -> bytes:
        return bytes([1, 0x03, version]) + offer + request_tail + bytes([command]) + EPH + SIG

    cases = [
        ("challenge: empty version list", bytes([1, 0x01, 0]) + challenge_tail),
        ("challenge: zero version", bytes([1, 0x01, 1, 0]) + challenge_tail),
        ("challenge: zero among versions", bytes([1, 0x01, 2, 1, 0]) + challenge_tail),
        ("challenge: duplicate versions", bytes([1, 0x01, 2, 1, 1]) + challenge_tail),
        ("challenge: nine versions", bytes([1, 0x01, 9, *range(1, 10)]) + challenge_tail),
        ("challenge: 255 versions", bytes([1, 0x01, 255, *range(1, 256)]) + challenge_tail),
        ("request: version 0", request(0, bytes([1, 1]), 1)),
        ("request: empty offer", request(1, bytes([0]), 1)),
        ("request: duplicate offer", request(1, bytes([2, 1, 1]), 1)),
        ("request: zero in offer", request(1, bytes([2, 0, 1]), 1)),
        ("request: command 0", request(1, bytes([1, 1]), 0)),
        ("request: command 4", request(1, bytes([1, 1]), 4)),
        ("request: command 255", request(1, bytes([1, 1]), 255)),
        ("response: result 2", response(2, 1, 1)),
        ("response: result MALFORMED", response(0x10, 1, 1)),
        ("response: result INTERNAL", response(0x1F, 1, 1)),
        ("response: result 255", response(0xFF, 1, 1)),
        ("response: command 0", response(0, 0, 1)),
        ("response: command 4", response(0, 4, 1)),
        ("response: lock state 0", response(0, 1, 0)),
        ("response: lock state 3", response(0, 1, 3)),
        ("error: code OK", bytes([1, 0x05, 0x00])),
        ("error: code FORBIDDEN", bytes([1, 0x05, 0x01])),
        ("error: undefined code 2", bytes([1, 0x05, 0x02])),
        ("error: undefined code 0x1B", bytes([1, 0x05, 0x1B])),
        ("error: undefined code 255", bytes([1, 0x05, 0xFF])),
    ]
    return cases


FIELD_VALUE_CASES = _field_value_cases()


@pytest.mark.parametrize(("name", "data"), FIELD_VALUE_CASES, ids=[c[0] for c in FIELD_VALUE_CASES])
def test_undefined_field_values(name: str, data: bytes) -> None:
    with pytest.raises(FieldValueError):
        decode(data)


@pytest.mark.parametrize(
    "message",
    [
        Challenge((), VID, NONCE),
        Challenge((1, 1), VID, NONCE),
        command_request(version=0),
        command_request(offered_versions=()),
        ErrorMessage(ResultCode.OK),
        CommandResponse(ResultCode.MALFORMED, Command.UNLOCK, 1, LockState.LOCKED, MAC),
    ],
    ids=[
        "empty-offer",
        "duplicate-offer",
        "request-version-0",
        "request-empty-offer",
        "error-OK",
        "response-MALFORMED",
    ],
)
def test_encode_refuses_what_decode_refuses(message: Message) -> None:
    """``encode`` promises ValueError "for a message we must not send": it must never
    produce bytes that every peer refuses as malformed (e.g. a vehicle configured with
    ``versions=()`` would otherwise push challenges no phone can decode)."""
    with pytest.raises(ValueError):
        encode(message)


@pytest.mark.parametrize(
    "message",
    [
        Challenge((1,), VID[:15], NONCE),
        Challenge((1,), VID, NONCE + b"\x00"),
        Challenge(tuple(range(1, 10)), VID, NONCE),
        Challenge((0,), VID, NONCE),
        command_request(counter=2**64),
        command_request(counter=-1),
        command_request(signature=SIG[:63]),
        command_request(ephemeral_key=EPH + b"\x00"),
        CommandResponse(ResultCode.OK, Command.UNLOCK, 1, LockState.LOCKED, MAC[:31]),
    ],
)
def test_encode_refuses_wrong_sizes_and_ranges(message: Message) -> None:
    with pytest.raises(ValueError):
        encode(message)
