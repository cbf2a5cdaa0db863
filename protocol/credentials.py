"""Issuer-signed objects the vehicle verifies offline: credentials, revocation
lists and deltas, signed time, and issuer rotations.

All are compact binary (construct), start with a format version and an
object type, and end with an ECDSA-P256-SHA256 signature (raw r||s, low-S)
by the issuer over ``"phonekey/v1 <object>" || body``. Verification raises a
``CredentialError`` subclass and never returns False. Functions that depend
on the time take it as an argument (``*_at_time``), like cryptography's.

Revocation is per vehicle: list and delta entries are revocation ids,
``revocation_id(vehicle_id, key_id)``, never raw phone key ids. A raw key id
would revoke the key on every vehicle that trusts the issuer, so one owner
could lock a phone out of another owner's car (public keys are public: an
owner may enroll a stranger's key on their own car just to revoke it).

Issuer rotation: an ``IssuerRotation`` names the issuer's next key and is
signed by the current one, so a vehicle accepts a new issuer key only from a
key it already trusts; it keeps the signer too (docs/credentials.md section 8).

Authority: the cloud issuer may grant at most ``Role.DRIVER``. A credential
naming ``Role.OWNER`` is refused by the vehicle whatever its signature, so a
stolen cloud account or a compromised issuer key cannot mint an owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import construct as c

from . import crypto
from .signed_objects import (
    FORMAT_VERSION,
    OBJECT_TYPE_CREDENTIAL,
    OBJECT_TYPE_ISSUER_ROTATION,
    OBJECT_TYPE_REVOCATION_DELTA,
    OBJECT_TYPE_REVOCATIONS,
    OBJECT_TYPE_SHARE,
    OBJECT_TYPE_SIGNED_TIME,
    CredentialError,
    CredentialExpired,
    CredentialMalformed,
    CredentialNotYetValid,
    CredentialRevoked,
    CredentialRoleNotAllowed,
    CredentialSignatureInvalid,
    CredentialWrongHolder,
    CredentialWrongVehicle,
    IssuerKeys,
    IssuerRotationRejected,
    SignedTimeRejected,
    StaleRevocationList,
    UnknownIssuer,
    decode_object,
    encode_object,
    object_type,
    sign_object,
    signed_message,
    verify_object_signature,
)
from .types import Role

__all__ = [
    "FORMAT_VERSION",
    "OBJECT_TYPE_CREDENTIAL",
    "OBJECT_TYPE_SHARE",
    "CredentialError",
    "CredentialExpired",
    "CredentialMalformed",
    "CredentialNotYetValid",
    "CredentialRevoked",
    "CredentialRoleNotAllowed",
    "CredentialSignatureInvalid",
    "CredentialWrongHolder",
    "CredentialWrongVehicle",
    "IssuerKeys",
    "IssuerRotationRejected",
    "SignedTimeRejected",
    "StaleRevocationList",
    "UnknownIssuer",
    "decode_object",
    "encode_object",
    "object_type",
    "sign_object",
    "signed_message",
]

_OBJ_CREDENTIAL: Final = OBJECT_TYPE_CREDENTIAL
_OBJ_REVOCATIONS: Final = OBJECT_TYPE_REVOCATIONS
_OBJ_SIGNED_TIME: Final = OBJECT_TYPE_SIGNED_TIME
_OBJ_REVOCATION_DELTA: Final = OBJECT_TYPE_REVOCATION_DELTA
_OBJ_ISSUER_ROTATION: Final = OBJECT_TYPE_ISSUER_ROTATION

DEFAULT_VALIDITY: Final = 7 * 24 * 3600  # seconds
MAX_LEEWAY: Final = 300  # the most clock skew a vehicle may forgive, seconds
MAX_REVOKED: Final = 100_000
SIGNED_TIME_NONCE_LEN: Final = 16
HIGHEST_CLOUD_ROLE: Final = Role.DRIVER

MAX_DELTA_ENTRIES: Final = 16  # keeps a delta inside one protocol message
REVOCATION_ID_LEN: Final = 16
_REVOCATION_ID_LABEL: Final = b"phonekey/v1 revocation"


_Credential = c.Struct(
    "vehicle_id" / c.Bytes(crypto.KEY_ID_LEN),
    "holder_key" / c.Bytes(crypto.COMPRESSED_POINT_LEN),
    "role" / c.Int8ub,
    "not_before" / c.Int64ub,
    "not_after" / c.Int64ub,
    "serial" / c.Int64ub,
    "issuer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
)
_Revocations = c.Struct(
    "issuer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
    "version" / c.Int64ub,
    "issued_at" / c.Int64ub,
    "revoked" / c.PrefixedArray(c.Int32ub, c.Bytes(REVOCATION_ID_LEN)),
)
_RevocationDelta = c.Struct(
    "issuer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
    "from_version" / c.Int64ub,
    "to_version" / c.Int64ub,
    "added" / c.PrefixedArray(c.Int8ub, c.Bytes(REVOCATION_ID_LEN)),
)
_SignedTime = c.Struct(
    "issuer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
    "nonce" / c.Bytes(SIGNED_TIME_NONCE_LEN),
    "time" / c.Int64ub,
)
_IssuerRotation = c.Struct(
    "old_issuer_key_id" / c.Bytes(crypto.KEY_ID_LEN),
    "new_issuer_key" / c.Bytes(crypto.COMPRESSED_POINT_LEN),
    "issued_at" / c.Int64ub,
)


def revocation_id(vehicle_id: bytes, key_id: bytes) -> bytes:
    """The entry that revokes phone key ``key_id`` on vehicle ``vehicle_id`` only.

    ``SHA-256("phonekey/v1 revocation" || vehicle_id || key_id)[:16]``, both
    ids 16 bytes. Binding the vehicle means a revocation made for one vehicle
    (by its owner) cannot lock the same phone key out of any other vehicle.
    """
    if len(vehicle_id) != crypto.KEY_ID_LEN or len(key_id) != crypto.KEY_ID_LEN:
        raise ValueError(f"vehicle and key ids must be {crypto.KEY_ID_LEN} bytes")
    digest = hashlib.sha256(_REVOCATION_ID_LABEL + vehicle_id + key_id).digest()
    return digest[:REVOCATION_ID_LEN]


@dataclass(frozen=True)
class Credential:
    vehicle_id: bytes  # key id of the vehicle identity key
    holder_key: bytes  # compressed SEC1 point of the phone key it authorises
    role: Role
    not_before: int  # unix seconds, inclusive
    not_after: int  # unix seconds, inclusive
    serial: int
    issuer_key_id: bytes
    signature: bytes = b""

    @property
    def holder_key_id(self) -> bytes:
        return crypto.key_id(crypto.public_key_from_bytes(self.holder_key))

    def to_bytes(self) -> bytes:
        return encode_object(_OBJ_CREDENTIAL, _Credential, self, self.signature)

    def digest(self) -> bytes:
        """SHA-256 of the encoded credential: what a command transcript binds."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Credential:
        fields, signature = decode_object(_OBJ_CREDENTIAL, _Credential, data)
        try:
            role = Role(fields["role"])
            crypto.public_key_from_bytes(fields["holder_key"])
        except (ValueError, crypto.InvalidKeyEncoding) as exc:
            raise CredentialMalformed(f"credential field invalid: {exc}") from None
        fields["role"] = role
        return cls(**fields, signature=signature)


@dataclass(frozen=True)
class RevocationList:
    """Revocation ids (``revocation_id(vehicle_id, key_id)``) the issuer
    revoked, each for one key on one vehicle; ``version`` only ever grows."""

    issuer_key_id: bytes
    version: int
    issued_at: int
    revoked: tuple[bytes, ...]  # revocation ids, sorted, distinct
    signature: bytes = b""

    def to_bytes(self) -> bytes:
        return encode_object(_OBJ_REVOCATIONS, _Revocations, self, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationList:
        fields, signature = decode_object(_OBJ_REVOCATIONS, _Revocations, data)
        revoked = tuple(bytes(k) for k in fields["revoked"])
        if len(revoked) > MAX_REVOKED or list(revoked) != sorted(set(revoked)):
            raise CredentialMalformed("revocation ids must be sorted, distinct and bounded")
        fields["revoked"] = revoked
        return cls(**fields, signature=signature)

    def is_revoked(self, rev_id: bytes) -> bool:
        """True if the revocation id ``rev_id`` is listed (see ``revocation_id``)."""
        return _sorted_contains(self.revoked, rev_id)


@dataclass(frozen=True)
class RevocationDelta:
    """The revocation ids added between two versions of the revocation list.

    Small enough for one BLE message, so a phone can hand a vehicle the news
    after an unlock; a vehicle applies it only on top of ``from_version``."""

    issuer_key_id: bytes
    from_version: int
    to_version: int
    added: tuple[bytes, ...]  # revocation ids
    signature: bytes = b""

    def to_bytes(self) -> bytes:
        return encode_object(_OBJ_REVOCATION_DELTA, _RevocationDelta, self, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationDelta:
        fields, signature = decode_object(_OBJ_REVOCATION_DELTA, _RevocationDelta, data)
        added = tuple(bytes(k) for k in fields["added"])
        if len(added) > MAX_DELTA_ENTRIES or fields["to_version"] <= fields["from_version"]:
            raise CredentialMalformed("a delta moves the version forward by at most 16 keys")
        fields["added"] = added
        return cls(**fields, signature=signature)


@dataclass(frozen=True)
class SignedTime:
    """The issuer's clock reading, bound to a nonce the vehicle chose."""

    issuer_key_id: bytes
    nonce: bytes
    time: int
    signature: bytes = b""

    def to_bytes(self) -> bytes:
        return encode_object(_OBJ_SIGNED_TIME, _SignedTime, self, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTime:
        fields, signature = decode_object(_OBJ_SIGNED_TIME, _SignedTime, data)
        return cls(**fields, signature=signature)


@dataclass(frozen=True)
class IssuerRotation:
    """The old issuer key vouching for its successor: "trust ``new_issuer_key``
    too". Signed by the old key (``old_issuer_key_id``), so a vehicle accepts a
    new issuer key only from a key it already trusts."""

    old_issuer_key_id: bytes
    new_issuer_key: bytes  # compressed SEC1 point of the new issuer key
    issued_at: int
    signature: bytes = b""

    @property
    def new_issuer_key_id(self) -> bytes:
        return crypto.key_id(self.new_public_key)

    @property
    def new_public_key(self) -> crypto.PublicKey:
        return crypto.public_key_from_bytes(self.new_issuer_key)

    def to_bytes(self) -> bytes:
        return encode_object(_OBJ_ISSUER_ROTATION, _IssuerRotation, self, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> IssuerRotation:
        fields, signature = decode_object(_OBJ_ISSUER_ROTATION, _IssuerRotation, data)
        try:
            crypto.public_key_from_bytes(fields["new_issuer_key"])
        except (ValueError, crypto.InvalidKeyEncoding) as exc:
            raise CredentialMalformed(f"new issuer key invalid: {exc}") from None
        return cls(**fields, signature=signature)


# --- issuing ------------------------------------------------------------------
def issue_credential(
    issuer: crypto.PrivateKey,
    *,
    vehicle_id: bytes,
    holder_key: crypto.PublicKey,
    role: Role,
    not_before: int,
    not_after: int,
    serial: int,
) -> Credential:
    if not_after < not_before:
        raise ValueError("not_after is before not_before")
    unsigned = Credential(
        vehicle_id=vehicle_id,
        holder_key=crypto.public_bytes(holder_key),
        role=role,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        issuer_key_id=crypto.key_id(issuer.public_key()),
    )
    return replace(unsigned, signature=sign_object(issuer, _OBJ_CREDENTIAL, _Credential, unsigned))


def issue_revocation_list(
    issuer: crypto.PrivateKey, *, version: int, issued_at: int, revoked: list[bytes]
) -> RevocationList:
    unsigned = RevocationList(
        issuer_key_id=crypto.key_id(issuer.public_key()),
        version=version,
        issued_at=issued_at,
        revoked=tuple(sorted(set(revoked))),
    )
    return replace(
        unsigned, signature=sign_object(issuer, _OBJ_REVOCATIONS, _Revocations, unsigned)
    )


def issue_revocation_delta(
    issuer: crypto.PrivateKey, *, from_version: int, to_version: int, added: list[bytes]
) -> RevocationDelta:
    if to_version <= from_version or len(added) > MAX_DELTA_ENTRIES:
        raise ValueError("a delta moves the version forward by at most 16 keys")
    unsigned = RevocationDelta(
        issuer_key_id=crypto.key_id(issuer.public_key()),
        from_version=from_version,
        to_version=to_version,
        added=tuple(added),
    )
    return replace(
        unsigned, signature=sign_object(issuer, _OBJ_REVOCATION_DELTA, _RevocationDelta, unsigned)
    )


def issue_signed_time(issuer: crypto.PrivateKey, *, nonce: bytes, time: int) -> SignedTime:
    if len(nonce) != SIGNED_TIME_NONCE_LEN:
        raise ValueError(f"nonce must be {SIGNED_TIME_NONCE_LEN} bytes")
    unsigned = SignedTime(crypto.key_id(issuer.public_key()), nonce, time)
    return replace(unsigned, signature=sign_object(issuer, _OBJ_SIGNED_TIME, _SignedTime, unsigned))


def issue_issuer_rotation(
    old_issuer: crypto.PrivateKey, new_issuer: crypto.PublicKey, issued_at: int
) -> IssuerRotation:
    """The old issuer key's statement that ``new_issuer`` succeeds it."""
    old_key_id = crypto.key_id(old_issuer.public_key())
    if crypto.key_id(new_issuer) == old_key_id:
        raise ValueError("an issuer key cannot rotate to itself")
    unsigned = IssuerRotation(
        old_issuer_key_id=old_key_id,
        new_issuer_key=crypto.public_bytes(new_issuer),
        issued_at=issued_at,
    )
    return replace(
        unsigned, signature=sign_object(old_issuer, _OBJ_ISSUER_ROTATION, _IssuerRotation, unsigned)
    )


# --- verifying ----------------------------------------------------------------


def verify_credential_at_time(
    credential: Credential,
    *,
    issuers: IssuerKeys,
    vehicle_id: bytes,
    now: int,
    leeway: int = MAX_LEEWAY,
    holder_key_id: bytes | None = None,
    is_revoked: Callable[[bytes], bool] | None = None,
) -> None:
    """Raise a ``CredentialError`` unless ``credential`` authorises its holder
    on ``vehicle_id`` at ``now`` (unix seconds), forgiving ``leeway`` seconds
    of clock skew at both ends of the window. ``is_revoked`` is asked about
    ``revocation_id(vehicle_id, holder key id)``, not the raw key id."""
    check_credential_claims_at_time(
        credential,
        issuers=issuers,
        vehicle_id=vehicle_id,
        now=now,
        leeway=leeway,
        holder_key_id=holder_key_id,
        is_revoked=is_revoked,
    )
    verify_credential_signature(credential, issuers=issuers)


def check_credential_claims_at_time(
    credential: Credential,
    *,
    issuers: IssuerKeys,
    vehicle_id: bytes,
    now: int,
    leeway: int = MAX_LEEWAY,
    holder_key_id: bytes | None = None,
    is_revoked: Callable[[bytes], bool] | None = None,
) -> None:
    """Every check but the signature: cheap, so a vehicle runs these first and
    spends a signature verification only on a credential that could pass."""
    if not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be 0..{MAX_LEEWAY} s")
    if credential.issuer_key_id not in issuers:
        raise UnknownIssuer("signed by an issuer key this side does not trust")
    if credential.vehicle_id != vehicle_id:
        raise CredentialWrongVehicle("credential is for another vehicle")
    if holder_key_id is not None and not crypto.constant_time_equal(
        credential.holder_key_id, holder_key_id
    ):
        raise CredentialWrongHolder("credential names another holder key")
    if credential.role.value < HIGHEST_CLOUD_ROLE.value:
        raise CredentialRoleNotAllowed(
            f"an issuer may grant at most {HIGHEST_CLOUD_ROLE.name.lower()}, "
            f"not {credential.role.name.lower()}"
        )
    if now + leeway < credential.not_before:
        raise CredentialNotYetValid(f"credential valid from {credential.not_before}, now {now}")
    if now - leeway > credential.not_after:
        raise CredentialExpired(f"credential expired at {credential.not_after}, now {now}")
    if is_revoked is not None and is_revoked(revocation_id(vehicle_id, credential.holder_key_id)):
        raise CredentialRevoked("the holder's key is revoked")


def verify_credential_signature(credential: Credential, *, issuers: IssuerKeys) -> None:
    verify_object_signature(
        issuers,
        credential.issuer_key_id,
        _OBJ_CREDENTIAL,
        _Credential,
        credential,
        credential.signature,
    )


def verify_revocation_list(
    revocations: RevocationList, *, issuers: IssuerKeys, newer_than: int | None = None
) -> None:
    verify_object_signature(
        issuers,
        revocations.issuer_key_id,
        _OBJ_REVOCATIONS,
        _Revocations,
        revocations,
        revocations.signature,
    )
    if newer_than is not None and revocations.version <= newer_than:
        raise StaleRevocationList(
            f"revocation list version {revocations.version} is not newer than {newer_than}"
        )


def verify_revocation_delta(delta: RevocationDelta, *, issuers: IssuerKeys) -> None:
    verify_object_signature(
        issuers,
        delta.issuer_key_id,
        _OBJ_REVOCATION_DELTA,
        _RevocationDelta,
        delta,
        delta.signature,
    )


def verify_signed_time(signed: SignedTime, *, issuers: IssuerKeys, expected_nonce: bytes) -> int:
    """Return the signed time if it answers our nonce; raise otherwise."""
    verify_object_signature(
        issuers, signed.issuer_key_id, _OBJ_SIGNED_TIME, _SignedTime, signed, signed.signature
    )
    if not crypto.constant_time_equal(signed.nonce, expected_nonce):
        raise SignedTimeRejected("signed time answers another nonce (replayed?)")
    return signed.time


def verify_issuer_rotation(rotation: IssuerRotation, *, issuers: IssuerKeys) -> None:
    """Raise a ``CredentialError`` unless ``rotation`` is signed by a trusted
    issuer key (``UnknownIssuer`` / ``CredentialSignatureInvalid``) and names
    a new key other than its signer (``IssuerRotationRejected``)."""
    verify_object_signature(
        issuers,
        rotation.old_issuer_key_id,
        _OBJ_ISSUER_ROTATION,
        _IssuerRotation,
        rotation,
        rotation.signature,
    )
    if rotation.new_issuer_key_id == rotation.old_issuer_key_id:
        raise IssuerRotationRejected("an issuer rotation names its own signer as the new key")


def _sorted_contains(items: tuple[bytes, ...], key: bytes) -> bool:
    import bisect

    index = bisect.bisect_left(items, key)
    return index < len(items) and items[index] == key
