"""The vehicle card handed to phones, and the advertised vehicle tag.

A card is one line of text that a phone needs to pair with a vehicle::

    phonekey-card:1:<VIN>:p256:<compressed vehicle public key, hex>[:p256:<issuer key, hex>]

The optional last part is the credential issuer key the vehicle was
provisioned with, so a phone pins the issuer from the vehicle's own card
rather than trusting whatever key a cloud claims.

The advertised tag lets a phone pick its vehicle out of a scan without
connecting: the first 4 bytes of SHA-256("phonekey adv tag" || VIN). It is
static, so the car can be tracked by anyone who sees it twice; the threat
model records this and a later version rotates it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from . import crypto

CARD_PREFIX: Final = "phonekey-card:1:"
ADV_TAG_LEN: Final = 4
ADV_FORMAT_VERSION: Final = 1
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

    @property
    def vehicle_id(self) -> bytes:
        return crypto.key_id(self.public_key)

    def to_text(self) -> str:
        text = f"{CARD_PREFIX}{self.vin}:{crypto.public_key_to_text(self.public_key)}"
        if self.issuer is not None:
            text += ":" + crypto.public_key_to_text(self.issuer)
        return text

    @classmethod
    def from_text(cls, text: str) -> VehicleCard:
        text = text.strip()
        if not text.startswith(CARD_PREFIX):
            raise InvalidCard(f"a vehicle card starts with {CARD_PREFIX!r}")
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
        return cls(vin, key, issuer)


def advertised_tag(vin: str) -> bytes:
    return hashlib.sha256(b"phonekey adv tag" + vin.encode()).digest()[:ADV_TAG_LEN]
