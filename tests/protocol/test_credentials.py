"""Issuer-signed objects on their own: encodings, malformed input, verification."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from credential_testkit import (
    ISSUER_KEY,
    ISSUER_KEY_ID,
    ISSUERS,
    NOT_AFTER,
    NOT_BEFORE,
    ROGUE_ISSUER_KEY,
    VEHICLE_ID,
    WALL,
    delta,
    issue,
    signed_time,
)
from protocol_testkit import ATTACKER_KEY, GUEST_KEY, PHONE_KEY, PHONE_KEY_ID

from protocol import Role, crypto
from protocol.credentials import (
    DEFAULT_VALIDITY,
    FORMAT_VERSION,
    HIGHEST_CLOUD_ROLE,
    MAX_DELTA_ENTRIES,
    MAX_LEEWAY,
    Credential,
    CredentialError,
    CredentialExpired,
    CredentialMalformed,
    CredentialNotYetValid,
    CredentialRevoked,
    CredentialRoleNotAllowed,
    CredentialSignatureInvalid,
    CredentialWrongHolder,
    CredentialWrongVehicle,
    RevocationDelta,
    RevocationList,
    SignedTime,
    SignedTimeRejected,
    StaleRevocationList,
    UnknownIssuer,
    check_credential_claims_at_time,
    issue_credential,
    issue_revocation_delta,
    issue_revocation_list,
    issue_signed_time,
    revocation_id,
    verify_credential_at_time,
    verify_credential_signature,
    verify_revocation_delta,
    verify_revocation_list,
    verify_signed_time,
)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ROGUE_ISSUERS = {crypto.key_id(ROGUE_ISSUER_KEY.public_key()): ROGUE_ISSUER_KEY.public_key()}
TIME_NONCE = bytes(range(0x50, 0x60))
REVOKED_IDS = [bytes([i]) * 16 for i in (0x33, 0x11, 0x22)]

# Byte offsets of the encodings (docs/credentials.md), written out by hand.
CREDENTIAL_FIELDS = {  # name: (start, end)
    "format": (0, 1),
    "type": (1, 2),
    "vehicle_id": (2, 18),
    "holder_key": (18, 51),
    "role": (51, 52),
    "not_before": (52, 60),
    "not_after": (60, 68),
    "serial": (68, 76),
    "issuer_key_id": (76, 92),
    "signature": (92, 156),
}


def _list(revoked: list[bytes] = REVOKED_IDS, version: int = 3) -> RevocationList:
    return issue_revocation_list(ISSUER_KEY, version=version, issued_at=WALL, revoked=revoked)


def _verify(credential: Credential, **overrides: Any) -> None:
    kwargs: dict[str, Any] = {"issuers": ISSUERS, "vehicle_id": VEHICLE_ID, "now": WALL}
    kwargs.update(overrides)
    verify_credential_at_time(credential, **kwargs)


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
    rl = _list(revoked, version=9)
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
        lambda: _list(),
        lambda: delta(0, 1, REVOKED_IDS),
        lambda: signed_time(TIME_NONCE, WALL),
    ):
        a, b = make(), make()
        assert a.signature == b.signature  # RFC 6979
        assert int.from_bytes(a.signature[32:], "big") <= P256_ORDER // 2


def test_unsigned_objects_cannot_be_encoded() -> None:
    for obj in (
        replace(issue(), signature=b""),
        replace(_list(), signature=b""),
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
    "revocation list": (lambda: _list(), RevocationList),
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


# --- verification ---------------------------------------------------------------------
def test_valid_credential_verifies() -> None:
    for role in (Role.DRIVER, Role.GUEST):
        credential = issue(role=role)
        _verify(credential)
        _verify(credential, holder_key_id=PHONE_KEY_ID, is_revoked=lambda _: False)
        verify_credential_signature(credential, issuers=ISSUERS)


def test_error_classes() -> None:
    for cls in (
        CredentialMalformed,
        UnknownIssuer,
        CredentialSignatureInvalid,
        CredentialWrongVehicle,
        CredentialWrongHolder,
        CredentialNotYetValid,
        CredentialExpired,
        CredentialRevoked,
        CredentialRoleNotAllowed,
        StaleRevocationList,
        SignedTimeRejected,
    ):
        assert issubclass(cls, CredentialError)


def test_unknown_issuer() -> None:
    credential = issue(issuer=ROGUE_ISSUER_KEY)
    with pytest.raises(UnknownIssuer):
        _verify(credential)
    with pytest.raises(UnknownIssuer):
        _verify(credential, issuers={})
    with pytest.raises(UnknownIssuer):
        verify_credential_signature(credential, issuers=ISSUERS)
    _verify(credential, issuers=ROGUE_ISSUERS)  # control: valid under its own issuer
    rogue_list = issue_revocation_list(ROGUE_ISSUER_KEY, version=1, issued_at=WALL, revoked=[])
    with pytest.raises(UnknownIssuer):
        verify_revocation_list(rogue_list, issuers=ISSUERS)
    with pytest.raises(UnknownIssuer):
        verify_revocation_delta(delta(0, 1, [], issuer=ROGUE_ISSUER_KEY), issuers=ISSUERS)
    with pytest.raises(UnknownIssuer):
        verify_signed_time(
            signed_time(TIME_NONCE, WALL, issuer=ROGUE_ISSUER_KEY),
            issuers=ISSUERS,
            expected_nonce=TIME_NONCE,
        )


def test_rogue_issuer_claiming_the_trusted_issuer_id() -> None:
    forged = replace(issue(issuer=ROGUE_ISSUER_KEY), issuer_key_id=ISSUER_KEY_ID)
    unsigned = replace(forged, signature=b"")
    resigned = replace(
        unsigned,
        signature=crypto.sign(
            ROGUE_ISSUER_KEY, b"phonekey/v1 credential" + forged.to_bytes()[:-64]
        ),
    )
    for credential in (forged, resigned):
        with pytest.raises(CredentialSignatureInvalid):
            _verify(Credential.from_bytes(credential.to_bytes()))


def test_signature_covers_the_label() -> None:
    """The issuer signs ``label || format || type || body``: the same body signed
    under another label (or none) does not verify."""
    good = issue()
    body = good.to_bytes()[:-64]
    assert crypto.sign(ISSUER_KEY, b"phonekey/v1 credential" + body) == good.signature
    for label in (b"", b"phonekey/v1 revocation list", b"phonekey/v2 credential"):
        bad = replace(good, signature=crypto.sign(ISSUER_KEY, label + body))
        with pytest.raises(CredentialSignatureInvalid):
            verify_credential_signature(bad, issuers=ISSUERS)


def _every_single_byte_change(
    data: bytes,
    decode: Callable[[bytes], Any],
    verify: Callable[[Any], None],
    fields: dict[str, tuple[int, int]],
    allowed: dict[str, tuple[type[Exception], ...]],
) -> None:
    """Flip each bit pattern of each byte; the result must be refused by decoding
    or by verification with an error the field allows."""
    verify(decode(data))  # control
    for offset in range(len(data)):
        field = next(n for n, (a, b) in fields.items() if a <= offset < b)
        expected = allowed.get(field, (CredentialSignatureInvalid,))
        for mask in (0x01, 0x80, 0xFF):
            changed = bytearray(data)
            changed[offset] ^= mask
            with pytest.raises(CredentialError) as info:
                verify(decode(bytes(changed)))
            assert isinstance(info.value, expected), (field, offset, mask, info.value)


def test_every_single_byte_change_of_a_credential() -> None:
    malformed_or_bad = (CredentialMalformed, CredentialSignatureInvalid)
    _every_single_byte_change(
        issue().to_bytes(),
        Credential.from_bytes,
        lambda c: verify_credential_signature(c, issuers=ISSUERS),
        CREDENTIAL_FIELDS,
        {
            "format": (CredentialMalformed,),
            "type": (CredentialMalformed,),
            "holder_key": malformed_or_bad,  # the other x may be off the curve
            "role": malformed_or_bad,  # 2 ^ 1 = 3 (guest) decodes, others do not
            "issuer_key_id": (UnknownIssuer,),
        },
    )


def test_every_single_byte_change_of_a_credential_fails_full_verification() -> None:
    data = issue().to_bytes()
    for offset in range(len(data)):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        with pytest.raises(CredentialError):
            _verify(Credential.from_bytes(bytes(changed)))


def test_every_single_byte_change_of_a_revocation_list() -> None:
    n = len(REVOKED_IDS)
    _every_single_byte_change(
        _list().to_bytes(),
        RevocationList.from_bytes,
        lambda rl: verify_revocation_list(rl, issuers=ISSUERS),
        {
            "format": (0, 1),
            "type": (1, 2),
            "issuer_key_id": (2, 18),
            "version": (18, 26),
            "issued_at": (26, 34),
            "count": (34, 38),
            "revoked": (38, 38 + 16 * n),
            "signature": (38 + 16 * n, 38 + 16 * n + 64),
        },
        {
            "format": (CredentialMalformed,),
            "type": (CredentialMalformed,),
            "issuer_key_id": (UnknownIssuer,),
            "count": (CredentialMalformed,),
            # ids must stay sorted and distinct; a flip may keep the order
            "revoked": (CredentialMalformed, CredentialSignatureInvalid),
        },
    )


def test_every_single_byte_change_of_a_revocation_delta() -> None:
    n = len(REVOKED_IDS)
    _every_single_byte_change(
        delta(1, 2, REVOKED_IDS).to_bytes(),
        RevocationDelta.from_bytes,
        lambda d: verify_revocation_delta(d, issuers=ISSUERS),
        {
            "format": (0, 1),
            "type": (1, 2),
            "issuer_key_id": (2, 18),
            "from_version": (18, 26),
            "to_version": (26, 34),
            "count": (34, 35),
            "added": (35, 35 + 16 * n),
            "signature": (35 + 16 * n, 35 + 16 * n + 64),
        },
        {
            "format": (CredentialMalformed,),
            "type": (CredentialMalformed,),
            "issuer_key_id": (UnknownIssuer,),
            "count": (CredentialMalformed,),
            # to <= from is malformed; other changes break the signature
            "from_version": (CredentialMalformed, CredentialSignatureInvalid),
            "to_version": (CredentialMalformed, CredentialSignatureInvalid),
        },
    )


def test_every_single_byte_change_of_signed_time() -> None:
    _every_single_byte_change(
        signed_time(TIME_NONCE, WALL).to_bytes(),
        SignedTime.from_bytes,
        lambda st: verify_signed_time(st, issuers=ISSUERS, expected_nonce=TIME_NONCE),
        {
            "format": (0, 1),
            "type": (1, 2),
            "issuer_key_id": (2, 18),
            "nonce": (18, 34),
            "time": (34, 42),
            "signature": (42, 106),
        },
        {
            "format": (CredentialMalformed,),
            "type": (CredentialMalformed,),
            "issuer_key_id": (UnknownIssuer,),
        },
    )


def test_high_s_twin_of_a_valid_signature_is_refused() -> None:
    for obj, check in (
        (issue(), lambda o: verify_credential_signature(o, issuers=ISSUERS)),
        (_list(), lambda o: verify_revocation_list(o, issuers=ISSUERS)),
        (delta(0, 1, []), lambda o: verify_revocation_delta(o, issuers=ISSUERS)),
        (
            signed_time(TIME_NONCE, WALL),
            lambda o: verify_signed_time(o, issuers=ISSUERS, expected_nonce=TIME_NONCE),
        ),
    ):
        check(obj)
        s = int.from_bytes(obj.signature[32:], "big")
        twin = replace(obj, signature=obj.signature[:32] + (P256_ORDER - s).to_bytes(32, "big"))
        with pytest.raises(CredentialSignatureInvalid):
            check(twin)


def test_wrong_vehicle() -> None:
    with pytest.raises(CredentialWrongVehicle):
        _verify(issue(vehicle_key=ATTACKER_KEY))
    with pytest.raises(CredentialWrongVehicle):
        _verify(issue(), vehicle_id=bytes(16))


def test_wrong_holder() -> None:
    with pytest.raises(CredentialWrongHolder):
        _verify(issue(holder=GUEST_KEY), holder_key_id=PHONE_KEY_ID)
    with pytest.raises(CredentialWrongHolder):
        _verify(issue(), holder_key_id=PHONE_KEY_ID[:-1] + bytes([PHONE_KEY_ID[-1] ^ 1]))
    _verify(issue(holder=GUEST_KEY), holder_key_id=crypto.key_id(GUEST_KEY.public_key()))


def test_owner_role_is_refused_even_with_a_valid_signature() -> None:
    assert HIGHEST_CLOUD_ROLE is Role.DRIVER
    owner = issue(role=Role.OWNER)
    verify_credential_signature(owner, issuers=ISSUERS)  # the issuer did sign it
    with pytest.raises(CredentialRoleNotAllowed):
        _verify(owner)
    with pytest.raises(CredentialRoleNotAllowed):
        check_credential_claims_at_time(owner, issuers=ISSUERS, vehicle_id=VEHICLE_ID, now=WALL)


@pytest.mark.parametrize("leeway", [0, 1, 60, MAX_LEEWAY])
def test_window_edges_with_leeway(leeway: int) -> None:
    credential = issue()
    _verify(credential, now=NOT_BEFORE - leeway, leeway=leeway)
    with pytest.raises(CredentialNotYetValid):
        _verify(credential, now=NOT_BEFORE - leeway - 1, leeway=leeway)
    _verify(credential, now=NOT_AFTER + leeway, leeway=leeway)
    with pytest.raises(CredentialExpired):
        _verify(credential, now=NOT_AFTER + leeway + 1, leeway=leeway)


def test_default_leeway_is_five_minutes() -> None:
    assert MAX_LEEWAY == 300
    credential = issue()
    _verify(credential, now=NOT_BEFORE - 300)
    _verify(credential, now=NOT_AFTER + 300)
    with pytest.raises(CredentialNotYetValid):
        _verify(credential, now=NOT_BEFORE - 301)
    with pytest.raises(CredentialExpired):
        _verify(credential, now=NOT_AFTER + 301)


@pytest.mark.parametrize("leeway", [-1, MAX_LEEWAY + 1, 3600])
def test_leeway_beyond_five_minutes_is_refused(leeway: int) -> None:
    for check in (verify_credential_at_time, check_credential_claims_at_time):
        with pytest.raises(ValueError, match="leeway"):
            check(issue(), issuers=ISSUERS, vehicle_id=VEHICLE_ID, now=WALL, leeway=leeway)


def test_revocation_id_is_the_truncated_labelled_hash() -> None:
    expected = hashlib.sha256(b"phonekey/v1 revocation" + VEHICLE_ID + PHONE_KEY_ID).digest()
    assert revocation_id(VEHICLE_ID, PHONE_KEY_ID) == expected[:16]
    assert revocation_id(VEHICLE_ID, PHONE_KEY_ID) != revocation_id(PHONE_KEY_ID, VEHICLE_ID)
    other_vehicle = crypto.key_id(ATTACKER_KEY.public_key())
    assert revocation_id(VEHICLE_ID, PHONE_KEY_ID) != revocation_id(other_vehicle, PHONE_KEY_ID)
    for bad in (b"", bytes(15), bytes(17)):
        with pytest.raises(ValueError):
            revocation_id(bad, PHONE_KEY_ID)
        with pytest.raises(ValueError):
            revocation_id(VEHICLE_ID, bad)


def test_revoked() -> None:
    credential = issue()
    phone_rev_id = revocation_id(VEHICLE_ID, PHONE_KEY_ID)
    with pytest.raises(CredentialRevoked):
        _verify(credential, is_revoked=lambda rev_id: rev_id == phone_rev_id)
    with pytest.raises(CredentialRevoked):
        _verify(credential, is_revoked=_list([*REVOKED_IDS, phone_rev_id]).is_revoked)
    _verify(credential, is_revoked=_list().is_revoked)
    # The raw key id is no entry: the old issuer-wide form revokes nothing.
    _verify(credential, is_revoked=_list([*REVOKED_IDS, PHONE_KEY_ID]).is_revoked)


def test_revocation_for_another_vehicle_does_not_apply() -> None:
    """The same phone key revoked on another vehicle stays valid on this one."""
    other_vehicle = crypto.key_id(ATTACKER_KEY.public_key())
    rl = _list([revocation_id(other_vehicle, PHONE_KEY_ID)])
    _verify(issue(), is_revoked=rl.is_revoked)
    with pytest.raises(CredentialRevoked):
        _verify(issue(vehicle_key=ATTACKER_KEY), vehicle_id=other_vehicle, is_revoked=rl.is_revoked)


def test_revocation_is_by_holder_key_id_not_serial() -> None:
    """Revoking the key revokes every credential the key holds, whatever its serial."""
    rl = _list([revocation_id(VEHICLE_ID, PHONE_KEY_ID)])
    for serial in (1, 2, 2**64 - 1):
        with pytest.raises(CredentialRevoked):
            _verify(issue(serial=serial), is_revoked=rl.is_revoked)
    _verify(issue(holder=GUEST_KEY), is_revoked=rl.is_revoked)


def test_cheap_claims_come_before_the_signature() -> None:
    """A credential that fails a claim is refused for that claim, with no signature
    work; the claim checks alone never look at the signature."""
    expired_and_forged = replace(issue(not_after=WALL - 1000), signature=bytes(64))
    with pytest.raises(CredentialExpired):
        _verify(expired_and_forged)
    forged = replace(issue(), signature=bytes(64))
    check_credential_claims_at_time(forged, issuers=ISSUERS, vehicle_id=VEHICLE_ID, now=WALL)
    with pytest.raises(CredentialSignatureInvalid):
        _verify(forged)


def test_claim_order() -> None:
    """Issuer, vehicle, holder, role, window, revocation: the first failure wins."""
    everything_wrong = issue(
        issuer=ROGUE_ISSUER_KEY,
        vehicle_key=ATTACKER_KEY,
        holder=GUEST_KEY,
        role=Role.OWNER,
        not_after=WALL - 1000,
    )
    checks: list[tuple[dict[str, Any], type[CredentialError]]] = [
        ({}, UnknownIssuer),
        ({"issuers": ROGUE_ISSUERS}, CredentialWrongVehicle),
        (
            {"issuers": ROGUE_ISSUERS, "vehicle_id": crypto.key_id(ATTACKER_KEY.public_key())},
            CredentialWrongHolder,
        ),
    ]
    for overrides, expected in checks:
        with pytest.raises(expected):
            _verify(everything_wrong, holder_key_id=PHONE_KEY_ID, **overrides)
    with pytest.raises(CredentialRoleNotAllowed):
        _verify(issue(role=Role.OWNER, not_after=WALL - 1000), is_revoked=lambda _: True)
    with pytest.raises(CredentialExpired):
        _verify(issue(not_after=WALL - 1000), is_revoked=lambda _: True)


def test_signed_time_is_bound_to_the_nonce() -> None:
    st = signed_time(TIME_NONCE, WALL + 42)
    assert verify_signed_time(st, issuers=ISSUERS, expected_nonce=TIME_NONCE) == WALL + 42
    for other in (bytes(16), TIME_NONCE[:-1] + b"\x00", TIME_NONCE[:8]):
        with pytest.raises(SignedTimeRejected):
            verify_signed_time(st, issuers=ISSUERS, expected_nonce=other)
    rebound = replace(st, nonce=bytes(16))  # same signature, other nonce
    with pytest.raises(CredentialSignatureInvalid):
        verify_signed_time(rebound, issuers=ISSUERS, expected_nonce=bytes(16))


def test_revocation_list_version_only_moves_forward() -> None:
    rl = _list(version=5)
    verify_revocation_list(rl, issuers=ISSUERS)
    verify_revocation_list(rl, issuers=ISSUERS, newer_than=4)
    verify_revocation_list(rl, issuers=ISSUERS, newer_than=0)
    for held in (5, 6, 2**64 - 1):
        with pytest.raises(StaleRevocationList):
            verify_revocation_list(rl, issuers=ISSUERS, newer_than=held)


def test_revocation_list_signature_is_checked_before_its_version() -> None:
    forged = replace(_list(version=5), signature=bytes(64))
    with pytest.raises(CredentialSignatureInvalid):
        verify_revocation_list(forged, issuers=ISSUERS, newer_than=9)


def test_direct_issue_credential_records_its_issuer() -> None:
    credential = issue_credential(
        ISSUER_KEY,
        vehicle_id=VEHICLE_ID,
        holder_key=GUEST_KEY.public_key(),
        role=Role.GUEST,
        not_before=0,
        not_after=2**64 - 1,
        serial=2**64 - 1,
    )
    assert credential.issuer_key_id == ISSUER_KEY_ID
    assert Credential.from_bytes(credential.to_bytes()) == credential
    _verify(credential)
    with pytest.raises(ValueError):
        replace(credential, serial=2**64).to_bytes()
    delta_max = issue_revocation_delta(ISSUER_KEY, from_version=0, to_version=2**64 - 1, added=[])
    verify_revocation_delta(RevocationDelta.from_bytes(delta_max.to_bytes()), issuers=ISSUERS)
