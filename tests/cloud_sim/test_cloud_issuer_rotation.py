"""`phonekey cloud rotate-issuer` and `GET /v1/issuer/rotations`: the old issuer
key signs its successor, and the cloud signs with the new key afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from cloud_testkit import b64, call, enroll, register, request_credential

from cloud_sim.db import CloudDB
from cloud_sim.server import RunningCloud, start_cloud
from protocol import credentials, crypto

_ROOT = Path(__file__).resolve().parents[2]
_ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(_ROOT))


def _cloud_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phonekey.cli", "cloud", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_ENV,
        check=False,
    )


async def test_a_new_cloud_has_no_rotations(
    cloud: RunningCloud, http: aiohttp.ClientSession
) -> None:
    assert await call(http, cloud, "GET", "/v1/issuer/rotations") == (200, {"rotations": []})


def test_rotate_issuer_command(tmp_path: Path) -> None:
    db_path = tmp_path / "cloud.db"
    first = _cloud_cli("issuer", "--db", str(db_path))
    assert first.returncode == 0, first.stderr
    old_text = first.stdout.splitlines()[-1]

    rotated = _cloud_cli("rotate-issuer", "--db", str(db_path))
    assert rotated.returncode == 0, rotated.stderr
    new_text = rotated.stdout.splitlines()[-1]
    assert new_text.startswith("p256:") and new_text != old_text
    assert _cloud_cli("issuer", "--db", str(db_path)).stdout.splitlines()[-1] == new_text

    db = CloudDB(db_path)
    try:
        (data,) = db.issuer_rotations()
        assert crypto.public_key_to_text(db.issuer_key().public_key()) == new_text
    finally:
        db.close()
    rotation = credentials.IssuerRotation.from_bytes(data)
    old = crypto.public_key_from_text(old_text)
    credentials.verify_issuer_rotation(rotation, issuers={crypto.key_id(old): old})
    assert crypto.public_key_to_text(rotation.new_public_key) == new_text

    assert _cloud_cli("rotate-issuer").returncode == 2  # --db is required


async def test_rotations_route_and_signing_key_after_rotations(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db_path = tmp_path / "cloud.db"
    db = CloudDB(db_path)
    try:
        keys = [db.issuer_key().public_key()]
        for now in (1000, 2000):
            db.rotate_issuer(now)
            keys.append(db.issuer_key().public_key())
    finally:
        db.close()
    cloud = await start_cloud(db_path)
    try:
        status, answer = await call(http, cloud, "GET", "/v1/issuer/rotations")
        assert status == 200
        rotations = [credentials.IssuerRotation.from_bytes(b64(r)) for r in answer["rotations"]]
        # oldest first, a chain: each signed by the key before it
        assert [r.issued_at for r in rotations] == [1000, 2000]
        for rotation, old, new in zip(rotations, keys[:-1], keys[1:], strict=True):
            credentials.verify_issuer_rotation(rotation, issuers={crypto.key_id(old): old})
            assert rotation.new_issuer_key_id == crypto.key_id(new)
        assert cloud.issuer_public_key.public_numbers() == keys[-1].public_numbers()

        owned = await register(http, cloud)
        phone = crypto.generate_private_key()
        await enroll(http, cloud, owned, phone, "driver")
        status, answer = await request_credential(http, cloud, phone, owned.vehicle_id)
        assert status == 200, answer
        credential = credentials.Credential.from_bytes(b64(answer["credential"]))
        assert credential.issuer_key_id == crypto.key_id(keys[-1])
    finally:
        await cloud.close()
