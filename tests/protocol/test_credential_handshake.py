"""Issuer credentials, revocation deltas and signed time through the connection
classes, in memory: what works, and what the vehicle must refuse."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credential_testkit import (
    ISSUER_KEY,
    NOT_AFTER,
    NOT_BEFORE,
    ROGUE_ISSUER_KEY,
    WALL,
    CredRig,
    delta,
    issue,
    make_cred_rig,
    make_trust,
    mtus,
    presentation_frames,
    rev_id,
    signed_time,
)
from protocol_testkit import (
    ATTACKER_KEY,
    GUEST_KEY,
    PHONE_KEY,
    PHONE_KEY_ID,
    VEHICLE_KEY,
    FakeClock,
    frames_of,
    key_from_label,
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
    RequestRejected,
    ResultCode,
    Role,
    VehicleConnection,
    VehicleIdentity,
    VehicleState,
    credentials,
    crypto,
)
from protocol.errors import (
    RejectedCredential,
    RejectedCredentialExpired,
    RejectedCredentialNotYetValid,
    RejectedCredentialRevoked,
    RejectedSignature,
    RejectedUnknownKey,
    RejectedUpdate,
    VehicleRejected,
)
from protocol.events import ClockCorrected, RevocationsUpdated, VehicleStatusReceived
from protocol.messages import CredentialPresentation, RevocationUpdate, TimeUpdate, VehicleStatus
from protocol.store import MemoryTrust
from protocol.vehicle import TIME_NONCE_LIFETIME

GUEST_KEY_ID = crypto.key_id(GUEST_KEY.public_key())


def _credential_unlock(rig: CredRig, credential: credentials.Credential, counter: int = 1) -> None:
    rig.present(credential)
    done = rig.command(Command.UNLOCK, counter)
    assert done == CommandCompleted(Command.UNLOCK, ResultCode.OK, LockState.UNLOCKED, counter)


def _assert_refused_untouched(rig: CredRig, commits: int = 0) -> None:
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.phone.state is PhoneState.ERROR
    rig.assert_untouched(LockState.LOCKED, commits=commits)
    assert not [e for e in rig.pair.phone_events if isinstance(e, CommandCompleted)]
    assert [type(m) for m in messages_of(rig.pair.sent_to_phone)][-1] is ErrorMessage


# --- credentials that work ---------------------------------------------------------
@mtus
def test_phone_off_the_whitelist_unlocks_with_a_credential(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    assert rig.store.whitelist == {}
    _credential_unlock(rig, issue(serial=7), counter=5)
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
    _credential_unlock(rig, issue(role=Role.GUEST))
    assert rig.executed()[0].role is Role.OWNER


def test_credential_valid_only_through_the_leeway() -> None:
    rig = make_cred_rig()
    _credential_unlock(rig, issue(not_before=WALL + 300))
    rig = make_cred_rig()
    _credential_unlock(rig, issue(not_before=WALL - 10_000, not_after=WALL - 300))


# --- credentials that are refused ----------------------------------------------------
def _bad_issuer_signature() -> credentials.Credential:
    good = issue()
    other = issue(serial=8)  # a genuine issuer signature, over other bytes
    return replace(good, signature=other.signature)


REFUSALS = [
    # name, credential, code, phone exception, refused at the request (after cheap checks)
    (
        "expired",
        lambda: issue(not_after=WALL - 301),
        ResultCode.CREDENTIAL_EXPIRED,
        RejectedCredentialExpired,
        False,
    ),
    (
        "not-yet-valid",
        lambda: issue(not_before=WALL + 301),
        ResultCode.CREDENTIAL_NOT_YET_VALID,
        RejectedCredentialNotYetValid,
        False,
    ),
    (
        "wrong-vehicle",
        lambda: issue(vehicle_key=ATTACKER_KEY),
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        False,
    ),
    (
        "wrong-holder",
        lambda: issue(GUEST_KEY),
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        True,
    ),
    (
        "owner-role",
        lambda: issue(role=Role.OWNER),
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        False,
    ),
    (
        "unknown-issuer",
        lambda: issue(issuer=ROGUE_ISSUER_KEY),
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        False,
    ),
    (
        "bad-issuer-signature",
        _bad_issuer_signature,
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        True,
    ),
    (
        "malformed",
        lambda: issue().to_bytes()[:-1],
        ResultCode.CREDENTIAL_INVALID,
        RejectedCredential,
        False,
    ),
]


@mtus
@pytest.mark.parametrize(
    ("make", "code", "phone_error", "at_request"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refused_credentials(
    mtu: int, make: object, code: ResultCode, phone_error: type, at_request: bool
) -> None:
    rig = make_cred_rig(mtu)
    exc = rig.refused(make())  # type: ignore[operator]
    assert type(exc) is phone_error
    assert exc.code is code
    rejected = [e for e in rig.pair.vehicle_events if isinstance(e, RequestRejected)]
    # a refusal at presentation happens before the vehicle even saw the key id
    assert rejected[0].key_id == (PHONE_KEY_ID if at_request else None)
    _assert_refused_untouched(rig)
    assert rig.store.counters == {}


@mtus
def test_revoked_credential_is_refused(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    assert rig.trust is not None
    rig.trust.revoked.add(rev_id(PHONE_KEY_ID))
    exc = rig.refused(issue())
    assert type(exc) is RejectedCredentialRevoked
    assert exc.code is ResultCode.CREDENTIAL_REVOKED
    _assert_refused_untouched(rig)


def test_owner_credential_refused_even_for_status() -> None:
    rig = make_cred_rig()
    exc = rig.refused(issue(role=Role.OWNER), Command.STATUS)
    assert exc.code is ResultCode.CREDENTIAL_INVALID
    _assert_refused_untouched(rig)


class CountingSignatures:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = credentials.verify_credential_signature

        def counting(*args: object, **kwargs: object) -> None:
            self.calls += 1
            original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(credentials, "verify_credential_signature", counting)


def test_issuer_signature_is_checked_after_the_requests_cheap_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = CountingSignatures(monkeypatch)
    # presentation: claims only, no signature work
    rig = make_cred_rig()
    rig.to_vehicle(presentation_frames(_bad_issuer_signature(), rig.mtu))
    assert counter.calls == 0 and rig.vehicle.state is VehicleState.CHALLENGED
    # a request that fails a cheap check (stale counter) costs no signature either
    rig = make_cred_rig(store=MemoryStore(counters={PHONE_KEY_ID: 9}))
    exc = rig.refused(_bad_issuer_signature(), counter=9)
    assert exc.code is ResultCode.STALE_COUNTER and counter.calls == 0
    # with the cheap checks passed, the issuer signature is what fails
    rig = make_cred_rig()
    assert rig.refused(_bad_issuer_signature()).code is ResultCode.CREDENTIAL_INVALID
    assert counter.calls == 1


def test_credential_checked_again_at_request_time() -> None:
    """Valid when presented, expired by the time the request arrives."""
    rig = make_cred_rig()
    assert rig.wall is not None
    rig.present(issue(not_after=WALL + 10))
    rig.pair.pump()
    assert rig.vehicle.state is VehicleState.CHALLENGED
    rig.wall.advance(311)
    rig.phone.send_command(Command.UNLOCK, 1)
    with pytest.raises(RejectedCredentialExpired):
        rig.pair.pump()
    _assert_refused_untouched(rig)


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
    _credential_unlock(control, other)


def test_second_presentation_replaces_the_first() -> None:
    rig = make_cred_rig()
    rig.present(issue(serial=1))
    rig.present(issue(serial=2))
    _credential_unlock(rig, issue(serial=3))
    assert rig.executed()[0].credential_serial == 3


# --- the vehicle's clock ------------------------------------------------------------------
def test_clock_set_back_does_not_revive_an_expired_credential() -> None:
    expired_at = WALL - 1000
    credential = issue(not_before=expired_at - 3600, not_after=expired_at)
    wall = FakeClock(WALL - 3600)  # the wall clock was set back an hour
    # control: without a floor the vehicle believes the credential is valid
    rig = make_cred_rig(wall=wall, trust=make_trust(wall))
    _credential_unlock(rig, credential)
    # the persisted floor (the last time the vehicle knew) keeps it expired
    rig = make_cred_rig(wall=wall, trust=make_trust(wall, floor=WALL))
    assert rig.trust is not None and rig.trust.now() == WALL
    assert type(rig.refused(credential)) is RejectedCredentialExpired
    _assert_refused_untouched(rig)


# --- revocation deltas carried by the phone ---------------------------------------------
def _after_one_command(rig: CredRig) -> VehicleStatusReceived:
    _credential_unlock(rig, issue())
    return rig.statuses()[-1]


@mtus
def test_revocation_delta_applied_when_it_starts_at_the_held_version(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    status = _after_one_command(rig)
    assert status.revocation_version == 0
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(GUEST_KEY_ID)]).to_bytes())
    rig.pair.pump()
    assert [e for e in rig.pair.vehicle_events if isinstance(e, RevocationsUpdated)] == [
        RevocationsUpdated(0, 1, 1)
    ]
    assert rig.trust is not None
    assert rig.trust.version == 1 and rig.trust.revoked == {rev_id(GUEST_KEY_ID)}
    assert rig.statuses()[-1].revocation_version == 1  # the vehicle says what it holds now
    assert rig.vehicle.state is VehicleState.CHALLENGED and rig.phone.state is PhoneState.READY
    assert rig.store.commits == 1  # revocations live in the trust store, not in commands

    # the revoked holder's next visit: refused at presentation
    guest = make_cred_rig(mtu, phone_key=GUEST_KEY, store=rig.store, trust=rig.trust)
    assert type(guest.refused(issue(GUEST_KEY))) is RejectedCredentialRevoked
    assert rig.store.state is LockState.UNLOCKED and rig.store.commits == 1


def test_revoking_the_presenting_holder_stops_its_next_request() -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(PHONE_KEY_ID)]).to_bytes())
    rig.pair.pump()
    rig.phone.send_command(Command.LOCK, 2)
    with pytest.raises(RejectedCredentialRevoked):
        rig.pair.pump()
    assert rig.store.state is LockState.UNLOCKED and rig.store.commits == 1


@pytest.mark.parametrize(
    ("held", "from_version", "to_version"),
    [
        pytest.param(5, 3, 4, id="old-news"),
        pytest.param(5, 4, 5, id="already-held"),
        pytest.param(5, 4, 9, id="overlapping"),
        pytest.param(5, 6, 7, id="gap"),
    ],
)
def test_revocation_delta_not_starting_at_the_held_version_is_ignored(
    held: int, from_version: int, to_version: int
) -> None:
    rig = make_cred_rig()
    assert rig.trust is not None
    rig.trust.version = held
    _after_one_command(rig)
    statuses_before = len(rig.statuses())
    rig.phone.send_revocation_update(
        delta(from_version, to_version, [rev_id(GUEST_KEY_ID)]).to_bytes()
    )
    rig.pair.pump()
    assert not [e for e in rig.pair.vehicle_events if isinstance(e, RevocationsUpdated)]
    assert rig.trust.version == held and rig.trust.revoked == set()
    assert rig.rejections() == []
    assert len(rig.statuses()) == statuses_before + 1
    assert rig.statuses()[-1].revocation_version == held
    # the session goes on
    assert rig.command(Command.LOCK, 2).lock_state is LockState.LOCKED


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: replace(
                delta(0, 1, [rev_id(GUEST_KEY_ID)]), signature=delta(0, 1, []).signature
            ).to_bytes(),
            id="bad-signature",
        ),
        pytest.param(
            lambda: delta(0, 1, [rev_id(GUEST_KEY_ID)], issuer=ROGUE_ISSUER_KEY).to_bytes(),
            id="unknown-issuer",
        ),
        pytest.param(lambda: delta(0, 1, [rev_id(GUEST_KEY_ID)]).to_bytes()[:-1], id="malformed"),
        pytest.param(lambda: issue().to_bytes(), id="a-credential"),
    ],
)
def test_revocation_delta_that_fails_verification_is_refused(make: object) -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    rig.phone.send_revocation_update(make())  # type: ignore[operator]
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.UPDATE_REJECTED]
    assert rig.trust is not None and rig.trust.version == 0 and rig.trust.revoked == set()
    assert not [e for e in rig.pair.vehicle_events if isinstance(e, RevocationsUpdated)]
    assert rig.vehicle.state is VehicleState.ERROR


def test_whitelisted_phone_carries_revocations_too() -> None:
    rig = make_cred_rig(role=Role.OWNER)
    rig.command(Command.UNLOCK, 1)  # no credential needed
    assert rig.statuses()[-1].revocation_version == 0
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(GUEST_KEY_ID)]).to_bytes())
    rig.pair.pump()
    assert rig.trust is not None and rig.trust.version == 1


# --- signed time ------------------------------------------------------------------------
@mtus
def test_signed_time_bound_to_the_latest_nonce_corrects_the_clock(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    assert rig.trust is not None
    _after_one_command(rig)
    nonce = rig.latest_time_nonce()
    issuer_time = WALL + 1234
    rig.phone.send_time_update(signed_time(nonce, issuer_time).to_bytes())
    rig.pair.pump()
    assert [e for e in rig.pair.vehicle_events if isinstance(e, ClockCorrected)] == [
        ClockCorrected(WALL, issuer_time)
    ]
    assert rig.trust.now() == issuer_time and rig.trust.floor == issuer_time
    assert rig.latest_time_nonce() != nonce  # a fresh nonce for the next correction
    assert rig.vehicle.state is VehicleState.CHALLENGED


def test_replayed_signed_time_is_refused() -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    update = signed_time(rig.latest_time_nonce(), WALL + 60).to_bytes()
    rig.phone.send_time_update(update)
    rig.pair.pump()
    assert rig.trust is not None and rig.trust.now() == WALL + 60
    rig.command(Command.LOCK, 2)  # a later status, with a new nonce
    rig.phone.send_time_update(update)
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.UPDATE_REJECTED]
    assert len([e for e in rig.pair.vehicle_events if isinstance(e, ClockCorrected)]) == 1


def test_signed_time_for_an_earlier_nonce_of_the_session_is_refused() -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    first = rig.latest_time_nonce()
    rig.command(Command.LOCK, 2)
    assert rig.latest_time_nonce() != first
    rig.phone.send_time_update(signed_time(first, WALL - 3600).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.trust is not None and rig.trust.now() == WALL


def test_signed_time_from_another_session_is_refused() -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    nonce = rig.latest_time_nonce()
    other = make_cred_rig(store=rig.store, trust=rig.trust, wall=rig.wall)
    other.present(issue())
    other.command(Command.LOCK, 2)
    other.phone.send_time_update(signed_time(nonce, WALL - 3600).to_bytes())
    with pytest.raises(RejectedUpdate):
        other.pair.pump()


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(0.0, True), (TIME_NONCE_LIFETIME, True), (TIME_NONCE_LIFETIME + 1, False)],
)
def test_signed_time_must_answer_a_fresh_nonce(age: float, accepted: bool) -> None:
    assert TIME_NONCE_LIFETIME == 60.0
    rig = make_cred_rig()
    _after_one_command(rig)
    rig.clock.advance(age)  # the vehicle's monotonic clock, not its wall clock
    rig.phone.send_time_update(signed_time(rig.latest_time_nonce(), WALL + 99).to_bytes())
    if accepted:
        rig.pair.pump()
        assert rig.trust is not None and rig.trust.now() == WALL + 99
    else:
        with pytest.raises(RejectedUpdate):
            rig.pair.pump()
        assert rig.trust is not None and rig.trust.now() == WALL


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda n: signed_time(n, WALL, issuer=ROGUE_ISSUER_KEY).to_bytes(), id="unknown-issuer"
        ),
        pytest.param(
            lambda n: replace(signed_time(n, WALL + 1), time=WALL + 2).to_bytes(),
            id="bad-signature",
        ),
        pytest.param(lambda n: signed_time(bytes(16), WALL).to_bytes(), id="other-nonce"),
        pytest.param(lambda n: signed_time(n, WALL).to_bytes()[:-1], id="malformed"),
    ],
)
def test_signed_time_that_fails_verification_is_refused(make: object) -> None:
    rig = make_cred_rig()
    _after_one_command(rig)
    rig.phone.send_time_update(make(rig.latest_time_nonce()))  # type: ignore[operator]
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.trust is not None and rig.trust.now() == WALL
    assert not [e for e in rig.pair.vehicle_events if isinstance(e, ClockCorrected)]


def test_signed_time_before_any_status_is_refused() -> None:
    rig = make_cred_rig()
    rig.phone.send_time_update(signed_time(bytes(16), WALL).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()


def test_signed_time_corrects_a_fast_clock() -> None:
    """A wall clock 30 days fast makes every fresh credential look expired; signed
    time carried by a whitelisted phone pulls it back, floor included."""
    wall = FakeClock(WALL + 30 * 86400)
    trust = make_trust(wall, floor=WALL + 30 * 86400)
    refused = make_cred_rig(wall=wall, trust=trust)
    assert type(refused.refused(issue())) is RejectedCredentialExpired

    owner = make_cred_rig(role=Role.OWNER, wall=wall, trust=trust, store=refused.store)
    owner.command(Command.STATUS, 1)
    owner.phone.send_time_update(signed_time(owner.latest_time_nonce(), WALL).to_bytes())
    owner.pair.pump()
    assert trust.now() == WALL and trust.floor == WALL

    renter = make_cred_rig(wall=wall, trust=trust, store=refused.store)
    _credential_unlock(renter, issue(), counter=2)


def test_credential_phone_can_fix_a_vehicle_clock_that_refuses_its_credential() -> None:
    """A vehicle parked for weeks with a dead RTC reads its persisted floor: three
    weeks ago. A renter's fresh credential is 'not yet valid'; the renter's phone is
    online and could fetch signed time, but it needs a time nonce first."""
    wall = FakeClock(WALL - 21 * 86400)
    trust = make_trust(wall)
    rig = make_cred_rig(wall=wall, trust=trust)
    credential = issue(not_before=WALL - 60)
    assert type(rig.refused(credential)) is RejectedCredentialNotYetValid

    retry = make_cred_rig(wall=wall, trust=trust, store=rig.store)  # reconnect
    statuses = retry.statuses()
    assert statuses, "no time nonce reached the phone before its command"
    retry.phone.send_time_update(signed_time(statuses[-1].time_nonce, WALL).to_bytes())
    retry.pair.pump()
    _credential_unlock(retry, credential)


# --- vehicles that trust no issuer -------------------------------------------------------
@mtus
@pytest.mark.parametrize("role", [None, Role.OWNER])
def test_whitelist_only_vehicle_refuses_any_presentation(mtu: int, role: Role | None) -> None:
    rig = make_cred_rig(mtu, trust=None, role=role)
    exc = rig.refused(issue())
    assert type(exc) is RejectedCredential and exc.code is ResultCode.CREDENTIAL_INVALID
    _assert_refused_untouched(rig)


def test_whitelist_only_vehicle_sends_no_status_and_refuses_updates() -> None:
    rig = make_cred_rig(trust=None, role=Role.OWNER)
    rig.command(Command.UNLOCK, 1)
    assert rig.statuses() == []
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(GUEST_KEY_ID)]).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    rig = make_cred_rig(trust=None, role=Role.OWNER)
    rig.command(Command.UNLOCK, 1)
    rig.phone.send_time_update(signed_time(bytes(16), WALL).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()


def test_vehicle_with_trust_but_no_issuer_key() -> None:
    wall = FakeClock(WALL)
    rig = make_cred_rig(trust=MemoryTrust(clock=wall), wall=wall)
    assert rig.refused(issue()).code is ResultCode.CREDENTIAL_INVALID


# --- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize("leeway", [0, 120])
def test_vehicle_leeway_is_configurable_below_five_minutes(leeway: int) -> None:
    rig = make_cred_rig(leeway=leeway)
    _credential_unlock(rig, issue(not_before=WALL + leeway))
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
    _credential_unlock(rig, issue())
    recorded = list(rig.pair.sent_to_vehicle)  # presentation and request
    rig.command(Command.LOCK, 2)
    replay = make_cred_rig(mtu, store=rig.store, trust=rig.trust, wall=rig.wall)
    replay.to_vehicle(recorded)
    assert replay.rejections() == [ResultCode.UNKNOWN_CHALLENGE]
    assert rig.store.state is LockState.LOCKED and rig.store.commits == 2


@mtus
def test_revoked_whitelisted_key_is_refused(mtu: int) -> None:
    """Revocation names key ids, so it covers a whitelisted key too, before the
    whitelist lookup and the counter (no signature work)."""
    rig = make_cred_rig(mtu, role=Role.OWNER, store=MemoryStore(counters={PHONE_KEY_ID: 9}))
    assert rig.trust is not None
    rig.trust.revoked.add(rev_id(PHONE_KEY_ID))
    rig.phone.send_command(Command.UNLOCK, 9)  # also a stale counter
    with pytest.raises(RejectedCredentialRevoked):
        rig.pair.pump()
    assert rig.rejections() == [ResultCode.CREDENTIAL_REVOKED]
    rig.assert_untouched()


def test_revocation_delta_ends_a_whitelisted_key() -> None:
    rig = make_cred_rig(role=Role.OWNER)
    rig.command(Command.UNLOCK, 1)
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(PHONE_KEY_ID)]).to_bytes())
    rig.pair.pump()
    rig.phone.send_command(Command.LOCK, 2)
    with pytest.raises(RejectedCredentialRevoked):
        rig.pair.pump()
    assert rig.store.state is LockState.UNLOCKED and rig.store.commits == 1


@pytest.mark.parametrize("whitelisted", [False, True], ids=["credential", "whitelisted"])
def test_a_raw_key_id_on_the_list_revokes_nothing(whitelisted: bool) -> None:
    """Entries are revocation ids: a bare key id (the old issuer-wide form) is
    just an unknown entry to the vehicle."""
    rig = make_cred_rig(role=Role.OWNER if whitelisted else None)
    assert rig.trust is not None
    rig.trust.revoked.add(PHONE_KEY_ID)
    if not whitelisted:
        rig.present(issue())
    assert rig.command(Command.UNLOCK, 1).result is ResultCode.OK


@pytest.mark.parametrize("whitelisted", [False, True], ids=["credential", "whitelisted"])
def test_a_key_revoked_for_vehicle_a_still_unlocks_vehicle_b(whitelisted: bool) -> None:
    """Two owners enrolled one phone on their two vehicles; the issuer-wide list
    carries A's revocation to both. A refuses the phone, B still opens for it."""
    vehicle_b = key_from_label("phonekey tests: a second owner's vehicle")
    vehicle_b_id = crypto.key_id(vehicle_b.public_key())
    role = Role.DRIVER if whitelisted else None
    rig_a = make_cred_rig(role=role)
    rig_b = make_cred_rig(role=role, vehicle_key=vehicle_b)
    news = delta(0, 1, [rev_id(PHONE_KEY_ID)]).to_bytes()  # revoked on vehicle A only
    assert rev_id(PHONE_KEY_ID) != rev_id(PHONE_KEY_ID, vehicle_b_id)
    for rig in (rig_a, rig_b):
        rig.phone.send_revocation_update(news)
        rig.pair.pump()
        assert rig.trust is not None and rig.trust.version == 1
    if whitelisted:
        rig_a.phone.send_command(Command.UNLOCK, 1)
        with pytest.raises(RejectedCredentialRevoked):
            rig_a.pair.pump()
        assert rig_a.rejections() == [ResultCode.CREDENTIAL_REVOKED]
    else:
        assert type(rig_a.refused(issue())) is RejectedCredentialRevoked
        rig_b.present(issue(vehicle_key=vehicle_b))
    rig_a.assert_untouched()
    assert rig_b.command(Command.UNLOCK, 1).result is ResultCode.OK
    assert rig_b.store.state is LockState.UNLOCKED


def test_whitelist_only_vehicle_has_no_revocations() -> None:
    rig = make_cred_rig(trust=None, role=Role.OWNER)
    assert rig.command(Command.UNLOCK, 1).result is ResultCode.OK
