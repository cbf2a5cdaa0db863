"""The vehicle's advertisement fits a legacy packet and carries its VIN's tag."""

from __future__ import annotations

import pytest
from vehicle_testkit import VIN

from ble_stack.advertising import LEGACY_PAYLOAD_MAX, AdvertisementFields, parse_ad_structures
from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from protocol.card import ADV_FORMAT_VERSION, advertised_tag
from vehicle_sim.advertising import (
    LOCAL_NAME,
    advertises_vin,
    build_vehicle_advertisement,
    parse_advertised_tag,
)


@pytest.mark.parametrize("vin", [VIN, "1", "ABCDEFGH123456789"])
def test_advertisement_fits_and_round_trips(vin: str) -> None:
    advertising_data, scan_response = build_vehicle_advertisement(vin)
    assert len(advertising_data) == 30 <= LEGACY_PAYLOAD_MAX
    assert len(scan_response) <= LEGACY_PAYLOAD_MAX

    fields = AdvertisementFields.from_ad_structures(parse_ad_structures(advertising_data))
    assert fields.service_uuids == [PHONEKEY_SERVICE_UUID]
    assert fields.manufacturer_data[ADV_COMPANY_ID][0] == ADV_FORMAT_VERSION
    assert parse_advertised_tag(fields.manufacturer_data) == advertised_tag(vin)
    assert advertises_vin(fields.manufacturer_data, vin)
    assert not advertises_vin(fields.manufacturer_data, "2HGCM82633A004352")
    # Flags: LE General Discoverable, BR/EDR not supported.
    assert parse_ad_structures(advertising_data)[0] == (0x01, b"\x06")
    # The scan response only carries the name: nothing a phone needs.
    scan = AdvertisementFields.from_ad_structures(parse_ad_structures(scan_response))
    assert scan.local_name == LOCAL_NAME and not scan.manufacturer_data


@pytest.mark.parametrize(
    "manufacturer_data",
    [
        {},
        {0x004C: bytes([ADV_FORMAT_VERSION]) + advertised_tag(VIN)},  # another company
        {ADV_COMPANY_ID: bytes([ADV_FORMAT_VERSION + 1]) + advertised_tag(VIN)},  # newer format
        {ADV_COMPANY_ID: bytes([ADV_FORMAT_VERSION]) + advertised_tag(VIN)[:3]},  # cut short
        {ADV_COMPANY_ID: b""},
    ],
)
def test_parse_ignores_what_is_not_a_vehicle_tag(manufacturer_data: dict[int, bytes]) -> None:
    assert parse_advertised_tag(manufacturer_data) is None
