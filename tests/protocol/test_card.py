"""The vehicle card: the one line a phone needs to pair, optionally naming the issuer."""

from __future__ import annotations

import pytest

from protocol import crypto
from protocol.card import InvalidCard, VehicleCard

VIN = "1HGCM82633A004352"


def test_card_round_trips_with_and_without_an_issuer() -> None:
    vehicle = crypto.generate_private_key().public_key()
    issuer = crypto.generate_private_key().public_key()
    plain = VehicleCard(VIN, vehicle)
    assert plain.to_text() == f"phonekey-card:1:{VIN}:{crypto.public_key_to_text(vehicle)}"
    with_issuer = VehicleCard(VIN, vehicle, issuer)
    assert with_issuer.to_text() == plain.to_text() + ":" + crypto.public_key_to_text(issuer)
    for card in (plain, with_issuer):
        parsed = VehicleCard.from_text(card.to_text())
        assert parsed.to_text() == card.to_text()
    assert VehicleCard.from_text(with_issuer.to_text()).issuer is not None
    assert VehicleCard.from_text(plain.to_text()).issuer is None


@pytest.mark.parametrize(
    "suffix", [":p256:zz", ":p256:" + "02" + "00" * 31 + "01", ":p256:02ab:p256:02ab"]
)
def test_a_bad_issuer_part_is_refused(suffix: str) -> None:
    vehicle = crypto.generate_private_key().public_key()
    with pytest.raises(InvalidCard):
        VehicleCard.from_text(VehicleCard(VIN, vehicle).to_text() + suffix)
