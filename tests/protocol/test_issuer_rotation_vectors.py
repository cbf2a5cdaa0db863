"""issuer_rotation_v1.json checked with hashlib, ``cryptography`` and
hand-written offsets from docs/credentials.md 2.6 and 3 (0x0A)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from protocol import decode
from protocol.credentials import IssuerRotation
from protocol.messages import IssuerUpdate, VehicleStatus

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
V = json.loads((VECTORS / "issuer_rotation_v1.json").read_text())
CURVE = ec.SECP256R1()
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def hx(value: str) -> bytes:
    return bytes.fromhex(value)


def key_id(entry: dict[str, str]) -> bytes:
    return hashlib.sha256(hx(entry["public_key_uncompressed_hex"])).digest()[:16]


def test_layout_and_signature() -> None:
    rot = V["rotation"]
    data = hx(rot["encoded_hex"])
    assert len(data) == 123 and data[:2] == bytes([1, 0x45])
    assert (
        data[2:18] == key_id(V["keys"]["old_issuer"]) == hx(rot["fields"]["old_issuer_key_id_hex"])
    )
    assert data[18:51] == hx(V["keys"]["new_issuer"]["public_key_compressed_hex"])
    assert int.from_bytes(data[51:59], "big") == rot["fields"]["issued_at"]
    assert data[:59] == hx(rot["unsigned_hex"])
    message = b"phonekey/v1 issuer rotation" + data[:59]
    assert message == hx(rot["signed_message_hex"])
    signature = data[59:]
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert s <= P256_ORDER // 2  # low-S
    old = ec.EllipticCurvePublicKey.from_encoded_point(
        CURVE, hx(V["keys"]["old_issuer"]["public_key_compressed_hex"])
    )
    old.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    assert hashlib.sha256(data).hexdigest() == rot["sha256_hex"]
    assert IssuerRotation.from_bytes(data).to_bytes() == data


def test_issuer_update_message() -> None:
    message = hx(V["issuer_update_message_hex"])
    rotation = hx(V["rotation"]["encoded_hex"])
    assert message == bytes([1, 0x0A]) + len(rotation).to_bytes(2, "big") + rotation
    assert decode(message) == IssuerUpdate(rotation)


def test_vehicle_accepts_and_trusts_both_keys() -> None:
    vehicle = V["vehicle"]
    assert vehicle["trusted_after"] == sorted(
        key_id(V["keys"][name]).hex() for name in ("old_issuer", "new_issuer")
    )
    status = decode(hx(vehicle["status_after_update_hex"]))
    assert isinstance(status, VehicleStatus) and status.revocation_version == 0


def test_vectors_are_current() -> None:
    path = VECTORS / "generate_issuer_rotation_vectors.py"
    spec = importlib.util.spec_from_file_location("phonekey_generate_issuer_rotation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for target, text in module.outputs().items():
        assert target.read_text() == text, f"{target.name} is stale"
