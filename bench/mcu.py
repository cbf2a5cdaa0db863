"""The same unlocks with the vehicle's microcontroller profile: full handshake
versus fast path, with the crypto time of a Cortex-M4 at 168 MHz charged by
the firmware runtime (``--mcu cortex-m4-168``, issue 4).

Until the runtime's MCU profile and the fast path land, ``measure`` reports
the section as unavailable and why.

    python -m bench.mcu [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any, Final

from vehicle_sim import runtime as runtime_module

from . import fast_path
from .rig import UnlockRig, UnlockSample, describe, quiet_bumble, runtime_accepts
from .stats import interleaved, machine_info, unavailable

PROFILE: Final = "cortex-m4-168"


def status() -> dict[str, Any] | None:
    if not runtime_accepts("options") or not hasattr(runtime_module, "FirmwareOptions"):
        return unavailable("waiting on issue 4: the vehicle runtime has no MCU profile (--mcu) yet")
    return None


def _options() -> Any:
    from vehicle_sim.mcu import PROFILES

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

        async def one(path: str) -> UnlockSample:
            if path == "fast":
                return await fast_path.unlock(rig, phone)
            return await rig.unlock(phone)

        for path in paths:
            await one(path)
        for path in interleaved(runs, paths):
            samples[path].append(await one(path))
    finally:
        await rig.close()
    result: dict[str, Any] = {"profile": PROFILE}
    result.update({path: describe(values) for path, values in samples.items()})
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
