"""bleak's public API over the bumble backend, against a real bumble GATT server."""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

import pytest
from ble_testkit import (
    ADV_PAYLOAD,
    CCCD_UUID,
    EVENT_INITIAL_VALUE,
    USER_DESCRIPTION_UUID,
    VEHICLE_NAME,
    EchoPeripheral,
    find_vehicle,
    wait_for,
)
from bleak import BleakClient, BleakScanner
from bleak.backends import BleakBackend
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError, BleakGATTProtocolErrorCode
from bumble import hci
from bumble.device import Device

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner, find_device_by_filter
from ble_stack.bleak_client import bumble_backend_of, disconnect_reason
from ble_stack.uuids import (
    ADV_COMPANY_ID,
    COMMAND_CHAR_UUID,
    EVENT_CHAR_UUID,
    PHONEKEY_SERVICE_UUID,
)
from ble_stack.virtual_link import VirtualRadio


def client_for(target: BLEDevice | str, phone: Device, **kwargs: Any) -> BleakClient:
    return BleakClient(target, backend=BumbleBleakClient, bumble_device=phone, timeout=5, **kwargs)


async def test_scanner_finds_vehicle_by_service_uuid_and_manufacturer_data(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    found = await find_vehicle(phone)
    assert found.address == vehicle.address
    assert found.name == VEHICLE_NAME


async def test_typed_find_helper_finds_and_times_out(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    found = await find_device_by_filter(
        lambda _d, ad: ad.local_name == VEHICLE_NAME, bumble_device=phone, timeout=2
    )
    assert found is not None and found.address == vehicle.address
    nothing = await find_device_by_filter(lambda _d, _a: False, bumble_device=phone, timeout=0.1)
    assert nothing is None


async def test_advertisement_data_merges_scan_response_without_duplicates(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    seen: list[AdvertisementData] = []

    def on_adv(_device: BLEDevice, adv: AdvertisementData) -> None:
        seen.append(adv)

    async with BleakScanner(on_adv, backend=BumbleBleakScanner, bumble_device=phone):
        async with asyncio.timeout(2):
            while not any(adv.local_name for adv in seen):
                await asyncio.sleep(0.01)
    last = seen[-1]
    # The name only travels in the scan response; the rest in the advertisement.
    assert last.local_name == VEHICLE_NAME
    assert last.service_uuids == [PHONEKEY_SERVICE_UUID]
    assert last.manufacturer_data == {ADV_COMPANY_ID: ADV_PAYLOAD}
    assert last.service_data == {}
    assert last.tx_power is None
    assert last.rssi == -50


async def test_service_uuid_filter_drops_other_advertisers(
    radio: VirtualRadio, phone: Device, vehicle: EchoPeripheral
) -> None:
    other = await radio.create_device("other")
    await other.power_on()
    await other.start_advertising(
        advertising_data=bytes([0x06, 0x09]) + b"Other", advertising_interval_min=20
    )
    unfiltered: set[str | None] = set()
    filtered: set[str | None] = set()
    async with (
        BleakScanner(
            lambda _d, ad: unfiltered.add(ad.local_name),
            backend=BumbleBleakScanner,
            bumble_device=phone,
        ),
    ):
        await asyncio.sleep(0.2)
    async with BleakScanner(
        lambda _d, ad: filtered.add(ad.local_name),
        service_uuids=[PHONEKEY_SERVICE_UUID.upper()],
        backend=BumbleBleakScanner,
        bumble_device=phone,
    ):
        await asyncio.sleep(0.2)
    radio.remove_device(other)
    assert {"Other", VEHICLE_NAME} <= unfiltered
    assert "Other" not in filtered
    assert VEHICLE_NAME in filtered


async def test_services_are_discovered_with_bleak_properties(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    async with client_for(await find_vehicle(phone), phone) as client:
        service = client.services.get_service(PHONEKEY_SERVICE_UUID)
        assert service is not None
        assert service.uuid == PHONEKEY_SERVICE_UUID
        command = service.get_characteristic(COMMAND_CHAR_UUID)
        event = service.get_characteristic(EVENT_CHAR_UUID)
        assert command is not None and event is not None
        assert command.uuid == COMMAND_CHAR_UUID
        assert sorted(command.properties) == ["write", "write-without-response"]
        assert sorted(event.properties) == ["notify", "read"]
        cccd = event.get_descriptor(CCCD_UUID)
        assert cccd is not None
        assert client.services.get_descriptor(cccd.handle) is cccd
        # bumble's own GAP and GATT services are there too, with 128-bit UUIDs.
        assert client.services.get_service("1800") is not None


@pytest.mark.parametrize("response", [True, False])
async def test_write_is_echoed_reversed_as_notification(
    phone: Device, vehicle: EchoPeripheral, response: bool
) -> None:
    received: asyncio.Queue[tuple[str, bytearray]] = asyncio.Queue()

    def on_event(sender: BleakGATTCharacteristic, data: bytearray) -> None:
        received.put_nowait((sender.uuid, data))

    async with client_for(await find_vehicle(phone), phone) as client:
        await client.start_notify(EVENT_CHAR_UUID, on_event)
        await client.write_gatt_char(COMMAND_CHAR_UUID, b"unlock", response=response)
        async with asyncio.timeout(2):
            sender, data = await received.get()
        assert (sender, data) == (EVENT_CHAR_UUID, bytearray(b"kcolnu"))
        assert isinstance(data, bytearray)
        assert vehicle.writes == [b"unlock"]

        await client.stop_notify(EVENT_CHAR_UUID)
        await client.write_gatt_char(COMMAND_CHAR_UUID, b"again", response=True)
        await asyncio.sleep(0.05)
        assert received.empty()


async def test_async_notify_callback_is_supported(phone: Device, vehicle: EchoPeripheral) -> None:
    got = asyncio.Event()

    async def on_event(_sender: BleakGATTCharacteristic, data: bytearray) -> None:
        if data == b"ba":
            got.set()

    async with client_for(await find_vehicle(phone), phone) as client:
        await client.start_notify(EVENT_CHAR_UUID, on_event)
        await client.write_gatt_char(COMMAND_CHAR_UUID, b"ab", response=False)
        await wait_for(got)


async def test_reads_descriptors_and_protocol_errors(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    async with client_for(await find_vehicle(phone), phone) as client:
        assert await client.read_gatt_char(EVENT_CHAR_UUID) == EVENT_INITIAL_VALUE
        event = client.services.get_characteristic(EVENT_CHAR_UUID)
        assert event is not None
        cccd = event.get_descriptor(CCCD_UUID)
        description = event.get_descriptor(USER_DESCRIPTION_UUID)
        assert cccd is not None and description is not None
        assert await client.read_gatt_descriptor(cccd.handle) == b"\x00\x00"
        await client.start_notify(event, lambda _s, _d: None)
        assert await client.read_gatt_descriptor(cccd.handle) == b"\x01\x00"
        await client.stop_notify(event)
        assert await client.read_gatt_descriptor(cccd.handle) == b"\x00\x00"
        assert await client.read_gatt_descriptor(description) == b"events"
        await client.write_gatt_descriptor(description, b"renamed")
        assert await client.read_gatt_descriptor(description) == b"renamed"
        # (bumble's GATT server does not check write permissions, so an
        # error has to come from the application's write handler.)
        with pytest.raises(BleakGATTProtocolError) as raised:
            await client.write_gatt_char(COMMAND_CHAR_UUID, b"", response=True)
        assert raised.value.args[0] == BleakGATTProtocolErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH
        with pytest.raises(BleakError):
            await client.start_notify(COMMAND_CHAR_UUID, lambda _s, _d: None)


@pytest.mark.parametrize(
    ("kwargs", "expected"), [({}, 247), ({"mtu": 23}, 23), ({"mtu": 100}, 100)]
)
async def test_mtu_negotiation(
    phone: Device, vehicle: EchoPeripheral, kwargs: dict[str, int], expected: int
) -> None:
    async with client_for(await find_vehicle(phone), phone, **kwargs) as client:
        assert client.mtu_size == expected
        command = client.services.get_characteristic(COMMAND_CHAR_UUID)
        assert command is not None
        assert command.max_write_without_response_size == expected - 3
        # A full-size write without response still round-trips.
        got = asyncio.Event()
        await client.start_notify(EVENT_CHAR_UUID, lambda _s, _d: got.set())
        await client.write_gatt_char(command, bytes(expected - 3), response=False)
        await wait_for(got)
        with pytest.raises(BleakError):
            await client.write_gatt_char(command, bytes(expected - 2), response=False)


async def test_disconnected_callback_fires_when_vehicle_disconnects(
    phone: Device, vehicle: EchoPeripheral
) -> None:
    dropped = asyncio.Event()
    client = client_for(
        await find_vehicle(phone), phone, disconnected_callback=lambda _c: dropped.set()
    )
    assert disconnect_reason(client) is None  # never connected, never dropped
    await client.connect()
    assert client.is_connected
    (connection,) = vehicle.device.connections.values()
    await connection.disconnect()
    await wait_for(dropped)
    assert not client.is_connected
    assert disconnect_reason(client) == hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR
    with pytest.raises(BleakError):
        await client.write_gatt_char(COMMAND_CHAR_UUID, b"x", response=True)
    await client.disconnect()  # a no-op once the link is gone


@pytest.mark.parametrize(
    ("supervision_timeout", "reason"),
    [
        (None, hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR),
        (0.05, hci.HCI_CONNECTION_TIMEOUT_ERROR),  # a crash: the phone's link times out
    ],
)
async def test_disconnected_callback_fires_when_vehicle_radio_vanishes(
    radio: VirtualRadio,
    phone: Device,
    vehicle: EchoPeripheral,
    supervision_timeout: float | None,
    reason: int,
) -> None:
    dropped = asyncio.Event()
    client = client_for(
        await find_vehicle(phone), phone, disconnected_callback=lambda _c: dropped.set()
    )
    await client.connect()
    radio.remove_device(vehicle.device, supervision_timeout=supervision_timeout)
    await wait_for(dropped)
    assert not client.is_connected
    assert disconnect_reason(client) == reason


async def test_bleak_still_keeps_the_backend_where_disconnect_reason_reads_it(
    phone: Device,
) -> None:
    """bleak offers no public way to a BleakClient's backend (see
    ble_stack.bleak_client.bumble_backend_of). If this fails after a bleak
    upgrade, bleak moved it: find the new place and update that function, or
    disconnect_reason answers None and the phone never says the vehicle went away."""
    client = client_for("F0:F1:F2:F3:F4:F5", phone)
    backend = getattr(client, "_backend", None)
    assert isinstance(backend, BumbleBleakClient), (
        f"bleak {importlib.metadata.version('bleak')} keeps no BumbleBleakClient in "
        f"BleakClient._backend (found {backend!r})"
    )
    assert client.backend_id == BumbleBleakClient.__name__
    assert bumble_backend_of(client) is backend


def test_bleaks_own_backends_are_not_looked_into() -> None:
    class OnBlueZ:
        backend_id = BleakBackend.BLUEZ_DBUS
        _backend = object()  # never read

    assert bumble_backend_of(OnBlueZ()) is None
    assert disconnect_reason(object()) is None


async def test_client_disconnect_also_reports(phone: Device, vehicle: EchoPeripheral) -> None:
    dropped = asyncio.Event()
    client = client_for(
        await find_vehicle(phone), phone, disconnected_callback=lambda _c: dropped.set()
    )
    await client.connect()
    await client.disconnect()
    assert dropped.is_set()
    assert not client.is_connected
    assert client.mtu_size == 23
    # and the same client object can connect again
    await client.connect()
    assert client.is_connected
    await client.disconnect()


async def test_connect_timeout_then_connect_works(
    phone: Device, vehicle: EchoPeripheral, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attempt is bounded by the client's own timeout, handed to bumble
    # (which cancels the attempt itself), and reported as such: no wall clock.
    asked: list[object] = []
    real_connect = phone.connect

    async def spy_connect(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("timeout"))
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(phone, "connect", spy_connect)
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        await BleakClient(
            "C1:22:33:44:55:66", backend=BumbleBleakClient, bumble_device=phone, timeout=0.2
        ).connect()
    assert asked == [0.2]
    # The virtual controller really dropped the attempt: a new one succeeds.
    async with client_for(vehicle.address, phone) as client:
        assert client.is_connected


async def test_two_centrals_racing_for_one_advertisement(
    radio: VirtualRadio, phone: Device, vehicle: EchoPeripheral
) -> None:
    other_phone = await radio.create_device("other phone")
    try:
        clients = [client_for(vehicle.address, device) for device in (phone, other_phone)]
        outcomes = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
        # One wins; the loser is told its link failed (0x3E) instead of hanging.
        assert sorted(type(o).__name__ for o in outcomes) == ["BleakError", "NoneType"]
        winner, loser = clients if outcomes[0] is None else clients[::-1]
        assert winner.is_connected and not loser.is_connected
        await winner.disconnect()
        await loser.connect()  # the vehicle advertises again and the loser gets in
        assert loser.is_connected
        await loser.disconnect()
    finally:
        radio.remove_device(other_phone)


async def test_pairing_is_refused_clearly(phone: Device, vehicle: EchoPeripheral) -> None:
    async with client_for(await find_vehicle(phone), phone) as client:
        with pytest.raises(NotImplementedError, match="does not pair"):
            await client.pair()
        with pytest.raises(NotImplementedError):
            await client.unpair()
