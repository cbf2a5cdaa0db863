"""The command handshake driven in memory, attacked on the wire: keys off the
whitelist, signatures over the wrong challenge, every changed or truncated byte
of a request or a response, stripped version offers, hand-built requests, and a
fuzz loop over both directions.

The commands that work are in test_handshake_commands.py; replay, expiry and
counters in test_handshake_replay.py; a forged vehicle in
test_handshake_forgery.py; the ERROR state and messages at the wrong time in
test_handshake_errors.py."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from protocol_testkit import (
    GUEST_KEY,
    PHONE_KEY_ID,
    Rig,
    assert_phone_reports_no_state,
    drain,
    flip,
    frames_of,
    make_rig,
    message_offsets,
    messages_of,
    mtus,
    raw_messages_of,
    request_frames,
    rewrite_challenges,
    signed_request,
    unlock_answer,
    vehicle_refusal,
)

from protocol import (
    BadResponseMac,
    ChallengeReceived,
    Command,
    CommandExecuted,
    CommandRequest,
    DecodeError,
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
    VehicleRejected,
    VehicleState,
)
from protocol.errors import (
    FieldValueError,
    RejectedKey,
    RejectedMalformed,
    RejectedSignature,
    RejectedUnknownKey,
    RejectedVersion,
    RejectedVersionMismatch,
)
from protocol.framing import fragment


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
    assert_phone_reports_no_state(rig)
    rig.assert_untouched()


def test_other_whitelisted_key_cannot_sign_for_the_phone() -> None:
    """A request that claims the phone's key id but is signed by another key."""
    rig = make_rig()
    rig.store.add_key(GUEST_KEY.public_key(), Role.OWNER)
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    forged = signed_request(challenge, key=GUEST_KEY, key_id=PHONE_KEY_ID)
    code, exc = vehicle_refusal(rig, frames_of(forged, rig.mtu))
    assert code is ResultCode.BAD_SIGNATURE and isinstance(exc, RejectedSignature)
    rig.assert_untouched()


@mtus
def test_signature_over_another_challenge(mtu: int) -> None:
    rig_a = make_rig(mtu)
    request_a = messages_of(request_frames(rig_a))[0]
    assert isinstance(request_a, CommandRequest)

    # session B of the same vehicle: sent as is, the nonce is unknown there ...
    rig_b = make_rig(mtu, store=rig_a.store, role=None)
    code, _ = vehicle_refusal(rig_b, frames_of(request_a, mtu))
    assert code is ResultCode.UNKNOWN_CHALLENGE

    # ... and with the nonce rewritten to B's, the signature no longer matches
    rig_c = make_rig(mtu, store=rig_a.store, role=None)
    nonce_c = messages_of(rig_c.pair.sent_to_phone)[-1].nonce  # type: ignore[union-attr]
    code, exc = vehicle_refusal(rig_c, frames_of(replace(request_a, nonce=nonce_c), mtu))
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
    positions = message_offsets(request_frames(make_rig(mtu)))
    assert len(positions) == (147 if mtu == 247 else 143 + 2 * 9 + 2)
    seen: set[ResultCode] = set()
    for frame_i, byte_i, offset in positions:
        rig = make_rig(mtu, store=MemoryStore(counters={PHONE_KEY_ID: 100}))
        frames = request_frames(rig, Command.UNLOCK, 101)
        code, _ = vehicle_refusal(rig, flip(frames, frame_i, byte_i))
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


def _answer_frames(mtu: int) -> tuple[Rig, list[bytes]]:
    rig, response, _ = unlock_answer(mtu)
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
        assert_phone_reports_no_state(rig)
        assert rig.phone.state is PhoneState.ERROR


@mtus
def test_request_truncated_at_every_length(mtu: int) -> None:
    rig = make_rig(mtu)
    frames = request_frames(rig)
    message = raw_messages_of(frames)[0]
    # the message cut short and framed correctly: the codec refuses it
    for length in range(1, len(message)):
        victim = make_rig(mtu, store=rig.store, role=None)
        code, exc = vehicle_refusal(victim, fragment(message[:length], mtu))
        assert code is ResultCode.MALFORMED and isinstance(exc, RejectedMalformed)
    # one frame cut short (the others intact): the reassembler refuses the message
    for i, frame in enumerate(frames):
        for length in range(len(frame)):
            victim = make_rig(mtu, store=rig.store, role=None)
            code, _ = vehicle_refusal(victim, [*frames[:i], frame[:length], *frames[i + 1 :]])
            assert code is ResultCode.MALFORMED, (i, length)
    rig.assert_untouched()


def test_request_whose_last_frames_never_arrive() -> None:
    rig = make_rig(23)
    frames = request_frames(rig)
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


# --- versions ------------------------------------------------------------------------
@mtus
def test_stripped_version_offer_is_detected(mtu: int) -> None:
    rig = make_rig(mtu, vehicle_versions=(1, 2), phone_versions=(1, 2), start=False)
    rig.vehicle.start()
    events = rig.to_phone(rewrite_challenges(rig.vehicle.data_to_send(), mtu, versions=(1,)))
    assert events == [ChallengeReceived(version=1)]  # the phone was talked down to 1
    code, exc = vehicle_refusal(rig, request_frames(rig))
    assert code is ResultCode.VERSION_MISMATCH
    assert isinstance(exc, RejectedVersionMismatch)
    rig.assert_untouched()


@mtus
def test_stripped_offer_with_restored_echo_fails_the_signature(mtu: int) -> None:
    """The attacker also rewrites the echo back: the transcript still differs."""
    rig = make_rig(mtu, vehicle_versions=(1, 2), phone_versions=(1, 2), start=False)
    rig.vehicle.start()
    rig.to_phone(rewrite_challenges(rig.vehicle.data_to_send(), mtu, versions=(1,)))
    request = messages_of(request_frames(rig))[0]
    assert isinstance(request, CommandRequest) and request.version == 1
    code, _ = vehicle_refusal(rig, frames_of(replace(request, offered_versions=(1, 2)), mtu))
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
    code, exc = vehicle_refusal(rig, frames_of(request, rig.mtu))
    assert code is ResultCode.UNSUPPORTED_VERSION and isinstance(exc, RejectedVersion)
    rig.assert_untouched()


def test_invalid_ephemeral_key() -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = signed_request(challenge, ephemeral_key=b"\x02" + b"\xff" * 32)
    code, exc = vehicle_refusal(rig, frames_of(request, rig.mtu))
    assert code is ResultCode.BAD_KEY and isinstance(exc, RejectedKey)
    rig.assert_untouched()


def test_hand_built_request_is_accepted() -> None:
    """Control for the hand-built requests above: unaltered, it unlocks."""
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    events = rig.to_vehicle(frames_of(signed_request(challenge), rig.mtu))
    assert [e.lock_state for e in events if isinstance(e, CommandExecuted)] == [LockState.UNLOCKED]


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
        frames = request_frames(rig)
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
        assert_phone_reports_no_state(rig)
