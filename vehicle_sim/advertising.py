"""What the vehicle advertises, and how a phone reads it back.

The advertisement carries everything a phone needs to pick its vehicle out
of a scan without connecting, because bumble's virtual controller never
delivers scan responses (and passive scanners never request them)::

    Flags            3 bytes   LE General Discoverable, BR/EDR not supported
    UUID128 list    18 bytes   PHONEKEY_SERVICE_UUID (complete list)
    Manufacturer    10 bytes   ADV_COMPANY_ID, format 2, tag (prand 2 || hash 3)
                    --------
                    31 bytes   of the 31 a legacy advertisement may hold

The tag and the vehicle's random address rotate every epoch and only holders
of the advertising secret can resolve them (protocol/privacy.py); neither the
VIN, the vehicle id nor the public key is ever in the air before a phone
connects. The scan response only holds the generic local name, which nothing
depends on.
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
from protocol import privacy
from protocol.card import VehicleCard
from protocol.vehicle_base import VehicleIdentity

LOCAL_NAME: Final = "phonekey"


def adv_secret(identity: VehicleIdentity) -> bytes:
    """The vehicle's advertising secret (derived from its identity key: no state to keep)."""
    return privacy.derive_adv_secret(identity.private_key)


def private_card(card: VehicleCard, identity: VehicleIdentity) -> VehicleCard:
    """``card`` with the advertising secret, as `vehicle init` / `show` print it for phones."""
    return VehicleCard(card.vin, card.public_key, card.issuer, adv_secret(identity))


def manufacturer_payload(secret: bytes, epoch: int) -> bytes:
    """The manufacturer-specific data after the company id: version 2, then the tag."""
    return privacy.adv_payload(secret, epoch)


def build_vehicle_advertisement(secret: bytes, epoch: int) -> tuple[bytes, bytes]:
    """(advertising data, scan response data) of the vehicle with ``secret`` in ``epoch``."""
    advertising_data, scan_response = build_advertisement(
        local_name=LOCAL_NAME,
        service_uuids=[PHONEKEY_SERVICE_UUID],
        manufacturer_data={ADV_COMPANY_ID: manufacturer_payload(secret, epoch)},
    )
    # Real controllers reject more than 31 bytes; the virtual one would not notice.
    assert len(advertising_data) <= LEGACY_PAYLOAD_MAX, len(advertising_data)
    assert len(scan_response) <= LEGACY_PAYLOAD_MAX, len(scan_response)
    # The tag must be in the advertisement itself, never spilled to the scan
    # response, which the virtual controller does not deliver.
    assert all(t == AD_COMPLETE_NAME for t, _ in parse_ad_structures(scan_response))
    assert any(t == AD_MANUFACTURER_DATA for t, _ in parse_ad_structures(advertising_data))
    return advertising_data, scan_response


def parse_advertised_tag(manufacturer_data: Mapping[int, bytes]) -> privacy.AdvTag | None:
    """The vehicle tag in a scan result's manufacturer data (bleak's dict form).

    None if the advertiser is not a phonekey vehicle of a format this code reads.
    """
    return privacy.parse_adv_payload(manufacturer_data.get(ADV_COMPANY_ID))


def advertises(manufacturer_data: Mapping[int, bytes], card: VehicleCard) -> bool:
    """Whether a scan result's manufacturer data names the vehicle of ``card``."""
    seen = parse_advertised_tag(manufacturer_data)
    return seen is not None and privacy.matches(seen, vin=card.vin, secret=card.adv_secret)
