"""Offline-first unlock, end to end, with a vehicle whose clock is three weeks
late: the phone corrects it with issuer-signed time when the cloud is up, and
names both causes (or falls back to the whitelist) when it is not."""

from __future__ import annotations

import time

import pytest
from phone_cloud_testkit import VIN, requests_sent
from phone_offline_rig import (  # noqa: F401  (fixtures are found by name)
    DEADLINE,
    Phone,
    PhoneFactory,
    Vehicle,
    make_phone_for_fixture,
    vehicle_fixture,
    vehicle_wall_clock_fixture,
)

from cloud_sim.server import RunningCloud
from phone_client import KeyUnavailable
from phone_client.cloud_client import CloudClient
from phone_client.trust import utc_text
from protocol import LockState, Role
from protocol.errors import RejectedCredentialNotYetValid, RejectedUnknownKey
from protocol.events import ClockCorrected

# --- a vehicle whose clock is wrong ------------------------------------------------------
THREE_WEEKS = 21 * 24 * 3600


def three_weeks_late() -> float:
    """A vehicle clock three weeks behind: every fresh credential is 'not yet valid'."""
    return time.time() - THREE_WEEKS


def clock_error(vehicle: Vehicle) -> float:
    return vehicle.store.now() - time.time()


async def cache_a_credential(phone: Phone, vehicle: Vehicle, cloud: RunningCloud) -> int:
    """Fetch and cache the phone's credential out of band; its not_after."""
    async with CloudClient(cloud.url) as cc:
        credential = await cc.request_credential(phone.keystore, vehicle.owned.card)
    assert phone.cache().store(VIN, credential, int(time.time()))
    return credential.not_after


@pytest.mark.parametrize("vehicle_wall_clock", [three_weeks_late])
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "fetched"])
async def test_a_vehicle_clock_that_refuses_the_credential_is_corrected_with_signed_time(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud, cached: bool
) -> None:
    assert clock_error(vehicle) < -THREE_WEEKS + 60
    phone = await make_phone_for(enrolled="driver")  # not on the whitelist: credential only
    not_after = await cache_a_credential(phone, vehicle, cloud) if cached else None
    outcome = await phone.run()
    assert (outcome.ok, outcome.lock_state) == (True, LockState.UNLOCKED)
    assert vehicle.store.lock_state() is LockState.UNLOCKED
    corrected = [e for e in vehicle.events if isinstance(e, ClockCorrected)]
    assert corrected and corrected[0].before < time.time() - THREE_WEEKS + 60
    assert abs(clock_error(vehicle)) < 60
    assert vehicle.executed()[-1].credential_serial is not None  # the credential, not a whitelist
    prefix = "the vehicle's clock was wrong; corrected it with issuer-signed time, then "
    if cached:
        assert outcome.credential == "cache"
        assert outcome.message.startswith(
            f"{prefix}unlocked with cached credential valid until {utc_text(not_after or 0)}"
        )
    else:
        assert outcome.credential == "cloud"
        assert outcome.message == (
            f"{prefix}unlocked with a credential fetched from the cloud, "
            f"valid until {utc_text(outcome.credential_not_after or 0)}"
        )


@pytest.mark.parametrize("vehicle_wall_clock", [three_weeks_late])
async def test_a_wrong_vehicle_clock_without_a_cloud_to_correct_it_denies_naming_both(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled="driver")
    await cache_a_credential(phone, vehicle, cloud)
    advice = (
        "; this phone's key is not on the vehicle's whitelist: "
        "use an owner's phone to share a key, or the keycard"
    )
    refused = (
        "the vehicle refused the credential (the vehicle says the credential is not valid yet): "
        "the vehicle's clock may be wrong"
    )

    with pytest.raises(KeyUnavailable) as offline:
        await phone.run(cloud=False)
    assert str(offline.value) == f"{refused} and no cloud is configured to correct it{advice}"

    cloud.set_fault("blackhole")
    with requests_sent() as sent:
        with pytest.raises(KeyUnavailable) as info:
            await phone.run()
    # One bounded try at the cloud for signed time, not more (bounded: the
    # deadline's message below).
    assert sum("/v1/time" in request for request in sent) == 1
    assert str(info.value) == (
        f"{refused} and the cloud is unreachable (no answer within {DEADLINE:g} s) "
        f"to correct it{advice}"
    )
    assert isinstance(info.value.rejection, RejectedUnknownKey)
    assert info.value.cloud_error is not None and info.value.cloud_error.status == "blackhole"
    assert clock_error(vehicle) < -THREE_WEEKS + 60  # still wrong
    assert not any(isinstance(e, ClockCorrected) for e in vehicle.events)
    assert vehicle.store.lock_state() is LockState.LOCKED


@pytest.mark.parametrize("vehicle_wall_clock", [three_weeks_late])
async def test_a_wrong_vehicle_clock_and_a_blackholed_cloud_leave_the_whitelist(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for(enrolled="driver", whitelisted=Role.DRIVER)
    await cache_a_credential(phone, vehicle, cloud)
    cloud.set_fault("blackhole")
    outcome = await phone.run()
    assert (outcome.credential, outcome.ok) == ("whitelist", True)
    assert outcome.message == (
        "the vehicle refused the credential (the vehicle says the credential is not valid yet): "
        "the vehicle's clock may be wrong and the cloud is unreachable "
        f"(no answer within {DEADLINE:g} s) to correct it; "
        "unlocked with this phone's whitelisted key"
    )


def test_the_clock_refusals_are_the_ones_a_wrong_clock_explains() -> None:
    from phone_client.cloud_sync import is_clock_refusal
    from protocol.errors import (
        RejectedCredential,
        RejectedCredentialExpired,
        RejectedCredentialRevoked,
    )

    assert is_clock_refusal(RejectedCredentialNotYetValid())
    assert is_clock_refusal(RejectedCredentialExpired())
    assert not is_clock_refusal(RejectedCredential())
    assert not is_clock_refusal(RejectedCredentialRevoked())
