"""Resident memory of a real vehicle process (``phonekey vehicle run``).

How: ``phonekey radio`` hosts two virtual controllers; ``phonekey vehicle
run --state DIR`` attaches to one, a phone (``phonekey phone unlock
--no-cloud``, a separate process) to the other, exactly as a user would run
them in three terminals. Once the vehicle prints that it advertises, and
again after the phone's unlocks, the benchmark reads ``VmRSS`` (resident
set now) and ``VmHWM`` (its peak) from ``/proc/<pid>/status`` of the
vehicle process, then stops it with SIGTERM. Linux only (``/proc``);
elsewhere the figure is reported unavailable.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from .rig import VIN

_PHONEKEY: Final = [sys.executable, "-m", "phonekey.cli"]
_SPEC_RE: Final = re.compile(r"(tcp-client:\S+)")
_HANG_GUARD: Final = 60.0
_UNLOCK_ARGS: Final = ("unlock", "--vin", VIN, "--no-cloud")


class _Process:
    """A long-running ``phonekey`` subcommand whose output is read line by line."""

    def __init__(self, *args: str) -> None:
        self.name = " ".join(args[:2])
        self.proc = subprocess.Popen(
            [*_PHONEKEY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = _HANG_GUARD) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise RuntimeError(f"no line matching {pattern!r} from {self.name}: {self.lines}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


@contextmanager
def _radio(slots: int) -> Iterator[list[str]]:
    listen = [arg for _ in range(slots) for arg in ("--listen", "tcp-server:127.0.0.1:0")]
    radio = _Process("radio", *listen)
    try:
        specs: list[str] = []
        while len(specs) < slots:
            match = _SPEC_RE.search(radio.wait_for(_SPEC_RE.pattern))
            assert match is not None
            specs.append(match.group(1))
        radio.wait_for("^radio ready$")
        yield specs
    finally:
        radio.stop()


def _phone_unlock(home: Path, spec: str) -> str:
    done = subprocess.run(
        [*_PHONEKEY, "phone", "--home", str(home), *_UNLOCK_ARGS, "--transport", spec],
        capture_output=True,
        text=True,
        timeout=_HANG_GUARD,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"phone unlock failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def measure(vehicles: Sequence[tuple[str, Path, Path]], unlocks: int) -> dict[str, Any]:
    """``vehicles``: (label, vehicle state dir, phone home whose key it holds).
    Each vehicle runs in turn on the same radio; ``unlocks`` phone unlocks each."""
    if not Path("/proc/self/status").exists():
        return {"available": False, "why": "needs Linux /proc/<pid>/status"}
    result: dict[str, Any] = {
        "how": "phonekey vehicle run on phonekey radio (virtual controllers over TCP), "
        "phone unlocks from a separate `phonekey phone unlock --no-cloud` process; "
        "VmRSS/VmHWM of the vehicle process from /proc/<pid>/status",
        "unlocks_served": unlocks,
    }
    with _radio(2) as specs:
        for label, car, home in vehicles:
            vehicle = _Process("vehicle", "run", "--state", str(car), "--transport", specs[0])
            try:
                vehicle.wait_for("advertising")
                idle = memory_kib(vehicle.proc.pid)
                answers = [_phone_unlock(home, specs[1]) for _ in range(unlocks)]
                served = memory_kib(vehicle.proc.pid)
            finally:
                vehicle.stop()
            result[label] = {
                "rss_idle_kib": idle["VmRSS"],
                "rss_after_unlocks_kib": served["VmRSS"],
                "rss_peak_kib": served["VmHWM"],
                "rss_after_unlocks_mib": round(served["VmRSS"] / 1024, 1),
                "phone_said": answers[-1] if answers else "",
            }
    return result
