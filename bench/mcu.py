"""The same unlocks with the vehicle's microcontroller profile: full handshake
versus fast path, with the crypto time of a Cortex-M4 at 168 MHz charged by
the firmware runtime (``--mcu cortex-m4-168``, issue 4).

Both paths use one phone through the phone client: ``full`` drops its fast
key first (outside the timed part), ``fast`` uses the key the previous full
handshake left; each run is checked to have taken the path it is filed
under (``bench.fast_path``). ``charged`` is what the vehicle's ``Cpu``
charged per path (operations and seconds), read from the runtime, so the
figures show the MCU time really was applied.

    python -m bench.mcu [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

from vehicle_sim import runtime as runtime_module
from vehicle_sim.mcu import PROFILES

from . import fast_path
from .rig import UnlockRig, UnlockSample, describe, quiet_bumble, runtime_accepts
from .stats import interleaved, machine_info, unavailable

PROFILE: Final = "cortex-m4-168"


def status() -> dict[str, Any] | None:
    if not runtime_accepts("options") or not hasattr(runtime_module, "FirmwareOptions"):
        return unavailable("waiting on issue 4: the vehicle runtime has no MCU profile (--mcu) yet")
    return None


def _options() -> Any:
    return runtime_module.FirmwareOptions(mcu=PROFILES[PROFILE])


async def measure(runs: int, workdir: Path) -> dict[str, Any]:
    missing = status()
    if missing is not None:
        return missing
    rig = UnlockRig(workdir / "mcu", runtime_kwargs={"options": _options()})
    phone = rig.add_phone("phone")
    warm = fast_path.status()
    await rig.start()
    try:
        if warm is None:
            warm = await fast_path.probe(rig, phone)
        paths = ["full"] + (["fast"] if warm is None else [])
        samples: dict[str, list[UnlockSample]] = {path: [] for path in paths}

        charged: dict[str, Counter[str]] = {path: Counter() for path in paths}
        busy: dict[str, float] = dict.fromkeys(paths, 0.0)

        async def one(path: str) -> UnlockSample:
            cpu = rig.runtime.cpu
            ops_before, busy_before = Counter(cpu.charged), cpu.busy_seconds
            if path == "fast":
                sample = await fast_path.unlock_fast(rig, phone)
            else:
                sample = await fast_path.unlock_full(rig, phone)
            charged[path].update(cpu.charged - ops_before)
            busy[path] += cpu.busy_seconds - busy_before
            return sample

        for path in paths:
            await one(path)
        charged = {path: Counter() for path in paths}  # the warm-up does not count
        busy = dict.fromkeys(paths, 0.0)
        for path in interleaved(runs, paths):
            samples[path].append(await one(path))
    finally:
        await rig.close()
    result: dict[str, Any] = {
        "profile": PROFILE,
        "seconds_per_op": dict(PROFILES[PROFILE].seconds_per_op),
    }
    for path, values in samples.items():
        result[path] = describe(values)
        result[path]["charged_ops_per_unlock"] = {
            op: round(count / len(values), 3) for op, count in sorted(charged[path].items())
        }
        result[path]["charged_ms_per_unlock"] = round(busy[path] / len(values) * 1000, 3)
    if warm is not None:
        result["fast"] = warm
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    undo = quiet_bumble()
    try:
        with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
            result = asyncio.run(measure(args.runs, Path(tmp)))
    finally:
        undo()
    print(json.dumps({"machine": machine_info(), "mcu": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
