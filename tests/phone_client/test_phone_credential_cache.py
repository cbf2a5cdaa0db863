"""The credential cache: only verified credentials go in, the newest stays,
corrupt files are reported and ignored, revocation news only moves forward."""

from __future__ import annotations

import base64
import json
import logging
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from phone_client import CacheState, CredentialCache, KeyStore, NoTrustedIssuer
from protocol import Role, crypto
from protocol.card import VehicleCard
from protocol.credentials import (
    Credential,
    CredentialError,
    CredentialExpired,
    CredentialRoleNotAllowed,
    CredentialSignatureInvalid,
    CredentialWrongHolder,
    CredentialWrongVehicle,
    RevocationDelta,
    UnknownIssuer,
    issue_credential,
    issue_revocation_delta,
    issue_revocation_list,
)

VIN = "PHNCACHE1"
NOW = 1_800_000_000
ISSUER = crypto.generate_private_key()
ISSUERS = {crypto.key_id(ISSUER.public_key()): ISSUER.public_key()}
ISSUER_ID = crypto.key_id(ISSUER.public_key())
VEHICLE = crypto.generate_private_key()


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keystore = KeyStore(tmp_path / "phone")
    keystore.keygen()
    keystore.add_vehicle(VehicleCard(VIN, VEHICLE.public_key()), issuer=ISSUER.public_key())
    return keystore


def issue(
    store: KeyStore,
    *,
    serial: int = 1,
    not_before: int = NOW - 60,
    not_after: int = NOW + 7 * 86400,
    issuer: crypto.PrivateKey = ISSUER,
    vehicle: crypto.PrivateKey = VEHICLE,
    holder: crypto.PublicKey | None = None,
    role: Role = Role.DRIVER,
) -> Credential:
    return issue_credential(
        issuer,
        vehicle_id=crypto.key_id(vehicle.public_key()),
        holder_key=holder or store.public_key(),
        role=role,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
    )


def test_a_valid_credential_is_stored_and_returned(store: KeyStore) -> None:
    cache = CredentialCache(store)
    assert cache.best(VIN, NOW) is None
    assert cache.status(VIN, NOW).state is CacheState.NONE
    credential = issue(store)
    assert cache.store(VIN, credential, NOW)
    # A fresh cache object reads it back from disk, verified again.
    again = CredentialCache(store)
    assert again.best(VIN, NOW) == credential
    status = again.status(VIN, NOW)
    assert status.usable and "valid until" in status.describe(NOW)
    path = store.home / "credentials" / f"{VIN}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        ("bad-signature", CredentialSignatureInvalid),
        ("other-issuer", UnknownIssuer),
        ("wrong-vehicle", CredentialWrongVehicle),
        ("wrong-holder", CredentialWrongHolder),
        ("owner-role", CredentialRoleNotAllowed),
        ("expired", CredentialExpired),
    ],
)
def test_a_credential_that_does_not_verify_is_never_cached(
    store: KeyStore, tamper: str, error: type[CredentialError]
) -> None:
    good = issue(store)
    bad = {
        "bad-signature": replace(good, signature=good.signature[:-1] + b"\x00"),
        "other-issuer": issue(store, issuer=crypto.generate_private_key()),
        "wrong-vehicle": issue(store, vehicle=crypto.generate_private_key()),
        "wrong-holder": issue(store, holder=crypto.generate_private_key().public_key()),
        "owner-role": issue(store, role=Role.OWNER),
        "expired": issue(store, not_before=NOW - 7200, not_after=NOW - 3600),
    }[tamper]
    cache = CredentialCache(store)
    with pytest.raises(error):
        cache.store(VIN, bad, NOW)
    assert cache.status(VIN, NOW).state is CacheState.NONE
    assert not (store.home / "credentials" / f"{VIN}.json").exists()


def test_no_pinned_issuer_means_nothing_can_be_cached(tmp_path: Path) -> None:
    keystore = KeyStore(tmp_path)
    keystore.keygen()
    keystore.add_vehicle(VehicleCard(VIN, VEHICLE.public_key()))
    with pytest.raises(NoTrustedIssuer, match="--issuer"):
        CredentialCache(keystore).store(VIN, issue(keystore), NOW)


def test_a_newer_credential_is_never_replaced_by_an_older_one(store: KeyStore) -> None:
    cache = CredentialCache(store)
    newer = issue(store, serial=5, not_after=NOW + 7 * 86400)
    older = issue(store, serial=4, not_after=NOW + 6 * 86400)
    assert cache.store(VIN, newer, NOW)
    assert not cache.store(VIN, older, NOW)  # e.g. a slow answer to an earlier request
    assert not cache.store(VIN, newer, NOW)  # the same one again: nothing to do
    assert cache.best(VIN, NOW) == newer
    latest = issue(store, serial=6, not_after=NOW + 8 * 86400)
    assert cache.store(VIN, latest, NOW)
    assert cache.best(VIN, NOW) == latest


def test_an_expired_cached_credential_is_reported_not_returned(store: KeyStore) -> None:
    cache = CredentialCache(store)
    credential = issue(store, not_before=NOW - 100, not_after=NOW + 100)
    assert cache.store(VIN, credential, NOW)
    later = NOW + 100 + 2 * 3600
    status = cache.status(VIN, later)
    assert status.state is CacheState.EXPIRED and status.credential == credential
    assert cache.best(VIN, later) is None
    assert "expired 2 h ago" in status.describe(later)
    # Yet an expired one still counts for ordering: an older one does not replace it.
    assert not cache.store(VIN, issue(store, not_before=NOW - 200, not_after=NOW + 50), NOW)


@pytest.mark.parametrize(
    "content",
    [
        b"{ not json",
        b"",
        b"[]",
        b'{"format": 99}',
        b'{"format": 1, "credential": "***"}',
        b'{"format": 1, "credential": "AAAA"}',
        b"\xff\xfe garbage",
    ],
)
def test_a_corrupt_cache_file_is_reported_and_ignored(
    store: KeyStore, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    directory = store.home / "credentials"
    directory.mkdir(mode=0o700)
    (directory / f"{VIN}.json").write_bytes(content)
    cache = CredentialCache(store)
    with caplog.at_level(logging.WARNING):
        status = cache.status(VIN, NOW)
    assert status.state is CacheState.CORRUPT and status.credential is None
    assert "corrupt" in status.describe(NOW)
    assert cache.best(VIN, NOW) is None
    assert cache.problems and cache.problems[0].path.name == f"{VIN}.json"
    assert any("corrupt" in r.message for r in caplog.records)
    # The next good credential replaces the corrupt file.
    credential = issue(store)
    assert cache.store(VIN, credential, NOW)
    assert CredentialCache(store).best(VIN, NOW) == credential


def test_a_tampered_cached_credential_is_not_presented(store: KeyStore) -> None:
    cache = CredentialCache(store)
    credential = issue(store)
    cache.store(VIN, credential, NOW)
    path = store.home / "credentials" / f"{VIN}.json"
    entry = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(entry["credential"]))
    raw[60] ^= 1  # inside not_after: still parses, signature no longer matches
    entry["credential"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(entry))
    status = cache.status(VIN, NOW)
    assert status.state is CacheState.UNTRUSTED and cache.best(VIN, NOW) is None


def test_a_credential_of_a_no_longer_pinned_issuer_is_not_presented(store: KeyStore) -> None:
    cache = CredentialCache(store)
    cache.store(VIN, issue(store), NOW)
    card = store.vehicle(VIN)
    store.add_vehicle(card, issuer=crypto.generate_private_key().public_key())
    status = cache.status(VIN, NOW)
    assert status.state is CacheState.UNTRUSTED and cache.best(VIN, NOW) is None


def test_revocation_list_version_never_goes_backwards(store: KeyStore) -> None:
    cache = CredentialCache(store)
    v3 = issue_revocation_list(ISSUER, version=3, issued_at=NOW, revoked=[b"a" * 16])
    v2 = issue_revocation_list(ISSUER, version=2, issued_at=NOW, revoked=[])
    assert cache.store_revocation_list(v3, ISSUERS)
    assert not cache.store_revocation_list(v2, ISSUERS)
    assert not cache.store_revocation_list(v3, ISSUERS)
    held = CredentialCache(store).revocation_list(ISSUER_ID, ISSUERS)
    assert held is not None and held.version == 3
    forged = replace(v3, version=9)
    with pytest.raises(CredentialSignatureInvalid):
        cache.store_revocation_list(forged, ISSUERS)
    assert cache.revocation_version(ISSUER_ID, ISSUERS) == 3


def test_deltas_chain_from_the_vehicles_version(store: KeyStore) -> None:
    cache = CredentialCache(store)

    def delta(low: int, high: int) -> RevocationDelta:
        added = [bytes([v]) * 16 for v in range(low + 1, high + 1)]
        return issue_revocation_delta(ISSUER, from_version=low, to_version=high, added=added)

    assert cache.store_deltas([delta(0, 2), delta(2, 5), delta(3, 5)], ISSUERS) == 3
    assert cache.store_deltas([delta(2, 5)], ISSUERS) == 0  # known already
    chain = CredentialCache(store).deltas_from(ISSUER_ID, 0, ISSUERS)
    assert [(d.from_version, d.to_version) for d in chain] == [(0, 2), (2, 5)]
    assert [(d.from_version, d.to_version) for d in cache.deltas_from(ISSUER_ID, 3, ISSUERS)] == [
        (3, 5)
    ]
    assert cache.deltas_from(ISSUER_ID, 1, ISSUERS) == []  # a gap: nothing to send
    assert cache.deltas_from(ISSUER_ID, 5, ISSUERS) == []  # up to date
    assert cache.revocation_version(ISSUER_ID, ISSUERS) == 5
    bad = replace(delta(5, 6), signature=bytes(64))
    with pytest.raises(CredentialError):
        cache.store_deltas([delta(5, 7), bad], ISSUERS)
    assert cache.revocation_version(ISSUER_ID, ISSUERS) == 5  # none of that batch stored


def test_the_vehicles_reported_version_is_remembered_beside_the_credential(
    store: KeyStore,
) -> None:
    cache = CredentialCache(store)
    assert cache.vehicle_revocation_version(VIN) is None
    cache.record_vehicle_revocation_version(VIN, 4)
    credential = issue(store)
    cache.store(VIN, credential, NOW)
    again = CredentialCache(store)
    assert again.vehicle_revocation_version(VIN) == 4
    assert again.best(VIN, NOW) == credential
    again.remove(VIN)
    assert again.vehicle_revocation_version(VIN) is None and again.best(VIN, NOW) is None
