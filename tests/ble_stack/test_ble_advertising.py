"""Advertising payload layout, parsing, and per-advertiser merging."""

from __future__ import annotations

import asyncio

import pytest
from ble_testkit import ADV_PAYLOAD, EchoPeripheral
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bumble import hci
from bumble.controller import Controller
from bumble.device import Device
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink

from ble_stack.advertising import (
    AD_COMPLETE_NAME,
    AD_SHORT_NAME,
    LEGACY_PAYLOAD_MAX,
    AdvertisementFields,
    build_advertisement,
    parse_ad_structures,
)
from ble_stack.bleak_backend import BumbleBleakScanner
from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from ble_stack.virtual_link import VirtualRadio

HEART_RATE = "0000180d-0000-1000-8000-00805f9b34fb"


def fields_of(payload: bytes) -> AdvertisementFields:
    return AdvertisementFields.from_ad_structures(parse_ad_structures(payload))


def test_phonekey_advertisement_fits_and_round_trips() -> None:
    adv, scan_response = build_advertisement(
        local_name="Vehicle-1",
        service_uuids=[PHONEKEY_SERVICE_UUID],
        manufacturer_data={ADV_COMPANY_ID: b"\x01\x02\x03\x04\x05\x06"},
        tx_power=-4,
    )
    assert len(adv) <= LEGACY_PAYLOAD_MAX and len(scan_response) <= LEGACY_PAYLOAD_MAX
    in_adv = fields_of(adv)
    assert in_adv.service_uuids == [PHONEKEY_SERVICE_UUID]
    assert in_adv.manufacturer_data == {ADV_COMPANY_ID: b"\x01\x02\x03\x04\x05\x06"}
    assert in_adv.local_name is None
    in_scan_response = fields_of(scan_response)
    assert in_scan_response.local_name == "Vehicle-1"
    assert in_scan_response.tx_power == -4


def test_sig_uuids_use_short_form() -> None:
    adv, _ = build_advertisement(service_uuids=["180d", PHONEKEY_SERVICE_UUID], flags=None)
    assert parse_ad_structures(adv)[0] == (0x03, b"\x0d\x18")
    assert fields_of(adv).service_uuids == [HEART_RATE, PHONEKEY_SERVICE_UUID]


def test_overflow_goes_to_scan_response_and_too_much_is_refused() -> None:
    adv, scan_response = build_advertisement(
        service_uuids=[PHONEKEY_SERVICE_UUID], manufacturer_data={ADV_COMPANY_ID: bytes(20)}
    )
    assert ADV_COMPANY_ID not in fields_of(adv).manufacturer_data
    assert fields_of(scan_response).manufacturer_data == {ADV_COMPANY_ID: bytes(20)}
    with pytest.raises(ValueError, match="exceed"):
        build_advertisement(manufacturer_data={1: bytes(27), 2: bytes(27), 3: bytes(1)})


def test_long_name_is_shortened() -> None:
    _, scan_response = build_advertisement(local_name="A" * 40)
    ((ad_type, value),) = parse_ad_structures(scan_response)
    assert ad_type == AD_SHORT_NAME and value == b"A" * 29
    assert fields_of(scan_response).local_name == "A" * 29
    _, scan_response = build_advertisement(local_name="short")
    assert parse_ad_structures(scan_response) == [(AD_COMPLETE_NAME, b"short")]


def test_parser_stops_at_padding_and_truncation() -> None:
    assert parse_ad_structures(b"\x02\x01\x06\x00\x00\x00") == [(0x01, b"\x06")]
    assert parse_ad_structures(b"\x02\x01\x06\x05\xff\x01") == [(0x01, b"\x06")]


def test_fields_accumulate_like_a_real_scan() -> None:
    adv, scan_response = build_advertisement(
        local_name="Vehicle-1",
        service_uuids=[PHONEKEY_SERVICE_UUID],
        manufacturer_data={ADV_COMPANY_ID: b"\x01"},
    )
    merged = fields_of(adv)
    merged.update(fields_of(scan_response))  # a real controller: separate scan response
    merged.update(fields_of(adv))  # the next advertisement, without the name
    merged.update(fields_of(adv + adv))  # bumble's stock controller: data repeated
    assert merged.local_name == "Vehicle-1"
    assert merged.service_uuids == [PHONEKEY_SERVICE_UUID]
    assert merged.manufacturer_data == {ADV_COMPANY_ID: b"\x01"}
    newer, _ = build_advertisement(manufacturer_data={ADV_COMPANY_ID: b"\x02"})
    merged.update(fields_of(newer))
    assert merged.manufacturer_data == {ADV_COMPANY_ID: b"\x02"}


async def test_stock_bumble_controller_repeating_adv_data_is_not_doubled(
    radio: VirtualRadio, vehicle: EchoPeripheral
) -> None:
    # A central on bumble's own Controller, whose scan responses repeat the
    # advertising data (VirtualController sends the real scan response).
    address = radio.allocate_address()
    controller = Controller(
        "stock",
        link=radio.link,
        public_address=hci.Address(address.address_bytes, hci.Address.PUBLIC_DEVICE_ADDRESS),
    )
    host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
    central = Device(name="stock central", address=address, host=host)
    seen: list[AdvertisementData] = []

    def on_adv(_device: BLEDevice, adv: AdvertisementData) -> None:
        seen.append(adv)

    try:
        async with BleakScanner(on_adv, backend=BumbleBleakScanner, bumble_device=central):
            async with asyncio.timeout(2):
                while len(seen) < 4:
                    await asyncio.sleep(0.01)
    finally:
        radio.link.remove_controller(controller)
    for adv in seen:
        assert adv.service_uuids == [PHONEKEY_SERVICE_UUID]
        assert adv.manufacturer_data == {ADV_COMPANY_ID: ADV_PAYLOAD}
        assert adv.local_name is None  # the name is only in the real scan response
