"""Finding phonekey vehicles in advertisements, through bleak's scanner API.

A vehicle advertises the phonekey service UUID (so OS scan filters can pick
it out) and manufacturer data ``{ADV_COMPANY_ID: format_version || tag}``,
where the tag is ``protocol.card.advertised_tag(VIN)``. The phone matches the
tag against the VINs of the cards it holds, so it knows which car is which
before connecting to any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from protocol.card import ADV_FORMAT_VERSION, ADV_TAG_LEN, VehicleCard, advertised_tag

from .errors import AdapterUnavailable, VehicleNotFound


@dataclass(frozen=True)
class SeenVehicle:
    """One phonekey vehicle heard during a scan."""

    device: BLEDevice
    rssi: int
    tag: bytes
    vin: str | None  # set when this phone holds the card whose tag matches

    @property
    def address(self) -> str:
        return self.device.address


def tag_of(advertisement: AdvertisementData) -> bytes | None:
    """The vehicle tag in a phonekey advertisement, or None if it carries none."""
    data = advertisement.manufacturer_data.get(ADV_COMPANY_ID)
    if data is None or len(data) < 1 + ADV_TAG_LEN or data[0] != ADV_FORMAT_VERSION:
        return None
    return bytes(data[1 : 1 + ADV_TAG_LEN])


def _scanner(callback: Any, scanner_kwargs: Mapping[str, Any] | None) -> BleakScanner:
    try:
        return BleakScanner(
            callback, service_uuids=[PHONEKEY_SERVICE_UUID], **dict(scanner_kwargs or {})
        )
    except (BleakError, OSError) as exc:
        raise _adapter_error(exc) from exc


def _adapter_error(exc: BaseException) -> AdapterUnavailable:
    detail = str(exc) or type(exc).__name__
    return AdapterUnavailable(
        f"cannot scan: no usable Bluetooth adapter ({detail}); "
        "use --transport to pick a bumble controller"
    )


async def find_vehicle(
    card: VehicleCard,
    timeout: float,
    *,
    scanner_kwargs: Mapping[str, Any] | None = None,
) -> BLEDevice:
    """Scan until the vehicle of ``card`` advertises; raise VehicleNotFound after ``timeout``."""
    wanted = advertised_tag(card.vin)
    found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

    def on_advertisement(device: BLEDevice, advertisement: AdvertisementData) -> None:
        if not found.done() and tag_of(advertisement) == wanted:
            found.set_result(device)

    scanner = _scanner(on_advertisement, scanner_kwargs)
    try:
        await scanner.start()
    except (BleakError, OSError) as exc:
        raise _adapter_error(exc) from exc
    try:
        async with asyncio.timeout(timeout):
            return await found
    except TimeoutError:
        raise VehicleNotFound(
            f"vehicle {card.vin} not found: no advertisement with its tag "
            f"{wanted.hex()} within {timeout:g} s"
        ) from None
    finally:
        # Stop before connecting: many controllers cannot scan and initiate at once.
        await scanner.stop()


async def scan_vehicles(
    timeout: float,
    *,
    known: Iterable[VehicleCard] = (),
    scanner_kwargs: Mapping[str, Any] | None = None,
) -> list[SeenVehicle]:
    """Listen for ``timeout`` seconds; return every phonekey vehicle heard, by address."""
    vin_by_tag = {advertised_tag(card.vin): card.vin for card in known}
    seen: dict[str, SeenVehicle] = {}

    def on_advertisement(device: BLEDevice, advertisement: AdvertisementData) -> None:
        tag = tag_of(advertisement)
        if tag is not None:
            seen[device.address] = SeenVehicle(device, advertisement.rssi, tag, vin_by_tag.get(tag))

    scanner = _scanner(on_advertisement, scanner_kwargs)
    try:
        await scanner.start()
    except (BleakError, OSError) as exc:
        raise _adapter_error(exc) from exc
    try:
        await asyncio.sleep(timeout)
    finally:
        await scanner.stop()
    return sorted(seen.values(), key=lambda v: (v.vin is None, -v.rssi, v.address))
