"""Offline-first unlock, end to end: the vehicle_sim runtime on a virtual
radio trusting a real cloud's issuer key, phones driving it through bleak,
and the cloud failing in every way it can. Nothing is mocked.

The rule under test: a phone the cloud authorised earlier unlocks at BLE
speed whatever the cloud does; the cloud is waited for (bounded) only when
nothing valid is cached.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bumble.device import Device
from phone_cloud_testkit import VIN, Registered, make_phone, register, requests_sent

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import RunningCloud
from phone_client import (
    CacheState,
    CircuitBreaker,
    CommandOutcome,
    CredentialCache,
    KeyStore,
    KeyUnavailable,
    run_command,
)
from phone_client.cloud_client import CloudClient
from phone_client.trust import utc_text
from protocol import Command, LockState, Role, crypto
from protocol.credentials import DEFAULT_VALIDITY, issue_credential, revocation_id
from protocol.errors import RejectedCredentialNotYetValid, RejectedUnknownKey
from protocol.events import ClockCorrected, CommandExecuted, IssuerRotated, RevocationsUpdated
from vehicle_sim.display import ReportedEvent
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import FileVehicleStore, init_vehicle, open_store

TIMEOUT = 5.0
DEADLINE = 1.5  # the cloud's share of a command, in these tests


@dataclass
class Vehicle:
    owned: Registered
    store: FileVehicleStore
    runtime: VehicleRuntime
    device: Device
    events: list[ReportedEvent] = field(default_factory=list)

    def executed(self) -> list[CommandExecuted]:
        return [e for e in self.events if isinstance(e, CommandExecuted)]


@dataclass
class Phone:
    keystore: KeyStore
    radio: dict[str, Any]
    cloud_url: str

    async def run(
        self,
        command: Command = Command.UNLOCK,
        *,
        cloud: bool = True,
        on_result: Callable[[CommandOutcome], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> CommandOutcome:
        client = CloudClient(self.cloud_url, breaker=CircuitBreaker()) if cloud else None
        try:
            return await run_command(
                self.keystore,
                VIN,
                command,
                timeout=TIMEOUT,
                cloud=client,
                cloud_deadline=DEADLINE,
                on_result=on_result,
                clock=clock,
                **self.radio,
            )
        finally:
            if client is not None:
                await client.close()

    def cache(self) -> CredentialCache:
        return CredentialCache(self.keystore)


PhoneFactory = Callable[..., Awaitable[Phone]]


@pytest.fixture
def vehicle_wall_clock() -> Callable[[], float]:
    """The vehicle's wall clock (override by parametrizing ``vehicle_wall_clock``)."""
    return time.time


@pytest.fixture
async def vehicle(
    radio: VirtualRadio,
    cloud: RunningCloud,
    tmp_path: Path,
    vehicle_wall_clock: Callable[[], float],
) -> AsyncIterator[Vehicle]:
    card = init_vehicle(
        tmp_path / "vehicle",
        VIN,
        issuers=[cloud.issuer_public_key],
        wall_clock=vehicle_wall_clock,  # its persisted time floor too
    )
    owned = await register(cloud, card)
    store = open_store(tmp_path / "vehicle", wall_clock=vehicle_wall_clock)
    device = await radio.create_device("vehicle")
    events: list[ReportedEvent] = []
    runtime = VehicleRuntime(store, device, on_event=lambda _peer, event: events.append(event))
    await runtime.start()
    try:
        yield Vehicle(owned, store, runtime, device, events)
    finally:
        await runtime.stop()
        radio.remove_device(device)
        await device.power_off()
        store.close()


@pytest.fixture
async def make_phone_for(
    radio: VirtualRadio, vehicle: Vehicle, cloud: RunningCloud, tmp_path: Path
) -> AsyncIterator[PhoneFactory]:
    devices: list[Device] = []

    async def make(
        name: str = "phone",
        *,
        enrolled: str | None = "driver",
        whitelisted: Role | None = None,
        issuer: crypto.PublicKey | None = None,
    ) -> Phone:
        keystore = make_phone(
            tmp_path / name,
            vehicle.owned.card,
            issuer=issuer or cloud.issuer_public_key,
            cloud_url=cloud.url,
        )
        if enrolled is not None:
            await vehicle.owned.enroll(keystore.public_key(), enrolled)
        if whitelisted is not None:
            vehicle.store.add_key(keystore.public_key(), whitelisted)
        device = await radio.create_device(name)
        devices.append(device)
        radio_kwargs = {
            "client_kwargs": {"backend": BumbleBleakClient, "bumble_device": device, "mtu": 247},
            "scanner_kwargs": {"backend": BumbleBleakScanner, "bumble_device": device},
        }
        return Phone(keystore, radio_kwargs, cloud.url)

    yield make
    for device in devices:
        radio.remove_device(device)
        if device.powered_on:
            await device.power_off()


class Reported:
    """The outcome run_command reported as soon as the vehicle's answer was in."""

    def __init__(self) -> None:
        self.outcome: CommandOutcome | None = None

    def __call__(self, outcome: CommandOutcome) -> None:
        self.outcome = outcome

    @property
    def cloud(self) -> str | None:
        """The cloud refresh as it stood then: "pending" while it was still out."""
        return None if self.outcome is None else self.outcome.cloud


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


async def test_revocations_are_carried_to_the_vehicle_even_offline(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    courier = await make_phone_for("courier")
    stolen = crypto.generate_private_key().public_key()
    await vehicle.owned.enroll(stolen, "guest")
    await vehicle.owned.revoke(stolen)  # the cloud's list is at version 1
    async with CloudClient(cloud.url) as cc:  # the phone learns it while online
        deltas = await cc.revocation_deltas(0, cloud.issuers)
        credential = await cc.request_credential(courier.keystore, vehicle.owned.card)
    assert deltas
    cache = courier.cache()
    cache.store_deltas(deltas, cloud.issuers)
    cache.store(VIN, credential, int(time.time()))
    assert vehicle.store.revocation_version() == 0

    outcome = await courier.run(cloud=False)  # at the car, no network at all
    assert outcome.ok and outcome.credential == "cache" and outcome.cloud == "none"
    assert vehicle.store.revocation_version() == 1
    assert vehicle.store.is_key_revoked(crypto.key_id(stolen))
    assert vehicle.store.is_revoked(
        revocation_id(vehicle.owned.card.vehicle_id, crypto.key_id(stolen))
    )
    assert any(isinstance(e, RevocationsUpdated) for e in vehicle.events)
    assert courier.cache().vehicle_revocation_version(VIN) == 1


async def test_with_the_cloud_up_the_vehicle_gets_news_and_signed_time(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    phone = await make_phone_for()
    revoked = crypto.generate_private_key().public_key()
    await vehicle.owned.enroll(revoked, "guest")
    await vehicle.owned.revoke(revoked)
    outcome = await phone.run()
    assert outcome.ok and outcome.cloud == "up"
    assert vehicle.store.revocation_version() == 1
    assert any(isinstance(e, ClockCorrected) for e in vehicle.events)


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


async def test_an_issuer_rotation_is_carried_to_the_vehicle_and_pinned(
    make_phone_for: PhoneFactory, vehicle: Vehicle, cloud: RunningCloud
) -> None:
    old = cloud.issuer_public_key
    phone = await make_phone_for()
    assert (await phone.run()).ok  # caches a credential of the old key

    # The issuer rotates (as `phonekey cloud rotate-issuer` plus a restart would).
    rotation = cloud.state.db.rotate_issuer(int(time.time()))
    cloud.state.issuer = cloud.state.db.issuer_key()
    new = rotation.new_public_key

    # Its fresh credential does not verify yet; the cached one opens the car and
    # the phone hands over the rotation afterwards, then pins the new key.
    outcome = await phone.run(Command.LOCK)
    assert outcome.ok
    assert [e for e in vehicle.events if isinstance(e, IssuerRotated)] == [
        IssuerRotated(crypto.key_id(old), crypto.key_id(new))
    ]
    assert set(vehicle.store.issuer_keys()) == {crypto.key_id(old), crypto.key_id(new)}
    trust = phone.keystore.vehicle_trust(VIN)
    assert trust.issuer is not None and crypto.key_id(trust.issuer) == crypto.key_id(new)
    assert trust.previous_issuer is not None
    assert crypto.key_id(trust.previous_issuer) == crypto.key_id(old)

    # Next time the new key's credential verifies on both sides; nothing is re-sent.
    outcome = await phone.run()
    assert outcome.ok and outcome.cloud == "up"
    held = phone.cache().best(VIN, int(time.time()))
    assert held is not None and held.issuer_key_id == crypto.key_id(new)
    assert len([e for e in vehicle.events if isinstance(e, IssuerRotated)]) == 1
    assert vehicle.executed()[-1].credential_serial is not None
