"""What the cloud knows survives a restart on the same database file."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiohttp
from cloud_testkit import b64, call, enroll, key_id_hex, register, request_credential

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
            assert revocations.is_revoked(crypto.key_id(revoked.public_key()))
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
