"""Offline-first unlock, end to end: the vehicle_sim runtime on a virtual
radio trusting a real cloud's issuer key, phones driving it through bleak,
and the cloud failing in every way it can. Nothing is mocked.

The rule under test: a phone the cloud authorised earlier unlocks at BLE
speed whatever the cloud does; the cloud is waited for (bounded) only when
nothing valid is cached. Here: a cached credential against each cloud fault,
nothing cached, credentials the vehicle refuses, and whitelisted phones.

The rig is in phone_offline_rig.py; a vehicle whose clock is wrong in
test_phone_offline_vehicle_clock.py; what the phone carries to the vehicle
(revocations, signed time, an issuer rotation) in test_phone_offline_updates.py."""

from __future__ import annotations

import time

import pytest
from phone_cloud_testkit import VIN
from phone_offline_rig import (  # noqa: F401  (fixtures are found by name)
    DEADLINE,
    PhoneFactory,
    Reported,
    Vehicle,
    make_phone_for_fixture,
    vehicle_fixture,
    vehicle_wall_clock_fixture,
)

from cloud_sim.server import RunningCloud
from phone_client import CacheState, KeyUnavailable
from phone_client.trust import utc_text
from protocol import Command, LockState, Role, crypto
from protocol.credentials import DEFAULT_VALIDITY, issue_credential
from protocol.errors import RejectedUnknownKey


async def test_a_cached_credential_unlocks_without_waiting_for_a_blackholed_cloud(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled="driver")  # not on the whitelist: credential only
    first = await phone.run()
    assert (first.credential, first.cloud, first.lock_state) == ("cloud", "up", LockState.UNLOCKED)
    assert first.message.startswith("unlocked with a credential fetched from the cloud")
    cached = phone.cache().best(VIN, int(time.time()))
    assert cached is not None and vehicle.executed()[-1].credential_serial == cached.serial

    cloud.set_fault("blackhole")
    reported = Reported()
    outcome = await phone.run(Command.LOCK, on_result=reported)
    assert (outcome.credential, outcome.lock_state) == ("cache", LockState.LOCKED)
    assert vehicle.store.lock_state() is LockState.LOCKED
    # The answer came (and was reported) while the refresh was still out: a
    # blackholed cloud never answers, so it was not waited for ...
    assert reported.cloud == "pending" and outcome.latency.cloud_wait is None
    # ... and the refresh beside it gave up at the deadline, without failing the command.
    assert outcome.cloud == "blackhole"
    assert outcome.message == (
        f"cloud unreachable (no answer within {DEADLINE:g} s); locked with cached credential "
        f"valid until {utc_text(cached.not_after)}"
    )


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [
        ("http-500", "http-500", "cloud unreachable (HTTP 500)"),
        ("reset", "reset", "cloud unreachable (connection reset)"),
        ("garbage", "garbage", "cloud unreachable (invalid response (not JSON))"),
        (
            "bad-signature",
            "bad-signature",
            "cloud answer refused (bad signature on the credential)",
        ),
    ],
)
async def test_every_cloud_fault_leaves_the_cached_credential_working(
    make_phone_for: PhoneFactory,
    vehicle: Vehicle,
    cloud: RunningCloud,
    mode: str,
    status: str,
    reason: str,
) -> None:
    phone = await make_phone_for()
    await phone.run()
    held = phone.cache().best(VIN, int(time.time()))
    assert held is not None
    cloud.set_fault(mode)
    outcome = await phone.run(Command.STATUS)
    assert (outcome.credential, outcome.cloud, outcome.ok) == ("cache", status, True)
    assert outcome.message == (
        f"{reason}; status read with cached credential valid until {utc_text(held.not_after)}"
    )
    assert phone.cache().best(VIN, int(time.time())) == held  # nothing bad was cached


async def test_with_nothing_cached_the_phone_waits_for_the_cloud_but_not_forever(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled="driver")
    cloud.set_fault("blackhole")
    start = time.perf_counter()
    with pytest.raises(KeyUnavailable) as info:
        await phone.run()
    # It waited for the cloud (a lower bound: waiting longer is fine); that the
    # wait was bounded is the deadline's own message below, naming DEADLINE.
    assert time.perf_counter() - start > DEADLINE * 0.9
    assert str(info.value) == (
        f"no credential is cached and the cloud is unreachable (no answer within {DEADLINE:g} s); "
        "this phone's key is not on the vehicle's whitelist: "
        "use an owner's phone to share a key, or the keycard"
    )
    assert isinstance(info.value.rejection, RejectedUnknownKey)
    assert info.value.cloud_error is not None and info.value.cloud_error.status == "blackhole"
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_a_whitelisted_phone_still_unlocks_when_the_cloud_fails(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled=None, whitelisted=Role.OWNER)
    cloud.set_fault("blackhole")
    outcome = await phone.run()
    assert (outcome.credential, outcome.cloud, outcome.ok) == ("whitelist", "blackhole", True)
    assert outcome.latency.cloud_wait is not None
    assert outcome.latency.cloud_wait > DEADLINE * 0.5  # it waited; bounded: the message
    assert outcome.message == (
        f"cloud unreachable (no answer within {DEADLINE:g} s); "
        "unlocked with this phone's whitelisted key"
    )
    cloud.set_fault("none")
    refused = await phone.run(Command.LOCK)  # not enrolled: the cloud says so at once
    assert (refused.credential, refused.cloud) == ("whitelist", "refused")
    # ... which is no news for a whitelisted phone, so the user is not told.
    assert refused.message == "locked with this phone's whitelisted key"


async def test_an_expired_cache_and_a_failing_cloud_give_both_reasons(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for()
    await phone.run()
    held = phone.cache().best(VIN, int(time.time()))
    assert held is not None
    cloud.set_fault("http-500")
    later = held.not_after + 2 * 3600 + 30  # the phone's clock: two hours past the window
    with pytest.raises(KeyUnavailable) as info:
        await phone.run(clock=lambda: later)
    assert str(info.value) == (
        "cached credential expired 2 h ago and the cloud is unreachable (HTTP 500); "
        "this phone's key is not on the vehicle's whitelist: "
        "use an owner's phone to share a key, or the keycard"
    )
    status = phone.cache().status(VIN, int(later))
    assert status.state is CacheState.EXPIRED


async def test_a_credential_the_vehicle_refuses_falls_back_to_the_whitelist(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    # The phone pinned an issuer the vehicle does not trust, and holds its credential.
    other_issuer = crypto.generate_private_key()
    phone = await make_phone_for(
        enrolled=None, whitelisted=Role.DRIVER, issuer=other_issuer.public_key()
    )
    now = int(time.time())
    foreign = issue_credential(
        other_issuer,
        vehicle_id=vehicle.owned.card.vehicle_id,
        holder_key=phone.keystore.public_key(),
        role=Role.DRIVER,
        not_before=now - 60,
        not_after=now + DEFAULT_VALIDITY,
        serial=1,
    )
    assert phone.cache().store(VIN, foreign, now)
    outcome = await phone.run(cloud=False)
    assert (outcome.credential, outcome.ok, outcome.lock_state) == (
        "whitelist",
        True,
        LockState.UNLOCKED,
    )
    assert outcome.message.startswith("the vehicle refused the credential (")
    assert outcome.message.endswith("; unlocked with this phone's whitelisted key")


async def test_a_credential_the_vehicle_refuses_without_whitelist_is_denied(
    make_phone_for: PhoneFactory, vehicle: Vehicle
) -> None:
    other_issuer = crypto.generate_private_key()
    phone = await make_phone_for(enrolled=None, issuer=other_issuer.public_key())
    now = int(time.time())
    foreign = issue_credential(
        other_issuer,
        vehicle_id=vehicle.owned.card.vehicle_id,
        holder_key=phone.keystore.public_key(),
        role=Role.DRIVER,
        not_before=now - 60,
        not_after=now + DEFAULT_VALIDITY,
        serial=1,
    )
    phone.cache().store(VIN, foreign, now)
    with pytest.raises(KeyUnavailable, match=r"^the vehicle refused the credential \(") as info:
        await phone.run(cloud=False)
    assert "no cloud is configured" in str(info.value)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_a_cloud_failure_never_delays_the_answer_of_a_whitelisted_cached_phone(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    """Owner phones may hold credentials too: the credential path is taken,
    and the whitelist role (owner) still applies."""
    phone = await make_phone_for(whitelisted=Role.OWNER)
    await phone.run()
    cloud.set_fault("slow:30")
    reported = Reported()
    outcome = await phone.run(Command.STATUS, on_result=reported)
    assert outcome.credential == "cache" and outcome.cloud == "blackhole"
    # Answered while the (30 s) cloud call was still out, so not waited for.
    assert reported.cloud == "pending" and outcome.latency.cloud_wait is None
    assert vehicle.executed()[-1].role is Role.OWNER


# --- a phone the vehicle whitelisted -----------------------------------------------------
async def test_a_phone_the_vehicle_whitelisted_does_not_wait_for_a_blackholed_cloud(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled=None, whitelisted=Role.DRIVER)
    assert not phone.keystore.whitelist_accepted(VIN)
    first = await phone.run()  # the cloud refuses at once (not enrolled): the whitelist
    assert (first.credential, first.ok) == ("whitelist", True)
    assert phone.keystore.whitelist_accepted(VIN)

    cloud.set_fault("blackhole")
    reported = Reported()
    outcome = await phone.run(Command.LOCK, on_result=reported)
    assert (outcome.credential, outcome.lock_state) == ("whitelist", LockState.LOCKED)
    # Connected at once: the answer came while the cloud call was still out ...
    assert reported.cloud == "pending" and outcome.latency.cloud_wait is None
    # ... and the refresh beside it gave up at the deadline.
    assert outcome.cloud == "blackhole"
    assert outcome.message == (
        f"cloud unreachable (no answer within {DEADLINE:g} s); "
        "locked with this phone's whitelisted key"
    )
    assert phone.keystore.whitelist_accepted(VIN)

    assert vehicle.store.remove_key(phone.keystore.key_id()) is not None
    with pytest.raises(KeyUnavailable) as info:
        await phone.run()
    assert isinstance(info.value.rejection, RejectedUnknownKey)
    assert str(info.value) == (
        f"no credential is cached and the cloud is unreachable (no answer within {DEADLINE:g} s); "
        "this phone's key is not on the vehicle's whitelist: "
        "use an owner's phone to share a key, or the keycard"
    )
    assert not phone.keystore.whitelist_accepted(VIN)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_a_phone_dropped_from_the_whitelist_gets_in_with_the_clouds_credential(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled=None, whitelisted=Role.DRIVER)
    phone.keystore.set_whitelist_accepted(VIN, True)
    vehicle.store.remove_key(phone.keystore.key_id())
    await vehicle.owned.enroll(phone.keystore.public_key(), "driver")
    outcome = await phone.run()
    assert (outcome.credential, outcome.ok) == ("cloud", True)
    assert outcome.message.startswith("unlocked with a credential fetched from the cloud")
    assert not phone.keystore.whitelist_accepted(VIN)
    assert vehicle.executed()[-1].credential_serial is not None
