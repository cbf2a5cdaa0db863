"""Issuer-signed objects on their own: their signatures. Unknown and rogue issuers,
the signing label, every single-byte change and the high-s twin of a signature.

Encodings and malformed input are in test_credentials_encoding.py; the claims a
credential is checked for (vehicle, holder, role, window, revocation) in
test_credentials_claims.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from credential_testkit import (
    CREDENTIAL_FIELDS,
    ISSUER_KEY,
    ISSUER_KEY_ID,
    ISSUERS,
    P256_ORDER,
    REVOKED_IDS,
    ROGUE_ISSUER_KEY,
    ROGUE_ISSUERS,
    TIME_NONCE,
    WALL,
    delta,
    issue,
    revocation_list,
    signed_time,
    verify_at_wall,
)
from protocol_testkit import PHONE_KEY_ID

from protocol import Role, crypto
from protocol.credentials import (
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
    issue_revocation_list,
    verify_credential_signature,
    verify_revocation_delta,
    verify_revocation_list,
    verify_signed_time,
)


# --- verification ---------------------------------------------------------------------
def test_valid_credential_verifies() -> None:
    for role in (Role.DRIVER, Role.GUEST):
        credential = issue(role=role)
        verify_at_wall(credential)
        verify_at_wall(credential, holder_key_id=PHONE_KEY_ID, is_revoked=lambda _: False)
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
        verify_at_wall(credential)
    with pytest.raises(UnknownIssuer):
        verify_at_wall(credential, issuers={})
    with pytest.raises(UnknownIssuer):
        verify_credential_signature(credential, issuers=ISSUERS)
    verify_at_wall(credential, issuers=ROGUE_ISSUERS)  # control: valid under its own issuer
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
            verify_at_wall(Credential.from_bytes(credential.to_bytes()))


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
            verify_at_wall(Credential.from_bytes(bytes(changed)))


def test_every_single_byte_change_of_a_revocation_list() -> None:
    n = len(REVOKED_IDS)
    _every_single_byte_change(
        revocation_list().to_bytes(),
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
        (revocation_list(), lambda o: verify_revocation_list(o, issuers=ISSUERS)),
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
