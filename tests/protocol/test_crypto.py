"""Signature encoding rules that other implementations must follow too."""

from __future__ import annotations

import pytest

from protocol import crypto

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _keys_and_messages() -> list[tuple[crypto.PrivateKey, bytes]]:
    key = crypto.private_key_from_random(lambda n: bytes(range(n)))
    return [(key, f"message {i}".encode()) for i in range(40)]


def test_signatures_are_deterministic_and_low_s() -> None:
    for key, message in _keys_and_messages():
        signature = crypto.sign(key, message)
        assert signature == crypto.sign(key, message)
        assert int.from_bytes(signature[32:], "big") <= _N // 2
        crypto.verify(key.public_key(), signature, message)


def test_the_high_s_twin_of_a_valid_signature_is_refused() -> None:
    # (r, n - s) verifies under plain ECDSA; accepting it would let anyone
    # change a signed request's bytes without the key.
    for key, message in _keys_and_messages()[:5]:
        signature = crypto.sign(key, message)
        s = int.from_bytes(signature[32:], "big")
        twin = signature[:32] + (_N - s).to_bytes(32, "big")
        with pytest.raises(crypto.InvalidSignature):
            crypto.verify(key.public_key(), twin, message)


def test_a_point_off_the_curve_is_refused() -> None:
    # x = 1: x^3 - 3x + b is not a square mod p, so no point has this x.
    with pytest.raises(crypto.InvalidKeyEncoding):
        crypto.public_key_from_bytes(b"\x02" + b"\x00" * 31 + b"\x01")
    # A valid x with a y that does not satisfy the curve equation.
    valid = crypto.public_bytes(crypto.generate_private_key().public_key(), compressed=False)
    with pytest.raises(crypto.InvalidKeyEncoding):
        crypto.public_key_from_bytes(valid[:-1] + bytes([valid[-1] ^ 1]))
    with pytest.raises(crypto.InvalidKeyEncoding):
        crypto.public_key_from_text("p256:zz")
