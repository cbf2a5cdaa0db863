"""The vehicle card handed to phones, and the advertised vehicle tag.

A card is one line of text that a phone needs to pair with a vehicle::

    phonekey-card:1:<VIN>:p256:<vehicle key, hex>[:p256:<issuer key, hex>][:adv:<32 hex>]

The optional ``p256`` part is the credential issuer key the vehicle was
provisioned with, so a phone pins the issuer from the vehicle's own card
rather than trusting whatever key a cloud claims.

The optional ``adv`` part is the vehicle's 16-byte advertising secret
(protocol/privacy.py): with it a phone resolves the vehicle's rotating
advertised tag. Cards without it (made before private advertising) still
parse; such a phone connects to phonekey vehicles it cannot tell apart and
relies on the vehicle tag in the first challenge. The secret is never in
``repr`` (so it is not logged by accident); the card text carries it, so
treat a card like a key.

``advertised_tag`` is the static tag of advertising format 1 (SHA-256 of the
VIN), still recognised from vehicles that predate format 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from . import crypto, privacy

CARD_PREFIX: Final = "phonekey-card:1:"
ADV_FIELD: Final = ":adv:"
ADV_TAG_LEN: Final = privacy.LEGACY_TAG_LEN  # format 1 (legacy) tag length
ADV_FORMAT_VERSION: Final = privacy.PRIVATE_FORMAT_VERSION
_ADV_SECRET_RE = re.compile(r"^[0-9a-f]{32}$")
# VINs are 17 characters without I, O, Q (ISO 3779); simulators may use shorter test VINs.
_VIN_RE = re.compile(r"^[A-HJ-NPR-Z0-9]{1,17}$")


class InvalidCard(ValueError):
    """Text that is not a valid vehicle card."""


def validate_vin(vin: str) -> str:
    vin = vin.strip().upper()
    if not _VIN_RE.match(vin):
        raise ValueError(
            f"invalid VIN {vin!r}: use 1-17 characters from A-Z and 0-9, without I, O or Q"
        )
    return vin


@dataclass(frozen=True)
class VehicleCard:
    vin: str
    public_key: crypto.PublicKey
    issuer: crypto.PublicKey | None = None  # the credential issuer the vehicle trusts
    adv_secret: bytes | None = field(default=None, repr=False)  # resolves advertised tags

    @property
    def vehicle_id(self) -> bytes:
        return crypto.key_id(self.public_key)

    def to_text(self) -> str:
        text = f"{CARD_PREFIX}{self.vin}:{crypto.public_key_to_text(self.public_key)}"
        if self.issuer is not None:
            text += ":" + crypto.public_key_to_text(self.issuer)
        if self.adv_secret is not None:
            text += ADV_FIELD + privacy.check_secret(self.adv_secret).hex()
        return text

    def without_adv_secret(self) -> VehicleCard:
        return VehicleCard(self.vin, self.public_key, self.issuer)

    @classmethod
    def from_text(cls, text: str) -> VehicleCard:
        text = text.strip()
        if not text.startswith(CARD_PREFIX):
            raise InvalidCard(f"a vehicle card starts with {CARD_PREFIX!r}")
        adv_secret: bytes | None = None
        head, sep, adv_hex = text.rpartition(ADV_FIELD)
        if sep and ":" not in adv_hex:  # not a VIN that happens to read "ADV"
            if not _ADV_SECRET_RE.match(adv_hex.lower()):
                raise InvalidCard("a vehicle card's adv part is 32 hex digits")
            adv_secret = bytes.fromhex(adv_hex)
            text = head
        parts = text[len(CARD_PREFIX) :].split(":", 1)
        if len(parts) != 2:
            raise InvalidCard("a vehicle card is phonekey-card:1:<VIN>:p256:<hex>")
        keys = parts[1].split(":p256:") if ":p256:" in parts[1] else [parts[1]]
        if len(keys) > 2:
            raise InvalidCard("a vehicle card holds a vehicle key and at most one issuer key")
        try:
            vin = validate_vin(parts[0])
            key = crypto.public_key_from_text(keys[0])
            issuer = crypto.public_key_from_text(keys[1]) if len(keys) == 2 else None
        except ValueError as exc:
            raise InvalidCard(str(exc)) from None
        return cls(vin, key, issuer, adv_secret)


def advertised_tag(vin: str) -> bytes:
    """The static tag of advertising format 1 (legacy vehicles)."""
    return privacy.legacy_tag(vin)
