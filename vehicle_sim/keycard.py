"""The simulated NFC keycard and the pairing window a tap opens.

A card is a P-256 private key in a PEM file (mode 0600): the simulated
secure element. Its id is ``crypto.key_id`` of its public key, like a phone
key's. The vehicle registers cards' public keys (``FirmwareStore.add_keycard``).

A tap is a challenge-response over the console's control socket: the vehicle
hands a fresh 16-byte nonce, the card signs ``tap_message`` (the vehicle id,
the nonce, the action and its argument) with ECDSA P-256 / SHA-256 (raw
r || s, low-S, as ``protocol.crypto.sign``), and the vehicle verifies against
its registered cards. A recorded tap is useless later (the nonce is single use
and short-lived) and cannot be turned into another action or replayed on
another vehicle (both are signed). Format: docs/firmware.md, vectors
in tests/vectors/keycard_v1.json.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm

from protocol import crypto

TAP_DOMAIN: Final = b"phonekey v1 keycard tap\x00"
NONCE_LEN: Final = 16
DEFAULT_WINDOW_SECONDS: Final = 30.0
MAX_WINDOW_SECONDS: Final = 300.0


class TapAction(enum.IntEnum):
    UNLOCK = 1
    LOCK = 2
    PAIR = 3  # open the enrollment window
    REMOVE_KEY = 4  # argument: the 16-byte key id to remove
    FACTORY_RESET = 5
    ADD_CARD = 6  # argument: the new card's 33-byte compressed public key

    @classmethod
    def from_name(cls, name: str) -> TapAction:
        try:
            return cls[name.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown keycard action {name!r}") from None

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


_ARGUMENT_LEN: Final = {TapAction.REMOVE_KEY: 16, TapAction.ADD_CARD: 33}


class KeycardError(Exception):
    """A card file that cannot be used, or a tap the vehicle refuses (one line)."""


def tap_message(vehicle_id: bytes, nonce: bytes, action: TapAction, argument: bytes = b"") -> bytes:
    """The bytes a card signs: domain || vehicle id (16) || nonce (16) || action (u8)
    || argument length (u8) || argument."""
    if len(vehicle_id) != 16 or len(nonce) != NONCE_LEN:
        raise ValueError("vehicle id and nonce must be 16 bytes")
    expected = _ARGUMENT_LEN.get(action, 0)
    if len(argument) != expected:
        raise ValueError(f"{action.label} takes a {expected}-byte argument")
    return TAP_DOMAIN + vehicle_id + nonce + struct.pack(">BB", action, len(argument)) + argument


def sign_tap(
    card: crypto.PrivateKey,
    vehicle_id: bytes,
    nonce: bytes,
    action: TapAction,
    argument: bytes = b"",
) -> bytes:
    return crypto.sign(card, tap_message(vehicle_id, nonce, action, argument))


def verify_tap(
    cards: Iterable[crypto.PublicKey],
    card_id: bytes,
    signature: bytes,
    vehicle_id: bytes,
    nonce: bytes,
    action: TapAction,
    argument: bytes = b"",
) -> crypto.PublicKey:
    """The registered card ``card_id`` if its signature verifies; else ``KeycardError``."""
    card = next((c for c in cards if crypto.constant_time_equal(crypto.key_id(c), card_id)), None)
    if card is None:
        raise KeycardError("this card is not registered with the vehicle")
    try:
        crypto.verify(card, signature, tap_message(vehicle_id, nonce, action, argument))
    except crypto.InvalidSignature:
        raise KeycardError("the card's answer does not verify") from None
    return card


# --- card files ------------------------------------------------------------------
def create_card(path: Path) -> crypto.PrivateKey:
    """Write a new card key to ``path`` (0600); refuse to overwrite anything."""
    key = crypto.generate_private_key()
    pem = crypto.private_key_to_pem(key)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeycardError(f"{path} already exists; not overwriting a card") from None
    except OSError as exc:
        raise KeycardError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise KeycardError(f"cannot write {path}: {exc.strerror or exc}") from None
    return key


def load_card(path: Path) -> crypto.PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeycardError(f"no card file {path}") from None
    except OSError as exc:
        raise KeycardError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return crypto.private_key_from_pem(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeycardError(f"{path} is not a keycard (no P-256 private key in PEM)") from None


def card_id(card: crypto.PrivateKey | crypto.PublicKey) -> bytes:
    public = card.public_key() if isinstance(card, crypto.PrivateKey) else card
    return crypto.key_id(public)


# --- the pairing (enrollment) window --------------------------------------------------
class PairingWindow:
    """protocol's ``EnrollmentWindow``: open for a while after a card tap,
    closed by the first enrollment it allows (``consume``) or when it times out.

    ``clock`` is monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._closes_at: float | None = None
        self.opened_by: bytes | None = None  # the card id of the tap

    def open(self, seconds: float, opened_by: bytes) -> None:
        if not 0 < seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"a pairing window lasts 0-{MAX_WINDOW_SECONDS:g} s")
        self._closes_at = self._clock() + seconds
        self.opened_by = opened_by

    def is_open(self) -> bool:
        return self._closes_at is not None and self._clock() < self._closes_at

    def remaining(self) -> float:
        if self._closes_at is None:
            return 0.0
        return max(0.0, self._closes_at - self._clock())

    def consume(self) -> None:
        self._closes_at = None
        self.opened_by = None

    close = consume
