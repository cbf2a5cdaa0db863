"""Issuer credentials the vehicle must refuse, through the connection classes in
memory: expired, not yet valid, for another vehicle or holder, an owner role, an
unknown issuer or a bad signature; a clock set back; vehicles that trust no
issuer."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credential_testkit import (
    ROGUE_ISSUER_KEY,
    WALL,
    CredRig,
    credential_unlock,
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
    GUEST_KEY_ID,
    PHONE_KEY_ID,
    FakeClock,
    messages_of,
)

from protocol import (
    Command,
    CommandCompleted,
    ErrorMessage,
    LockState,
    MemoryStore,
    PhoneState,
    RequestRejected,
    ResultCode,
    Role,
    VehicleState,
    credentials,
)
from protocol.errors import (
    RejectedCredential,
    RejectedCredentialExpired,
    RejectedCredentialNotYetValid,
    RejectedCredentialRevoked,
    RejectedUpdate,
)
from protocol.store import MemoryTrust


def _assert_refused_untouched(rig: CredRig, commits: int = 0) -> None:
    assert rig.vehicle.state is VehicleState.ERROR
    assert rig.phone.state is PhoneState.ERROR
    rig.assert_untouched(LockState.LOCKED, commits=commits)
    assert not [e for e in rig.pair.phone_events if isinstance(e, CommandCompleted)]
    assert [type(m) for m in messages_of(rig.pair.sent_to_phone)][-1] is ErrorMessage


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


# --- the vehicle's clock ------------------------------------------------------------------
def test_clock_set_back_does_not_revive_an_expired_credential() -> None:
    expired_at = WALL - 1000
    credential = issue(not_before=expired_at - 3600, not_after=expired_at)
    wall = FakeClock(WALL - 3600)  # the wall clock was set back an hour
    # control: without a floor the vehicle believes the credential is valid
    rig = make_cred_rig(wall=wall, trust=make_trust(wall))
    credential_unlock(rig, credential)
    # the persisted floor (the last time the vehicle knew) keeps it expired
    rig = make_cred_rig(wall=wall, trust=make_trust(wall, floor=WALL))
    assert rig.trust is not None and rig.trust.now() == WALL
    assert type(rig.refused(credential)) is RejectedCredentialExpired
    _assert_refused_untouched(rig)


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
