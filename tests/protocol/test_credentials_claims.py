"""Issuer-signed objects on their own: the claims verification checks besides the
signature (vehicle, holder, role, validity window and leeway, revocation), their
order, signed time bound to its nonce, and revocation list versions."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from credential_testkit import (
    ISSUER_KEY,
    ISSUER_KEY_ID,
    ISSUERS,
    NOT_AFTER,
    NOT_BEFORE,
    REVOKED_IDS,
    ROGUE_ISSUER_KEY,
    ROGUE_ISSUERS,
    TIME_NONCE,
    VEHICLE_ID,
    WALL,
    issue,
    revocation_list,
    signed_time,
    verify_at_wall,
)
from protocol_testkit import ATTACKER_KEY, GUEST_KEY, PHONE_KEY_ID

from protocol import Role, crypto
from protocol.credentials import (
    HIGHEST_CLOUD_ROLE,
    MAX_LEEWAY,
    Credential,
    CredentialError,
    CredentialExpired,
    CredentialNotYetValid,
    CredentialRevoked,
    CredentialRoleNotAllowed,
    CredentialSignatureInvalid,
    CredentialWrongHolder,
    CredentialWrongVehicle,
    RevocationDelta,
    SignedTimeRejected,
    StaleRevocationList,
    UnknownIssuer,
    check_credential_claims_at_time,
    issue_credential,
    issue_revocation_delta,
    revocation_id,
    verify_credential_at_time,
    verify_credential_signature,
    verify_revocation_delta,
    verify_revocation_list,
    verify_signed_time,
)


def test_wrong_vehicle() -> None:
    with pytest.raises(CredentialWrongVehicle):
        verify_at_wall(issue(vehicle_key=ATTACKER_KEY))
    with pytest.raises(CredentialWrongVehicle):
        verify_at_wall(issue(), vehicle_id=bytes(16))


def test_wrong_holder() -> None:
    with pytest.raises(CredentialWrongHolder):
        verify_at_wall(issue(holder=GUEST_KEY), holder_key_id=PHONE_KEY_ID)
    with pytest.raises(CredentialWrongHolder):
        verify_at_wall(issue(), holder_key_id=PHONE_KEY_ID[:-1] + bytes([PHONE_KEY_ID[-1] ^ 1]))
    verify_at_wall(issue(holder=GUEST_KEY), holder_key_id=crypto.key_id(GUEST_KEY.public_key()))


def test_owner_role_is_refused_even_with_a_valid_signature() -> None:
    assert HIGHEST_CLOUD_ROLE is Role.DRIVER
    owner = issue(role=Role.OWNER)
    verify_credential_signature(owner, issuers=ISSUERS)  # the issuer did sign it
    with pytest.raises(CredentialRoleNotAllowed):
        verify_at_wall(owner)
    with pytest.raises(CredentialRoleNotAllowed):
        check_credential_claims_at_time(owner, issuers=ISSUERS, vehicle_id=VEHICLE_ID, now=WALL)


@pytest.mark.parametrize("leeway", [0, 1, 60, MAX_LEEWAY])
def test_window_edges_with_leeway(leeway: int) -> None:
    credential = issue()
    verify_at_wall(credential, now=NOT_BEFORE - leeway, leeway=leeway)
    with pytest.raises(CredentialNotYetValid):
        verify_at_wall(credential, now=NOT_BEFORE - leeway - 1, leeway=leeway)
    verify_at_wall(credential, now=NOT_AFTER + leeway, leeway=leeway)
    with pytest.raises(CredentialExpired):
        verify_at_wall(credential, now=NOT_AFTER + leeway + 1, leeway=leeway)


def test_default_leeway_is_five_minutes() -> None:
    assert MAX_LEEWAY == 300
    credential = issue()
    verify_at_wall(credential, now=NOT_BEFORE - 300)
    verify_at_wall(credential, now=NOT_AFTER + 300)
    with pytest.raises(CredentialNotYetValid):
        verify_at_wall(credential, now=NOT_BEFORE - 301)
    with pytest.raises(CredentialExpired):
        verify_at_wall(credential, now=NOT_AFTER + 301)


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
        verify_at_wall(credential, is_revoked=lambda rev_id: rev_id == phone_rev_id)
    with pytest.raises(CredentialRevoked):
        verify_at_wall(
            credential, is_revoked=revocation_list([*REVOKED_IDS, phone_rev_id]).is_revoked
        )
    verify_at_wall(credential, is_revoked=revocation_list().is_revoked)
    # The raw key id is no entry: the old issuer-wide form revokes nothing.
    verify_at_wall(credential, is_revoked=revocation_list([*REVOKED_IDS, PHONE_KEY_ID]).is_revoked)


def test_revocation_for_another_vehicle_does_not_apply() -> None:
    """The same phone key revoked on another vehicle stays valid on this one."""
    other_vehicle = crypto.key_id(ATTACKER_KEY.public_key())
    rl = revocation_list([revocation_id(other_vehicle, PHONE_KEY_ID)])
    verify_at_wall(issue(), is_revoked=rl.is_revoked)
    with pytest.raises(CredentialRevoked):
        verify_at_wall(
            issue(vehicle_key=ATTACKER_KEY), vehicle_id=other_vehicle, is_revoked=rl.is_revoked
        )


def test_revocation_is_by_holder_key_id_not_serial() -> None:
    """Revoking the key revokes every credential the key holds, whatever its serial."""
    rl = revocation_list([revocation_id(VEHICLE_ID, PHONE_KEY_ID)])
    for serial in (1, 2, 2**64 - 1):
        with pytest.raises(CredentialRevoked):
            verify_at_wall(issue(serial=serial), is_revoked=rl.is_revoked)
    verify_at_wall(issue(holder=GUEST_KEY), is_revoked=rl.is_revoked)


def test_cheap_claims_come_before_the_signature() -> None:
    """A credential that fails a claim is refused for that claim, with no signature
    work; the claim checks alone never look at the signature."""
    expired_and_forged = replace(issue(not_after=WALL - 1000), signature=bytes(64))
    with pytest.raises(CredentialExpired):
        verify_at_wall(expired_and_forged)
    forged = replace(issue(), signature=bytes(64))
    check_credential_claims_at_time(forged, issuers=ISSUERS, vehicle_id=VEHICLE_ID, now=WALL)
    with pytest.raises(CredentialSignatureInvalid):
        verify_at_wall(forged)


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
            verify_at_wall(everything_wrong, holder_key_id=PHONE_KEY_ID, **overrides)
    with pytest.raises(CredentialRoleNotAllowed):
        verify_at_wall(issue(role=Role.OWNER, not_after=WALL - 1000), is_revoked=lambda _: True)
    with pytest.raises(CredentialExpired):
        verify_at_wall(issue(not_after=WALL - 1000), is_revoked=lambda _: True)


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
    rl = revocation_list(version=5)
    verify_revocation_list(rl, issuers=ISSUERS)
    verify_revocation_list(rl, issuers=ISSUERS, newer_than=4)
    verify_revocation_list(rl, issuers=ISSUERS, newer_than=0)
    for held in (5, 6, 2**64 - 1):
        with pytest.raises(StaleRevocationList):
            verify_revocation_list(rl, issuers=ISSUERS, newer_than=held)


def test_revocation_list_signature_is_checked_before_its_version() -> None:
    forged = replace(revocation_list(version=5), signature=bytes(64))
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
    verify_at_wall(credential)
    with pytest.raises(ValueError):
        replace(credential, serial=2**64).to_bytes()
    delta_max = issue_revocation_delta(ISSUER_KEY, from_version=0, to_version=2**64 - 1, added=[])
    verify_revocation_delta(RevocationDelta.from_bytes(delta_max.to_bytes()), issuers=ISSUERS)
