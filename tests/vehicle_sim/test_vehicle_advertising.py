"""The vehicle's advertisement: fits a legacy packet, names no vehicle, rotates unlinkably."""

from __future__ import annotations

from itertools import pairwise

import pytest
from vehicle_testkit import VIN

from ble_stack.advertising import (
    AD_MANUFACTURER_DATA,
    LEGACY_PAYLOAD_MAX,
    AdvertisementFields,
    parse_ad_structures,
)
from ble_stack.uuids import ADV_COMPANY_ID, PHONEKEY_SERVICE_UUID
from protocol import crypto, privacy
from protocol.card import ADV_FORMAT_VERSION, VehicleCard, advertised_tag
from protocol.vehicle_base import VehicleIdentity
from vehicle_sim.advertising import (
    LOCAL_NAME,
    adv_secret,
    advertises,
    build_vehicle_advertisement,
    parse_advertised_tag,
    private_card,
)

Sighting = tuple[bytes, bytes, bytes]  # advertising data, scan response, address


def _identity(vin: str = VIN) -> VehicleIdentity:
    return VehicleIdentity(crypto.generate_private_key(), vin)


def _sighting(identity: VehicleIdentity, epoch: int) -> Sighting:
    secret = adv_secret(identity)
    data, scan = build_vehicle_advertisement(secret, epoch)
    return data, scan, privacy.address_for_epoch(secret, epoch)


@pytest.mark.parametrize("vin", [VIN, "1", "ABCDEFGH123456789"])
def test_advertisement_fits_and_round_trips(vin: str) -> None:
    identity = _identity(vin)
    card = private_card(VehicleCard(vin, identity.public_key), identity)
    advertising_data, scan_response = build_vehicle_advertisement(card.adv_secret or b"", 42)
    assert len(advertising_data) == 31 <= LEGACY_PAYLOAD_MAX
    assert len(scan_response) <= LEGACY_PAYLOAD_MAX

    fields = AdvertisementFields.from_ad_structures(parse_ad_structures(advertising_data))
    assert fields.service_uuids == [PHONEKEY_SERVICE_UUID]
    assert fields.manufacturer_data[ADV_COMPANY_ID][0] == ADV_FORMAT_VERSION == 2
    seen = parse_advertised_tag(fields.manufacturer_data)
    assert seen is not None and privacy.resolves(card.adv_secret or b"", seen.tag)
    assert advertises(fields.manufacturer_data, card)
    assert not advertises(fields.manufacturer_data, card.without_adv_secret())
    stranger = _identity("2HGCM82633A004352")
    assert not advertises(fields.manufacturer_data, private_card(card, stranger))
    # Flags: LE General Discoverable, BR/EDR not supported.
    assert parse_ad_structures(advertising_data)[0] == (0x01, b"\x06")
    # The scan response only carries the generic name: nothing a phone needs.
    scan = AdvertisementFields.from_ad_structures(parse_ad_structures(scan_response))
    assert scan.local_name == LOCAL_NAME and not scan.manufacturer_data


def test_the_air_never_carries_the_vin_vehicle_id_or_key() -> None:
    identity = _identity()
    public = crypto.public_bytes(identity.public_key)
    uncompressed = crypto.public_bytes(identity.public_key, compressed=False)
    secret = adv_secret(identity)
    secrets = [
        VIN.encode(),
        VIN.lower().encode(),
        identity.vehicle_id,
        public,
        uncompressed[1:33],
        advertised_tag(VIN),  # the old static tag would let anyone test a VIN guess
        secret,
    ]
    for epoch in range(50):
        data, scan, address = _sighting(identity, epoch)
        for air in (data, scan, address, data + scan + address):
            for value in secrets:
                # Any 4-byte window of a secret value would be a fingerprint.
                for start in range(len(value) - 3):
                    assert value[start : start + 4] not in air


def _public_view(sighting: Sighting) -> tuple[object, ...]:
    """All a bystander can read without a secret, but the random-looking values."""
    data, scan, address = sighting
    structures = parse_ad_structures(data)
    payload = AdvertisementFields.from_ad_structures(structures).manufacturer_data[ADV_COMPANY_ID]
    kept = [s for s in structures if s[0] != AD_MANUFACTURER_DATA]
    return (tuple(kept), scan, payload[0], len(payload), len(address), address[0] >> 6)


def _bystander_links(first: Sighting, second: Sighting) -> bool:
    """The best linker without the secret: equal identifiers (tag or address)."""
    return first[0] == second[0] or first[2] == second[2]


def _resolver_links(secret: bytes, first: Sighting, second: Sighting) -> bool:
    def mine(sighting: Sighting) -> bool:
        fields = AdvertisementFields.from_ad_structures(parse_ad_structures(sighting[0]))
        seen = parse_advertised_tag(fields.manufacturer_data)
        return seen is not None and privacy.resolves(secret, seen.tag)

    return mine(first) and mine(second)


def test_sightings_across_a_rotation_cannot_be_linked_without_the_secret() -> None:
    car, other = _identity(), _identity("2FTRX18W1XCA01234")
    before, after = _sighting(car, 1000), _sighting(car, 1001)
    elsewhere = _sighting(other, 1001)

    # Tags and addresses change at the boundary.
    assert before[0] != after[0] and before[2] != after[2]
    tag = parse_advertised_tag
    fields = [
        AdvertisementFields.from_ad_structures(parse_ad_structures(s[0])) for s in (before, after)
    ]
    assert tag(fields[0].manufacturer_data) != tag(fields[1].manufacturer_data)
    # What is readable without the secret is the same for this car after the
    # rotation and for another car: "a phonekey vehicle", not which one.
    assert _public_view(before) == _public_view(after) == _public_view(elsewhere)
    assert not _bystander_links(before, after)
    # The vehicle's secret links them, and only them.
    secret = adv_secret(car)
    assert _resolver_links(secret, before, after)
    assert not _resolver_links(secret, before, elsewhere)
    assert not _resolver_links(adv_secret(other), before, after)
    assert privacy.address_resolves(secret, before[2]) and privacy.address_resolves(
        secret, after[2]
    )
    assert not privacy.address_resolves(adv_secret(other), after[2])


def test_a_day_of_epochs_has_fresh_identifiers() -> None:
    car = _identity()
    sightings = [_sighting(car, epoch) for epoch in range(96)]
    assert len({s[2] for s in sightings}) == 96  # addresses: 46 random bits
    assert sum(1 for a, b in pairwise(sightings) if a[0] == b[0]) == 0


@pytest.mark.parametrize(
    "manufacturer_data",
    [
        {},
        {0x004C: bytes([2]) + bytes(5)},  # another company
        {ADV_COMPANY_ID: bytes([3]) + bytes(5)},  # a newer format
        {ADV_COMPANY_ID: bytes([2]) + bytes(4)},  # cut short
        {ADV_COMPANY_ID: b""},
    ],
)
def test_parse_ignores_what_is_not_a_vehicle_tag(manufacturer_data: dict[int, bytes]) -> None:
    assert parse_advertised_tag(manufacturer_data) is None


def test_legacy_vehicles_are_still_recognised_by_their_vin_tag() -> None:
    identity = _identity()
    legacy = {ADV_COMPANY_ID: b"\x01" + advertised_tag(VIN)}
    assert advertises(legacy, VehicleCard(VIN, identity.public_key))
    assert advertises(legacy, private_card(VehicleCard(VIN, identity.public_key), identity))
    assert not advertises(legacy, VehicleCard("2FTRX18W1XCA01234", identity.public_key))
