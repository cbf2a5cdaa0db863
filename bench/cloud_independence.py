#!/usr/bin/env python3
"""Unlock latency with the credential cloud healthy, returning HTTP 500, and
blackholed, measured interleaved in one run on the virtual adapter.

A phone enrolled only through the cloud (not on the whitelist) holds a cached
credential; each round runs one command per cloud state, in a rotating order,
so machine noise falls on all three alike. The figure is the phone's wall
time from the command to the vehicle's authenticated answer (scan, connect,
handshake). Target: mean(http-500) / mean(up) <= 1.05, and the same for
blackhole: an unlock must never wait on the cloud (means: see
``bench.stats.mean``; the medians are in ``unlock``).

    python bench/cloud_independence.py [--rounds 30]     # prints one JSON object
    python -m bench.cloud_independence [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.rig import UnlockRig, UnlockSample, describe, quiet_bumble
from bench.stats import interleaved, machine_info, mean, ratio
from cloud_sim.server import start_cloud
from phone_client.cloud_client import CloudClient
from phonekey.demo_cloud import enroll, register_vehicle
from protocol import Command

MODES = ("none", "http-500", "blackhole")
LABELS = {"none": "up", "http-500": "http_500", "blackhole": "blackhole"}


async def measure(rounds: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    cloud = await start_cloud(workdir / "cloud.db")
    try:
        rig = UnlockRig(workdir / "independence", issuer=cloud.issuer_public_key)
        renter = rig.add_phone("renter", whitelisted=False)
        renter.add_vehicle(rig.card, issuer=cloud.issuer_public_key, cloud_url=cloud.url)
        token = await register_vehicle(cloud, rig.card)
        await enroll(cloud, token, rig.card, renter.public_key())
        samples: dict[str, list[UnlockSample]] = {mode: [] for mode in MODES}
        await rig.start()
        try:
            async with CloudClient(cloud.url) as client:
                # Warm-up: the first credential comes from the cloud, then is cached.
                await rig.unlock(renter, cloud=client)
                command = Command.LOCK
                for mode in interleaved(rounds, MODES):
                    cloud.set_fault(mode)
                    samples[mode].append(await rig.unlock(renter, command, cloud=client))
                    command = Command.UNLOCK if command is Command.LOCK else Command.LOCK
                cloud.set_fault("none")
        finally:
            await rig.close()
    finally:
        await cloud.close()

    stats = {LABELS[mode]: describe(values) for mode, values in samples.items()}
    means = {LABELS[mode]: mean([s.total_ms for s in values]) for mode, values in samples.items()}
    up = means["up"]
    return {
        "what": "phone wall time from command to authenticated result (scan+connect+handshake)",
        "rounds_interleaved": rounds,
        "store_backend": rig.store_backend,
        "unlock": stats,
        "http_500_ratio": ratio(means["http_500"], up),
        "blackhole_ratio": ratio(means["blackhole"], up),
        "ratio_of": "mean unlock times",
        "target_ratio_max": 1.05,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of three (default 30)")
    args = parser.parse_args(argv)
    undo = quiet_bumble()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
            result = asyncio.run(measure(args.rounds, Path(tmp)))
    finally:
        undo()
    print(
        json.dumps(
            {
                "benchmark": "cloud_independence",
                "machine": machine_info(),
                "persistence_fsync": True,
                "cloud_independence": result,
                "elapsed_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
