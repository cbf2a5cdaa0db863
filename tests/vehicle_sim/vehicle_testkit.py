"""Shared pieces of the vehicle_sim tests: a vehicle's state, a running vehicle on a
virtual radio, and phones that are plain bumble centrals driving
``protocol.PhoneConnection`` (no bleak). The fixtures are registered by conftest.py;
tests import constants and helpers from here by this unique module name."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bumble import hci
from bumble.core import UUID
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy

import phonekey.cli
from ble_stack.advertising import AdvertisementFields, parse_ad_structures
from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID, PHONEKEY_SERVICE_UUID
from ble_stack.virtual_link import VirtualRadio
from protocol import Command, PhoneConnection, ProtocolError, Role, crypto
from protocol.card import VehicleCard
from protocol.events import PhoneEvent
from vehicle_sim.advertising import parse_advertised_tag
from vehicle_sim.display import ReportedEvent
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import FileVehicleStore, init_vehicle, open_store

VIN = "1HGCM82633A004352"
STEP_TIMEOUT = 5.0


@pytest.fixture
def vehicle_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """``phonekey.cli.main`` with only the vehicle subcommands registered, so
    these tests do not depend on the other packages' CLIs."""
    monkeypatch.setattr(phonekey.cli, "_SUBCOMMANDS", {"vehicle": "vehicle_sim.cli"})
    return phonekey.cli.main


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "vehicle"


@pytest.fixture
def card(state_dir: Path) -> VehicleCard:
    return init_vehicle(state_dir, VIN)


@pytest.fixture
def store(card: VehicleCard, state_dir: Path) -> Iterator[FileVehicleStore]:
    with open_store(state_dir) as opened:
        yield opened


@pytest.fixture
async def radio() -> VirtualRadio:
    return VirtualRadio()


@dataclass
class RunningVehicle:
    store: FileVehicleStore
    device: Device
    runtime: VehicleRuntime
    seen: list[tuple[str, ReportedEvent]] = field(default_factory=list)


@pytest.fixture
async def vehicle(radio: VirtualRadio, store: FileVehicleStore) -> AsyncIterator[RunningVehicle]:
    device = await radio.create_device("vehicle")
    seen: list[tuple[str, ReportedEvent]] = []
    runtime = VehicleRuntime(store, device, on_event=lambda peer, e: seen.append((peer, e)))
    await runtime.start()
    try:
        yield RunningVehicle(store, device, runtime, seen)
    finally:
        await runtime.stop()
        radio.remove_device(device)
        await device.power_off()


class BlePhone:
    """A phone as a bare bumble central: GATT by hand, protocol via PhoneConnection."""

    def __init__(self, device: Device, key: crypto.PrivateKey, card: VehicleCard) -> None:
        self.device = device
        self.key = key
        self.card = card
        self.counter = 0
        self.events: asyncio.Queue[PhoneEvent | ProtocolError] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.connection: Connection | None = None
        self.protocol: PhoneConnection | None = None
        self._command: CharacteristicProxy[bytes] | None = None
        self._peer: Peer | None = None

    @property
    def key_id(self) -> bytes:
        return crypto.key_id(self.key.public_key())

    async def scan_for(self, vin: str) -> hci.Address:
        """The address of the phonekey vehicle advertising (these rigs run one vehicle:
        its rotating tag names no VIN, so ``vin`` is only for the reader)."""
        found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()

        def on_advertisement(advertisement: Advertisement) -> None:
            fields = AdvertisementFields.from_ad_structures(
                parse_ad_structures(advertisement.data_bytes)
            )
            if parse_advertised_tag(fields.manufacturer_data) and not found.done():
                found.set_result(advertisement.address)

        self.device.on("advertisement", on_advertisement)
        await self.device.start_scanning(filter_duplicates=True)
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                return await found
        finally:
            self.device.remove_listener("advertisement", on_advertisement)
            await self.device.stop_scanning()

    async def connect(self, address: hci.Address, *, mtu: int | None = 247) -> None:
        async with asyncio.timeout(STEP_TIMEOUT):
            self.connection = await self.device.connect(address)
        self.connection.on("disconnection", lambda _reason: self.disconnected.set())
        peer = self._peer = Peer(self.connection)
        att_mtu = await peer.request_mtu(mtu) if mtu is not None else 23
        self.protocol = PhoneConnection(
            self.key, self.card.public_key, clock=time.monotonic, rng=os.urandom, att_mtu=att_mtu
        )
        await peer.discover_services([UUID(PHONEKEY_SERVICE_UUID)])
        service = peer.get_services_by_uuid(UUID(PHONEKEY_SERVICE_UUID))[0]
        await service.discover_characteristics()
        self._command = service.get_characteristics_by_uuid(UUID(COMMAND_CHAR_UUID))[0]
        event = service.get_characteristics_by_uuid(UUID(EVENT_CHAR_UUID))[0]
        await peer.subscribe(event, self._on_notification)

    def _on_notification(self, frame: bytes) -> None:
        assert self.protocol is not None
        try:
            self.protocol.receive_data(frame)
            while (event := self.protocol.next_event()) is not None:
                self.events.put_nowait(event)
        except ProtocolError as exc:
            self.events.put_nowait(exc)

    async def next_event(self) -> PhoneEvent | ProtocolError:
        async with asyncio.timeout(STEP_TIMEOUT):
            return await self.events.get()

    async def write_frames(self) -> None:
        assert self.protocol is not None
        for frame in self.protocol.data_to_send():
            await self.write_raw(frame)

    async def write_raw(self, frame: bytes, *, with_response: bool = False) -> None:
        assert self._peer is not None and self._command is not None
        await self._peer.write_value(self._command, frame, with_response=with_response)

    async def send(self, command: Command) -> None:
        assert self.protocol is not None
        self.counter += 1
        self.protocol.send_command(command, self.counter)
        await self.write_frames()

    async def disconnect(self) -> None:
        if self.connection is not None and not self.disconnected.is_set():
            await self.connection.disconnect()


PhoneFactory = Callable[..., Awaitable[BlePhone]]


@pytest.fixture
async def make_phone(
    radio: VirtualRadio, card: VehicleCard, store: FileVehicleStore
) -> AsyncIterator[PhoneFactory]:
    """``await make_phone(role=Role.OWNER)`` -> a powered phone whose key is
    whitelisted with ``role`` (None: not whitelisted)."""
    devices: list[Device] = []

    async def make(name: str = "phone", *, role: Role | None = Role.OWNER) -> BlePhone:
        key = crypto.generate_private_key()
        if role is not None:
            store.add_key(key.public_key(), role)
        device = await radio.create_device(name)
        devices.append(device)
        await device.power_on()
        return BlePhone(device, key, card)

    yield make
    for device in devices:
        radio.remove_device(device)
        await device.power_off()
