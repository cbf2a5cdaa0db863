"""Helpers for tests that drive phonekey as separate processes through its CLI,
exactly as a user would type it in several terminals."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The process plumbing is shared with the benchmarks, which may not import tests/;
# the tests know it by its older names (Background, run).
from bench.cli_process import CliProcess as Background
from bench.cli_process import Radio, radio
from bench.cli_process import run_cli as run

__all__ = [
    "VIN",
    "Background",
    "Household",
    "Radio",
    "kill",
    "last_line",
    "phone",
    "provision",
    "radio",
    "run",
]

VIN = "1HGCM82633A004352"


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@dataclass
class Household:
    """A provisioned vehicle state directory and phone homes whose keys it holds."""

    car: Path
    card: str
    phones: dict[str, Path]

    def copy_to(self, target: Path) -> Household:
        shutil.copytree(self.car, target / "car")
        phones = {}
        for name, home in self.phones.items():
            shutil.copytree(home, target / name)
            phones[name] = target / name
        return Household(target / "car", self.card, phones)


def provision(root: Path, owners: Sequence[str], strangers: Sequence[str] = ()) -> Household:
    """`vehicle init`, then per phone `keygen` and `add-vehicle`; owners are whitelisted."""
    car = root / "car"
    card = last_line(run("vehicle", "init", "--vin", VIN, "--state", str(car)))
    phones = {}
    for name in [*owners, *strangers]:
        home = phones[name] = root / name
        key = last_line(run("phone", "--home", str(home), "keygen"))
        if name in owners:
            last_line(
                run("vehicle", "add-key", "--state", str(car), "--key", key, "--role", "owner")
            )
        last_line(run("phone", "--home", str(home), "add-vehicle", card))
    return Household(car, card, phones)


def phone(home: Path, command: str, spec: str, *extra: str) -> list[str]:
    """The argument list of `phonekey phone --home HOME COMMAND --vin VIN --transport SPEC`."""
    return ["phone", "--home", str(home), command, "--vin", VIN, "--transport", spec, *extra]


def kill(process: Background) -> None:
    """SIGKILL: the process dies without a word, as on a crash or power cut."""
    process.signal(signal.SIGKILL)
    process.wait()
