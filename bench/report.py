"""Run the benchmark sections and assemble one JSON report (``phonekey bench``).

Sections: ``unlock``, ``radio``, ``mcu``, ``throughput``, ``scale``,
``cloud_independence``, ``cloud``. A section that cannot run yet reports
``{"available": false, "why": ...}``; one that fails reports
``{"available": false, "error": ...}`` and the exit status is 1.
``quick`` keeps every section but with few runs (CI smoke: shape only).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import cloud_independence, cloud_service, mcu, radio, scale, unlock
from .rig import quiet_bumble
from .stats import machine_info

SECTIONS: Final = (
    "unlock",
    "radio",
    "mcu",
    "throughput",
    "scale",
    "cloud_independence",
    "cloud",
)


@dataclass(frozen=True)
class Plan:
    unlock_runs: int
    radio_runs: int
    mcu_runs: int
    handshakes: int
    scale_runs: int
    independence_rounds: int
    cloud_seconds: float
    cloud_concurrency: int
    rss_unlocks: int


FULL: Final = Plan(30, 15, 10, 600, 20, 30, 5.0, 16, 3)
QUICK: Final = Plan(2, 1, 1, 40, 2, 1, 0.3, 4, 1)


def _runners(plan: Plan, workdir: Path) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    async def in_thread_throughput() -> dict[str, Any]:
        return await asyncio.to_thread(throughput_in_fresh_interpreter, plan.handshakes)

    return {
        "unlock": lambda: unlock.measure(plan.unlock_runs, workdir / "unlock"),
        "radio": lambda: radio.measure(plan.radio_runs, workdir / "radio"),
        "mcu": lambda: mcu.measure(plan.mcu_runs, workdir / "mcu"),
        "throughput": in_thread_throughput,
        "scale": lambda: scale.measure(
            plan.scale_runs, workdir / "scale", rss_unlocks=plan.rss_unlocks
        ),
        "cloud_independence": lambda: cloud_independence.measure(
            plan.independence_rounds, workdir / "independence"
        ),
        "cloud": lambda: cloud_service.measure(
            workdir / "cloud",
            duration=plan.cloud_seconds,
            concurrency=plan.cloud_concurrency,
        ),
    }


def throughput_in_fresh_interpreter(handshakes: int) -> dict[str, Any]:
    """``bench.throughput`` in its own Python process: the protocol core's
    figure, without the heap the other sections left behind (a vehicle's
    firmware carries no phone simulator); the same as running
    ``python -m bench.throughput`` by hand."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--handshakes", str(handshakes)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.throughput exited {done.returncode}: {done.stderr.strip()}")
    section: dict[str, Any] = json.loads(done.stdout)["throughput"]
    section["process"] = "fresh interpreter (python -m bench.throughput)"
    return section


async def _run(sections: Sequence[str], plan: Plan, workdir: Path) -> dict[str, Any]:
    runners = _runners(plan, workdir)
    results: dict[str, Any] = {}
    for name in sections:
        (workdir / name).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            results[name] = await runners[name]()
        except Exception as exc:  # one broken section must not hide the others
            results[name] = {
                "available": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
        results[name]["elapsed_s"] = round(time.perf_counter() - started, 2)
    return results


def run(sections: Sequence[str] = SECTIONS, *, quick: bool = False) -> dict[str, Any]:
    """Run ``sections`` (in the canonical order) and return the whole report."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
    ordered = [name for name in SECTIONS if name in sections]
    plan = QUICK if quick else FULL
    undo = quiet_bumble()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
            filesystem = filesystem_of(Path(tmp))
            results = asyncio.run(_run(ordered, plan, Path(tmp)))
    finally:
        undo()
    backends = {
        str(section.get("store_backend"))
        for section in results.values()
        if isinstance(section, dict) and section.get("store_backend")
    }
    return {
        "phonekey_bench": 1,
        "quick": quick,
        "machine": machine_info(),
        "vehicle_store": sorted(backends),
        # The flash store fsyncs its image on every commit (vehicle_sim.flash:
        # FlashDevice.sync after each journal record), i.e. on every accepted
        # command; None: another store, whose durability the report does not know.
        "persistence_fsync": True if backends == {"FlashVehicleStore"} else None,
        "persistence": {
            "how": "vehicle state on the emulated flash image, os.fsync after every commit "
            "(FlashDevice.sync); the phone's counter and fast keys: write, fsync, rename",
            "workdir_filesystem": filesystem,
        },
        "plan": plan.__dict__,
        **results,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def filesystem_of(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux ``/proc/mounts``), as
    fsync costs differ by orders of magnitude between tmpfs and a disk."""
    best: tuple[str, str | None] = ("", None)
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3:
                    mount = fields[1]
                    inside = str(path.resolve()).startswith(mount.rstrip("/") + "/")
                    if inside and len(mount) > len(best[0]):
                        best = (mount, fields[2])
    except OSError:
        return None
    return best[1]


def failed(report: dict[str, Any]) -> list[str]:
    """Sections that raised (not the ones waiting on other work)."""
    return [
        name for name in SECTIONS if isinstance(report.get(name), dict) and "error" in report[name]
    ]
