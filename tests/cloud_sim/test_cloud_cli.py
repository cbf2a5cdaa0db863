"""`phonekey cloud ...` as separate processes, as a user or the demo runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloud_testkit import new_card

from protocol import crypto

_ROOT = Path(__file__).resolve().parents[2]
_ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(_ROOT))


def _entry() -> list[str]:
    """Through the `phonekey` dispatcher once it lists `cloud`, else the module itself."""
    from phonekey import cli

    if "cloud" in getattr(cli, "_SUBCOMMANDS", {}):
        return [sys.executable, "-m", "phonekey.cli", "cloud"]
    return [sys.executable, "-m", "cloud_sim.cli", "cloud"]


CLOUD = _entry()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLOUD, *args], capture_output=True, text=True, timeout=30, env=_ENV, check=False
    )


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A `cloud serve --port 0` process: its URL, issuer key line and database."""
    db = tmp_path / "cloud.db"
    with subprocess.Popen(
        [*CLOUD, "serve", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            listening = proc.stdout.readline()
            match = re.fullmatch(r"cloud listening on (http://127\.0\.0\.1:\d+)\n", listening)
            assert match, (listening, proc.stderr.read() if proc.poll() is not None else "")
            issuer = proc.stdout.readline()
            assert issuer.startswith("issuer p256:")
            yield match.group(1), issuer.split()[1], db
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0  # generous: CI machines are shared
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_fail_and_owner_commands(served: tuple[str, str, Path]) -> None:
    url, issuer, db = served
    assert _get(url + "/v1/issuer") == 200

    result = _run("fail", "http-500", "--url", url)
    assert result.returncode == 0 and "http-500" in result.stdout
    assert _get(url + "/v1/issuer") == 500
    assert _run("fail", "none", "--url", url).returncode == 0
    assert _get(url + "/v1/issuer") == 200

    # The issuer command reads the same database while the server runs.
    result = _run("issuer", "--db", str(db))
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == issuer

    card = new_card()
    result = _run("register-vehicle", "--url", url, "--card", card.to_text())
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[-1]
    phone = crypto.generate_private_key().public_key()
    vehicle = ["--url", url, "--token", token, "--vehicle-id", card.vehicle_id.hex()]
    result = _run("enroll", *vehicle, "--key", crypto.public_key_to_text(phone), "--role", "guest")
    assert result.returncode == 0, result.stderr
    key_id = crypto.key_id(phone).hex()
    assert key_id in result.stdout
    result = _run("revoke", *vehicle, "--key-id", key_id)
    assert result.returncode == 0 and "version 1" in result.stdout
    with urllib.request.urlopen(url + "/v1/revocations", timeout=5) as response:
        assert json.load(response)["version"] == 1

    # Refusals by the cloud exit 1 with its one sentence; bad arguments exit 2.
    result = _run("register-vehicle", "--url", url, "--card", card.to_text())
    assert result.returncode == 1 and "already registered" in result.stderr
    assert _run("fail", "teapot", "--url", url).returncode == 2


def test_unreachable_cloud_exits_3(tmp_path: Path) -> None:
    # No timing assertion (shared machines): _run's own 30 s limit catches a hang.
    result = _run("fail", "none", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "did not answer" in result.stderr


def test_unusable_database_exits_4(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    result = _run("issuer", "--db", str(bad))
    assert result.returncode == 4 and result.stderr.startswith("error:")


def test_debug_adds_the_traceback_to_the_one_line_error() -> None:
    plain = _run("fail", "none", "--url", "http://127.0.0.1:9", "--timeout", "2")
    debug = _run("fail", "--debug", "none", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert plain.returncode == debug.returncode == 3
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
