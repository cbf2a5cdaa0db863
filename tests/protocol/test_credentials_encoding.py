"""Issuer-signed objects on their own: their encodings (round trips and layouts,
deterministic low-s signatures) and every kind of malformed input."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from credential_testkit import (
    CREDENTIAL_FIELDS,
    ISSUER_KEY,
    ISSUER_KEY_ID,
    NOT_AFTER,
    NOT_BEFORE,
    P256_ORDER,
    REVOKED_IDS,
    TIME_NONCE,
    VEHICLE_ID,
    WALL,
    delta,
    issue,
    revocation_list,
    signed_time,
)
from protocol_testkit import PHONE_KEY, PHONE_KEY_ID

from protocol import Role, crypto
from protocol.credentials import (
    DEFAULT_VALIDITY,
    FORMAT_VERSION,
    MAX_DELTA_ENTRIES,
    Credential,
    CredentialMalformed,
    RevocationDelta,
    RevocationList,
    SignedTime,
    issue_signed_time,
)


# --- encodings ------------------------------------------------------------------------
def test_credential_round_trip_and_layout() -> None:
    credential = issue(serial=0x0102030405060708)
    data = credential.to_bytes()
    assert len(data) == 156
    assert Credential.from_bytes(data) == credential
    assert data[0] == FORMAT_VERSION == 1 and data[1] == 0x41
    fields = {name: data[a:b] for name, (a, b) in CREDENTIAL_FIELDS.items()}
    assert fields["vehicle_id"] == VEHICLE_ID
    assert fields["holder_key"] == crypto.public_bytes(PHONE_KEY.public_key())
    assert fields["role"] == bytes([Role.DRIVER])
    assert fields["not_before"] == NOT_BEFORE.to_bytes(8, "big")
    assert fields["not_after"] == NOT_AFTER.to_bytes(8, "big")
    assert fields["serial"] == bytes(range(1, 9))
    assert fields["issuer_key_id"] == ISSUER_KEY_ID
    assert fields["signature"] == credential.signature
    assert credential.holder_key_id == PHONE_KEY_ID
    assert credential.digest() == hashlib.sha256(data).digest()
    assert NOT_AFTER - NOT_BEFORE == DEFAULT_VALIDITY == 7 * 24 * 3600


@pytest.mark.parametrize("role", list(Role))
def test_every_role_round_trips(role: Role) -> None:
    credential = issue(role=role)
    assert Credential.from_bytes(credential.to_bytes()).role is role


@pytest.mark.parametrize("revoked", [[], [bytes(16)], REVOKED_IDS, REVOKED_IDS + REVOKED_IDS])
def test_revocation_list_round_trip_and_layout(revoked: list[bytes]) -> None:
    rl = revocation_list(revoked, version=9)
    data = rl.to_bytes()
    ids = sorted(set(revoked))
    assert rl.revoked == tuple(ids)  # the issuer sorts and deduplicates
    assert len(data) == 2 + 16 + 8 + 8 + 4 + 16 * len(ids) + 64
    assert data[:2] == bytes([1, 0x42])
    assert data[2:18] == ISSUER_KEY_ID
    assert int.from_bytes(data[18:26], "big") == 9
    assert int.from_bytes(data[26:34], "big") == WALL
    assert int.from_bytes(data[34:38], "big") == len(ids)
    assert data[38 : 38 + 16 * len(ids)] == b"".join(ids)
    assert RevocationList.from_bytes(data) == rl
    for key_id in ids:
        assert rl.is_revoked(key_id)
    assert not rl.is_revoked(bytes([0x12]) * 16)
    assert not rl.is_revoked(bytes([0xFF]) * 16)


@pytest.mark.parametrize("count", [0, 1, MAX_DELTA_ENTRIES])
def test_revocation_delta_round_trip_and_layout(count: int) -> None:
    added = [bytes([i]) * 16 for i in range(count)]
    d = delta(4, 5, added)
    data = d.to_bytes()
    assert len(data) == 2 + 16 + 8 + 8 + 1 + 16 * count + 64
    assert data[:2] == bytes([1, 0x44])
    assert data[2:18] == ISSUER_KEY_ID
    assert int.from_bytes(data[18:26], "big") == 4
    assert int.from_bytes(data[26:34], "big") == 5
    assert data[34] == count
    assert data[35 : 35 + 16 * count] == b"".join(added)
    assert RevocationDelta.from_bytes(data) == d
    assert d.added == tuple(added)


def test_signed_time_round_trip_and_layout() -> None:
    st = signed_time(TIME_NONCE, WALL + 5)
    data = st.to_bytes()
    assert len(data) == 2 + 16 + 16 + 8 + 64 == 106
    assert data[:2] == bytes([1, 0x43])
    assert data[2:18] == ISSUER_KEY_ID
    assert data[18:34] == TIME_NONCE
    assert int.from_bytes(data[34:42], "big") == WALL + 5
    assert SignedTime.from_bytes(data) == st


def test_signatures_are_deterministic_and_low_s() -> None:
    for make in (
        lambda: issue(),
        lambda: revocation_list(),
        lambda: delta(0, 1, REVOKED_IDS),
        lambda: signed_time(TIME_NONCE, WALL),
    ):
        a, b = make(), make()
        assert a.signature == b.signature  # RFC 6979
        assert int.from_bytes(a.signature[32:], "big") <= P256_ORDER // 2


def test_unsigned_objects_cannot_be_encoded() -> None:
    for obj in (
        replace(issue(), signature=b""),
        replace(revocation_list(), signature=b""),
        replace(delta(0, 1, []), signature=b"\x00" * 63),
        replace(signed_time(TIME_NONCE, 1), signature=b""),
    ):
        with pytest.raises(ValueError):
            obj.to_bytes()


def test_issuers_refuse_what_no_verifier_would_accept() -> None:
    with pytest.raises(ValueError):
        issue(not_before=10, not_after=9)
    assert issue(not_before=10, not_after=10).not_after == 10  # one-second window is fine
    for from_version, to_version in ((1, 1), (2, 1)):
        with pytest.raises(ValueError):
            delta(from_version, to_version, [])
    with pytest.raises(ValueError):
        delta(0, 1, [bytes(16)] * (MAX_DELTA_ENTRIES + 1))
    for nonce in (b"", bytes(15), bytes(17)):
        with pytest.raises(ValueError):
            issue_signed_time(ISSUER_KEY, nonce=nonce, time=WALL)


# --- malformed input ----------------------------------------------------------------
OBJECTS: dict[str, tuple[Callable[[], Any], type[Any]]] = {
    "credential": (lambda: issue(), Credential),
    "revocation list": (lambda: revocation_list(), RevocationList),
    "revocation delta": (lambda: delta(1, 2, REVOKED_IDS), RevocationDelta),
    "signed time": (lambda: signed_time(TIME_NONCE, WALL), SignedTime),
}
objects = pytest.mark.parametrize("name", list(OBJECTS))


@objects
def test_truncated_at_every_length(name: str) -> None:
    make, cls = OBJECTS[name]
    data = make().to_bytes()
    for length in range(len(data)):
        with pytest.raises(CredentialMalformed):
            cls.from_bytes(data[:length])


@objects
def test_trailing_or_inserted_bytes(name: str) -> None:
    make, cls = OBJECTS[name]
    data = make().to_bytes()
    for extra in (b"\x00", b"\xff" * 16, data):
        with pytest.raises(CredentialMalformed):
            cls.from_bytes(data + extra)
    with pytest.raises(CredentialMalformed):  # one byte between body and signature
        cls.from_bytes(data[:-64] + b"\x00" + data[-64:])


@objects
@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_wrong_format_version(name: str, version: int) -> None:
    make, cls = OBJECTS[name]
    data = make().to_bytes()
    with pytest.raises(CredentialMalformed, match="format version"):
        cls.from_bytes(bytes([version]) + data[1:])


@objects
def test_wrong_object_type(name: str) -> None:
    make, cls = OBJECTS[name]
    data = make().to_bytes()
    for other_name, (_, other_cls) in OBJECTS.items():
        if other_name != name:
            with pytest.raises(CredentialMalformed):
                other_cls.from_bytes(data)
    for obj_type in (0x00, 0x40, 0x45, 0xFF):
        with pytest.raises(CredentialMalformed, match="object type"):
            cls.from_bytes(data[:1] + bytes([obj_type]) + data[2:])


@pytest.mark.parametrize("role", [0, 4, 0x80, 0xFF])
def test_undefined_role(role: int) -> None:
    data = issue().to_bytes()
    with pytest.raises(CredentialMalformed):
        Credential.from_bytes(data[:51] + bytes([role]) + data[52:])


def _off_curve_x() -> bytes:
    for x in range(1, 100):
        candidate = b"\x02" + x.to_bytes(32, "big")
        try:
            crypto.public_key_from_bytes(candidate)
        except crypto.InvalidKeyEncoding:
            return candidate
    raise AssertionError("no off-curve x below 100")  # pragma: no cover


@pytest.mark.parametrize(
    "holder_key",
    [
        pytest.param(_off_curve_x(), id="x-not-on-curve"),
        pytest.param(b"\x02" + b"\xff" * 32, id="x-above-p"),
        pytest.param(b"\x04" + PHONE_KEY_ID * 2, id="uncompressed-prefix"),
        pytest.param(b"\x00" * 33, id="zero"),
        pytest.param(b"\x05" + crypto.public_bytes(PHONE_KEY.public_key())[1:], id="prefix-05"),
    ],
)
def test_holder_key_not_a_point(holder_key: bytes) -> None:
    data = issue().to_bytes()
    assert len(holder_key) == 33
    with pytest.raises(CredentialMalformed):
        Credential.from_bytes(data[:18] + holder_key + data[51:])


def _raw_list(ids: list[bytes]) -> bytes:
    """A revocation list encoded by hand (the issuer API always sorts)."""
    body = ISSUER_KEY_ID + (1).to_bytes(8, "big") + WALL.to_bytes(8, "big")
    body += len(ids).to_bytes(4, "big") + b"".join(ids)
    return bytes([1, 0x42]) + body + bytes(64)


def test_revocation_list_must_be_sorted_and_distinct() -> None:
    a, b = bytes([1]) * 16, bytes([2]) * 16
    RevocationList.from_bytes(_raw_list([a, b]))  # control: decodes
    for ids in ([b, a], [a, a], [a, b, b], [b, a, b]):
        with pytest.raises(CredentialMalformed):
            RevocationList.from_bytes(_raw_list(ids))


def test_revocation_list_count_beyond_its_entries() -> None:
    data = bytearray(_raw_list([bytes(16)]))
    data[34:38] = (2).to_bytes(4, "big")
    with pytest.raises(CredentialMalformed):
        RevocationList.from_bytes(bytes(data))
    data[34:38] = (0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(CredentialMalformed):
        RevocationList.from_bytes(bytes(data))


def _raw_delta(from_version: int, to_version: int, count: int) -> bytes:
    body = ISSUER_KEY_ID + from_version.to_bytes(8, "big") + to_version.to_bytes(8, "big")
    body += bytes([count]) + b"".join(bytes([i]) * 16 for i in range(count))
    return bytes([1, 0x44]) + body + bytes(64)


@pytest.mark.parametrize(
    ("from_version", "to_version", "count"),
    [(5, 5, 0), (5, 4, 1), (2**64 - 1, 0, 1), (0, 1, MAX_DELTA_ENTRIES + 1), (0, 1, 255)],
)
def test_malformed_delta(from_version: int, to_version: int, count: int) -> None:
    RevocationDelta.from_bytes(_raw_delta(0, 1, MAX_DELTA_ENTRIES))  # control: decodes
    with pytest.raises(CredentialMalformed):
        RevocationDelta.from_bytes(_raw_delta(from_version, to_version, count))


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x41", bytes(65), bytes(200)])
def test_garbage_is_malformed(data: bytes) -> None:
    for _, cls in OBJECTS.values():
        with pytest.raises(CredentialMalformed):
            cls.from_bytes(data)
