"""Offline shares: an owner phone lends its vehicle to a friend's key.

A ``Share`` is a signed object like the issuer's credentials
(protocol/credentials.py: format version, object type ``0x46``, body, raw
ECDSA-P256-SHA256 signature over ``"phonekey/v1 share" || bytes before the
signature``), but signed by an OWNER phone key on the vehicle's whitelist
instead of the cloud issuer. So the vehicle verifies it with nothing but its
own state: no cloud, no issuer key needed.

A share grants DRIVER or GUEST (never OWNER, and never more than its signer
has) to one holder key on one vehicle, between ``not_before`` and
``not_after`` (inclusive, unix seconds), optionally only on some weekdays and
in a daily window of minutes, in local time at an explicit UTC offset:

- ``weekdays``: bit 0 Monday .. bit 6 Sunday; ``0x7F`` every day.
- ``start_minute``/``end_minute``: minutes after local midnight, the window is
  ``[start, end)``; ``0``/``1440`` is all day; ``start > end`` wraps past
  midnight, and the hours after midnight belong to the day the window opened
  on (a Friday 22:00-02:00 share works early Saturday, not early Friday).
- ``utc_offset_minutes``: local time = UTC + offset (-720..+840); the vehicle
  never guesses a time zone.

Verification raises a ``ShareError`` subclass (also a ``CredentialError``)
and never returns False; ``check_share_claims_at_time`` runs every cheap
check and returns the signer's key, ``verify_share_signature`` the one
public-key operation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import construct as c

from . import crypto
from .credentials import revocation_id
from .manage import SHARE_ID_LEN
from .signed_objects import (
    OBJECT_TYPE_SHARE,
    CredentialError,
    CredentialMalformed,
    decode_object,
    encode_object,
    sign_object,
    signed_message,
)
from .store import WhitelistEntry
from .types import Role

ALL_WEEKDAYS: Final = 0x7F
MINUTES_PER_DAY: Final = 1440
MIN_UTC_OFFSET: Final = -720  # UTC-12:00
MAX_UTC_OFFSET: Final = 840  # UTC+14:00
SHARE_SIZE: Final = 171
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)
WEEKDAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_Share = c.Struct(
    "vehicle_id" / c.Bytes(crypto.KEY_ID_LEN),
    "holder_key" / c.Bytes(crypto.COMPRESSED_POINT_LEN),
    "role" / c.Int8ub,
    "share_id" / c.Bytes(SHARE_ID_LEN),
    "not_before" / c.Int64ub,
    "not_after" / c.Int64ub,
    "weekdays" / c.Int8ub,
    "start_minute" / c.Int16ub,
    "end_minute" / c.Int16ub,
    "utc_offset_minutes" / c.Int16sb,
    "signer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
)


class ShareError(CredentialError):
    """Base of every refusal of a share."""


class ShareMalformed(ShareError, CredentialMalformed):
    pass


class ShareWrongVehicle(ShareError):
    pass


class ShareWrongHolder(ShareError):
    pass


class ShareRoleNotAllowed(ShareError):
    """OWNER, or a role above the signer's."""


class ShareSignerUnknown(ShareError):
    """The signer key is not on the vehicle's whitelist (never was, or removed)."""


class ShareSignerNotOwner(ShareError):
    pass


class ShareSignerRevoked(ShareError):
    pass


class ShareSignatureInvalid(ShareError):
    pass


class ShareRevoked(ShareError):
    pass


class ShareOutsideWindow(ShareError):
    """Not valid at this time: dates, weekday or daily hours."""


class ShareNotYetValid(ShareOutsideWindow):
    pass


class ShareExpired(ShareOutsideWindow):
    pass


@dataclass(frozen=True)
class Share:
    vehicle_id: bytes  # key id of the vehicle identity key
    holder_key: bytes  # compressed SEC1 point of the friend's phone key
    role: Role  # DRIVER or GUEST
    share_id: bytes  # 16 random bytes; what an owner revokes
    not_before: int  # unix seconds, inclusive
    not_after: int  # unix seconds, inclusive
    weekdays: int  # bit 0 Monday .. bit 6 Sunday
    start_minute: int  # 0..1439
    end_minute: int  # 1..1440
    utc_offset_minutes: int  # -720..840
    signer_key_id: bytes  # key id of the owner key that signed it
    signature: bytes = b""

    @property
    def holder_key_id(self) -> bytes:
        return crypto.key_id(crypto.public_key_from_bytes(self.holder_key))

    @property
    def all_day(self) -> bool:
        return self.start_minute == 0 and self.end_minute == MINUTES_PER_DAY

    def to_bytes(self) -> bytes:
        return encode_object(OBJECT_TYPE_SHARE, _Share, self, self.signature)

    def digest(self) -> bytes:
        """SHA-256 of the encoded share: what a request transcript binds."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        try:
            fields, signature = decode_object(OBJECT_TYPE_SHARE, _Share, data)
        except CredentialMalformed as exc:
            raise ShareMalformed(str(exc)) from None
        try:
            fields["role"] = Role(fields["role"])
        except ValueError:
            raise ShareMalformed(f"role {fields['role']} is not defined") from None
        share = cls(**fields, signature=signature)
        _check_fields(share)
        return share

    def allows_time(self, now: int) -> bool:
        try:
            check_share_window(self, now)
        except ShareOutsideWindow:
            return False
        return True


def _check_fields(share: Share) -> None:
    """Refuse field values the format does not define (as malformed)."""
    try:
        crypto.public_key_from_bytes(share.holder_key)
    except crypto.InvalidKeyEncoding as exc:
        raise ShareMalformed(f"holder key invalid: {exc}") from None
    if not 0 < share.weekdays <= ALL_WEEKDAYS:
        raise ShareMalformed(f"weekdays mask 0x{share.weekdays:02x} (allowed 0x01..0x7f)")
    if not 0 <= share.start_minute < MINUTES_PER_DAY:
        raise ShareMalformed(f"start minute {share.start_minute} (allowed 0..1439)")
    if not 0 < share.end_minute <= MINUTES_PER_DAY:
        raise ShareMalformed(f"end minute {share.end_minute} (allowed 1..1440)")
    if share.start_minute == share.end_minute:
        raise ShareMalformed("an empty daily window (start = end); use 0..1440 for all day")
    if not MIN_UTC_OFFSET <= share.utc_offset_minutes <= MAX_UTC_OFFSET:
        raise ShareMalformed(
            f"UTC offset {share.utc_offset_minutes} min "
            f"(allowed {MIN_UTC_OFFSET}..{MAX_UTC_OFFSET})"
        )
    if share.not_after < share.not_before:
        raise ShareMalformed("not_after is before not_before")
    if len(share.share_id) != SHARE_ID_LEN or len(share.signer_key_id) != crypto.KEY_ID_LEN:
        raise ShareMalformed("share id and signer key id are 16 bytes")


# --- issuing (owner phone) ---------------------------------------------------------
def issue_share(
    owner: crypto.PrivateKey,
    *,
    vehicle_id: bytes,
    holder_key: crypto.PublicKey,
    role: Role,
    not_before: int,
    not_after: int,
    weekdays: int = ALL_WEEKDAYS,
    start_minute: int = 0,
    end_minute: int = MINUTES_PER_DAY,
    utc_offset_minutes: int = 0,
    share_id: bytes | None = None,
    rng: crypto.Random = os.urandom,
) -> Share:
    """A share signed by ``owner`` (which must be an owner key on the vehicle
    for it to work). Raises ``ValueError`` for a role above GUEST/DRIVER or a
    field the format refuses."""
    role = Role(role)
    if role is Role.OWNER:
        raise ValueError("a share cannot grant the owner role")
    unsigned = Share(
        vehicle_id=bytes(vehicle_id),
        holder_key=crypto.public_bytes(holder_key),
        role=role,
        share_id=share_id if share_id is not None else rng(SHARE_ID_LEN),
        not_before=not_before,
        not_after=not_after,
        weekdays=weekdays,
        start_minute=start_minute,
        end_minute=end_minute,
        utc_offset_minutes=utc_offset_minutes,
        signer_key_id=crypto.key_id(owner.public_key()),
    )
    try:
        _check_fields(unsigned)
    except ShareMalformed as exc:
        raise ValueError(str(exc)) from None
    if len(unsigned.vehicle_id) != crypto.KEY_ID_LEN:
        raise ValueError(f"vehicle id must be {crypto.KEY_ID_LEN} bytes")
    return replace(unsigned, signature=sign_object(owner, OBJECT_TYPE_SHARE, _Share, unsigned))


# --- verifying (vehicle) ---------------------------------------------------------------
SignerLookup = Callable[[bytes], WhitelistEntry | None]
"""Key id -> the vehicle's whitelist entry (``VehicleStore.whitelist_entry``)."""


def check_share_window(share: Share, now: int) -> None:
    """Raise ``ShareNotYetValid``/``ShareExpired``/``ShareOutsideWindow`` unless
    ``share`` is valid at ``now`` (unix seconds, UTC)."""
    if now < share.not_before:
        raise ShareNotYetValid(f"share valid from {share.not_before}, now {now}")
    if now > share.not_after:
        raise ShareExpired(f"share expired at {share.not_after}, now {now}")
    local = now + share.utc_offset_minutes * 60
    day, second = divmod(local, 86400)
    minute = second // 60
    weekday = (day + _EPOCH_WEEKDAY) % 7
    if share.all_day:
        opened_on = weekday
    elif share.start_minute < share.end_minute:
        if not share.start_minute <= minute < share.end_minute:
            raise ShareOutsideWindow(f"{_hhmm(minute)} is outside the hours {_hours(share)}")
        opened_on = weekday
    elif minute >= share.start_minute:
        opened_on = weekday
    elif minute < share.end_minute:
        opened_on = (weekday - 1) % 7  # after midnight: the window opened yesterday
    else:
        raise ShareOutsideWindow(f"{_hhmm(minute)} is outside the hours {_hours(share)}")
    if not share.weekdays >> opened_on & 1:
        raise ShareOutsideWindow(
            f"the share is not valid on {WEEKDAY_NAMES[opened_on]} "
            f"(UTC{share.utc_offset_minutes:+d} min)"
        )


def check_share_claims_at_time(
    share: Share,
    *,
    signer: SignerLookup,
    vehicle_id: bytes,
    now: int,
    holder_key_id: bytes | None = None,
    is_share_revoked: Callable[[bytes], bool] | None = None,
    is_key_revoked: Callable[[bytes], bool] | None = None,
) -> crypto.PublicKey:
    """Every check but the signature; returns the signer's public key.

    Order: vehicle, role, holder, signer known / owner / not revoked (asked
    about ``revocation_id(vehicle_id, signer key id)``), role at most the
    signer's, share not revoked, window."""
    if not crypto.constant_time_equal(share.vehicle_id, vehicle_id):
        raise ShareWrongVehicle("share is for another vehicle")
    if share.role is Role.OWNER:
        raise ShareRoleNotAllowed("a share cannot grant the owner role")
    if holder_key_id is not None and not crypto.constant_time_equal(
        share.holder_key_id, holder_key_id
    ):
        raise ShareWrongHolder("share names another holder key")
    entry = signer(share.signer_key_id)
    if entry is None:
        raise ShareSignerUnknown("the share's signer is not on this vehicle's whitelist")
    if not entry.role.may_manage():
        raise ShareSignerNotOwner(
            f"the share's signer is a {entry.role.name.lower()}, not an owner"
        )
    if not share.role.at_most(entry.role):
        raise ShareRoleNotAllowed("a share cannot grant more than its signer has")
    if is_key_revoked is not None and is_key_revoked(
        revocation_id(vehicle_id, share.signer_key_id)
    ):
        raise ShareSignerRevoked("the share's signer key is revoked")
    if is_share_revoked is not None and is_share_revoked(share.share_id):
        raise ShareRevoked("an owner revoked this share")
    check_share_window(share, now)
    return crypto.public_key_from_bytes(entry.public_key)


def verify_share_signature(share: Share, signer_key: crypto.PublicKey) -> None:
    if crypto.key_id(signer_key) != share.signer_key_id:
        raise ShareSignatureInvalid("the key given is not the share's signer")
    try:
        crypto.verify(signer_key, share.signature, signed_message(OBJECT_TYPE_SHARE, _Share, share))
    except (crypto.InvalidSignature, ValueError):
        raise ShareSignatureInvalid("the owner's signature does not verify") from None


def verify_share_at_time(
    share: Share,
    *,
    signer: SignerLookup,
    vehicle_id: bytes,
    now: int,
    holder_key_id: bytes | None = None,
    is_share_revoked: Callable[[bytes], bool] | None = None,
    is_key_revoked: Callable[[bytes], bool] | None = None,
) -> None:
    """Raise a ``ShareError`` unless ``share`` authorises its holder on
    ``vehicle_id`` at ``now``: the claims, then the signer's signature."""
    signer_key = check_share_claims_at_time(
        share,
        signer=signer,
        vehicle_id=vehicle_id,
        now=now,
        holder_key_id=holder_key_id,
        is_share_revoked=is_share_revoked,
        is_key_revoked=is_key_revoked,
    )
    verify_share_signature(share, signer_key)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _hours(share: Share) -> str:
    return f"{_hhmm(share.start_minute)}-{_hhmm(share.end_minute)}"
