"""Issuer credentials through the connection classes, in memory: the unlocks that
work, the credential bound into the request transcript, the vehicle's settings,
and presentations on the wire.

Refused credentials are in test_credential_refusals.py, revocation deltas in
test_credential_revocations.py, signed time in test_credential_signed_time.py."""

from __future__ import annotations

import pytest
from credential_testkit import (
    ISSUER_KEY,
    NOT_AFTER,
    NOT_BEFORE,
    WALL,
    credential_unlock,
    delta,
    issue,
    make_cred_rig,
    make_trust,
    mtus,
    presentation_frames,
)
from protocol_testkit import (
    GUEST_KEY,
    PHONE_KEY,
    PHONE_KEY_ID,
    VEHICLE_KEY,
    FakeClock,
    frames_of,
    messages_of,
    raw_messages_of,
)

from protocol import (
    Challenge,
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    CommandRequest,
    CommandResponse,
    ErrorMessage,
    LockState,
    MemoryStore,
    PhoneState,
    ResultCode,
    Role,
    VehicleConnection,
    VehicleIdentity,
    VehicleState,
    credentials,
    crypto,
)
from protocol.errors import (
    RejectedCredentialNotYetValid,
    RejectedSignature,
    RejectedUnknownKey,
    VehicleRejected,
)
from protocol.events import VehicleStatusReceived
from protocol.messages import CredentialPresentation, RevocationUpdate, TimeUpdate, VehicleStatus


# --- credentials that work ---------------------------------------------------------
@mtus
def test_phone_off_the_whitelist_unlocks_with_a_credential(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    assert rig.store.whitelist == {}
    credential_unlock(rig, issue(serial=7), counter=5)
    assert rig.executed() == [
        CommandExecuted(
            key_id=PHONE_KEY_ID,
            role=Role.DRIVER,
            command=Command.UNLOCK,
            result=ResultCode.OK,
            lock_state_before=LockState.LOCKED,
            lock_state=LockState.UNLOCKED,
            counter=5,
            credential_serial=7,
        )
    ]
    assert rig.store.state is LockState.UNLOCKED
    assert rig.store.counters == {PHONE_KEY_ID: 5}
    assert rig.store.whitelist == {}  # a credential never adds the key to the whitelist
    assert rig.rejections() == []
    # after the response, the next challenge, then the status (off the critical path)
    kinds = [type(m) for m in messages_of(rig.pair.sent_to_phone)]
    assert kinds == [Challenge, VehicleStatus, CommandResponse, Challenge, VehicleStatus]
    assert rig.statuses()[-1].revocation_version == 0

    # the presentation holds for the session: the next request binds it again
    done = rig.command(Command.STATUS, 6)
    assert done == CommandCompleted(Command.STATUS, ResultCode.OK, LockState.UNLOCKED, 6)
    assert [e.credential_serial for e in rig.executed()] == [7, 7]
    sent = messages_of(rig.pair.sent_to_vehicle)
    assert [type(m) for m in sent] == [CredentialPresentation, CommandRequest, CommandRequest]


@mtus
def test_role_comes_from_the_credential(mtu: int) -> None:
    rig = make_cred_rig(mtu, phone_key=GUEST_KEY)
    rig.present(issue(GUEST_KEY, role=Role.GUEST, serial=11))
    assert rig.command(Command.UNLOCK, 1).result is ResultCode.OK
    forbidden = rig.command(Command.STATUS, 2)  # a guest may not ask for status
    assert forbidden == CommandCompleted(
        Command.STATUS, ResultCode.FORBIDDEN, LockState.UNLOCKED, 2
    )
    assert rig.command(Command.LOCK, 3).lock_state is LockState.LOCKED
    assert [(e.role, e.command, e.result) for e in rig.executed()] == [
        (Role.GUEST, Command.UNLOCK, ResultCode.OK),
        (Role.GUEST, Command.STATUS, ResultCode.FORBIDDEN),
        (Role.GUEST, Command.LOCK, ResultCode.OK),
    ]
    assert {e.credential_serial for e in rig.executed()} == {11}


@mtus
def test_credential_unlock_is_still_one_round_trip(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    rig.present(issue())
    rig.phone.send_command(Command.UNLOCK, 1)
    written = rig.phone.data_to_send()
    # presentation and request, written back to back without waiting for anything
    assert [type(m) for m in messages_of(written)] == [CredentialPresentation, CommandRequest]
    presentation = presentation_frames(issue(), mtu)
    assert written[: len(presentation)] == presentation
    assert len(written) == len(presentation) + (1 if mtu == 247 else 9)
    if mtu == 247:
        assert len(written) == 2  # two ATT writes, one notification back
    else:
        assert len(presentation) == 9  # 160 bytes: 16 + 8 * 18

    # the presentation alone gets no answer
    drain_events = rig.to_vehicle(written[: len(presentation)])
    assert drain_events == []
    assert rig.vehicle.data_to_send() == []
    # the request gets the one response (plus the next challenge and the status)
    rig.to_vehicle(written[len(presentation) :])
    answer = rig.vehicle.data_to_send()
    kinds = [type(m) for m in messages_of(answer)]
    assert kinds == [CommandResponse, Challenge, VehicleStatus]
    assert kinds.count(CommandResponse) == 1
    events = rig.to_phone(answer)
    assert events[0] == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, 1)
    assert rig.phone.data_to_send() == []  # nothing more on the critical path


def test_presentation_before_the_first_challenge() -> None:
    rig = make_cred_rig(start=False)
    rig.present(issue())  # right after connecting, before subscribing
    rig.pair.pump()
    assert rig.vehicle.state is VehicleState.IDLE
    assert rig.pair.sent_to_phone == []
    rig.start()
    assert rig.command(Command.UNLOCK, 1).lock_state is LockState.UNLOCKED
    assert rig.executed()[0].credential_serial == 7


def test_whitelisted_phone_keeps_its_whitelist_role_when_presenting() -> None:
    rig = make_cred_rig(role=Role.OWNER)
    credential_unlock(rig, issue(role=Role.GUEST))
    assert rig.executed()[0].role is Role.OWNER


def test_credential_valid_only_through_the_leeway() -> None:
    rig = make_cred_rig()
    credential_unlock(rig, issue(not_before=WALL + 300))
    rig = make_cred_rig()
    credential_unlock(rig, issue(not_before=WALL - 10_000, not_after=WALL - 300))


# --- binding the credential into the request transcript --------------------------------
@mtus
def test_request_signed_without_binding_the_presented_credential(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    rig.phone.send_command(Command.UNLOCK, 1)  # never presented: TH has no credential digest
    request = rig.phone.data_to_send()
    # the attacker (or a buggy phone) splices a valid presentation in front of it
    rig.to_vehicle(presentation_frames(issue(), mtu) + request)
    assert rig.rejections() == [ResultCode.BAD_SIGNATURE]
    with pytest.raises(RejectedSignature):
        rig.to_phone(rig.vehicle.data_to_send())
    rig.assert_untouched()


@mtus
def test_presentation_dropped_on_the_way(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    rig.present(issue())
    rig.phone.send_command(Command.UNLOCK, 1)
    written = rig.phone.data_to_send()
    rig.to_vehicle(written[len(presentation_frames(issue(), mtu)) :])
    assert rig.rejections() == [ResultCode.UNKNOWN_KEY]
    with pytest.raises(RejectedUnknownKey):
        rig.to_phone(rig.vehicle.data_to_send())
    rig.assert_untouched()


@mtus
def test_another_valid_credential_swapped_in_after_signing(mtu: int) -> None:
    original, other = issue(serial=1), issue(serial=2, not_after=NOT_AFTER + 1)
    rig = make_cred_rig(mtu)
    rig.present(original)
    rig.phone.send_command(Command.UNLOCK, 1)
    written = rig.phone.data_to_send()
    n = len(presentation_frames(original, mtu))
    assert written[:n] == presentation_frames(original, mtu)
    rig.to_vehicle(presentation_frames(other, mtu) + written[n:])
    assert rig.rejections() == [ResultCode.BAD_SIGNATURE]
    rig.assert_untouched()

    control = make_cred_rig(mtu)  # the swapped-in credential is valid on its own
    credential_unlock(control, other)


def test_second_presentation_replaces_the_first() -> None:
    rig = make_cred_rig()
    rig.present(issue(serial=1))
    rig.present(issue(serial=2))
    credential_unlock(rig, issue(serial=3))
    assert rig.executed()[0].credential_serial == 3


# --- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize("leeway", [0, 120])
def test_vehicle_leeway_is_configurable_below_five_minutes(leeway: int) -> None:
    rig = make_cred_rig(leeway=leeway)
    credential_unlock(rig, issue(not_before=WALL + leeway))
    rig = make_cred_rig(leeway=leeway)
    assert type(rig.refused(issue(not_before=WALL + leeway + 1))) is (RejectedCredentialNotYetValid)


@pytest.mark.parametrize("leeway", [-1, credentials.MAX_LEEWAY + 1])
def test_vehicle_refuses_a_leeway_above_five_minutes_at_construction(leeway: int) -> None:
    with pytest.raises(ValueError, match="leeway"):
        VehicleConnection(
            VehicleIdentity(VEHICLE_KEY, "VIN"),
            MemoryStore(),
            clock=FakeClock(),
            rng=lambda n: bytes(n),
            trust=make_trust(FakeClock(WALL)),
            credential_leeway=leeway,
        )


def test_presentations_on_the_wire() -> None:
    """The phone sends exactly the credential bytes it was given."""
    rig = make_cred_rig()
    data = issue().to_bytes()
    rig.present(data)
    sent = raw_messages_of(rig.phone.data_to_send())
    assert sent == [bytes([1, 0x06]) + len(data).to_bytes(2, "big") + data]


def test_unknown_key_without_a_presentation_on_a_trusting_vehicle() -> None:
    rig = make_cred_rig()
    rig.phone.send_command(Command.UNLOCK, 1)
    with pytest.raises(RejectedUnknownKey):
        rig.pair.pump()
    rig.assert_untouched()


def test_refusals_are_unauthenticated_errors() -> None:
    for code in (
        ResultCode.CREDENTIAL_INVALID,
        ResultCode.CREDENTIAL_EXPIRED,
        ResultCode.CREDENTIAL_NOT_YET_VALID,
        ResultCode.CREDENTIAL_REVOKED,
        ResultCode.UPDATE_REJECTED,
    ):
        rig = make_cred_rig()
        with pytest.raises(VehicleRejected) as info:
            rig.to_phone(frames_of(ErrorMessage(code), rig.mtu))
        assert info.value.code is code and info.value.authenticated is False


def test_phone_ignores_a_status_while_waiting_for_its_challenge() -> None:
    rig = make_cred_rig(start=False)
    events = rig.to_phone(frames_of(VehicleStatus(3, bytes(16)), rig.mtu))
    assert events == [VehicleStatusReceived(3, bytes(16))]
    assert rig.phone.state is PhoneState.WAIT_CHALLENGE
    rig.start()
    assert rig.pair.phone_events[0] == ChallengeReceived(1)
    assert isinstance(rig.pair.phone_events[1], VehicleStatusReceived)


def test_updates_from_the_phone_are_refused_before_the_first_challenge() -> None:
    for message in (RevocationUpdate(delta(0, 1, []).to_bytes()), TimeUpdate(bytes(106))):
        rig = make_cred_rig(start=False)
        rig.to_vehicle(frames_of(message, rig.mtu))
        assert rig.rejections() == [ResultCode.UNEXPECTED_MESSAGE]


def test_issuer_key_object_is_the_trusted_one() -> None:
    rig = make_cred_rig()
    assert rig.trust is not None
    assert list(rig.trust.issuers) == [crypto.key_id(ISSUER_KEY.public_key())]
    assert issue().not_before == NOT_BEFORE
    assert PHONE_KEY_ID == crypto.key_id(PHONE_KEY.public_key())


@mtus
def test_recorded_credential_exchange_replayed_on_a_new_session(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    credential_unlock(rig, issue())
    recorded = list(rig.pair.sent_to_vehicle)  # presentation and request
    rig.command(Command.LOCK, 2)
    replay = make_cred_rig(mtu, store=rig.store, trust=rig.trust, wall=rig.wall)
    replay.to_vehicle(recorded)
    assert replay.rejections() == [ResultCode.UNKNOWN_CHALLENGE]
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 2
