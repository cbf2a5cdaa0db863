"""Revocation through the connection classes, in memory: deltas the phone carries
to the vehicle (applied, ignored or refused), and revoked keys, whitelisted or
holding a credential, on this vehicle and not on another."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credential_testkit import (
    ROGUE_ISSUER_KEY,
    CredRig,
    after_one_command,
    delta,
    issue,
    make_cred_rig,
    mtus,
    rev_id,
)
from protocol_testkit import GUEST_KEY, GUEST_KEY_ID, PHONE_KEY_ID, key_from_label

from protocol import (
    Command,
    LockState,
    MemoryStore,
    PhoneState,
    ResultCode,
    Role,
    VehicleState,
    crypto,
)
from protocol.errors import RejectedCredentialRevoked, RejectedUpdate
from protocol.events import RevocationsUpdated


# --- revocation deltas carried by the phone ---------------------------------------------
@mtus
def test_revocation_delta_applied_when_it_starts_at_the_held_version(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    status = after_one_command(rig)
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


def _own_key_revoked_then_lock_refused(rig: CredRig) -> None:
    """After one unlock, the phone carries a delta revoking its own key: its next
    command (LOCK, counter 2) is refused and the vehicle stays unlocked."""
    rig.phone.send_revocation_update(delta(0, 1, [rev_id(PHONE_KEY_ID)]).to_bytes())
    rig.pair.pump()
    rig.phone.send_command(Command.LOCK, 2)
    with pytest.raises(RejectedCredentialRevoked):
        rig.pair.pump()
    assert rig.store.state is LockState.UNLOCKED and rig.store.commits == 1


def test_revoking_the_presenting_holder_stops_its_next_request() -> None:
    rig = make_cred_rig()
    after_one_command(rig)
    _own_key_revoked_then_lock_refused(rig)


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
    after_one_command(rig)
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
    after_one_command(rig)
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


# --- revoked keys ---------------------------------------------------------------------
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
    _own_key_revoked_then_lock_refused(rig)


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
