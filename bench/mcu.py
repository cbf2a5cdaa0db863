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

from collections import Counter
from pathlib import Path
from typing import Any, Final

from vehicle_sim.mcu import PROFILES
from vehicle_sim.runtime import FirmwareOptions

from . import fast_path
from .rig import UnlockRig, UnlockSample, describe, section_main
from .stats import interleaved

PROFILE: Final = "cortex-m4-168"


def _options() -> FirmwareOptions:
    return FirmwareOptions(mcu=PROFILES[PROFILE])


async def measure(runs: int, workdir: Path) -> dict[str, Any]:
    rig = UnlockRig(workdir / "mcu", runtime_kwargs={"options": _options()})
    phone = rig.add_phone("phone")
    await rig.start()
    try:
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
    return section_main("mcu", measure, description=__doc__ or "", default_runs=10, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
