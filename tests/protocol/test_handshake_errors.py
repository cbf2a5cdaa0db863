"""The handshake's sessions when something went wrong, in memory: the ERROR state
is final on both sides, and messages at the wrong time are refused."""

from __future__ import annotations

import pytest
from protocol_testkit import (
    Rig,
    drain,
    flip,
    frames_of,
    make_rig,
    messages_of,
    mtus,
    new_vehicle_session,
    raw_messages_of,
    request_frames,
    signed_request,
    vehicle_refusal,
)

from protocol import (
    Challenge,
    Command,
    CommandResponse,
    ErrorMessage,
    LocalProtocolError,
    LockState,
    PhoneState,
    ProtocolError,
    RequestRejected,
    ResultCode,
    UnexpectedMessage,
    VehicleState,
    encode,
)
from protocol.errors import (
    RejectedMalformed,
    RejectedSignature,
    RejectedUnexpected,
    RejectedUnknownKey,
)
from protocol.framing import fragment


# --- the ERROR state is final ------------------------------------------------------
def _unknown_key(rig: Rig) -> None:
    rig.store.whitelist.clear()
    rig.command(Command.UNLOCK, 1)


def _to_vehicle_and_back(rig: Rig, frames: list[bytes]) -> None:
    rig.to_vehicle(frames)
    rig.to_phone(rig.vehicle.data_to_send())


def _bad_signature(rig: Rig) -> None:
    frames = request_frames(rig)
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
    good = request_frames(rig)
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
    code, exc = vehicle_refusal(idle, frames_of(request, 247))
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
    code, _ = vehicle_refusal(rig, frames_of(message, 247))  # type: ignore[arg-type]
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
    request_frames(rig)
    with pytest.raises(UnexpectedMessage):
        rig.to_phone(fragment(challenge, 247))


def test_phone_refuses_a_command_request() -> None:
    rig = make_rig()
    request = messages_of(request_frames(rig))[0]
    with pytest.raises(UnexpectedMessage):
        rig.to_phone(frames_of(request, 247))  # type: ignore[arg-type]


def test_second_command_while_awaiting_the_response_is_refused_locally() -> None:
    rig = make_rig()
    request_frames(rig)
    with pytest.raises(LocalProtocolError):
        rig.phone.send_command(Command.LOCK, 2)
    assert rig.phone.data_to_send() == []


def test_a_new_challenge_replaces_the_held_one() -> None:
    rig = make_rig()
    second = new_vehicle_session(rig)
    rig.to_phone(second.data_to_send())  # a challenge from the vehicle's other session
    # the phone now signs over the newest challenge, which the first session never issued
    code, _ = vehicle_refusal(rig, request_frames(rig))
    assert code is ResultCode.UNKNOWN_CHALLENGE
    rig.assert_untouched()
