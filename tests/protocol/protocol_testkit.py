"""Shared helpers of the protocol tests: fake clock, deterministic rng, fixed keys,
a small rig around ``protocol.memory_pair.ConnectionPair``, and the moves of the
handshake tests (a request held back, a refusal checked on both sides, a
challenge rewritten by a man in the middle).

(Not a conftest: the tests import these names directly. The module name is unique
so it cannot clash with helpers of other test directories.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from protocol import (
    Challenge,
    ChallengeIssued,
    Command,
    CommandCompleted,
    CommandExecuted,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    LockState,
    MemoryStore,
    Message,
    PhoneConnection,
    PhoneState,
    RequestRejected,
    ResultCode,
    Role,
    VehicleConnection,
    VehicleIdentity,
    VehicleRejected,
    VehicleState,
    crypto,
    decode,
    encode,
)
from protocol.framing import Reassembler, fragment
from protocol.memory_pair import ConnectionPair

MTUS = (23, 247)
VIN = "1PHNKEY0TEST00001"

mtus = pytest.mark.parametrize("mtu", MTUS)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CounterRng:
    """Deterministic rng: block i = SHA-256(seed || uint32_be(i)); ``rng(n)``
    returns the next n bytes of block0 || block1 || ... (leftovers carry over)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(4, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def key_from_label(label: str) -> crypto.PrivateKey:
    return crypto.private_key_from_random(CounterRng(label.encode()))


VEHICLE_KEY = key_from_label("phonekey tests: vehicle identity")
PHONE_KEY = key_from_label("phonekey tests: phone key")
GUEST_KEY = key_from_label("phonekey tests: guest phone key")
ATTACKER_KEY = key_from_label("phonekey tests: attacker key")
PHONE_KEY_ID = crypto.key_id(PHONE_KEY.public_key())
GUEST_KEY_ID = crypto.key_id(GUEST_KEY.public_key())


# --- frames and messages -------------------------------------------------------
def messages_of(frames: Iterable[bytes]) -> list[Message]:
    """Reassemble and decode a stream of frames with a fresh reassembler."""
    reassembler = Reassembler(lambda: 0.0)
    out: list[Message] = []
    for frame in frames:
        data = reassembler.feed(frame)
        if data is not None:
            out.append(decode(data))
    assert not reassembler.in_progress, "frames end in the middle of a message"
    return out


def raw_messages_of(frames: Iterable[bytes]) -> list[bytes]:
    reassembler = Reassembler(lambda: 0.0)
    out = []
    for frame in frames:
        data = reassembler.feed(frame)
        if data is not None:
            out.append(data)
    return out


def frames_of(message: Message | bytes, mtu: int) -> list[bytes]:
    data = message if isinstance(message, bytes) else encode(message)
    return fragment(data, mtu)


def message_offsets(frames: list[bytes]) -> list[tuple[int, int, int | None]]:
    """(frame index, byte index in frame, offset in the message or None for a
    frame header byte) for every byte of a single message's frames."""
    out: list[tuple[int, int, int | None]] = []
    offset = 0
    for i, frame in enumerate(frames):
        header = 4 if i == 0 else 2
        for j in range(len(frame)):
            if j < header:
                out.append((i, j, None))
            else:
                out.append((i, j, offset))
                offset += 1
    return out


def flip(frames: list[bytes], frame_index: int, byte_index: int, mask: int = 0x01) -> list[bytes]:
    changed = bytearray(frames[frame_index])
    changed[byte_index] ^= mask
    return [*frames[:frame_index], bytes(changed), *frames[frame_index + 1 :]]


# --- the rig -----------------------------------------------------------------------
@dataclass
class Rig:
    pair: ConnectionPair
    store: MemoryStore
    clock: FakeClock
    identity: VehicleIdentity
    mtu: int
    vehicle_options: dict[str, Any] = field(default_factory=dict)

    @property
    def phone(self) -> PhoneConnection:
        return self.pair.phone

    @property
    def vehicle(self) -> VehicleConnection:
        return self.pair.vehicle

    def start(self) -> None:
        self.vehicle.start()
        self.pair.pump()

    def command(self, command: Command, counter: int) -> CommandCompleted:
        """One command through the pair; returns the phone's authenticated outcome."""
        before = len(self.pair.phone_events)
        self.phone.send_command(command, counter)
        self.pair.pump()
        completed = [e for e in self.pair.phone_events[before:] if isinstance(e, CommandCompleted)]
        assert len(completed) == 1, self.pair.phone_events[before:]
        return completed[0]

    def to_vehicle(self, frames: Iterable[bytes]) -> list[object]:
        """Deliver raw frames to the vehicle and drain its events."""
        for frame in frames:
            self.vehicle.receive_data(frame)
        return drain(self.vehicle.next_event)

    def to_phone(self, frames: Iterable[bytes]) -> list[object]:
        """Deliver raw frames to the phone and drain its events (errors propagate)."""
        for frame in frames:
            self.phone.receive_data(frame)
        return drain(self.phone.next_event)

    def rejections(self) -> list[ResultCode]:
        return [e.code for e in self.pair.vehicle_events if isinstance(e, RequestRejected)]

    def executed(self) -> list[CommandExecuted]:
        return [e for e in self.pair.vehicle_events if isinstance(e, CommandExecuted)]

    def assert_untouched(
        self, state: LockState = LockState.LOCKED, commits: int = 0, executed: int = 0
    ) -> None:
        """The vehicle executed nothing new: lock state, commit count and the commands
        this connection executed are as the test expects."""
        assert self.store.state is state
        assert self.store.commits == commits
        assert len(self.executed()) == executed


def drain(next_event: Callable[[], object | None]) -> list[object]:
    events = []
    while (event := next_event()) is not None:
        events.append(event)
    return events


def make_rig(
    mtu: int = 247,
    *,
    role: Role | None = Role.OWNER,
    phone_key: crypto.PrivateKey = PHONE_KEY,
    vehicle_key: crypto.PrivateKey = VEHICLE_KEY,
    expected_vehicle_key: crypto.PublicKey | None = None,
    store: MemoryStore | None = None,
    clock: FakeClock | None = None,
    vehicle_rng: crypto.Random = os.urandom,
    phone_rng: crypto.Random = os.urandom,
    vehicle_versions: tuple[int, ...] = (1,),
    phone_versions: tuple[int, ...] = (1,),
    start: bool = True,
    **vehicle_options: Any,
) -> Rig:
    """A phone and a vehicle connected in memory. ``role=None`` leaves the phone's
    key off the whitelist; ``vehicle_options`` go to ``VehicleConnection``
    (``fast_path``, ``enrollment``, ``vehicle_time``, ``trust``)."""
    clock = clock or FakeClock()
    store = store if store is not None else MemoryStore()
    if role is not None:
        store.add_key(phone_key.public_key(), role)
    identity = VehicleIdentity(vehicle_key, VIN)
    vehicle = VehicleConnection(
        identity,
        store,
        clock=clock,
        rng=vehicle_rng,
        att_mtu=mtu,
        versions=vehicle_versions,
        **vehicle_options,
    )
    phone = PhoneConnection(
        phone_key,
        expected_vehicle_key or vehicle_key.public_key(),
        clock=clock,
        rng=phone_rng,
        att_mtu=mtu,
        versions=phone_versions,
    )
    rig = Rig(ConnectionPair(phone, vehicle), store, clock, identity, mtu, vehicle_options)
    if start:
        rig.start()
    return rig


def new_vehicle_session(rig: Rig, rng: crypto.Random = os.urandom) -> VehicleConnection:
    """A second connection to the same vehicle (same identity, store and clock), started."""
    vehicle = VehicleConnection(
        rig.identity, rig.store, clock=rig.clock, rng=rng, att_mtu=rig.mtu, **rig.vehicle_options
    )
    vehicle.start()
    return vehicle


def outstanding_challenge(frames: list[bytes]) -> Challenge:
    challenges = [m for m in messages_of(frames) if isinstance(m, Challenge)]
    assert challenges
    return challenges[-1]


def signed_request(
    challenge_bytes: bytes,
    *,
    key: crypto.PrivateKey = PHONE_KEY,
    vehicle_public_key: crypto.PublicKey | None = None,
    **fields: object,
) -> CommandRequest:
    """A request built and signed by hand (for fields the phone API never produces)."""
    from protocol.transcript import request_transcript_hash

    challenge = decode(challenge_bytes)
    assert isinstance(challenge, Challenge)
    ephemeral = crypto.generate_private_key()
    unsigned = CommandRequest(
        version=max(challenge.versions),
        offered_versions=challenge.versions,
        nonce=challenge.nonce,
        key_id=crypto.key_id(key.public_key()),
        counter=1,
        command=Command.UNLOCK,
        ephemeral_key=crypto.public_bytes(ephemeral.public_key()),
        signature=bytes(64),
    )
    unsigned = replace(unsigned, **fields)  # type: ignore[arg-type]
    th = request_transcript_hash(
        challenge_bytes, vehicle_public_key or VEHICLE_KEY.public_key(), unsigned
    )
    return replace(unsigned, signature=crypto.sign(key, th))


def challenge_issued(events: Iterable[object]) -> list[ChallengeIssued]:
    return [e for e in events if isinstance(e, ChallengeIssued)]


# --- the handshake by hand ----------------------------------------------------------
def request_frames(rig: Rig, command: Command = Command.UNLOCK, counter: int = 1) -> list[bytes]:
    """Have the phone sign a command and return its frames undelivered."""
    rig.phone.send_command(command, counter)
    frames = rig.phone.data_to_send()
    assert [type(m) for m in messages_of(frames)] == [CommandRequest]
    return frames


def vehicle_refusal(rig: Rig, frames: list[bytes]) -> tuple[ResultCode, VehicleRejected]:
    """Deliver frames to the vehicle; it must refuse with one Error, which the phone
    then raises. Returns the vehicle's code and the phone's exception."""
    events = rig.to_vehicle(frames)
    rejections = [e for e in events if isinstance(e, RequestRejected)]
    assert len(rejections) == 1, events
    assert not [e for e in events if isinstance(e, CommandExecuted)]
    assert rig.vehicle.state is VehicleState.ERROR
    answer = rig.vehicle.data_to_send()
    assert messages_of(answer) == [ErrorMessage(rejections[0].code)]
    with pytest.raises(VehicleRejected) as info:
        rig.to_phone(answer)
    assert info.value.code == rejections[0].code
    assert info.value.authenticated is False
    assert rig.phone.state is PhoneState.ERROR
    return rejections[0].code, info.value


def assert_phone_reports_no_state(rig: Rig) -> None:
    assert not [e for e in rig.pair.phone_events if isinstance(e, CommandCompleted)]


def frame_owners(frames: list[bytes]) -> list[object]:
    """The message each frame belongs to."""
    owners: list[object] = []
    pending = 0
    reassembler = Reassembler(lambda: 0.0)
    for frame in frames:
        pending += 1
        data = reassembler.feed(frame)
        if data is not None:
            owners.extend([decode(data)] * pending)
            pending = 0
    return owners


def unlock_answer(mtu: int) -> tuple[Rig, list[bytes], list[bytes]]:
    """A rig whose vehicle executed an UNLOCK, with its answer not yet delivered: the
    response frames and the next challenge's frames."""
    rig = make_rig(mtu)
    rig.to_vehicle(request_frames(rig))
    answer = rig.vehicle.data_to_send()
    owners = frame_owners(answer)
    response = [f for f, m in zip(answer, owners, strict=True) if isinstance(m, CommandResponse)]
    challenge = [f for f, m in zip(answer, owners, strict=True) if isinstance(m, Challenge)]
    assert response + challenge == answer
    return rig, response, challenge


def rewrite_challenges(frames: list[bytes], mtu: int, **fields: object) -> list[bytes]:
    """A man in the middle that re-encodes every challenge with other fields."""
    out = []
    for data in raw_messages_of(frames):
        message = decode(data)
        if isinstance(message, Challenge):
            data = encode(replace(message, **fields))  # type: ignore[arg-type]
        out.extend(fragment(data, mtu))
    return out
