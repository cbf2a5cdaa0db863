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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .cli_process import HANG_GUARD, CliProcess, radio, run_cli
from .rig import VIN

_UNLOCK_ARGS: Final = ("unlock", "--vin", VIN, "--no-cloud")


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def _phone_unlock(home: Path, spec: str) -> str:
    done = run_cli("phone", "--home", str(home), *_UNLOCK_ARGS, "--transport", spec)
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
    with radio(2) as air:
        for label, car, home in vehicles:
            vehicle = CliProcess("vehicle", "run", "--state", str(car), "--transport", air.specs[0])
            try:
                vehicle.wait_for("advertising", timeout=HANG_GUARD)
                idle = memory_kib(vehicle.proc.pid)
                answers = [_phone_unlock(home, air.specs[1]) for _ in range(unlocks)]
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
