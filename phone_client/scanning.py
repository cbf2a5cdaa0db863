"""Finding phonekey vehicles in advertisements, through bleak's scanner API.

A vehicle advertises the phonekey service UUID (so OS scan filters can pick
it out) and manufacturer data ``{ADV_COMPANY_ID: version || tag}``. Format 2
tags rotate and resolve only with the vehicle's advertising secret
(protocol/privacy.py), which the phone holds from the vehicle card; format 1
tags (vehicles from before private advertising) are the VIN's static tag.

A card without the advertising secret (made before private advertising)
cannot resolve format 2 tags: such a phone takes the phonekey vehicles it
hears as *candidates* and the caller checks the vehicle tag in the first
challenge (``protocol.WrongVehicle`` otherwise), trying the next candidate.
Re-adding the vehicle with its current card (`phonekey vehicle show`) ends
that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from ble_stack.transport_errors import explain_os_adapter_error
from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from protocol import privacy
from protocol.card import VehicleCard

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


def adv_tag_of(advertisement: AdvertisementData) -> privacy.AdvTag | None:
    """The vehicle tag (with its format) in a phonekey advertisement, or None."""
    return privacy.parse_adv_payload(advertisement.manufacturer_data.get(ADV_COMPANY_ID))


def tag_of(advertisement: AdvertisementData) -> bytes | None:
    """The vehicle tag in a phonekey advertisement, or None if it carries none."""
    seen = adv_tag_of(advertisement)
    return None if seen is None else seen.tag


def card_matches(card: VehicleCard, seen: privacy.AdvTag) -> bool:
    """Whether this advertisement's tag resolves to the vehicle of ``card``."""
    return privacy.matches(seen, vin=card.vin, secret=card.adv_secret)


def _scanner(callback: Any, scanner_kwargs: Mapping[str, Any] | None) -> BleakScanner:
    try:
        return BleakScanner(
            callback, service_uuids=[PHONEKEY_SERVICE_UUID], **dict(scanner_kwargs or {})
        )
    except (BleakError, OSError) as exc:
        raise _adapter_error(exc) from exc


def _adapter_error(exc: BaseException) -> AdapterUnavailable:
    """One line naming the cause and the fix (ble_stack.transport_errors knows
    what BlueZ, CoreBluetooth and WinRT raise)."""
    cause, fix = explain_os_adapter_error(exc)
    return AdapterUnavailable(f"cannot scan: {cause} (fix: {fix})")


async def find_vehicle(
    card: VehicleCard,
    timeout: float,
    *,
    scanner_kwargs: Mapping[str, Any] | None = None,
    exclude: Collection[str] = (),
) -> BLEDevice:
    """Scan until the vehicle of ``card`` advertises; raise VehicleNotFound after ``timeout``.

    With the card's advertising secret only that vehicle matches. Without it
    (an old card) the first phonekey vehicle heard whose address is not in
    ``exclude`` is returned, unless it advertises another VIN's format-1 tag:
    the caller must check the vehicle tag in its challenge.
    """
    legacy_tag = privacy.legacy_tag(card.vin)
    found: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()

    def wanted(seen: privacy.AdvTag) -> bool:
        if card_matches(card, seen):
            return True
        # An old card: any format-2 vehicle may be ours; format 1 names its VIN.
        return card.adv_secret is None and seen.version == privacy.PRIVATE_FORMAT_VERSION

    def on_advertisement(device: BLEDevice, advertisement: AdvertisementData) -> None:
        seen = adv_tag_of(advertisement)
        if found.done() or seen is None or device.address in exclude:
            return
        if wanted(seen):
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
        what = (
            "no advertisement resolving with its card's advertising secret"
            if card.adv_secret is not None
            else f"no phonekey advertisement (legacy tag {legacy_tag.hex()})"
        )
        if exclude:
            what += f" beyond {len(exclude)} vehicle(s) that were not it"
        raise VehicleNotFound(
            f"vehicle {card.vin} not found: {what} within {timeout:g} s"
        ) from None
    finally:
        # Stop before connecting: many controllers cannot scan and initiate at once.
        await scanner.stop()


async def scan_vehicles(
    timeout: float,
    *,
    known: Iterable[VehicleCard] = (),
    scanner_kwargs: Mapping[str, Any] | None = None,
    on_heard: Callable[[SeenVehicle], None] | None = None,
) -> list[SeenVehicle]:
    """Listen for ``timeout`` seconds; return every phonekey vehicle heard, by address.

    A vehicle is named when one of the ``known`` cards resolves its tag.
    ``on_heard`` is called once per address, when it is first heard.
    """
    cards = list(known)
    seen: dict[str, SeenVehicle] = {}

    def on_advertisement(device: BLEDevice, advertisement: AdvertisementData) -> None:
        tag = adv_tag_of(advertisement)
        if tag is not None:
            vin = next((card.vin for card in cards if card_matches(card, tag)), None)
            first = device.address not in seen
            seen[device.address] = SeenVehicle(device, advertisement.rssi, tag.tag, vin)
            if first and on_heard is not None:
                on_heard(seen[device.address])

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
