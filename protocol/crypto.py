"""P-256 primitives used by the protocol, all from `cryptography`.

Nothing here is home-made: ECDSA with RFC 6979 deterministic nonces (so test
vectors repeat), ECDH, HKDF-SHA256 and HMAC-SHA256. This module only fixes the
encodings (raw 64-byte r||s signatures, SEC1 points) and names the domain
separation labels in one place.

Randomness is always passed in (``Random``), so the sans-IO core can be driven
deterministically in tests; production callers pass ``os.urandom``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Random = Callable[[int], bytes]
"""``rng(n) -> n random bytes``; pass ``os.urandom`` outside tests."""

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

CURVE = ec.SECP256R1()
# Order of the P-256 group (FIPS 186-4 D.1.2.3).
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

KEY_ID_LEN = 16  # 128 bits of SHA-256 over the uncompressed public key
SIGNATURE_LEN = 64  # r || s, 32 bytes each, big-endian
COMPRESSED_POINT_LEN = 33
UNCOMPRESSED_POINT_LEN = 65
MAC_LEN = 32  # full HMAC-SHA256 output; no truncation to argue about


class InvalidKeyEncoding(ValueError):
    """Bytes or text that are not a P-256 public key."""


def private_key_from_random(rng: Random) -> PrivateKey:
    """A P-256 private key whose scalar comes from ``rng``.

    FIPS 186-4 B.4.1 ("extra random bits"): take 64 bits more than the group
    order's size and reduce, so the bias is below 2**-64.
    """
    c = int.from_bytes(rng(40), "big")
    scalar = c % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, CURVE)


def generate_private_key() -> PrivateKey:
    """A fresh key from the operating system's CSPRNG (via OpenSSL)."""
    return ec.generate_private_key(CURVE)


def public_bytes(key: PublicKey, *, compressed: bool = True) -> bytes:
    fmt = (
        serialization.PublicFormat.CompressedPoint
        if compressed
        else serialization.PublicFormat.UncompressedPoint
    )
    return key.public_bytes(serialization.Encoding.X962, fmt)


def public_key_from_bytes(data: bytes) -> PublicKey:
    """Load a SEC1 point (33 or 65 bytes); raises ``InvalidKeyEncoding``."""
    if len(data) not in (COMPRESSED_POINT_LEN, UNCOMPRESSED_POINT_LEN):
        raise InvalidKeyEncoding(f"a P-256 point is 33 or 65 bytes, not {len(data)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, data)
    except ValueError as exc:  # not on the curve, bad prefix byte, ...
        raise InvalidKeyEncoding(f"not a valid P-256 point: {exc}") from None


@functools.lru_cache(maxsize=1024)
def cached_public_key(data: bytes) -> PublicKey:
    """``public_key_from_bytes`` for long-lived keys (whitelist entries, issuers):
    each distinct encoding is parsed and checked once, then served from a
    bounded cache. Public keys are immutable, so sharing one object is safe.
    Not for ephemeral keys: they would only churn the cache."""
    return public_key_from_bytes(bytes(data))


def key_id(key: PublicKey) -> bytes:
    """128-bit key id: the first 16 bytes of SHA-256 of the uncompressed point."""
    return hashlib.sha256(public_bytes(key, compressed=False)).digest()[:KEY_ID_LEN]


def public_key_to_text(key: PublicKey) -> str:
    """The text form used on the command line: ``p256:`` + compressed point hex."""
    return "p256:" + public_bytes(key).hex()


def public_key_from_text(text: str) -> PublicKey:
    text = text.strip()
    body = text.removeprefix("p256:")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise InvalidKeyEncoding(
            "expected a public key like p256:02ab... (66 hex digits after 'p256:')"
        ) from None
    return public_key_from_bytes(raw)


def sign(key: PrivateKey, message: bytes) -> bytes:
    """Deterministic (RFC 6979) ECDSA-SHA256 signature as raw r || s, low-S form.

    (r, s) and (r, n - s) both verify; we always emit the smaller s and
    ``verify`` refuses the larger, so a signature has exactly one encoding and
    nobody can alter a signed message's bytes without invalidating it.
    """
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    if s > _P256_ORDER // 2:
        s = _P256_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(key: PublicKey, signature: bytes, message: bytes) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` is valid for ``message``."""
    if len(signature) != SIGNATURE_LEN:
        raise InvalidSignature("signature must be 64 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if s > _P256_ORDER // 2:
        raise InvalidSignature("high-S signature (only the low-S form is accepted)")
    # Range checks (1 <= r, s < n) happen inside OpenSSL's verify.
    key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


def ecdh(private: PrivateKey, peer: PublicKey) -> bytes:
    return private.exchange(ec.ECDH(), peer)


_SHA256 = hashes.SHA256()  # a stateless algorithm descriptor: one serves every call


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def private_key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise InvalidKeyEncoding("the key file does not hold a P-256 private key")
    return key


__all__ = [
    "InvalidSignature",
]
