"""Scale: unlock time with one key and with the largest whitelist the flash
layout holds (at least 256), plus 10,000 revocation entries; flash bytes per
key; resident memory of the vehicle process.

Needs the emulated flash store of issue 4 (``vehicle_sim.flash``,
``FlashVehicleStore.stats()``); until it lands ``measure`` reports the
section as unavailable and why.

    python -m bench.scale
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from .stats import machine_info, unavailable


def status() -> dict[str, Any] | None:
    if importlib.util.find_spec("vehicle_sim.flash") is None:
        return unavailable("waiting on issue 4: the emulated flash store (vehicle_sim.flash)")
    try:
        from vehicle_sim.flash.store import FlashVehicleStore
    except ImportError:
        return unavailable("waiting on issue 4: vehicle_sim.flash has no FlashVehicleStore yet")
    if not hasattr(FlashVehicleStore, "stats"):
        return unavailable("waiting on issue 4: FlashVehicleStore.stats()")
    return unavailable("issue 4's flash store is there; this section is not wired to it yet")


async def measure(runs: int, workdir: Path) -> dict[str, Any]:
    del runs, workdir
    missing = status()
    assert missing is not None
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
        result = asyncio.run(measure(args.runs, Path(tmp)))
    print(json.dumps({"machine": machine_info(), "scale": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
