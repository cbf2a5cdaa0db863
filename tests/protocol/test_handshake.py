"""The command handshake driven in memory: what works, and every attack that must not."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from protocol_testkit import (
    ATTACKER_KEY,
    GUEST_KEY,
    MTUS,
    PHONE_KEY_ID,
    VEHICLE_KEY,
    Rig,
    drain,
    flip,
    frames_of,
    make_rig,
    message_offsets,
    messages_of,
    new_vehicle_session,
    raw_messages_of,
    signed_request,
)

from protocol import (
    BadResponseMac,
    Challenge,
    ChallengeIssued,
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    CommandRequest,
    CommandResponse,
    DecodeError,
    ErrorMessage,
    LocalProtocolError,
    LockState,
    MemoryStore,
    NoCommonVersion,
    PhoneState,
    ProtocolError,
    ReassemblyError,
    RequestRejected,
    ResultCode,
    Role,
    StateChange,
    UnexpectedMessage,
    VehicleConnection,
    VehicleRejected,
    VehicleState,
    WrongVehicle,
    crypto,
    decode,
    encode,
)
from protocol.codec import AUTHENTICATED_RESULTS
from protocol.errors import (
    FieldValueError,
    RejectedChallenge,
    RejectedCounter,
    RejectedExpired,
    RejectedInternal,
    RejectedKey,
    RejectedMalformed,
    RejectedSignature,
    RejectedUnexpected,
    RejectedUnknownKey,
    RejectedVersion,
    RejectedVersionMismatch,
    rejection_for,
)
from protocol.framing import Reassembler, fragment
from protocol.transcript import request_transcript_hash, response_key, response_mac

mtus = pytest.mark.parametrize("mtu", MTUS)


def _request_frames(rig: Rig, command: Command = Command.UNLOCK, counter: int = 1) -> list[bytes]:
    """Have the phone sign a command and return its frames undelivered."""
    rig.phone.send_command(command, counter)
    frames = rig.phone.data_to_send()
    assert [type(m) for m in messages_of(frames)] == [CommandRequest]
    return frames


def _rejected(rig: Rig, frames: list[bytes]) -> tuple[ResultCode, VehicleRejected]:
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


def _assert_phone_reports_no_state(rig: Rig) -> None:
    assert not [e for e in rig.pair.phone_events if isinstance(e, CommandCompleted)]


# --- commands that work ------------------------------------------------------------
@mtus
def test_unlock(mtu: int) -> None:
    rig = make_rig(mtu)
    assert rig.pair.phone_events == [ChallengeReceived(version=1)]
    assert rig.phone.state is PhoneState.READY
    first_nonce = messages_of(rig.pair.sent_to_phone)[0].nonce  # type: ignore[union-attr]

    done = rig.command(Command.UNLOCK, 7)

    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 7)
    assert rig.executed() == [
        CommandExecuted(
            PHONE_KEY_ID,
            Role.OWNER,
            Command.UNLOCK,
            ResultCode.OK,
            LockState.LOCKED,
            LockState.UNLOCKED,
            7,
        )
    ]
    assert rig.store.state is LockState.UNLOCKED
    assert rig.store.counters == {PHONE_KEY_ID: 7}
    assert first_nonce in rig.store.spent_nonces
    assert rig.store.commits == 1
    # the vehicle pushed a fresh challenge: the phone is ready for the next command
    assert rig.phone.state is PhoneState.READY
    assert rig.vehicle.state is VehicleState.CHALLENGED
    challenges = [m for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    assert len(challenges) == 2 and challenges[1].nonce != first_nonce
    assert rig.rejections() == []


@mtus
def test_lock(mtu: int) -> None:
    rig = make_rig(mtu, store=MemoryStore(state=LockState.UNLOCKED))
    done = rig.command(Command.LOCK, 1)
    assert done == CommandCompleted(Command.LOCK, ResultCode.OK, LockState.LOCKED, 1)
    assert rig.store.state is LockState.LOCKED
    assert rig.store.counters[PHONE_KEY_ID] == 1


@mtus
@pytest.mark.parametrize("state", list(LockState))
def test_status_reports_the_stored_state(mtu: int, state: LockState) -> None:
    rig = make_rig(mtu, store=MemoryStore(state=state))
    done = rig.command(Command.STATUS, 3)
    assert done == CommandCompleted(Command.STATUS, ResultCode.OK, state, 3)
    assert rig.store.state is state
    assert rig.store.counters[PHONE_KEY_ID] == 3  # status spends a counter too
    assert rig.store.commits == 1


@mtus
def test_several_commands_on_one_connection_one_round_trip_each(mtu: int) -> None:
    rig = make_rig(mtu)
    expected = [
        (Command.UNLOCK, LockState.UNLOCKED),
        (Command.STATUS, LockState.UNLOCKED),
        (Command.LOCK, LockState.LOCKED),
        (Command.LOCK, LockState.LOCKED),
        (Command.STATUS, LockState.LOCKED),
        (Command.UNLOCK, LockState.UNLOCKED),
    ]
    for counter, (command, state) in enumerate(expected, start=100):
        # one write: the request; one answer: response plus the next challenge
        frames = _request_frames(rig, command, counter)
        assert rig.to_vehicle(frames)
        answer = rig.vehicle.data_to_send()
        assert [type(m) for m in messages_of(answer)] == [CommandResponse, Challenge]
        events = rig.to_phone(answer)
        assert events == [
            CommandCompleted(command, ResultCode.OK, state, counter),
            ChallengeReceived(1),
        ]
        assert rig.phone.data_to_send() == []  # nothing else on the critical path
        assert rig.phone.state is PhoneState.READY
        assert rig.store.state is state
    assert rig.store.commits == len(expected)
    assert rig.store.counters[PHONE_KEY_ID] == 100 + len(expected) - 1


@mtus
def test_phone_can_ask_for_a_fresh_challenge(mtu: int) -> None:
    rig = make_rig(mtu)
    old = messages_of(rig.pair.sent_to_phone)[-1]
    rig.phone.request_challenge()
    assert rig.phone.state is PhoneState.WAIT_CHALLENGE
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, 1)
    rig.pair.pump()
    new = messages_of(rig.pair.sent_to_phone)[-1]
    assert isinstance(new, Challenge) and isinstance(old, Challenge)
    assert new.nonce != old.nonce
    assert rig.phone.state is PhoneState.READY
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_vehicle_in_idle_answers_a_challenge_request() -> None:
    rig = make_rig(start=False)
    rig.phone.request_challenge()
    rig.pair.pump()
    assert rig.phone.state is PhoneState.READY
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_highest_common_version_is_chosen() -> None:
    rig = make_rig(vehicle_versions=(1, 2), phone_versions=(1, 2))
    assert rig.pair.phone_events == [ChallengeReceived(version=2)]
    rig.command(Command.UNLOCK, 1)
    request = messages_of(rig.pair.sent_to_vehicle)[0]
    assert isinstance(request, CommandRequest)
    assert request.version == 2 and request.offered_versions == (1, 2)
    assert rig.store.state is LockState.UNLOCKED


# --- storage ----------------------------------------------------------------------
class FailingStore(MemoryStore):
    def commit(self, change: StateChange) -> None:
        raise OSError("disk full")


@mtus
@pytest.mark.parametrize("command", list(Command))
def test_failed_commit_means_no_response_and_nothing_executed(mtu: int, command: Command) -> None:
    store = FailingStore()
    rig = make_rig(mtu, store=store)
    with pytest.raises(RejectedInternal):
        rig.command(command, 1)
    assert rig.rejections() == [ResultCode.INTERNAL]
    assert [type(m) for m in messages_of(rig.pair.sent_to_phone)] == [Challenge, ErrorMessage]
    _assert_phone_reports_no_state(rig)
    assert store.state is LockState.LOCKED
    assert store.counters == {} and not store.spent_nonces
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.phone.state is PhoneState.ERROR


class RecordingStore(MemoryStore):
    """Takes whatever the vehicle had queued for the phone when the commit ran."""

    vehicle: VehicleConnection | None = None
    queued_at_commit: list[list[bytes]] | None = None

    def commit(self, change: StateChange) -> None:
        assert self.vehicle is not None and self.queued_at_commit is not None
        self.queued_at_commit.append(self.vehicle.data_to_send())
        super().commit(change)


def test_commit_happens_before_the_response_is_queued() -> None:
    store = RecordingStore()
    store.queued_at_commit = []
    rig = make_rig(store=store, start=False)
    store.vehicle = rig.vehicle
    rig.start()
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED
    assert store.queued_at_commit == [[]]  # no response existed when the commit ran
    assert store.state is LockState.UNLOCKED


def test_counters_survive_a_new_connection() -> None:
    rig = make_rig()
    rig.command(Command.UNLOCK, 41)
    # a new connection to the same vehicle (same store) and a fresh phone session
    rig2 = make_rig(store=rig.store, role=None)
    with pytest.raises(RejectedCounter):
        rig2.command(Command.LOCK, 41)
    assert rig.store.state is LockState.UNLOCKED
    assert rig.store.commits == 1
    rig3 = make_rig(store=rig.store, role=None)
    assert rig3.command(Command.LOCK, 42).lock_state is LockState.LOCKED


# --- replay -------------------------------------------------------------------------
@mtus
def test_replayed_request_on_a_new_session(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)
    rig.command(Command.LOCK, 2)
    assert rig.store.state is LockState.LOCKED

    attacker = make_rig(mtu, store=rig.store, role=None)  # a new connection, same vehicle
    code, exc = _rejected(attacker, unlock_frames)
    assert code is ResultCode.UNKNOWN_CHALLENGE
    assert isinstance(exc, RejectedChallenge)
    attacker.assert_untouched(LockState.LOCKED, commits=2)


def test_replayed_request_on_the_same_session() -> None:
    rig = make_rig()
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)
    rig.command(Command.LOCK, 2)
    events = rig.to_vehicle(unlock_frames)
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [
        ResultCode.UNKNOWN_CHALLENGE
    ]
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 2


def test_replay_after_the_vehicle_reissues_the_same_nonce() -> None:
    """Defence in depth: even if a (broken) rng repeats a nonce on a new session, the
    store's spent-nonce memory refuses the recorded request, counters aside."""

    def constant_rng(n: int) -> bytes:
        return b"\x42" * n

    rig = make_rig(vehicle_rng=constant_rng)
    rig.command(Command.UNLOCK, 1)
    unlock_frames = list(rig.pair.sent_to_vehicle)

    # same whitelist and spent nonces, but no counters: only the nonce memory can refuse
    store = MemoryStore(whitelist=rig.store.whitelist, spent_nonces=rig.store.spent_nonces)
    replay = make_rig(store=store, role=None, vehicle_rng=constant_rng)
    code, _ = _rejected(replay, unlock_frames)
    assert code is ResultCode.UNKNOWN_CHALLENGE
    replay.assert_untouched()

    # control: a store that forgot the nonce would have executed the replay
    amnesiac = make_rig(
        store=MemoryStore(whitelist=rig.store.whitelist), role=None, vehicle_rng=constant_rng
    )
    events = amnesiac.to_vehicle(unlock_frames)
    assert [e.command for e in events if isinstance(e, CommandExecuted)] == [Command.UNLOCK]


@mtus
def test_replayed_response_to_a_new_session(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.LOCK, 1)
    recorded = [
        f
        for f, m in zip(rig.pair.sent_to_phone, _frame_owners(rig.pair.sent_to_phone), strict=True)
        if isinstance(m, CommandResponse)
    ]

    victim = make_rig(mtu, store=rig.store, role=None)
    victim.phone.send_command(Command.UNLOCK, 2)
    victim.phone.data_to_send()  # the attacker swallows the request
    with pytest.raises(BadResponseMac):
        victim.to_phone(recorded)
    _assert_phone_reports_no_state(victim)
    assert victim.phone.state is PhoneState.ERROR
    victim.assert_untouched(LockState.LOCKED, commits=1)


def test_replayed_response_for_the_next_command_on_the_same_session() -> None:
    rig = make_rig()
    rig.command(Command.STATUS, 1)
    recorded = [
        f
        for f, m in zip(rig.pair.sent_to_phone, _frame_owners(rig.pair.sent_to_phone), strict=True)
        if isinstance(m, CommandResponse)
    ]
    rig.phone.send_command(Command.UNLOCK, 2)
    rig.phone.data_to_send()  # swallowed
    with pytest.raises(BadResponseMac):
        rig.to_phone(recorded)
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 1


def _frame_owners(frames: list[bytes]) -> list[object]:
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


# --- whitelist, signatures, challenges ----------------------------------------------
@mtus
def test_key_not_on_the_whitelist(mtu: int) -> None:
    rig = make_rig(mtu, role=None)
    with pytest.raises(RejectedUnknownKey) as info:
        rig.command(Command.UNLOCK, 1)
    assert info.value.authenticated is False
    rejected = [e for e in rig.pair.vehicle_events if isinstance(e, RequestRejected)]
    assert len(rejected) == 1
    assert rejected[0].code is ResultCode.UNKNOWN_KEY
    assert rejected[0].key_id == PHONE_KEY_ID
    _assert_phone_reports_no_state(rig)
    rig.assert_untouched()


def test_other_whitelisted_key_cannot_sign_for_the_phone() -> None:
    """A request that claims the phone's key id but is signed by another key."""
    rig = make_rig()
    rig.store.add_key(GUEST_KEY.public_key(), Role.OWNER)
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    forged = signed_request(challenge, key=GUEST_KEY, key_id=PHONE_KEY_ID)
    code, exc = _rejected(rig, frames_of(forged, rig.mtu))
    assert code is ResultCode.BAD_SIGNATURE and isinstance(exc, RejectedSignature)
    rig.assert_untouched()


@mtus
def test_signature_over_another_challenge(mtu: int) -> None:
    rig_a = make_rig(mtu)
    request_a = messages_of(_request_frames(rig_a))[0]
    assert isinstance(request_a, CommandRequest)

    # session B of the same vehicle: sent as is, the nonce is unknown there ...
    rig_b = make_rig(mtu, store=rig_a.store, role=None)
    code, _ = _rejected(rig_b, frames_of(request_a, mtu))
    assert code is ResultCode.UNKNOWN_CHALLENGE

    # ... and with the nonce rewritten to B's, the signature no longer matches
    rig_c = make_rig(mtu, store=rig_a.store, role=None)
    nonce_c = messages_of(rig_c.pair.sent_to_phone)[-1].nonce  # type: ignore[union-attr]
    code, exc = _rejected(rig_c, frames_of(replace(request_a, nonce=nonce_c), mtu))
    assert code is ResultCode.BAD_SIGNATURE and isinstance(exc, RejectedSignature)
    for rig in (rig_a, rig_b, rig_c):
        rig.assert_untouched()


# Expected vehicle answers to a single changed byte of a request, by field. The request
# is UNLOCK with counter 101 while the store holds 100 for the key.
def _expected_codes(offset: int | None, offer_len: int) -> set[ResultCode]:
    malformed = {ResultCode.MALFORMED}
    if offset is None:
        return malformed  # frame header: version, control, announced length
    fields = [
        ("header", 2),
        ("version", 1),
        ("offer", 1 + offer_len),
        ("nonce", 16),
        ("key_id", 16),
        ("counter", 8),
        ("command", 1),
        ("ephemeral", 33),
        ("signature", 64),
    ]
    starts, start = {}, 0
    for field_name, size in fields:
        starts[field_name] = start
        start += size
    name = next(n for n, size in fields if starts[n] <= offset < starts[n] + size)
    start = starts[name]
    return {
        "header": malformed,  # wire version, or type 0x03 -> 0x02 with trailing bytes
        "version": malformed,  # 1 -> 0
        "offer": malformed,  # count 1 -> 0 or version 1 -> 0
        "nonce": {ResultCode.UNKNOWN_CHALLENGE},
        "key_id": {ResultCode.UNKNOWN_KEY},
        # 101 ^ 1 == 100 is stale; every other flip makes a larger, unsigned counter
        "counter": {ResultCode.STALE_COUNTER}
        if offset == start + 7
        else {ResultCode.BAD_SIGNATURE},
        "command": malformed,  # UNLOCK 1 -> 0
        # prefix 02 <-> 03 is the other valid point; other bytes may leave the curve
        "ephemeral": {ResultCode.BAD_SIGNATURE}
        if offset == start
        else {ResultCode.BAD_SIGNATURE, ResultCode.BAD_KEY},
        "signature": {ResultCode.BAD_SIGNATURE},
    }[name]


@mtus
def test_every_single_byte_change_of_a_request_is_refused(mtu: int) -> None:
    positions = message_offsets(_request_frames(make_rig(mtu)))
    assert len(positions) == (147 if mtu == 247 else 143 + 2 * 9 + 2)
    seen: set[ResultCode] = set()
    for frame_i, byte_i, offset in positions:
        rig = make_rig(mtu, store=MemoryStore(counters={PHONE_KEY_ID: 100}))
        frames = _request_frames(rig, Command.UNLOCK, 101)
        code, _ = _rejected(rig, flip(frames, frame_i, byte_i))
        assert code in _expected_codes(offset, 1), (frame_i, byte_i, offset, code)
        seen.add(code)
        rig.assert_untouched()
        assert rig.store.counters == {PHONE_KEY_ID: 100}
    assert {
        ResultCode.MALFORMED,
        ResultCode.UNKNOWN_CHALLENGE,
        ResultCode.UNKNOWN_KEY,
        ResultCode.STALE_COUNTER,
        ResultCode.BAD_SIGNATURE,
    } <= seen


def _answer(mtu: int) -> tuple[Rig, list[bytes], list[bytes]]:
    """A rig whose vehicle executed an UNLOCK, with its answer not yet delivered: the
    response frames and the next challenge's frames."""
    rig = make_rig(mtu)
    rig.to_vehicle(_request_frames(rig))
    answer = rig.vehicle.data_to_send()
    owners = _frame_owners(answer)
    response = [f for f, m in zip(answer, owners, strict=True) if isinstance(m, CommandResponse)]
    challenge = [f for f, m in zip(answer, owners, strict=True) if isinstance(m, Challenge)]
    assert response + challenge == answer
    return rig, response, challenge


def _answer_frames(mtu: int) -> tuple[Rig, list[bytes]]:
    rig, response, _ = _answer(mtu)
    return rig, response


@mtus
def test_every_single_byte_change_of_a_response_is_refused(mtu: int) -> None:
    positions = message_offsets(_answer_frames(mtu)[1])
    assert len(positions) == (49 if mtu == 247 else 45 + 2 * 3 + 2)
    for frame_i, byte_i, offset in positions:
        rig, response_frames = _answer_frames(mtu)
        with pytest.raises((BadResponseMac, DecodeError, ReassemblyError)) as info:
            rig.to_phone(flip(response_frames, frame_i, byte_i))
        if offset is not None and (offset == 2 or 4 <= offset < 12 or offset >= 13):
            # result (OK -> FORBIDDEN), counter and MAC decode fine: the MAC refuses them
            assert info.type is BadResponseMac, (offset, info.value)
        elif offset in (3, 12):  # command 1 -> 0, lock state 2 -> 3
            assert info.type is FieldValueError
        _assert_phone_reports_no_state(rig)
        assert rig.phone.state is PhoneState.ERROR


@mtus
def test_request_truncated_at_every_length(mtu: int) -> None:
    rig = make_rig(mtu)
    frames = _request_frames(rig)
    message = raw_messages_of(frames)[0]
    # the message cut short and framed correctly: the codec refuses it
    for length in range(1, len(message)):
        victim = make_rig(mtu, store=rig.store, role=None)
        code, exc = _rejected(victim, fragment(message[:length], mtu))
        assert code is ResultCode.MALFORMED and isinstance(exc, RejectedMalformed)
    # one frame cut short (the others intact): the reassembler refuses the message
    for i, frame in enumerate(frames):
        for length in range(len(frame)):
            victim = make_rig(mtu, store=rig.store, role=None)
            code, _ = _rejected(victim, [*frames[:i], frame[:length], *frames[i + 1 :]])
            assert code is ResultCode.MALFORMED, (i, length)
    rig.assert_untouched()


def test_request_whose_last_frames_never_arrive() -> None:
    rig = make_rig(23)
    frames = _request_frames(rig)
    assert len(frames) == 9
    for count in range(1, len(frames)):
        victim = make_rig(23, store=rig.store, role=None)
        assert [e for e in victim.to_vehicle(frames[:count])] == []
        assert victim.vehicle.state is VehicleState.CHALLENGED
        victim.clock.advance(2.5)
        victim.vehicle.check_timeouts()
        events = drain(victim.vehicle.next_event)
        assert [e.code for e in events if isinstance(e, RequestRejected)] == [ResultCode.MALFORMED]
        assert victim.vehicle.state is VehicleState.ERROR
        with pytest.raises(RejectedMalformed):
            victim.to_phone(victim.vehicle.data_to_send())
    rig.assert_untouched()


@mtus
def test_expired_challenge(mtu: int) -> None:
    rig = make_rig(mtu)
    rig.clock.advance(30.5)
    with pytest.raises(RejectedExpired):
        rig.command(Command.UNLOCK, 1)
    assert rig.rejections() == [ResultCode.CHALLENGE_EXPIRED]
    rig.assert_untouched()


def test_challenge_just_inside_its_lifetime_is_accepted() -> None:
    rig = make_rig()
    rig.clock.advance(29.5)
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_challenge_lifetime_is_configurable() -> None:
    rig = make_rig(start=False)
    rig.pair.vehicle = VehicleConnection(
        rig.identity, rig.store, clock=rig.clock, rng=os.urandom, att_mtu=247, challenge_lifetime=5
    )
    rig.start()
    rig.clock.advance(6)
    with pytest.raises(RejectedExpired):
        rig.command(Command.UNLOCK, 1)
    rig.assert_untouched()


@mtus
@pytest.mark.parametrize("counter", [5, 4, 1])
def test_stale_counter(mtu: int, counter: int) -> None:
    rig = make_rig(mtu)
    rig.command(Command.STATUS, 5)
    with pytest.raises(RejectedCounter):
        rig.command(Command.UNLOCK, counter)
    assert rig.rejections() == [ResultCode.STALE_COUNTER]
    rig.assert_untouched(LockState.LOCKED, commits=1, executed=1)
    assert rig.store.counters[PHONE_KEY_ID] == 5


@pytest.mark.parametrize("counter", [0, -1, 2**64])
def test_counter_out_of_range_is_refused_locally(counter: int) -> None:
    rig = make_rig()
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, counter)
    assert rig.phone.data_to_send() == []
    # the held challenge is still usable
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED


def test_largest_counter_is_accepted() -> None:
    rig = make_rig()
    assert rig.command(Command.UNLOCK, 2**64 - 1).counter == 2**64 - 1


# --- versions ------------------------------------------------------------------------
def _rewrite_challenges(frames: list[bytes], mtu: int, **fields: object) -> list[bytes]:
    """A man in the middle that re-encodes every challenge with other fields."""
    out = []
    for data in raw_messages_of(frames):
        message = decode(data)
        if isinstance(message, Challenge):
            data = encode(replace(message, **fields))  # type: ignore[arg-type]
        out.extend(fragment(data, mtu))
    return out


@mtus
def test_stripped_version_offer_is_detected(mtu: int) -> None:
    rig = make_rig(mtu, vehicle_versions=(1, 2), phone_versions=(1, 2), start=False)
    rig.vehicle.start()
    events = rig.to_phone(_rewrite_challenges(rig.vehicle.data_to_send(), mtu, versions=(1,)))
    assert events == [ChallengeReceived(version=1)]  # the phone was talked down to 1
    code, exc = _rejected(rig, _request_frames(rig))
    assert code is ResultCode.VERSION_MISMATCH
    assert isinstance(exc, RejectedVersionMismatch)
    rig.assert_untouched()


@mtus
def test_stripped_offer_with_restored_echo_fails_the_signature(mtu: int) -> None:
    """The attacker also rewrites the echo back: the transcript still differs."""
    rig = make_rig(mtu, vehicle_versions=(1, 2), phone_versions=(1, 2), start=False)
    rig.vehicle.start()
    rig.to_phone(_rewrite_challenges(rig.vehicle.data_to_send(), mtu, versions=(1,)))
    request = messages_of(_request_frames(rig))[0]
    assert isinstance(request, CommandRequest) and request.version == 1
    code, _ = _rejected(rig, frames_of(replace(request, offered_versions=(1, 2)), mtu))
    assert code is ResultCode.BAD_SIGNATURE
    rig.assert_untouched()


def test_no_common_version() -> None:
    rig = make_rig(vehicle_versions=(2, 3), phone_versions=(1,), start=False)
    rig.vehicle.start()
    with pytest.raises(NoCommonVersion):
        rig.pair.pump()
    assert rig.phone.state is PhoneState.ERROR
    assert rig.phone.data_to_send() == []
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, 1)
    rig.assert_untouched()


def test_chosen_version_not_offered() -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = signed_request(challenge, version=3)
    code, exc = _rejected(rig, frames_of(request, rig.mtu))
    assert code is ResultCode.UNSUPPORTED_VERSION and isinstance(exc, RejectedVersion)
    rig.assert_untouched()


def test_invalid_ephemeral_key() -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = signed_request(challenge, ephemeral_key=b"\x02" + b"\xff" * 32)
    code, exc = _rejected(rig, frames_of(request, rig.mtu))
    assert code is ResultCode.BAD_KEY and isinstance(exc, RejectedKey)
    rig.assert_untouched()


def test_hand_built_request_is_accepted() -> None:
    """Control for the hand-built requests above: unaltered, it unlocks."""
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    events = rig.to_vehicle(frames_of(signed_request(challenge), rig.mtu))
    assert [e.lock_state for e in events if isinstance(e, CommandExecuted)] == [LockState.UNLOCKED]


# --- forged vehicle --------------------------------------------------------------------
@mtus
def test_rogue_vehicle_with_its_own_key(mtu: int) -> None:
    rig = make_rig(
        mtu, vehicle_key=ATTACKER_KEY, expected_vehicle_key=VEHICLE_KEY.public_key(), start=False
    )
    rig.vehicle.start()
    with pytest.raises(WrongVehicle):
        rig.pair.pump()
    assert rig.phone.state is PhoneState.ERROR
    assert rig.pair.sent_to_vehicle == []  # the phone signed nothing for it


def test_challenge_of_another_genuine_vehicle() -> None:
    other = make_rig(start=False)
    other.vehicle.start()
    frames = other.vehicle.data_to_send()
    phone_of_a = make_rig(expected_vehicle_key=ATTACKER_KEY.public_key(), start=False)
    with pytest.raises(WrongVehicle):
        phone_of_a.to_phone(frames)


def test_rogue_vehicle_claiming_the_genuine_id() -> None:
    """A rogue vehicle that copies the genuine vehicle id into its challenge cannot
    verify the phone's signature (made over the genuine key) nor answer with a MAC."""
    rig = make_rig(
        vehicle_key=ATTACKER_KEY, expected_vehicle_key=VEHICLE_KEY.public_key(), start=False
    )
    rig.vehicle.start()
    genuine_id = crypto.key_id(VEHICLE_KEY.public_key())
    rig.to_phone(_rewrite_challenges(rig.vehicle.data_to_send(), 247, vehicle_id=genuine_id))
    code, _ = _rejected(rig, _request_frames(rig))
    assert code is ResultCode.BAD_SIGNATURE
    _assert_phone_reports_no_state(rig)


def _forged_response(
    request: CommandRequest, challenge_bytes: bytes, secret: bytes, **fields: object
) -> CommandResponse:
    """What an attacker can compute: everything but the ECDH secret is public."""
    th = request_transcript_hash(challenge_bytes, VEHICLE_KEY.public_key(), request)
    key = response_key(secret, request.nonce, request.version, th)
    unsigned = CommandResponse(
        ResultCode.OK, request.command, request.counter, LockState.UNLOCKED, b""
    )
    unsigned = replace(unsigned, **fields)  # type: ignore[arg-type]
    return replace(unsigned, mac=response_mac(key, request.version, th, unsigned))


@mtus
@pytest.mark.parametrize("secret_source", ["attacker-ecdh", "zero", "random"])
def test_response_maced_with_the_wrong_key(mtu: int, secret_source: str) -> None:
    rig = make_rig(mtu)
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = messages_of(_request_frames(rig))[0]  # intercepted, never delivered
    assert isinstance(request, CommandRequest)
    ephemeral = crypto.public_key_from_bytes(request.ephemeral_key)
    secret = {
        "attacker-ecdh": crypto.ecdh(ATTACKER_KEY, ephemeral),
        "zero": bytes(32),
        "random": os.urandom(32),
    }[secret_source]
    forged = _forged_response(request, challenge, secret)
    with pytest.raises(BadResponseMac):
        rig.to_phone(frames_of(forged, mtu))
    _assert_phone_reports_no_state(rig)
    rig.assert_untouched()


def test_forged_response_control_with_the_genuine_secret() -> None:
    """Control for the forgery test: with the vehicle's secret the MAC is accepted,
    so the failures above are due to the key alone."""
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = messages_of(_request_frames(rig))[0]
    assert isinstance(request, CommandRequest)
    secret = crypto.ecdh(VEHICLE_KEY, crypto.public_key_from_bytes(request.ephemeral_key))
    events = rig.to_phone(frames_of(_forged_response(request, challenge, secret), 247))
    assert events == [CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 1)]


@pytest.mark.parametrize("field", ["command", "counter"])
def test_genuinely_maced_response_to_another_command_is_refused(field: str) -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = messages_of(_request_frames(rig))[0]
    assert isinstance(request, CommandRequest)
    secret = crypto.ecdh(VEHICLE_KEY, crypto.public_key_from_bytes(request.ephemeral_key))
    change = {"command": Command.LOCK} if field == "command" else {"counter": 99}
    forged = _forged_response(request, challenge, secret, **change)
    with pytest.raises(BadResponseMac):
        rig.to_phone(frames_of(forged, 247))


@mtus
@pytest.mark.parametrize(
    "code", [c for c in ResultCode if c not in AUTHENTICATED_RESULTS], ids=lambda c: c.name
)
def test_injected_error_message(mtu: int, code: ResultCode) -> None:
    rig = make_rig(mtu)
    _request_frames(rig)  # the attacker swallows the request and answers itself
    with pytest.raises(VehicleRejected) as info:
        rig.to_phone(frames_of(ErrorMessage(code), mtu))
    assert type(info.value) is type(rejection_for(code))
    assert info.value.code is code
    assert info.value.authenticated is False
    assert str(info.value)
    _assert_phone_reports_no_state(rig)
    assert rig.phone.state is PhoneState.ERROR
    rig.assert_untouched()


def test_injected_error_before_any_command() -> None:
    rig = make_rig()
    with pytest.raises(RejectedUnknownKey):
        rig.to_phone(frames_of(ErrorMessage(ResultCode.UNKNOWN_KEY), 247))
    assert rig.phone.state is PhoneState.ERROR


# --- roles --------------------------------------------------------------------------
ROLE_TABLE = [  # docs/protocol.md section 8
    (Role.OWNER, Command.UNLOCK, True),
    (Role.OWNER, Command.LOCK, True),
    (Role.OWNER, Command.STATUS, True),
    (Role.DRIVER, Command.UNLOCK, True),
    (Role.DRIVER, Command.LOCK, True),
    (Role.DRIVER, Command.STATUS, True),
    (Role.GUEST, Command.UNLOCK, True),
    (Role.GUEST, Command.LOCK, True),
    (Role.GUEST, Command.STATUS, False),
]


@pytest.mark.parametrize(
    ("role", "command", "allowed"), ROLE_TABLE, ids=[f"{r.name}-{c.name}" for r, c, _ in ROLE_TABLE]
)
@pytest.mark.parametrize("initial", list(LockState))
def test_roles(role: Role, command: Command, allowed: bool, initial: LockState) -> None:
    rig = make_rig(role=role, phone_key=GUEST_KEY, store=MemoryStore(state=initial))
    done = rig.command(command, 9)
    if allowed:
        after = {Command.UNLOCK: LockState.UNLOCKED, Command.LOCK: LockState.LOCKED}.get(
            command, initial
        )
        assert done == CommandCompleted(command, ResultCode.OK, after, 9)
    else:
        # authenticated refusal: under the MAC, with the true (unchanged) state
        assert done == CommandCompleted(command, ResultCode.FORBIDDEN, initial, 9)
        after = initial
    assert rig.store.state is after
    executed = rig.executed()
    assert len(executed) == 1 and executed[0].role is role
    assert executed[0].result is (ResultCode.OK if allowed else ResultCode.FORBIDDEN)
    assert rig.store.counters[crypto.key_id(GUEST_KEY.public_key())] == 9  # spent either way
    assert rig.phone.state is PhoneState.READY  # a refusal is not a protocol error


def test_guest_refusal_then_unlock_on_one_connection() -> None:
    rig = make_rig(role=Role.GUEST)
    assert rig.command(Command.STATUS, 1).result is ResultCode.FORBIDDEN
    assert rig.store.state is LockState.LOCKED
    assert rig.command(Command.UNLOCK, 2) == CommandCompleted(
        Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 2
    )


# --- the ERROR state is final ------------------------------------------------------
def _unknown_key(rig: Rig) -> None:
    rig.store.whitelist.clear()
    rig.command(Command.UNLOCK, 1)


def _to_vehicle_and_back(rig: Rig, frames: list[bytes]) -> None:
    rig.to_vehicle(frames)
    rig.to_phone(rig.vehicle.data_to_send())


def _bad_signature(rig: Rig) -> None:
    frames = _request_frames(rig)
    _to_vehicle_and_back(rig, flip(frames, len(frames) - 1, len(frames[-1]) - 1))


def _malformed_frame(rig: Rig) -> None:
    _to_vehicle_and_back(rig, [b"\x07\x00"])


def _reassembly_timeout(rig: Rig) -> None:
    rig.to_vehicle([bytes([1, 0x80, 0, 200]) + bytes(10)])  # 10 of 200 bytes
    rig.clock.advance(3)
    rig.vehicle.check_timeouts()
    rig.to_phone(rig.vehicle.data_to_send())


def _unexpected_message(rig: Rig) -> None:
    _to_vehicle_and_back(rig, frames_of(ErrorMessage(ResultCode.BUSY), rig.mtu))


@mtus
@pytest.mark.parametrize(
    ("trigger", "phone_error"),
    [
        (_unknown_key, RejectedUnknownKey),
        (_bad_signature, RejectedSignature),
        (_malformed_frame, RejectedMalformed),
        (_reassembly_timeout, RejectedMalformed),
        (_unexpected_message, RejectedUnexpected),
    ],
    ids=[
        "unknown-key",
        "bad-signature",
        "malformed-frame",
        "reassembly-timeout",
        "unexpected-message",
    ],
)
def test_sessions_stay_in_error(mtu: int, trigger: object, phone_error: type) -> None:
    rig = make_rig(mtu)
    with pytest.raises(phone_error):
        trigger(rig)  # type: ignore[operator]
    drain(rig.vehicle.next_event)  # events of the failure itself
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.phone.state is PhoneState.ERROR
    assert isinstance(rig.vehicle.error, ProtocolError)
    assert isinstance(rig.phone.error, phone_error)
    valid = fragment(encode(ErrorMessage(ResultCode.BUSY)), mtu)[0]
    with pytest.raises(LocalProtocolError):
        rig.vehicle.receive_data(valid)
    with pytest.raises(LocalProtocolError):
        rig.vehicle.start()
    assert rig.vehicle.next_event() is None
    rig.vehicle.check_timeouts()
    assert rig.vehicle.data_to_send() == []  # no new challenge, nothing more
    with pytest.raises(LocalProtocolError):
        rig.phone.receive_data(valid)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.UNLOCK, 1000)
    with pytest.raises(LocalProtocolError):
        rig.phone.request_challenge()
    assert rig.phone.next_event() is None
    rig.assert_untouched()


def test_vehicle_error_drops_frames_queued_after_the_bad_one() -> None:
    rig = make_rig(247)
    good = _request_frames(rig)
    rig.vehicle.receive_data(b"\x01")  # truncated frame
    rig.vehicle.receive_data(good[0])
    events = drain(rig.vehicle.next_event)
    assert [e.code for e in events if isinstance(e, RequestRejected)] == [ResultCode.MALFORMED]
    rig.assert_untouched()


# --- messages at the wrong time -------------------------------------------------------
def test_request_before_any_challenge() -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = signed_request(challenge)
    idle = make_rig(store=rig.store, role=None, start=False)
    code, exc = _rejected(idle, frames_of(request, 247))
    assert code is ResultCode.UNEXPECTED_MESSAGE and isinstance(exc, RejectedUnexpected)
    idle.assert_untouched()


@pytest.mark.parametrize(
    "message",
    [
        Challenge((1,), bytes(16), bytes(16)),
        ErrorMessage(ResultCode.BUSY),
        CommandResponse(ResultCode.OK, Command.UNLOCK, 1, LockState.UNLOCKED, bytes(32)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_vehicle_refuses_vehicle_messages(message: object) -> None:
    rig = make_rig()
    code, _ = _rejected(rig, frames_of(message, 247))  # type: ignore[arg-type]
    assert code is ResultCode.UNEXPECTED_MESSAGE
    rig.assert_untouched()


def test_phone_refuses_a_response_it_did_not_ask_for() -> None:
    rig = make_rig()
    response = CommandResponse(ResultCode.OK, Command.UNLOCK, 1, LockState.UNLOCKED, bytes(32))
    with pytest.raises(UnexpectedMessage):
        rig.to_phone(frames_of(response, 247))
    assert rig.phone.state is PhoneState.ERROR


def test_phone_refuses_a_challenge_while_awaiting_the_response() -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    _request_frames(rig)
    with pytest.raises(UnexpectedMessage):
        rig.to_phone(fragment(challenge, 247))


def test_phone_refuses_a_command_request() -> None:
    rig = make_rig()
    request = messages_of(_request_frames(rig))[0]
    with pytest.raises(UnexpectedMessage):
        rig.to_phone(frames_of(request, 247))  # type: ignore[arg-type]


def test_second_command_while_awaiting_the_response_is_refused_locally() -> None:
    rig = make_rig()
    _request_frames(rig)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.LOCK, 2)
    assert rig.phone.data_to_send() == []


def test_a_new_challenge_replaces_the_held_one() -> None:
    rig = make_rig()
    second = new_vehicle_session(rig)
    rig.to_phone(second.data_to_send())  # a challenge from the vehicle's other session
    # the phone now signs over the newest challenge, which the first session never issued
    code, _ = _rejected(rig, _request_frames(rig))
    assert code is ResultCode.UNKNOWN_CHALLENGE
    rig.assert_untouched()


# --- the command argument ------------------------------------------------------------
def test_send_command_accepts_a_plain_int_command() -> None:
    """Command is an IntEnum, so ``send_command(1, n)`` is an easy call to make (e.g.
    with a value read from a config file). Today the phone signs it, the vehicle
    unlocks, and then the phone reports ``BadResponseMac`` ("the response answers a
    different command"): a genuine answer called forged, while the car is open.
    The phone must normalise (or refuse up front) the command."""
    rig = make_rig()
    try:
        done = rig.command(1, 1)  # type: ignore[arg-type]
    except LocalProtocolError:
        assert rig.store.state is LockState.LOCKED  # refused before anything was sent
        return
    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 1)


def test_send_command_refuses_an_undefined_command_locally() -> None:
    """An undefined command is our mistake (LocalProtocolError), not something to sign
    and send, which costs a spent challenge and the session (MALFORMED)."""
    rig = make_rig()
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(9, 1)  # type: ignore[arg-type]
    assert rig.phone.data_to_send() == []
    assert rig.phone.state is PhoneState.READY


def test_challenge_issued_events_match_the_challenges_sent() -> None:
    rig = make_rig(23)
    rig.command(Command.UNLOCK, 1)
    rig.command(Command.LOCK, 2)
    sent = [m.nonce for m in messages_of(rig.pair.sent_to_phone) if isinstance(m, Challenge)]
    issued = [e.nonce for e in rig.pair.vehicle_events if isinstance(e, ChallengeIssued)]
    assert sent == issued and len(set(sent)) == 3


def test_pump_delivers_the_answer_to_an_injected_frame() -> None:
    """ConnectionPair models a man in the middle; a frame injected straight into the
    vehicle must have its answer carried to the phone by the next ``pump``. Today
    ``pump`` returns as soon as one pass moved no frame, before looking at what the
    vehicle produced while handling the injected frame."""
    rig = make_rig()
    rig.vehicle.receive_data(b"\x07\x00")  # a frame of an unknown wire version
    with pytest.raises(RejectedMalformed):
        rig.pair.pump()


# --- fuzz the connections ---------------------------------------------------------------
def _scramble(rnd: random.Random, frames: list[bytes]) -> list[bytes]:
    out = [bytearray(f) for f in frames]
    for _ in range(rnd.randint(1, 3)):
        frame = out[rnd.randrange(len(out))]
        op = rnd.randrange(4)
        if op == 0 and frame:
            frame[rnd.randrange(len(frame))] ^= rnd.randrange(1, 256)
        elif op == 1:
            del frame[rnd.randrange(len(frame) + 1) :]
        elif op == 2:
            frame.insert(rnd.randrange(len(frame) + 1), rnd.randrange(256))
        elif len(out) > 1:
            del out[rnd.randrange(len(out))]
    return [bytes(f) for f in out]


@mtus
def test_fuzz_mutated_requests_never_execute(mtu: int) -> None:
    rnd = random.Random(1000 + mtu)
    for _ in range(150):
        rig = make_rig(mtu)
        frames = _request_frames(rig)
        mutated = _scramble(rnd, frames)
        if mutated == frames:
            continue
        events = rig.to_vehicle(mutated)  # only events: nothing may raise out of here
        assert not [e for e in events if isinstance(e, CommandExecuted)], mutated
        rig.assert_untouched()
        # anything the vehicle answered is an Error the phone raises as a rejection
        answer = rig.vehicle.data_to_send()
        if answer:
            with pytest.raises(VehicleRejected):
                rig.to_phone(answer)
        else:  # frames went missing: the vehicle is still waiting for the rest
            assert rig.vehicle.state is VehicleState.CHALLENGED


@mtus
def test_fuzz_mutated_responses_never_complete(mtu: int) -> None:
    rnd = random.Random(2000 + mtu)
    for _ in range(150):
        rig, frames = _answer_frames(mtu)
        mutated = _scramble(rnd, frames)
        if mutated == frames:
            continue
        try:
            events = rig.to_phone(mutated)
        except ProtocolError:
            assert rig.phone.state is PhoneState.ERROR
        else:  # frames went missing: the phone is still waiting for the rest
            assert events == []
            assert rig.phone.state is PhoneState.AWAIT_RESPONSE
        _assert_phone_reports_no_state(rig)


@mtus
def test_phone_waits_for_the_next_challenge_after_a_response(mtu: int) -> None:
    rig, response, challenge = _answer(mtu)
    assert [type(e) for e in rig.to_phone(response)] == [CommandCompleted]
    assert rig.phone.state is PhoneState.WAIT_CHALLENGE  # the spent challenge is gone
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.LOCK, 2)
    assert rig.phone.data_to_send() == []
    assert rig.to_phone(challenge) == [ChallengeReceived(1)]
    assert rig.phone.state is PhoneState.READY


@pytest.mark.parametrize("method", ["whitelist_entry", "last_counter", "nonce_spent", "lock_state"])
def test_failed_store_read_answers_internal(method: str) -> None:
    """A store that cannot be read (corrupt or unreadable file) must end the exchange
    like a failed commit: an INTERNAL Error to the phone, the session in ERROR, nothing
    executed. Today the store's exception escapes ``VehicleConnection.next_event``
    (crashing the driver's loop), the session stays CHALLENGED with its challenge
    spent, and the phone never gets an answer."""

    class UnreadableStore(MemoryStore):
        pass

    def fail(*args: object, **kwargs: object) -> object:
        raise OSError("store unreadable")

    store = UnreadableStore()
    rig = make_rig(store=store)
    setattr(store, method, fail)
    frames = _request_frames(rig)
    code, exc = _rejected(rig, frames)
    assert code is ResultCode.INTERNAL and isinstance(exc, RejectedInternal)
    assert store.state is LockState.LOCKED and store.commits == 0
