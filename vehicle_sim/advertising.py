"""What the vehicle advertises, and how a phone reads it back.

The advertisement carries everything a phone needs to pick its vehicle out
of a scan without connecting, because bumble's virtual controller never
delivers scan responses (and passive scanners never request them)::

    Flags            3 bytes   LE General Discoverable, BR/EDR not supported
    UUID128 list    18 bytes   PHONEKEY_SERVICE_UUID (complete list)
    Manufacturer     9 bytes   ADV_COMPANY_ID, ADV_FORMAT_VERSION, advertised_tag(VIN)
                    --------
                    30 bytes   of the 31 a legacy advertisement may hold

The scan response only holds the local name, which nothing depends on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ble_stack.advertising import (
    AD_COMPLETE_NAME,
    AD_MANUFACTURER_DATA,
    LEGACY_PAYLOAD_MAX,
    build_advertisement,
    parse_ad_structures,
)
from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from protocol.card import ADV_FORMAT_VERSION, ADV_TAG_LEN, advertised_tag

LOCAL_NAME: Final = "phonekey"


def manufacturer_payload(vin: str) -> bytes:
    """The manufacturer-specific data after the company id: version, then tag."""
    return bytes([ADV_FORMAT_VERSION]) + advertised_tag(vin)


def build_vehicle_advertisement(vin: str) -> tuple[bytes, bytes]:
    """(advertising data, scan response data) for the vehicle with this VIN."""
    advertising_data, scan_response = build_advertisement(
        local_name=LOCAL_NAME,
        service_uuids=[PHONEKEY_SERVICE_UUID],
        manufacturer_data={ADV_COMPANY_ID: manufacturer_payload(vin)},
    )
    # Real controllers reject more than 31 bytes; the virtual one would not notice.
    assert len(advertising_data) <= LEGACY_PAYLOAD_MAX, len(advertising_data)
    assert len(scan_response) <= LEGACY_PAYLOAD_MAX, len(scan_response)
    # The tag must be in the advertisement itself, never spilled to the scan
    # response, which the virtual controller does not deliver.
    assert all(t == AD_COMPLETE_NAME for t, _ in parse_ad_structures(scan_response))
    assert any(t == AD_MANUFACTURER_DATA for t, _ in parse_ad_structures(advertising_data))
    return advertising_data, scan_response


def parse_advertised_tag(manufacturer_data: Mapping[int, bytes]) -> bytes | None:
    """The vehicle tag in a scan result's manufacturer data (bleak's dict form).

    None if the advertiser is not a phonekey vehicle of a format this code reads.
    """
    payload = manufacturer_data.get(ADV_COMPANY_ID)
    if payload is None or len(payload) < 1 + ADV_TAG_LEN:
        return None
    if payload[0] != ADV_FORMAT_VERSION:
        return None
    return bytes(payload[1 : 1 + ADV_TAG_LEN])


def advertises_vin(manufacturer_data: Mapping[int, bytes], vin: str) -> bool:
    """Whether a scan result's manufacturer data carries this VIN's tag."""
    return parse_advertised_tag(manufacturer_data) == advertised_tag(vin)
