"""A bleak scanner backend that scans with a bumble Device.

    device = await BleakScanner.find_device_by_filter(
        match, service_uuids=[...], backend=BumbleBleakScanner, bumble_device=dev)

Reports are merged per advertiser before bleak sees them: real controllers
deliver the scan response as a separate report carrying only its own fields,
while bumble's virtual controller repeats the advertising data as the scan
response. Accumulating fields per address (as BlueZ does) gives the same
AdvertisementData in both cases.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    AdvertisementDataFilter,
    BaseBleakScanner,
)
from bumble.device import Advertisement, Device

from ble_stack.advertising import AdvertisementFields

logger = logging.getLogger(__name__)


class BumbleBleakScanner(BaseBleakScanner):
    """bleak `BaseBleakScanner` over a bumble Device.

    Extra keyword argument (pass it to `BleakScanner`):
      bumble_device: the Device to scan with; powered on if needed.
    """

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble_device: Device,
        bluez: object = None,
        cb: object = None,
        **kwargs: Any,
    ) -> None:
        # bluez= and cb= are other backends' options; BleakScanner always passes them.
        super().__init__(detection_callback, service_uuids)
        self._device = bumble_device
        self._active = scanning_mode == "active"
        self._fields: dict[str, AdvertisementFields] = {}
        self._scanning = False

    async def start(self) -> None:
        if not self._device.powered_on:
            await self._device.power_on()
        self.seen_devices = {}
        self._fields = {}
        self._device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        try:
            await self._device.start_scanning(active=self._active)
        except BaseException:
            self._device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            raise
        self._scanning = True

    async def stop(self) -> None:
        self._device.remove_listener(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        if self._scanning:
            self._scanning = False
            await self._device.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        address = advertisement.address
        key = address.to_string(with_type_qualifier=False)
        fields = self._fields.setdefault(key, AdvertisementFields())
        fields.update(AdvertisementFields.from_ad_structures(advertisement.data.ad_structures))
        if not self.is_allowed_uuid(fields.service_uuids):
            return
        data = AdvertisementData(
            local_name=fields.local_name,
            manufacturer_data=dict(fields.manufacturer_data),
            service_data=dict(fields.service_data),
            service_uuids=list(fields.service_uuids),
            tx_power=fields.tx_power,  # the AD field only, as other backends report it
            rssi=advertisement.rssi,
            platform_data=(advertisement,),
        )
        # details carries the typed address, which the client needs to connect.
        device = self.create_or_update_device(key, key, fields.local_name, address, data)
        self.call_detection_callbacks(device, data)


async def find_device_by_filter(
    filterfunc: AdvertisementDataFilter,
    *,
    bumble_device: Device,
    timeout: float = 10.0,
    service_uuids: list[str] | None = None,
    scanning_mode: Literal["active", "passive"] = "active",
) -> BLEDevice | None:
    """`BleakScanner.find_device_by_filter` on this backend, for type-checked callers.

    bleak types that classmethod's extra arguments as a closed TypedDict, so
    mypy rejects `bumble_device=` there although it works at run time.
    """
    async with BleakScanner(
        service_uuids=service_uuids,
        scanning_mode=scanning_mode,
        backend=BumbleBleakScanner,
        bumble_device=bumble_device,
    ) as scanner:
        try:
            async with asyncio.timeout(timeout):
                async for device, advertisement in scanner.advertisement_data():
                    if filterfunc(device, advertisement):
                        return device
        except TimeoutError:
            pass
    return None
