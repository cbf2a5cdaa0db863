"""Private advertising derivation (protocol/privacy.py) and the card's adv field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bumble import crypto as bumble_crypto
from bumble import hci
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import crypto, privacy
from protocol.card import InvalidCard, VehicleCard

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "adv_privacy_v1.json").read_text()
)
VIN = "1HGCM82633A004352"


def test_vectors() -> None:
    scalar = int(VECTORS["vehicle_private_scalar"], 16)
    vehicle = ec.derive_private_key(scalar, ec.SECP256R1())
    secret = privacy.derive_adv_secret(vehicle)
    assert secret.hex() == VECTORS["adv_secret"]
    assert privacy.address_irk(secret).hex() == VECTORS["irk"]
    for entry in VECTORS["times"]:
        epoch = privacy.epoch_of(entry["unix_time"], VECTORS["rotation"])
        assert epoch == entry["epoch"]
        _check_epoch(secret, entry)
    fixed = bytes.fromhex(VECTORS["fixed_secret"])
    assert privacy.address_irk(fixed).hex() == VECTORS["fixed_irk"]
    for entry in VECTORS["fixed_epochs"]:
        _check_epoch(fixed, entry)
    for entry in VECTORS["ah"]:
        irk, prand = bytes.fromhex(entry["irk"]), bytes.fromhex(entry["prand"])
        assert privacy.ah(irk, prand).hex() == entry["hash"]


def _check_epoch(secret: bytes, entry: dict[str, Any]) -> None:
    tag = privacy.tag_for_epoch(secret, entry["epoch"])
    assert tag.hex() == entry["tag"] == entry["prand"] + entry["hash"]
    assert privacy.adv_payload(secret, entry["epoch"]).hex() == entry["manufacturer_payload"]
    address = privacy.address_for_epoch(secret, entry["epoch"])
    assert privacy.address_text(address) == entry["address"]
    assert privacy.resolves(secret, tag)
    assert privacy.address_resolves(secret, address)


def test_ah_matches_the_core_spec_sample_and_bumble() -> None:
    # Core Vol 3 Part H Appendix D.7: IRK ec02...7d9b, prand 708194 -> hash 0dfbaa.
    irk = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
    assert privacy.ah(irk, bytes.fromhex("708194")).hex() == "0dfbaa"
    # bumble works little-endian: same function, bytes reversed.
    secret = bytes(range(16))
    address = privacy.address_for_epoch(secret, 7)
    ours_irk = privacy.address_irk(secret)
    theirs = bumble_crypto.ah(ours_irk[::-1], address[:3][::-1])[::-1]
    assert theirs == address[3:]


def test_addresses_are_resolvable_private_addresses() -> None:
    secret = bytes(range(16))
    for epoch in range(200):
        address = privacy.address_for_epoch(secret, epoch)
        assert address[0] >> 6 == 0b01  # RPA marker bits
        random_part = int.from_bytes(address[:3], "big") & ((1 << 22) - 1)
        assert random_part not in (0, (1 << 22) - 1)
        ble = hci.Address(privacy.address_text(address), hci.Address.RANDOM_DEVICE_ADDRESS)
        assert ble.is_resolvable and not ble.is_static


def test_other_secrets_do_not_resolve() -> None:
    mine, other = bytes(16), bytes([1]) * 16
    tags = {privacy.tag_for_epoch(mine, epoch) for epoch in range(100)}
    assert len(tags) > 95  # rotating (a 16-bit prand repeats now and then)
    assert all(privacy.resolves(mine, tag) for tag in tags)
    assert not any(privacy.resolves(other, tag) for tag in tags)
    assert not privacy.resolves(mine, b"\x00" * 4)
    assert not privacy.address_resolves(other, privacy.address_for_epoch(mine, 1))


def test_epochs() -> None:
    assert privacy.epoch_of(0) == 0
    assert privacy.epoch_of(899.9) == 0 and privacy.epoch_of(900) == 1
    assert privacy.epoch_of(10.0, 5.0) == 2
    assert privacy.next_rotation(1000.0) == 1800.0
    with pytest.raises(ValueError):
        privacy.epoch_of(10.0, 0.5)
    with pytest.raises(ValueError):
        privacy.check_secret(b"short")


def test_parse_and_match_payloads() -> None:
    secret = bytes(range(16))
    seen = privacy.parse_adv_payload(privacy.adv_payload(secret, 3))
    assert seen == privacy.AdvTag(2, privacy.tag_for_epoch(secret, 3))
    assert privacy.matches(seen, vin=VIN, secret=secret)
    assert not privacy.matches(seen, vin=VIN, secret=None)  # an old card cannot resolve
    legacy = privacy.parse_adv_payload(b"\x01" + privacy.legacy_tag(VIN))
    assert legacy is not None and privacy.matches(legacy, vin=VIN, secret=None)
    assert not privacy.matches(legacy, vin="2FTRX18W1XCA01234", secret=secret)
    for junk in (None, b"", b"\x02\x00", b"\x03" + bytes(5), b"\x01\x00"):
        assert privacy.parse_adv_payload(junk) is None


def test_card_carries_the_secret_and_old_cards_still_parse() -> None:
    key = crypto.generate_private_key()
    secret = privacy.derive_adv_secret(key)
    issuer = crypto.generate_private_key().public_key()
    for card in (
        VehicleCard(VIN, key.public_key(), adv_secret=secret),
        VehicleCard(VIN, key.public_key(), issuer, secret),
    ):
        text = card.to_text()
        assert text.endswith(":adv:" + secret.hex())
        assert VehicleCard.from_text(text) == card
        assert secret.hex() not in repr(card)  # never logged by accident
        old = card.without_adv_secret()
        assert old.adv_secret is None and VehicleCard.from_text(old.to_text()) == old
    with pytest.raises(InvalidCard, match="32 hex"):
        VehicleCard.from_text(VehicleCard(VIN, key.public_key()).to_text() + ":adv:abcd")
    # A VIN that reads ADV is not an adv field.
    odd = VehicleCard("ADV", key.public_key())
    assert VehicleCard.from_text(odd.to_text().replace(":ADV:", ":adv:")) == odd
