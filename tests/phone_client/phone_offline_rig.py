"""The rig of the offline-first unlock tests (test_phone_offline_*.py): a vehicle
(the vehicle_sim runtime and flash store on the virtual radio) registered with a
real cloud and trusting its issuer key, phones that run commands through bleak
with that cloud (or none) and a bounded cloud deadline, and a recorder of the
outcome reported as soon as the vehicle answered.

The fixtures (``vehicle_wall_clock``, ``vehicle``, ``make_phone_for``) are
imported by each test module that uses them: ``vehicle`` here replaces the one
the directory's conftest.py takes from phone_issue4_rig. Their functions are
named apart from the fixtures, so a test's argument does not shadow the import.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bumble.device import Device
from phone_cloud_testkit import VIN, Registered, make_phone, register

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import RunningCloud
from phone_client import CircuitBreaker, CommandOutcome, CredentialCache, KeyStore, run_command
from phone_client.cloud_client import CloudClient
from protocol import Command, Role, crypto
from protocol.events import CommandExecuted
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


@pytest.fixture(name="vehicle_wall_clock")
def vehicle_wall_clock_fixture() -> Callable[[], float]:
    """The vehicle's wall clock (override by parametrizing ``vehicle_wall_clock``)."""
    return time.time


@pytest.fixture(name="vehicle")
async def vehicle_fixture(
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


@pytest.fixture(name="make_phone_for")
async def make_phone_for_fixture(
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
