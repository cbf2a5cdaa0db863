"""Transcript hashing and key derivation of the command handshake.

Request transcript hash (what the phone signs)::

    TH = SHA-256( "phonekey/v<N> request"
                  || u16 len || challenge message bytes exactly as sent
                  || vehicle identity public key, uncompressed (65 bytes)
                  || u16 len || request bytes without the signature )

When the phone presented a credential on the session (and only then), the
hash input continues with ``|| u16 len || SHA-256(credential bytes)``, so the
signature binds the credential it relies on.

The request bytes hold the chosen version, the version offer as received,
the nonce, the key id, the counter, the command and the phone's ephemeral key,
so the signature covers all of them. The phone signs TH with ECDSA-P256-SHA256.

Response key and MAC (what proves the vehicle's answer genuine)::

    Z   = ECDH(vehicle identity key, phone ephemeral key)
    K   = HKDF-SHA256(ikm=Z, salt=nonce, info="phonekey/v<N> response key" || TH)
    MAC = HMAC-SHA256(K, "phonekey/v<N> response" || TH || response bytes without MAC)

Only the holder of the vehicle's identity private key can compute Z, and K is
bound to TH, so the MAC tells the phone that the genuine vehicle answered
*this* request with *this* outcome.

A ManageRequest is hashed the same way under its own label ("manage
request"), and its response key and MAC use "manage response key" and
"manage response", so a signature or MAC of one kind is never valid for the
other.

Fast path (docs/protocol.md section 10)::

    FK  = HKDF-SHA256(ikm=Z, salt=TH, info="phonekey/v<N> fast-path key")
          (derived after an OK full handshake; Z and TH of that handshake)
    FTH = SHA-256( "phonekey/v<N> fast request"
                   || u16 len || challenge bytes || vehicle public key (65)
                   || u16 len || fast request bytes without the MAC )
    request MAC  = HMAC-SHA256(FK, "phonekey/v<N> fast request mac" || FTH)
    FK' = HKDF-SHA256(ikm=FK, salt=nonce, info="phonekey/v<N> fast response key" || FTH)
    response MAC = HMAC-SHA256(FK', "phonekey/v<N> fast response" || FTH || response bytes
                               without MAC)
"""

from __future__ import annotations

import functools
import hashlib

from . import crypto
from .codec import (
    fast_request_maced_part,
    manage_signed_part,
    request_signed_part,
    response_maced_part,
)
from .messages import (
    CommandRequest,
    CommandResponse,
    FastCommandRequest,
    ManageRequest,
    ManageResponse,
)

VehicleKey = crypto.PublicKey | bytes
"""The vehicle's identity key, or its uncompressed point (65 bytes): the
vehicle passes the point it computed once (``VehicleIdentity.public_point``)."""


@functools.lru_cache(maxsize=64)
def _label(version: int, what: str) -> bytes:
    return f"phonekey/v{version} {what}".encode()


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _transcript(
    label: bytes,
    challenge_bytes: bytes,
    vehicle_public_key: VehicleKey,
    request_part: bytes,
    credential_digest: bytes | None,
) -> bytes:
    h = hashlib.sha256()
    h.update(label)
    h.update(_framed(challenge_bytes))
    h.update(_uncompressed(vehicle_public_key))
    h.update(_framed(request_part))
    if credential_digest is not None:
        h.update(_framed(credential_digest))
    return h.digest()


def _uncompressed(key: VehicleKey) -> bytes:
    return key if isinstance(key, bytes) else crypto.public_bytes(key, compressed=False)


def request_transcript_hash(
    challenge_bytes: bytes,
    vehicle_public_key: VehicleKey,
    request: CommandRequest,
    credential_digest: bytes | None = None,
    *,
    signed_part: bytes | None = None,
) -> bytes:
    """``signed_part``: the request's bytes without the signature, as
    received. The vehicle hashes what it received instead of encoding the
    request again; the two are equal because decode accepts only the
    canonical encoding (tests/protocol/test_codec.py)."""
    return _transcript(
        _label(request.version, "request"),
        challenge_bytes,
        vehicle_public_key,
        request_signed_part(request) if signed_part is None else signed_part,
        credential_digest,
    )


def manage_transcript_hash(
    challenge_bytes: bytes,
    vehicle_public_key: VehicleKey,
    request: ManageRequest,
    credential_digest: bytes | None = None,
    *,
    signed_part: bytes | None = None,
) -> bytes:
    """What the phone signs for a ManageRequest: it binds the operation and
    its argument (both in the request bytes). ``signed_part`` as in
    ``request_transcript_hash``."""
    return _transcript(
        _label(request.version, "manage request"),
        challenge_bytes,
        vehicle_public_key,
        manage_signed_part(request) if signed_part is None else signed_part,
        credential_digest,
    )


def response_key(shared_secret: bytes, nonce: bytes, version: int, transcript_hash: bytes) -> bytes:
    return crypto.hkdf_sha256(
        shared_secret, salt=nonce, info=_label(version, "response key") + transcript_hash
    )


def response_mac(
    key: bytes, version: int, transcript_hash: bytes, response: CommandResponse | bytes
) -> bytes:
    return crypto.hmac_sha256(
        key, _label(version, "response") + transcript_hash + _maced_part(response)
    )


def manage_response_key(
    shared_secret: bytes, nonce: bytes, version: int, transcript_hash: bytes
) -> bytes:
    return crypto.hkdf_sha256(
        shared_secret, salt=nonce, info=_label(version, "manage response key") + transcript_hash
    )


def manage_response_mac(
    key: bytes, version: int, transcript_hash: bytes, response: ManageResponse | bytes
) -> bytes:
    return crypto.hmac_sha256(
        key, _label(version, "manage response") + transcript_hash + _maced_part(response)
    )


def _maced_part(response: CommandResponse | ManageResponse | bytes) -> bytes:
    """A response's bytes without its MAC; bytes are taken as already that
    (the vehicle encodes its response once: ``codec.response_maced_part``)."""
    return response if isinstance(response, bytes) else response_maced_part(response)


# --- fast path -------------------------------------------------------------------
def fast_path_key(shared_secret: bytes, version: int, transcript_hash: bytes) -> bytes:
    """The persistent fast-path key of a full handshake (its Z and TH)."""
    return crypto.hkdf_sha256(
        shared_secret, salt=transcript_hash, info=_label(version, "fast-path key")
    )


def fast_transcript_hash(
    challenge_bytes: bytes,
    vehicle_public_key: VehicleKey,
    request: FastCommandRequest,
    *,
    maced_part: bytes | None = None,
) -> bytes:
    """``maced_part``: the request's bytes without the MAC, as received
    (see ``request_transcript_hash``)."""
    return _transcript(
        _label(request.version, "fast request"),
        challenge_bytes,
        vehicle_public_key,
        fast_request_maced_part(request) if maced_part is None else maced_part,
        None,
    )


def fast_request_mac(fast_key: bytes, version: int, transcript_hash: bytes) -> bytes:
    return crypto.hmac_sha256(fast_key, _label(version, "fast request mac") + transcript_hash)


def fast_response_key(fast_key: bytes, nonce: bytes, version: int, transcript_hash: bytes) -> bytes:
    return crypto.hkdf_sha256(
        fast_key, salt=nonce, info=_label(version, "fast response key") + transcript_hash
    )


def fast_response_mac(
    key: bytes, version: int, transcript_hash: bytes, response: CommandResponse | bytes
) -> bytes:
    return crypto.hmac_sha256(
        key, _label(version, "fast response") + transcript_hash + _maced_part(response)
    )
