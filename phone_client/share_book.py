"""Offline shares on the phone: the text they travel in, and the ones held.

An owner's phone signs a share for a friend's key (``protocol.shares``) and
prints it as one line of text with the vehicle card in front, so the friend
needs nothing else to find and talk to the vehicle::

    phonekey-share:1:<vehicle card>:<base64url of the 171-byte share + the
                                      owner's 33-byte compressed public key>

The owner's key lets the friend's phone check the share's signature at
import, so a share damaged on the way is refused at once rather than at the
car (the vehicle still checks that key is one of its owners). Texts without
the key (171 bytes only) are still accepted; the vehicle checks those.

The card has colons of its own; the share part (base64url) has none, so the
text splits at its last colon.

Both sides keep records in ``phone.json`` under the vehicle's entry
(``KeyStore.update_entry``): ``shares.imported`` (the friend presents them to
the vehicle like a credential) and ``shares.issued`` (the owner lists and
revokes them). Records expired for more than ``PRUNE_AFTER`` seconds are
dropped whenever the list is written, so the file does not grow for ever.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from protocol import Role, crypto
from protocol.card import InvalidCard, VehicleCard
from protocol.shares import (
    ALL_WEEKDAYS,
    SHARE_SIZE,
    WEEKDAY_NAMES,
    Share,
    ShareError,
    verify_share_signature,
)

from .errors import KeyStoreError, ShareTextError, UnknownShare, UnknownVehicle
from .keystore import KeyStore

SHARE_TEXT_PREFIX: Final = "phonekey-share:1:"
PRUNE_AFTER: Final = 30 * 86400
MIN_SHARE_ID_PREFIX: Final = 4  # hex digits of a share id accepted as a unique prefix


def share_text(card: VehicleCard, share: Share, owner_key: crypto.PublicKey | None = None) -> str:
    payload = share.to_bytes()
    if owner_key is not None:
        payload += crypto.public_bytes(owner_key)
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")
    return f"{SHARE_TEXT_PREFIX}{card.to_text()}:{encoded}"


def parse_share_text(text: str) -> tuple[VehicleCard, Share]:
    """The card and share in ``text``; raises ``ShareTextError`` for anything else."""
    text = text.strip()
    if not text.startswith(SHARE_TEXT_PREFIX):
        raise ShareTextError(f"not a phonekey share (it should start with {SHARE_TEXT_PREFIX!r})")
    card_text, sep, encoded = text[len(SHARE_TEXT_PREFIX) :].rpartition(":")
    if not sep:
        raise ShareTextError("the share text has no vehicle card part")
    try:
        card = VehicleCard.from_text(card_text)
    except InvalidCard as exc:
        raise ShareTextError(f"the share text's vehicle card is invalid: {exc}") from None
    share = _decode_share(encoded)
    if share.vehicle_id != card.vehicle_id:
        raise ShareTextError("the share names another vehicle than the card it came with")
    return card, share


def _decode_share(encoded: str) -> Share:
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise ShareTextError("the share part is not base64url") from None
    owner_bytes = b""
    if len(raw) == SHARE_SIZE + crypto.COMPRESSED_POINT_LEN:
        raw, owner_bytes = raw[:SHARE_SIZE], raw[SHARE_SIZE:]
    try:
        share = Share.from_bytes(raw)
    except ShareError as exc:
        raise ShareTextError(f"the share is malformed: {exc}") from None
    if owner_bytes:
        try:
            verify_share_signature(share, crypto.public_key_from_bytes(owner_bytes))
        except (crypto.InvalidKeyEncoding, ShareError) as exc:
            raise ShareTextError(f"the share does not verify: {exc}") from None
    return share


@dataclass(frozen=True)
class HeldShare:
    """A share this phone imported or issued, as recorded."""

    share: Share
    recorded_at: int  # when it was imported or issued
    revoked_at: int | None = None  # issued shares: when the vehicle confirmed a revocation

    @property
    def share_id(self) -> str:
        return self.share.share_id.hex()

    def state(self, now: int) -> str:
        """ "revoked", "expired", "not yet valid" or "valid" (dates only)."""
        if self.revoked_at is not None:
            return "revoked"
        if now > self.share.not_after:
            return "expired"
        if now < self.share.not_before:
            return "not yet valid"
        return "valid"


class ShareBook:
    """The shares one phone holds, per vehicle, in its key store."""

    def __init__(self, keystore: KeyStore, *, clock: Callable[[], float] = time.time) -> None:
        self.keystore = keystore
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    # --- issued (owner) ------------------------------------------------------------
    def record_issued(self, vin: str, share: Share) -> None:
        """Keep ``share`` (issued by this phone) so it can be listed and revoked."""
        record = {"share": _b64(share), "recorded_at": self.now()}
        self._update(vin, "issued", lambda records: [*records, record])

    def issued(self, vin: str) -> list[HeldShare]:
        return self._held(vin, "issued")

    def find_issued(self, vin: str, share_id: str) -> HeldShare:
        """The issued share whose id is ``share_id`` (hex, or a unique prefix of
        at least ``MIN_SHARE_ID_PREFIX`` digits); raises ``UnknownShare``."""
        wanted = share_id.strip().lower()
        if len(wanted) < MIN_SHARE_ID_PREFIX or not all(c in "0123456789abcdef" for c in wanted):
            raise UnknownShare(
                f"{share_id!r} is not a share id (hex, at least {MIN_SHARE_ID_PREFIX} digits)"
            )
        matches = [held for held in self.issued(vin) if held.share_id.startswith(wanted)]
        if not matches:
            raise UnknownShare(
                f"this phone issued no share {wanted} for vehicle {vin}; "
                f"list them with `phonekey phone shares --vin {vin}`"
            )
        if len(matches) > 1:
            raise UnknownShare(f"share id prefix {wanted} is ambiguous; give more digits")
        return matches[0]

    def mark_revoked(self, vin: str, share_id: bytes) -> None:
        now = self.now()

        def revoke(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for record in records:
                if _record_share(record).share_id == share_id:
                    record["revoked_at"] = now
            return records

        self._update(vin, "issued", revoke)

    # --- imported (friend) -----------------------------------------------------------
    def import_text(self, text: str) -> tuple[VehicleCard, Share]:
        """Check a share text for this phone and keep its share; the vehicle is
        added (card and issuer) if the phone does not hold it yet."""
        card, share = parse_share_text(text)
        if share.holder_key_id != self.keystore.key_id():
            raise ShareTextError(
                f"the share is for key {share.holder_key_id[:4].hex()}, not this phone's key "
                f"{self.keystore.key_id()[:4].hex()}; send the owner `phonekey phone pubkey`"
            )
        if share.role is Role.OWNER:
            raise ShareTextError("the share claims the owner role, which no share can grant")
        if self.now() > share.not_after:
            raise ShareTextError(f"the share expired at {utc_minute(share.not_after)}")
        try:
            held = self.keystore.vehicle(card.vin)
        except UnknownVehicle:
            held = None
        if held is not None and held.public_key != card.public_key:
            raise ShareTextError(
                f"this phone holds another card for vehicle {card.vin} (vehicle id "
                f"{held.vehicle_id[:4].hex()}, the share's is {card.vehicle_id[:4].hex()})"
            )
        if held is None:
            self.keystore.add_vehicle(card)
        record = {"share": _b64(share), "recorded_at": self.now()}
        self._update(
            card.vin,
            "imported",
            lambda records: [
                *(r for r in records if _record_share(r).share_id != share.share_id),
                record,
            ],
        )
        return card, share

    def imported(self, vin: str) -> list[HeldShare]:
        return self._held(vin, "imported")

    def to_present(self, vin: str) -> Share | None:
        """The imported share to present to ``vin`` now: one valid by this phone's
        clock if any (best role, longest lasting), else the next one to open;
        None if every held share has expired (the vehicle would refuse them)."""
        now = self.now()
        candidates = [h.share for h in self.imported(vin) if now <= h.share.not_after]
        if not candidates:
            return None
        return max(
            candidates,
            key=lambda s: (s.allows_time(now), -s.role.value, -s.not_before, s.not_after),
        )

    # --- storage -------------------------------------------------------------------
    def _held(self, vin: str, kind: str) -> list[HeldShare]:
        records = self.keystore.entry(vin).get("shares", {}).get(kind, [])
        return [
            HeldShare(_record_share(r), int(r.get("recorded_at", 0)), r.get("revoked_at"))
            for r in records
        ]

    def _update(
        self,
        vin: str,
        kind: str,
        change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> None:
        horizon = self.now() - PRUNE_AFTER

        def apply(entry: dict[str, Any]) -> bool:
            shares = entry.setdefault("shares", {})
            records = change(list(shares.get(kind, [])))
            shares[kind] = [r for r in records if _record_share(r).not_after >= horizon]
            return True

        self.keystore.update_entry(vin, apply)


def _b64(share: Share) -> str:
    return base64.b64encode(share.to_bytes()).decode("ascii")


def _record_share(record: dict[str, Any]) -> Share:
    try:
        return Share.from_bytes(base64.b64decode(record["share"], validate=True))
    except (ShareError, binascii.Error, ValueError, KeyError) as exc:
        raise KeyStoreError(f"a share stored in phone.json is corrupt ({exc})") from None


# --- describing a share -----------------------------------------------------------------
def offset_text(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def local_minute(unix: int, offset_minutes: int) -> str:
    tz = timezone(timedelta(minutes=offset_minutes))
    return datetime.fromtimestamp(unix, tz).strftime("%Y-%m-%d %H:%M")


def utc_minute(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def days_text(mask: int) -> str:
    if mask == ALL_WEEKDAYS:
        return "every day"
    return ",".join(name for bit, name in enumerate(WEEKDAY_NAMES) if mask >> bit & 1)


def window_text(share: Share) -> str:
    """E.g. ``2025-03-01 00:00 to 2025-03-31 23:59 UTC+01:00, mon,fri 08:00-18:00``."""
    offset = share.utc_offset_minutes
    text = (
        f"{local_minute(share.not_before, offset)} to {local_minute(share.not_after, offset)} "
        f"{offset_text(offset)}"
    )
    if share.weekdays != ALL_WEEKDAYS or not share.all_day:
        text += f", {days_text(share.weekdays)}"
        if not share.all_day:
            text += f" {_hhmm(share.start_minute)}-{_hhmm(share.end_minute)}"
    return text


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def holder_text(share: Share) -> str:
    return crypto.key_id(crypto.public_key_from_bytes(share.holder_key))[:4].hex()
