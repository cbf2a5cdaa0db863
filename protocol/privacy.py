"""Private advertising: rotating, resolvable vehicle tags and addresses (sans-IO).

A vehicle must be findable by its own phones without a bystander learning
which car it is or linking two sightings of it. This follows BLE's
resolvable private addresses (Core 5.x Vol 3 Part C 10.8.2, Vol 3 Part H
2.2.2): a random part and a keyed hash of it, so that only a holder of the
key can tell that the two belong together.

Keys. Every vehicle has a 16-byte *advertising secret*, derived from its
identity private key (``derive_adv_secret``): no extra state, nothing new on
flash, and it stays the same for the vehicle's life (a factory reset keeps
the identity, so it keeps the secret). Phones learn it from the vehicle card
(``...:adv:<32 hex>``); share texts embed the card, so share holders resolve
too. Two sub-keys are derived from it with HMAC-SHA256 and their own labels:
the tag key and the address IRK.

Epochs. Time is cut into epochs of ``rotation`` seconds (default 900, i.e.
15 minutes) of unix time: ``epoch = floor(now / rotation)``. Everything
advertised is a function of (secret, epoch), so it changes at every epoch
boundary and a restart within an epoch shows the same identity.

Tag (manufacturer data, format version 2)::

    prand = HMAC-SHA256(tag_key, "phonekey adv prand v1" || epoch as u64 BE)[:2]
    hash  = HMAC-SHA256(tag_key, "phonekey adv v1" || prand)[:3]
    tag   = prand || hash                                          (5 bytes)

A phone resolves a tag with no clock at all: it recomputes ``hash`` from the
advertised ``prand`` for each card it holds and compares in constant time.
So a vehicle's ``--adv-rotation`` and clock drift never matter to phones,
which is why the epoch is not an input to the resolver (unlike "current
epoch +- 1", which would tie phones to the vehicle's period and clock).

Address: a BLE resolvable private address per epoch, exactly as the Core
spec builds one (AES-128 ``ah``), with ``irk`` as the IRK::

    p     = HMAC-SHA256(irk, "phonekey adv addr v1" || epoch as u64 BE)[:3]
    prand = p with its top two bits set to 0b01 (random part not all 0 / all 1)
    addr  = prand || ah(irk, prand)                 (6 bytes, most significant first)

Stacks that show addresses could resolve it with the IRK too; phones use the
tag, since some operating systems (iOS, macOS) hide advertiser addresses.

What a bystander sees: the phonekey service UUID and format version (a
phonekey vehicle is here), a tag and an address that look random and change
every epoch. Limits: with a 16-bit prand, the same vehicle repeats its tag in
two given epochs with probability 2^-16 (BLE RPAs have the same property with
22 bits), which links that pair (docs/threat-model.md).

Challenge tag. Whoever connects gets a Challenge; naming the vehicle there by
its key id would hand every bystander who connects a stable identifier. The
Challenge carries instead::

    vehicle tag = HMAC-SHA256(vehicle public key, uncompressed (65 bytes),
                              "phonekey challenge vehicle tag v1" || nonce)[:16]

which a phone holding the card (and so the key) recomputes to check it
reached its vehicle, and which looks random and changes with every
challenge to anyone else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import crypto

ADV_SECRET_LEN: Final = 16
DEFAULT_ADV_ROTATION: Final = 900.0  # seconds: 15 minutes, as phones rotate RPAs
MIN_ADV_ROTATION: Final = 1.0
PRIVATE_FORMAT_VERSION: Final = 2  # manufacturer data: version || prand || hash
LEGACY_FORMAT_VERSION: Final = 1  # manufacturer data: version || SHA-256 tag of the VIN
PRAND_LEN: Final = 2
HASH_LEN: Final = 3
TAG_LEN: Final = PRAND_LEN + HASH_LEN
LEGACY_TAG_LEN: Final = 4
ADDRESS_LEN: Final = 6

_SECRET_SALT: Final = b"phonekey adv secret v1"
_SECRET_INFO: Final = b"advertising secret"
_TAG_KEY_LABEL: Final = b"phonekey adv tag key v1"
_IRK_LABEL: Final = b"phonekey adv irk v1"
_PRAND_LABEL: Final = b"phonekey adv prand v1"
_HASH_LABEL: Final = b"phonekey adv v1"
_ADDRESS_LABEL: Final = b"phonekey adv addr v1"
_RANDOM_BITS_MASK: Final = (1 << 22) - 1
_CHALLENGE_TAG_LABEL: Final = b"phonekey challenge vehicle tag v1"
CHALLENGE_TAG_LEN: Final = 16


def challenge_vehicle_tag(vehicle_point: bytes, nonce: bytes) -> bytes:
    """The Challenge's vehicle tag for ``nonce``, keyed by the vehicle's
    uncompressed public point (see the module docstring)."""
    if len(vehicle_point) != crypto.UNCOMPRESSED_POINT_LEN:
        raise ValueError("the vehicle tag is keyed by the 65-byte uncompressed point")
    return _hmac(vehicle_point, _CHALLENGE_TAG_LABEL + nonce)[:CHALLENGE_TAG_LEN]


def derive_adv_secret(identity: crypto.PrivateKey) -> bytes:
    """The vehicle's advertising secret: HKDF-SHA256 over its identity scalar."""
    scalar = identity.private_numbers().private_value.to_bytes(32, "big")
    return crypto.hkdf_sha256(scalar, salt=_SECRET_SALT, info=_SECRET_INFO, length=ADV_SECRET_LEN)


def check_secret(secret: bytes) -> bytes:
    if len(secret) != ADV_SECRET_LEN:
        raise ValueError(f"an advertising secret is {ADV_SECRET_LEN} bytes, not {len(secret)}")
    return bytes(secret)


def epoch_of(now: float, rotation: float = DEFAULT_ADV_ROTATION) -> int:
    """The advertising epoch that unix time ``now`` falls in."""
    if rotation < MIN_ADV_ROTATION:
        raise ValueError(f"the advertising rotation must be at least {MIN_ADV_ROTATION:g} s")
    return int(now // rotation)


def next_rotation(now: float, rotation: float = DEFAULT_ADV_ROTATION) -> float:
    """Unix time at which the epoch after ``now``'s begins."""
    return (epoch_of(now, rotation) + 1) * rotation


def _hmac(key: bytes, message: bytes) -> bytes:
    return crypto.hmac_sha256(key, message)


def _subkey(secret: bytes, label: bytes) -> bytes:
    return _hmac(check_secret(secret), label)[:16]


def _epoch_bytes(epoch: int) -> bytes:
    if not 0 <= epoch < 1 << 64:
        raise ValueError("epoch out of range")
    return epoch.to_bytes(8, "big")


def _tag_hash(tag_key: bytes, prand: bytes) -> bytes:
    return _hmac(tag_key, _HASH_LABEL + prand)[:HASH_LEN]


def tag_for_epoch(secret: bytes, epoch: int) -> bytes:
    """The 5-byte tag the vehicle with ``secret`` advertises during ``epoch``."""
    tag_key = _subkey(secret, _TAG_KEY_LABEL)
    prand = _hmac(tag_key, _PRAND_LABEL + _epoch_bytes(epoch))[:PRAND_LEN]
    return prand + _tag_hash(tag_key, prand)


def resolves(secret: bytes, tag: bytes) -> bool:
    """Whether ``tag`` was made with ``secret`` (in any epoch); constant time in the hash."""
    if len(tag) != TAG_LEN:
        return False
    expected = _tag_hash(_subkey(secret, _TAG_KEY_LABEL), tag[:PRAND_LEN])
    return crypto.constant_time_equal(expected, tag[PRAND_LEN:])


def ah(irk: bytes, prand: bytes) -> bytes:
    """BLE's random address hash (Core Vol 3 Part H 2.2.2), big-endian in and out."""
    if len(irk) != 16 or len(prand) != 3:
        raise ValueError("ah takes a 16-byte IRK and a 3-byte prand")
    encryptor = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 - one block, as the spec's e()
    block = encryptor.update(bytes(13) + prand) + encryptor.finalize()
    return block[-3:]


def address_irk(secret: bytes) -> bytes:
    """The IRK of the vehicle's resolvable private addresses."""
    return _subkey(secret, _IRK_LABEL)


def address_for_epoch(secret: bytes, epoch: int) -> bytes:
    """The 6-byte resolvable private address (most significant byte first) for ``epoch``."""
    irk = address_irk(secret)
    value = int.from_bytes(_hmac(irk, _ADDRESS_LABEL + _epoch_bytes(epoch))[:3], "big")
    random_bits = value & _RANDOM_BITS_MASK
    if random_bits in (0, _RANDOM_BITS_MASK):  # the spec forbids all-0 and all-1
        random_bits ^= 1
    prand = ((0b01 << 22) | random_bits).to_bytes(3, "big")
    return prand + ah(irk, prand)


def address_resolves(secret: bytes, address: bytes) -> bool:
    """Whether a 6-byte address (most significant byte first) is an RPA of ``secret``."""
    if len(address) != ADDRESS_LEN or address[0] >> 6 != 0b01:
        return False
    return crypto.constant_time_equal(ah(address_irk(secret), address[:3]), address[3:])


def address_text(address: bytes) -> str:
    """``XX:XX:XX:XX:XX:XX``, most significant byte first, as BLE stacks print it."""
    return ":".join(f"{b:02X}" for b in address)


@dataclass(frozen=True)
class AdvTag:
    """A phonekey vehicle tag read from an advertisement's manufacturer data."""

    version: int
    tag: bytes


def parse_adv_payload(payload: bytes | None) -> AdvTag | None:
    """The tag in manufacturer data after the company id; None if not a known format."""
    if not payload:
        return None
    if payload[0] == PRIVATE_FORMAT_VERSION and len(payload) >= 1 + TAG_LEN:
        return AdvTag(PRIVATE_FORMAT_VERSION, bytes(payload[1 : 1 + TAG_LEN]))
    if payload[0] == LEGACY_FORMAT_VERSION and len(payload) >= 1 + LEGACY_TAG_LEN:
        return AdvTag(LEGACY_FORMAT_VERSION, bytes(payload[1 : 1 + LEGACY_TAG_LEN]))
    return None


def legacy_tag(vin: str) -> bytes:
    """The static tag of format 1 (before private advertising): SHA-256 of the VIN."""
    return hashlib.sha256(b"phonekey adv tag" + vin.encode()).digest()[:LEGACY_TAG_LEN]


def adv_payload(secret: bytes, epoch: int) -> bytes:
    """Manufacturer data after the company id for ``epoch``: version 2, then the tag."""
    return bytes([PRIVATE_FORMAT_VERSION]) + tag_for_epoch(secret, epoch)


def matches(seen: AdvTag, *, vin: str, secret: bytes | None) -> bool:
    """Whether ``seen`` names the vehicle of this VIN / advertising secret.

    Version 2 needs the secret; version 1 (vehicles from before private
    advertising) is matched by the VIN's static tag.
    """
    if seen.version == PRIVATE_FORMAT_VERSION:
        return secret is not None and resolves(secret, seen.tag)
    if seen.version == LEGACY_FORMAT_VERSION:
        return crypto.constant_time_equal(seen.tag, legacy_tag(vin))
    return False
