"""Helpers for tests that drive phonekey as separate processes through its CLI,
exactly as a user would type it in several terminals."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PHONEKEY = [sys.executable, "-m", "phonekey.cli"]
VIN = "1HGCM82633A004352"
SPEC_RE = re.compile(r"(tcp-client:\S+|unix:\S+)")
HANG_GUARD = 60.0  # seconds: only there so that a broken build fails instead of hanging


def run(*args: str, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess[str]:
    """Run `phonekey ARGS...` to completion."""
    return subprocess.run(
        [*PHONEKEY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


class Background:
    """A long-running CLI process; its output (stdout and stderr) read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*PHONEKEY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        """The next output line matching `pattern` (earlier lines are kept in `lines`)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # stays at the end for later calls
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; output so far: {self.lines}")

    def drain(self) -> None:
        """Consume the lines printed so far (kept in `lines`), so that the next
        `wait_for` only matches what happens from now on."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)
                return
            self.lines.append(line)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = HANG_GUARD) -> int:
        """Wait for the process to exit on its own; its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.drain()
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it lingers); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()


@dataclass
class Radio:
    """A running `phonekey radio`: its process and one --transport spec per slot."""

    process: Background
    specs: list[str]
    supervision_timeout: float


@contextmanager
def radio(slots: int, supervision_timeout: float | None = None) -> Iterator[Radio]:
    """`phonekey radio` with `slots` host slots (a slot serves one host at a time)."""
    listen = [arg for _ in range(slots) for arg in ("--listen", "tcp-server:127.0.0.1:0")]
    extra = (
        [] if supervision_timeout is None else ["--supervision-timeout", str(supervision_timeout)]
    )
    proc = Background("radio", *listen, *extra)
    try:
        specs: list[str] = []
        while len(specs) < slots:
            match = SPEC_RE.search(proc.wait_for(SPEC_RE.pattern))
            assert match is not None
            specs.append(match.group(1))
        timeout_line = proc.wait_for(r"supervision timeout")
        seconds = float(re.findall(r"after ([\d.]+) s", timeout_line)[0])
        proc.wait_for("^radio ready$")
        yield Radio(proc, specs, seconds)
    finally:
        proc.stop()


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
