"""Radio, vehicle and phones as separate processes, driven through the CLI
exactly as a user would type it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PHONEKEY = [sys.executable, "-m", "phonekey.cli"]
VIN = "1HGCM82633A004352"
_SPEC_RE = re.compile(r"(tcp-client:\S+|unix:\S+)")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PHONEKEY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


class _Background:
    """A long-running CLI process whose stdout we read line by line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [*PHONEKEY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output so far: {self.lines}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def radio() -> Iterator[list[str]]:
    """`phonekey radio` with one host slot per process of the test (a slot
    serves one host at a time); yields the client specs."""
    slots = 5
    listen = [arg for _ in range(slots) for arg in ("--listen", "tcp-server:127.0.0.1:0")]
    proc = _Background("radio", *listen)
    try:
        specs: list[str] = []
        while len(specs) < slots:
            line = proc.wait_for(_SPEC_RE.pattern)
            match = _SPEC_RE.search(line)
            assert match is not None
            specs.append(match.group(1))
        proc.wait_for("radio ready")
        yield specs
    finally:
        proc.stop()


def test_owner_unlocks_and_stranger_is_denied_across_processes(
    radio: list[str], tmp_path: Path
) -> None:
    car, owner, stranger = tmp_path / "car", tmp_path / "owner", tmp_path / "stranger"
    card = _last_line(_run("vehicle", "init", "--vin", VIN, "--state", str(car)))
    owner_key = _last_line(_run("phone", "--home", str(owner), "keygen"))
    _last_line(_run("phone", "--home", str(stranger), "keygen"))
    _last_line(
        _run("vehicle", "add-key", "--state", str(car), "--key", owner_key, "--role", "owner")
    )
    for home in (owner, stranger):
        _last_line(_run("phone", "--home", str(home), "add-vehicle", card))

    vehicle = _Background("vehicle", "run", "--state", str(car), "--transport", radio[0])
    try:
        vehicle.wait_for("advertising")

        # A running vehicle owns its state: provisioning must refuse (add-key now
        # goes through the running vehicle's control socket instead).
        busy = _run("vehicle", "provision", "--state", str(car), "--issuer", owner_key)
        assert busy.returncode == 4
        assert "running" in busy.stderr

        unlock = _run(
            "phone", "--home", str(owner), "unlock", "--vin", VIN, "--transport", radio[1]
        )
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
        assert "unlocked" in unlock.stdout

        status = _run(
            "phone", "--home", str(owner), "status", "--vin", VIN, "--transport", radio[2]
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert "unlocked" in status.stdout

        denied = _run(
            "phone", "--home", str(stranger), "lock", "--vin", VIN, "--transport", radio[3]
        )
        assert denied.returncode == 1, denied.stdout + denied.stderr
        assert "whitelist" in (denied.stdout + denied.stderr)

        lock = _run("phone", "--home", str(owner), "lock", "--vin", VIN, "--transport", radio[4])
        assert lock.returncode == 0, lock.stdout + lock.stderr
        assert "locked" in lock.stdout
    finally:
        assert vehicle.stop() == 0, vehicle.lines

    # The vehicle persisted what the phone was told.
    show = _run("vehicle", "show", "--state", str(car))
    assert show.returncode == 0, show.stderr
    assert re.search(r"\blocked\b", show.stdout)
