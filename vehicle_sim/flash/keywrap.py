"""Fast-path secrets at rest: AES key wrap under a key derived from the device key
(flash format 3).

The image is MAC'd but not encrypted, and a fast-path secret is all a phone
needs to unlock over the fast path: whoever can *read* the flash (a dump
through the debug port, a desoldered chip) must not learn it. So a record
never holds a secret in the clear; it holds::

    wrapped = AES-KW(KEK, key_id 16 | secret 32)      (RFC 3394, 56 bytes)

with ``KEK = HKDF-SHA256(device key, salt "phonekey flash", info "phonekey
fast-key wrap v3")``: 32 bytes (AES-256), its own label, so it is neither the
journal's MAC key (``auth``) nor the event log's key (the device key itself
under the "phonekey log v1" label). 48 bytes are a whole number of 64-bit
blocks, so plain RFC 3394 applies, no padding variant needed.

The key id is wrapped with the secret even though the record MAC already
binds it: the wrap's own integrity check then also refuses a blob moved to
another key id, should the MAC ever be bypassed (a format 1 image is trusted
once, unauthenticated), and the op needs no separate key id field.

Unwrapping happens once, when the journal is replayed at mount; the secrets
then live only in RAM (``FlashState.fast_keys``), which on a real key module
is on-chip SRAM nobody reads from outside. A blob whose integrity check
fails was not wrapped by this key module: ``UnwrapFailed`` (a TamperEvidence),
which the store reports as ``errors.FastKeyTampered`` (mount refuses).

AES-KW is deterministic: the same secret under the same key id wraps to the
same bytes, so two dumps show whether a key's fast secret changed between
them (it changes at every enrollment anyway); nothing about its value.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from protocol import crypto

from .layout import TamperEvidence

FAST_KEY_WRAP_INFO = b"phonekey fast-key wrap v3"
_SALT = b"phonekey flash"
ID_LEN = 16
SECRET_LEN = 32
WRAPPED_LEN = 8 + ID_LEN + SECRET_LEN
"""Bytes of a wrapped fast-path secret: the RFC 3394 integrity block, then the 48 wrapped."""


class UnwrapFailed(TamperEvidence):
    """A wrapped fast-path secret fails its RFC 3394 integrity check."""


def fast_key_kek(device_key: bytes) -> bytes:
    return crypto.hkdf_sha256(device_key, salt=_SALT, info=FAST_KEY_WRAP_INFO)


class FastKeyWrap:
    """Wraps and unwraps fast-path secrets with the KEK of one device key."""

    def __init__(self, device_key: bytes) -> None:
        self._kek = fast_key_kek(device_key)

    def wrap(self, key_id: bytes, secret: bytes) -> bytes:
        if len(key_id) != ID_LEN or len(secret) != SECRET_LEN:
            raise ValueError("a fast-path key is a 16-byte key id and a 32-byte secret")
        return aes_key_wrap(self._kek, key_id + secret)

    def unwrap(self, wrapped: bytes) -> tuple[bytes, bytes]:
        """(key id, secret); ``UnwrapFailed`` if the blob was not wrapped here."""
        if len(wrapped) != WRAPPED_LEN:
            raise ValueError(f"a wrapped fast-path key is {WRAPPED_LEN} bytes")
        try:
            plain = aes_key_unwrap(self._kek, wrapped)
        except InvalidUnwrap:
            raise UnwrapFailed(
                "a wrapped fast-path key fails its integrity check (not wrapped with this "
                "device key)"
            ) from None
        return plain[:ID_LEN], plain[ID_LEN:]
