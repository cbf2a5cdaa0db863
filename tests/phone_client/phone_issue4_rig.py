"""A vehicle (the real runtime, GATT server and flash store) and phones on one
bumble VirtualRadio, for the fast-path, share and management tests.

(Named apart from the other test helpers: test directories have no
__init__.py, so helper module names must be unique across them.)

``VehicleConnection`` instances the GATT server makes are recorded (a
subclass that only observes) so tests can read each session's ``crypto_ops``.
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
from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
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
    keystore: KeyStore
    radio: dict[str, Any]

    async def run(self, command: Command = Command.UNLOCK) -> CommandOutcome:
        return await run_command(self.keystore, VIN, command, timeout=TIMEOUT, **self.radio)

    def central(self) -> PhoneKey:
        return PhoneKey(self.keystore, **self.radio)

    def manager(self) -> Manager:
        return Manager(self.keystore, timeout=TIMEOUT, **self.radio)

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
        name: str = "phone", *, role: Role | None = Role.OWNER, card: bool = True
    ) -> Phone:
        keystore = KeyStore(home / name)
        keystore.keygen()
        if card:
            keystore.add_vehicle(vehicle.card)
        if role is not None:
            vehicle.store.add_key(keystore.public_key(), role)
        device = await radio.create_device(name)
        devices.append(device)
        return Phone(
            keystore,
            {
                "client_kwargs": {"backend": BumbleBleakClient, "bumble_device": device},
                "scanner_kwargs": {"backend": BumbleBleakScanner, "bumble_device": device},
            },
        )

    try:
        yield make
    finally:
        for device in devices:
            radio.remove_device(device)
            if device.powered_on:
                await device.power_off()
