"""A vehicle (the real runtime, GATT server and flash store) and phones on one
bumble VirtualRadio, driven through bleak's public API: for the fast-path,
share and management tests here and the bleak unlock tests in tests/e2e.

(Named apart from the other test helpers: test directories have no
__init__.py, so helper module names must be unique across them. tests/e2e
imports it as ``tests.phone_client.phone_issue4_rig``, because this directory
is only on sys.path once pytest has collected a test from it; a whole run then
holds two copies of the module, which is harmless as it keeps no state.)

``VehicleConnection`` instances the GATT server makes are recorded (a
subclass that only observes) so tests can read each session's ``crypto_ops``.

The fixtures at the end (``sessions``, ``radio``, ``vehicle``, ``make_phone``)
are the usual set-up; the conftest.py of each directory that uses them
registers them, and a test module that needs another vehicle defines its own
fixture of the same name.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bumble.device import Device

import vehicle_sim.gatt_server as gatt_server
from ble_stack.bleak_backend import DEFAULT_MTU, BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from phone_client import CommandOutcome, KeyStore, PhoneKey, run_command
from phone_client.manage import Manager
from phone_client.share_book import ShareBook
from protocol import Command, Role, VehicleConnection
from protocol.card import VehicleCard
from protocol.events import CommandExecuted
from vehicle_sim.display import ReportedEvent
from vehicle_sim.runtime import FirmwareOptions, VehicleRuntime
from vehicle_sim.state_store import FileVehicleStore, init_vehicle, open_store

VIN = "1HGCM82633A004352"
TIMEOUT = 5.0


class RecordedConnections(list[VehicleConnection]):
    """Every VehicleConnection the vehicle's GATT server made, in order."""


def record_connections(monkeypatch: pytest.MonkeyPatch) -> RecordedConnections:
    made = RecordedConnections()

    class Recording(VehicleConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(gatt_server, "VehicleConnection", Recording)
    return made


@dataclass
class Vehicle:
    card: VehicleCard
    store: FileVehicleStore
    runtime: VehicleRuntime
    device: Device
    sessions: RecordedConnections
    events: list[ReportedEvent] = field(default_factory=list)

    def executed(self) -> list[CommandExecuted]:
        return [e for e in self.events if isinstance(e, CommandExecuted)]

    def open_window(self, seconds: float = 30.0) -> None:
        """What a keycard tap does: open the enrollment window."""
        self.runtime.window.open(seconds, bytes(16))


@asynccontextmanager
async def running_vehicle(
    radio: VirtualRadio,
    state_dir: Path,
    sessions: RecordedConnections,
    *,
    options: FirmwareOptions | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Vehicle]:
    card = init_vehicle(state_dir, VIN, wall_clock=wall_clock)
    store = open_store(state_dir, wall_clock=wall_clock)
    device = await radio.create_device("vehicle")
    events: list[ReportedEvent] = []
    runtime = VehicleRuntime(
        store, device, on_event=lambda _peer, event: events.append(event), options=options
    )
    await runtime.start()
    try:
        yield Vehicle(card, store, runtime, device, sessions, events)
    finally:
        await runtime.stop()
        radio.remove_device(device)
        await device.power_off()
        store.close()


@dataclass
class Phone:
    """A phone's key store and its own bumble device, seen by bleak through
    ble_stack's backends (as the phone app would see the OS adapter)."""

    keystore: KeyStore
    device: Device
    mtu: int = DEFAULT_MTU

    @property
    def client_kwargs(self) -> dict[str, Any]:
        return {"backend": BumbleBleakClient, "bumble_device": self.device, "mtu": self.mtu}

    @property
    def scanner_kwargs(self) -> dict[str, Any]:
        return {"backend": BumbleBleakScanner, "bumble_device": self.device}

    async def run(
        self, command: Command = Command.UNLOCK, *, timeout: float = TIMEOUT
    ) -> CommandOutcome:
        return await run_command(
            self.keystore,
            VIN,
            command,
            timeout=timeout,
            client_kwargs=self.client_kwargs,
            scanner_kwargs=self.scanner_kwargs,
        )

    def central(self, **kwargs: Any) -> PhoneKey:
        return PhoneKey(
            self.keystore,
            client_kwargs=self.client_kwargs,
            scanner_kwargs=self.scanner_kwargs,
            **kwargs,
        )

    def manager(self) -> Manager:
        return Manager(
            self.keystore,
            timeout=TIMEOUT,
            client_kwargs=self.client_kwargs,
            scanner_kwargs=self.scanner_kwargs,
        )

    def shares(self) -> ShareBook:
        return ShareBook(self.keystore)

    @property
    def key_id(self) -> bytes:
        return self.keystore.key_id()


PhoneFactory = Callable[..., Awaitable[Phone]]


@asynccontextmanager
async def phone_factory(
    radio: VirtualRadio, vehicle: Vehicle, home: Path
) -> AsyncIterator[PhoneFactory]:
    devices: list[Device] = []

    async def make(
        name: str = "phone",
        *,
        role: Role | None = Role.OWNER,
        card: bool = True,
        mtu: int = DEFAULT_MTU,
    ) -> Phone:
        """A phone with a fresh key, holding the vehicle's card (``card``) and
        on its whitelist as ``role`` (``None``: not on it)."""
        keystore = KeyStore(home / name)
        keystore.keygen()
        if card:
            keystore.add_vehicle(vehicle.card)
        if role is not None:
            vehicle.store.add_key(keystore.public_key(), role)
        device = await radio.create_device(name)
        devices.append(device)
        return Phone(keystore, device, mtu)

    try:
        yield make
    finally:
        for device in devices:
            radio.remove_device(device)
            if device.powered_on:
                await device.power_off()


# --- fixtures: one vehicle on a fresh radio, phones made on demand -------------------
@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> RecordedConnections:
    return record_connections(monkeypatch)


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    yield VirtualRadio()


@pytest.fixture
async def vehicle(
    radio: VirtualRadio, tmp_path: Path, sessions: RecordedConnections
) -> AsyncIterator[Vehicle]:
    async with running_vehicle(radio, tmp_path / "vehicle", sessions) as running:
        yield running


@pytest.fixture
async def make_phone(
    radio: VirtualRadio, vehicle: Vehicle, tmp_path: Path
) -> AsyncIterator[PhoneFactory]:
    async with phone_factory(radio, vehicle, tmp_path) as make:
        yield make
