"""Helpers shared by the ble_stack tests: a tiny vehicle GATT server and scan helpers.

Real bumble stacks on a virtual link; nothing is mocked.
"""

from __future__ import annotations

import asyncio

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bumble import att
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Descriptor, Service

from ble_stack.advertising import build_advertisement
from ble_stack.bleak_backend import BumbleBleakScanner
from ble_stack.uuids import (
    ADV_COMPANY_ID,
    COMMAND_CHAR_UUID,
    EVENT_CHAR_UUID,
    PHONEKEY_SERVICE_UUID,
)

ADV_PAYLOAD = b"\x01\x02"
VEHICLE_NAME = "Vehicle-1"
EVENT_INITIAL_VALUE = b"ready"
USER_DESCRIPTION_UUID = "00002901-0000-1000-8000-00805f9b34fb"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"


class EchoPeripheral:
    """A tiny vehicle-like GATT server.

    Writes to the command characteristic (with or without response) come back
    reversed as notifications on the event characteristic.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self.writes: list[bytes] = []
        self.event = Characteristic(
            EVENT_CHAR_UUID,
            Characteristic.Properties.NOTIFY | Characteristic.Properties.READ,
            Characteristic.READABLE,
            EVENT_INITIAL_VALUE,
            descriptors=[
                Descriptor(
                    USER_DESCRIPTION_UUID,
                    Descriptor.READABLE | Descriptor.WRITEABLE,
                    b"events",
                )
            ],
        )
        self.command: Characteristic[bytes] = Characteristic(
            COMMAND_CHAR_UUID,
            Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )
        device.add_service(Service(PHONEKEY_SERVICE_UUID, [self.command, self.event]))

    async def _on_write(self, connection: Connection, value: bytes) -> None:
        if not value:
            # What a real command handler does with a bad frame.
            raise att.ATT_Error(att.ATT_INVALID_ATTRIBUTE_LENGTH_ERROR)
        self.writes.append(value)
        await self.device.notify_subscriber(connection, self.event, bytes(reversed(value)))

    async def start(self, payload: bytes = ADV_PAYLOAD) -> None:
        await self.device.power_on()
        advertising_data, scan_response = build_advertisement(
            local_name=VEHICLE_NAME,
            service_uuids=[PHONEKEY_SERVICE_UUID],
            manufacturer_data={ADV_COMPANY_ID: payload},
        )
        # A 20 ms interval: a connect completes at the next advertisement.
        await self.device.start_advertising(
            advertising_data=advertising_data,
            scan_response_data=scan_response,
            advertising_interval_min=20,
            advertising_interval_max=20,
            auto_restart=True,
        )

    @property
    def address(self) -> str:
        return str(self.device.random_address.to_string(with_type_qualifier=False))


async def find_vehicle(central: Device, timeout: float = 2.0) -> BLEDevice:
    """Scan like the phone does: by service UUID, then manufacturer data."""
    # bleak's own classmethod, as the phone may call it (bleak's stubs reject
    # the backend's keyword; ble_stack.bleak_backend.find_device_by_filter doesn't).
    found = await BleakScanner.find_device_by_filter(  # type: ignore[call-arg]
        lambda _d, ad: ad.manufacturer_data.get(ADV_COMPANY_ID) == ADV_PAYLOAD,
        timeout=timeout,
        service_uuids=[PHONEKEY_SERVICE_UUID],
        backend=BumbleBleakScanner,
        bumble_device=central,
    )
    assert found is not None, "vehicle not found"
    return found


async def wait_for(event: asyncio.Event, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        await event.wait()
