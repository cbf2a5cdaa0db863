"""Issuer-signed time through the connection classes, in memory: bound to the
vehicle's latest time nonce, refused when replayed, stale or forged, and the
fix for a vehicle clock that refuses fresh credentials."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credential_testkit import (
    ROGUE_ISSUER_KEY,
    WALL,
    after_one_command,
    credential_unlock,
    issue,
    make_cred_rig,
    make_trust,
    mtus,
    signed_time,
)
from protocol_testkit import FakeClock

from protocol import Command, ResultCode, Role, VehicleState
from protocol.errors import RejectedCredentialExpired, RejectedCredentialNotYetValid, RejectedUpdate
from protocol.events import ClockCorrected
from protocol.vehicle import TIME_NONCE_LIFETIME


# --- signed time ------------------------------------------------------------------------
@mtus
def test_signed_time_bound_to_the_latest_nonce_corrects_the_clock(mtu: int) -> None:
    rig = make_cred_rig(mtu)
    assert rig.trust is not None
    after_one_command(rig)
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
    after_one_command(rig)
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
    after_one_command(rig)
    first = rig.latest_time_nonce()
    rig.command(Command.LOCK, 2)
    assert rig.latest_time_nonce() != first
    rig.phone.send_time_update(signed_time(first, WALL - 3600).to_bytes())
    with pytest.raises(RejectedUpdate):
        rig.pair.pump()
    assert rig.trust is not None and rig.trust.now() == WALL


def test_signed_time_from_another_session_is_refused() -> None:
    rig = make_cred_rig()
    after_one_command(rig)
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
    after_one_command(rig)
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
    after_one_command(rig)
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
    credential_unlock(renter, issue(), counter=2)


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
    credential_unlock(retry, credential)
