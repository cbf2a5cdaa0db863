"""The envelope every signed object shares, and the errors verifying one raises.

Credentials, revocation lists and deltas, signed time, issuer rotations
(``credentials``) and owner-signed shares (``shares``) are all::

    format_version:u8 | object_type:u8 | body (construct) | signature (64 bytes)

with the ECDSA-P256-SHA256 signature (raw r||s, low-S) over
``"phonekey/v1 <object>" || format_version || object_type || body``
(docs/credentials.md). Verification raises a ``CredentialError`` subclass
and never returns False.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Final

import construct as c

from . import crypto

FORMAT_VERSION: Final = 1
HEADER_LEN: Final = 2
OBJECT_TYPE_CREDENTIAL: Final = 0x41
OBJECT_TYPE_REVOCATIONS: Final = 0x42
OBJECT_TYPE_SIGNED_TIME: Final = 0x43
OBJECT_TYPE_REVOCATION_DELTA: Final = 0x44
OBJECT_TYPE_ISSUER_ROTATION: Final = 0x45
OBJECT_TYPE_SHARE: Final = 0x46  # an owner-signed offline share (protocol/shares.py)

IssuerKeys = Mapping[bytes, crypto.PublicKey]
"""Trusted issuer public keys by key id (a vehicle holds one, or two during rotation)."""


class CredentialError(Exception):
    """Base of every refusal of an issuer-signed object."""


class CredentialMalformed(CredentialError):
    pass


class UnknownIssuer(CredentialError):
    pass


class CredentialSignatureInvalid(CredentialError):
    pass


class CredentialWrongVehicle(CredentialError):
    pass


class CredentialWrongHolder(CredentialError):
    pass


class CredentialNotYetValid(CredentialError):
    pass


class CredentialExpired(CredentialError):
    pass


class CredentialRevoked(CredentialError):
    pass


class CredentialRoleNotAllowed(CredentialError):
    """The issuer may not grant this role (e.g. a cloud credential naming an owner)."""


class StaleRevocationList(CredentialError):
    """A revocation list whose version is not newer than the one held."""


class SignedTimeRejected(CredentialError):
    """Signed time not bound to the nonce we chose, or otherwise unusable."""


class IssuerRotationRejected(CredentialError):
    """An issuer rotation that names a key it was not signed by, or rotates to itself."""


LABELS = {
    OBJECT_TYPE_CREDENTIAL: b"phonekey/v1 credential",
    OBJECT_TYPE_REVOCATIONS: b"phonekey/v1 revocation list",
    OBJECT_TYPE_SIGNED_TIME: b"phonekey/v1 signed time",
    OBJECT_TYPE_REVOCATION_DELTA: b"phonekey/v1 revocation delta",
    OBJECT_TYPE_ISSUER_ROTATION: b"phonekey/v1 issuer rotation",
    OBJECT_TYPE_SHARE: b"phonekey/v1 share",
}


def object_type(data: bytes) -> int | None:
    """The object type byte of an encoded signed object (None if too short):
    what a vehicle dispatches a presentation on."""
    return data[1] if len(data) >= HEADER_LEN else None


def _body_fields(obj: Any) -> dict[str, Any]:
    fields = {k: v for k, v in obj.__dict__.items() if k != "signature"}
    for name in ("revoked", "added"):
        if name in fields:
            fields[name] = list(fields[name])
    if "role" in fields:
        fields["role"] = int(fields["role"])
    return fields


def object_body(obj_type: int, struct: c.Construct, obj: Any) -> bytes:
    try:
        body: bytes = struct.build(_body_fields(obj))
    except c.ConstructError as exc:
        raise ValueError(f"cannot encode {type(obj).__name__}: {exc}") from None
    return bytes([FORMAT_VERSION, obj_type]) + body


def encode_object(obj_type: int, struct: c.Construct, obj: Any, signature: bytes) -> bytes:
    if len(signature) != crypto.SIGNATURE_LEN:
        raise ValueError(f"{type(obj).__name__} is not signed")
    return object_body(obj_type, struct, obj) + signature


def sign_object(issuer: crypto.PrivateKey, obj_type: int, struct: c.Construct, obj: Any) -> bytes:
    return crypto.sign(issuer, LABELS[obj_type] + object_body(obj_type, struct, obj))


def verify_object_signature(
    issuers: IssuerKeys,
    issuer_key_id: bytes,
    obj_type: int,
    struct: c.Construct,
    obj: Any,
    signature: bytes,
) -> None:
    issuer = issuers.get(issuer_key_id)
    if issuer is None:
        raise UnknownIssuer("signed by an issuer key this side does not trust")
    try:
        crypto.verify(issuer, signature, LABELS[obj_type] + object_body(obj_type, struct, obj))
    except (crypto.InvalidSignature, ValueError):
        raise CredentialSignatureInvalid("issuer signature does not verify") from None


def decode_object(obj_type: int, struct: c.Construct, data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < HEADER_LEN + crypto.SIGNATURE_LEN:
        raise CredentialMalformed("too short")
    if data[0] != FORMAT_VERSION:
        raise CredentialMalformed(f"format version {data[0]} (this side reads {FORMAT_VERSION})")
    if data[1] != obj_type:
        raise CredentialMalformed(f"object type 0x{data[1]:02x}, expected 0x{obj_type:02x}")
    body, signature = data[HEADER_LEN : -crypto.SIGNATURE_LEN], data[-crypto.SIGNATURE_LEN :]
    stream = io.BytesIO(body)
    try:
        parsed = struct.parse_stream(stream)
    except c.ConstructError:
        raise CredentialMalformed("truncated") from None
    if stream.tell() != len(body):
        raise CredentialMalformed("trailing bytes")
    fields = {k: v for k, v in parsed.items() if not k.startswith("_")}
    for key, value in fields.items():
        if isinstance(value, bytes | bytearray):
            fields[key] = bytes(value)
    return fields, bytes(signature)


def signed_message(obj_type: int, struct: c.Construct, obj: Any) -> bytes:
    """``label || format_version || object_type || body``: what a signature covers."""
    return LABELS[obj_type] + object_body(obj_type, struct, obj)
