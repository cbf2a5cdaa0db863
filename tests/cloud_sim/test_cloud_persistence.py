"""What the cloud knows survives a restart on the same database file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiohttp
from cloud_testkit import (
    b64,
    call,
    enroll,
    key_id_hex,
    register,
    request_credential,
    revocation_id_of,
)

from cloud_sim.db import CloudDB
from cloud_sim.server import start_cloud
from protocol import credentials, crypto


async def test_state_survives_restart(tmp_path: Path) -> None:
    db_path = tmp_path / "cloud.db"
    driver, revoked = crypto.generate_private_key(), crypto.generate_private_key()
    async with aiohttp.ClientSession() as http:
        async with await start_cloud(db_path) as cloud:
            issuer = cloud.issuer_public_text
            owned = await register(http, cloud)
            await enroll(http, cloud, owned, driver, "driver")
            await enroll(http, cloud, owned, revoked, "guest")
            await call(
                http,
                cloud,
                "POST",
                f"/v1/vehicles/{owned.vehicle_id}/revocations",
                {"key_id": key_id_hex(revoked)},
                owned.auth,
            )
            _, first = await request_credential(http, cloud, driver, owned.vehicle_id)

        async with await start_cloud(db_path) as cloud:
            assert cloud.issuer_public_text == issuer
            status, answer = await request_credential(http, cloud, driver, owned.vehicle_id)
            assert status == 200 and answer["role"] == "driver"
            assert answer["serial"] > first["serial"]  # serials never repeat
            assert (await request_credential(http, cloud, revoked, owned.vehicle_id))[0] == 403
            _, listed = await call(http, cloud, "GET", "/v1/revocations")
            assert listed["version"] == 1
            revocations = credentials.RevocationList.from_bytes(b64(listed["revocation_list"]))
            credentials.verify_revocation_list(revocations, issuers=cloud.issuers)
            assert revocations.revoked == (revocation_id_of(owned.vehicle_id, revoked),)
            # The owner token still works, and the vehicle is still registered.
            status, _ = await enroll(http, cloud, owned, crypto.generate_private_key(), "guest")
            assert status == 201
            status, _ = await call(
                http, cloud, "POST", "/v1/vehicles", {"card": owned.card.to_text()}
            )
            assert status == 409


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    from cloud_sim.db import Vehicle, hash_token

    db = CloudDB(tmp_path / "cloud.db")
    token = "secret-token-value"
    assert db.add_vehicle(Vehicle("00" * 16, "VIN1", "card"), hash_token(token), 0)
    assert db.vehicle_for_token(hash_token(token)) == "00" * 16
    db.close()
    assert token.encode() not in (tmp_path / "cloud.db").read_bytes()
    with contextlib.closing(sqlite3.connect(tmp_path / "cloud.db")) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_issuer_key_created_once(tmp_path: Path) -> None:
    first, second = CloudDB(tmp_path / "c.db"), CloudDB(tmp_path / "c.db")
    try:
        a, b = first.issuer_key().public_key(), second.issuer_key().public_key()
        assert crypto.public_bytes(a) == crypto.public_bytes(b)
    finally:
        first.close()
        second.close()


def test_a_schema_1_database_moves_to_per_vehicle_revocations(tmp_path: Path) -> None:
    """Schema 1 listed raw key ids (issuer-wide). Opening it re-lists each revoked
    enrollment as its per-vehicle revocation id at a new version, so vehicles
    holding the old list get the entries as deltas, and drops the raw ids."""
    from cloud_sim.db import Enrollment, Vehicle, hash_token

    path = tmp_path / "cloud.db"
    vehicle_a, vehicle_b, phone = (
        crypto.key_id(crypto.generate_private_key().public_key()).hex() for _ in range(3)
    )
    db = CloudDB(path)
    for n, vehicle_id in enumerate((vehicle_a, vehicle_b)):
        assert db.add_vehicle(Vehicle(vehicle_id, f"VIN{n}", "card"), hash_token(str(n)), 0)
        db.enroll(Enrollment(vehicle_id, phone, "02" * 33, "driver", 0, vehicle_id == vehicle_a))
    db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # back to what schema 1 wrote
        conn.executescript(
            "DROP TABLE revocations;"
            "CREATE TABLE revoked_keys (key_id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
            "revoked_at INTEGER NOT NULL);"
            f"INSERT INTO revoked_keys VALUES ('{phone}', 1, 5);"
            "UPDATE revocation_state SET version = 1, updated_at = 5;"
            "PRAGMA user_version = 1;"
        )

    db = CloudDB(path)
    try:
        entry_a = credentials.revocation_id(bytes.fromhex(vehicle_a), bytes.fromhex(phone))
        listed = db.revocations()
        assert (listed.version, listed.revoked) == (2, [entry_a])
        assert db.revoked_between(1, 2) == [entry_a]
        assert db.is_revoked(vehicle_a, phone) and not db.is_revoked(vehicle_b, phone)
    finally:
        db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "revoked_keys" not in tables
