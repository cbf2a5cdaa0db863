"""Radio, vehicle and phones as separate processes, driven through the CLI
exactly as a user would type it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_rig import VIN, Background, provision, radio, run


@pytest.fixture
def radio_specs() -> Iterator[list[str]]:
    """`phonekey radio` with one host slot per process of the test; its client specs."""
    with radio(slots=5) as running:
        yield running.specs


def test_owner_unlocks_and_stranger_is_denied_across_processes(
    radio_specs: list[str], tmp_path: Path
) -> None:
    specs = radio_specs
    home = provision(tmp_path, owners=["owner"], strangers=["stranger"])
    car, owner, stranger = home.car, home.phones["owner"], home.phones["stranger"]
    owner_key = run("phone", "--home", str(owner), "pubkey").stdout.strip().splitlines()[-1]

    vehicle = Background("vehicle", "run", "--state", str(car), "--transport", specs[0])
    try:
        vehicle.wait_for("advertising")

        # A running vehicle owns its state: provisioning must refuse (add-key now
        # goes through the running vehicle's control socket instead).
        busy = run("vehicle", "provision", "--state", str(car), "--issuer", owner_key)
        assert busy.returncode == 4
        assert "running" in busy.stderr

        unlock = run("phone", "--home", str(owner), "unlock", "--vin", VIN, "--transport", specs[1])
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
        assert "unlocked" in unlock.stdout

        status = run("phone", "--home", str(owner), "status", "--vin", VIN, "--transport", specs[2])
        assert status.returncode == 0, status.stdout + status.stderr
        assert "unlocked" in status.stdout

        denied = run(
            "phone", "--home", str(stranger), "lock", "--vin", VIN, "--transport", specs[3]
        )
        assert denied.returncode == 1, denied.stdout + denied.stderr
        assert "whitelist" in (denied.stdout + denied.stderr)

        lock = run("phone", "--home", str(owner), "lock", "--vin", VIN, "--transport", specs[4])
        assert lock.returncode == 0, lock.stdout + lock.stderr
        assert "locked" in lock.stdout
    finally:
        assert vehicle.stop() == 0, vehicle.lines

    # The vehicle persisted what the phone was told.
    show = run("vehicle", "show", "--state", str(car))
    assert show.returncode == 0, show.stderr
    assert re.search(r"\blocked\b", show.stdout)
