"""Proof of possession for ``POST /v1/credentials``.

A phone asks for (or refreshes) its credential by signing, with the private
key the credential will name, a fixed label, the vehicle id, its compressed
public key and the current time. The cloud checks the signature, that the
time is within ``MAX_REQUEST_SKEW`` of its clock, and that the key is
enrolled. A replay inside that window only yields another credential for the
same holder, which is useless without the holder's private key, so the cloud
keeps no nonce state.

Shared by the cloud and the phone's client; it imports nothing heavy.
"""

from __future__ import annotations

import base64
from typing import Final

from . import crypto

CREDENTIAL_REQUEST_LABEL: Final = b"phonekey/v1 credential request"
MAX_REQUEST_SKEW: Final = 300  # seconds between the phone's and the cloud's clock
_TIMESTAMP_LEN: Final = 8


def credential_request_message(vehicle_id: bytes, holder_key_bytes: bytes, timestamp: int) -> bytes:
    """The exact bytes a credential request signs.

    ``holder_key_bytes`` is the 33-byte compressed SEC1 point; ``timestamp``
    unix seconds. Raises ``ValueError`` on a wrong length or range, so a bug
    never signs an ambiguous message.
    """
    if len(vehicle_id) != crypto.KEY_ID_LEN:
        raise ValueError(f"vehicle id must be {crypto.KEY_ID_LEN} bytes")
    if len(holder_key_bytes) != crypto.COMPRESSED_POINT_LEN:
        raise ValueError(
            f"holder key must be the {crypto.COMPRESSED_POINT_LEN}-byte compressed point"
        )
    if not 0 <= timestamp < 2**63:
        raise ValueError("timestamp must be non-negative unix seconds")
    return (
        CREDENTIAL_REQUEST_LABEL
        + vehicle_id
        + holder_key_bytes
        + timestamp.to_bytes(_TIMESTAMP_LEN, "big")
    )


def sign_credential_request(
    holder: crypto.PrivateKey, vehicle_id: bytes, timestamp: int
) -> dict[str, object]:
    """The JSON body of ``POST /v1/credentials`` for ``holder`` on ``vehicle_id``."""
    public = holder.public_key()
    message = credential_request_message(vehicle_id, crypto.public_bytes(public), timestamp)
    return {
        "vehicle_id": vehicle_id.hex(),
        "public_key": crypto.public_key_to_text(public),
        "timestamp": timestamp,
        "signature": base64.b64encode(crypto.sign(holder, message)).decode("ascii"),
    }


def verify_credential_request(
    holder: crypto.PublicKey, vehicle_id: bytes, timestamp: int, signature: bytes
) -> None:
    """Raise ``crypto.InvalidSignature`` unless ``signature`` proves possession."""
    message = credential_request_message(vehicle_id, crypto.public_bytes(holder), timestamp)
    crypto.verify(holder, signature, message)
