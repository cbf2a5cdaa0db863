"""A forged vehicle against the phone, in memory: a rogue vehicle key, another
vehicle's challenge, responses MACed with the wrong key, and injected Errors."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from protocol_testkit import (
    ATTACKER_KEY,
    VEHICLE_KEY,
    assert_phone_reports_no_state,
    frames_of,
    make_rig,
    messages_of,
    mtus,
    raw_messages_of,
    request_frames,
    rewrite_challenges,
    vehicle_refusal,
)

from protocol import (
    BadResponseMac,
    Challenge,
    Command,
    CommandCompleted,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    LockState,
    PhoneState,
    ResultCode,
    VehicleRejected,
    WrongVehicle,
    crypto,
    privacy,
)
from protocol.codec import AUTHENTICATED_RESULTS
from protocol.errors import RejectedUnknownKey, rejection_for
from protocol.transcript import request_transcript_hash, response_key, response_mac


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


def test_rogue_vehicle_claiming_the_genuine_tag() -> None:
    """A rogue vehicle that knows the genuine vehicle's public key (it has a
    card) and puts the genuine tag in its challenge cannot verify the phone's
    signature (made over the genuine key) nor answer with a MAC."""
    rig = make_rig(
        vehicle_key=ATTACKER_KEY, expected_vehicle_key=VEHICLE_KEY.public_key(), start=False
    )
    rig.vehicle.start()
    genuine_point = crypto.public_bytes(VEHICLE_KEY.public_key(), compressed=False)
    frames = rig.vehicle.data_to_send()
    (nonce,) = [m.nonce for m in messages_of(frames) if isinstance(m, Challenge)]
    genuine_tag = privacy.challenge_vehicle_tag(genuine_point, nonce)
    rig.to_phone(rewrite_challenges(frames, 247, vehicle_tag=genuine_tag))
    code, _ = vehicle_refusal(rig, request_frames(rig))
    assert code is ResultCode.BAD_SIGNATURE
    assert_phone_reports_no_state(rig)


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
    request = messages_of(request_frames(rig))[0]  # intercepted, never delivered
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
    assert_phone_reports_no_state(rig)
    rig.assert_untouched()


def test_forged_response_control_with_the_genuine_secret() -> None:
    """Control for the forgery test: with the vehicle's secret the MAC is accepted,
    so the failures above are due to the key alone."""
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = messages_of(request_frames(rig))[0]
    assert isinstance(request, CommandRequest)
    secret = crypto.ecdh(VEHICLE_KEY, crypto.public_key_from_bytes(request.ephemeral_key))
    events = rig.to_phone(frames_of(_forged_response(request, challenge, secret), 247))
    assert events == [CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 1)]


@pytest.mark.parametrize("field", ["command", "counter"])
def test_genuinely_maced_response_to_another_command_is_refused(field: str) -> None:
    rig = make_rig()
    challenge = raw_messages_of(rig.pair.sent_to_phone)[-1]
    request = messages_of(request_frames(rig))[0]
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
    request_frames(rig)  # the attacker swallows the request and answers itself
    with pytest.raises(VehicleRejected) as info:
        rig.to_phone(frames_of(ErrorMessage(code), mtu))
    assert type(info.value) is type(rejection_for(code))
    assert info.value.code is code
    assert info.value.authenticated is False
    assert str(info.value)
    assert_phone_reports_no_state(rig)
    assert rig.phone.state is PhoneState.ERROR
    rig.assert_untouched()


def test_injected_error_before_any_command() -> None:
    rig = make_rig()
    with pytest.raises(RejectedUnknownKey):
        rig.to_phone(frames_of(ErrorMessage(ResultCode.UNKNOWN_KEY), 247))
    assert rig.phone.state is PhoneState.ERROR
