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
"""

from __future__ import annotations

import hashlib

from . import crypto
from .codec import request_signed_part, response_maced_part
from .messages import CommandRequest, CommandResponse


def _label(version: int, what: str) -> bytes:
    return f"phonekey/v{version} {what}".encode()


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def request_transcript_hash(
    challenge_bytes: bytes,
    vehicle_public_key: crypto.PublicKey,
    request: CommandRequest,
    credential_digest: bytes | None = None,
) -> bytes:
    h = hashlib.sha256()
    h.update(_label(request.version, "request"))
    h.update(_framed(challenge_bytes))
    h.update(crypto.public_bytes(vehicle_public_key, compressed=False))
    h.update(_framed(request_signed_part(request)))
    if credential_digest is not None:
        h.update(_framed(credential_digest))
    return h.digest()


def response_key(shared_secret: bytes, nonce: bytes, version: int, transcript_hash: bytes) -> bytes:
    return crypto.hkdf_sha256(
        shared_secret, salt=nonce, info=_label(version, "response key") + transcript_hash
    )


def response_mac(
    key: bytes, version: int, transcript_hash: bytes, response: CommandResponse
) -> bytes:
    return crypto.hmac_sha256(
        key, _label(version, "response") + transcript_hash + response_maced_part(response)
    )
