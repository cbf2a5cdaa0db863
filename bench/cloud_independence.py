#!/usr/bin/env python3
"""Unlock latency with the credential cloud healthy, returning HTTP 500, and
blackholed, measured interleaved in one run on the virtual adapter.

A phone enrolled only through the cloud (not on the whitelist) holds a cached
credential; each round runs one command per cloud state, in a rotating order,
so machine noise falls on all three alike. The figure is the phone's wall
time from the command to the vehicle's authenticated answer (scan, connect,
handshake). Target: median(http-500) / median(up) <= 1.05, and the same for
blackhole: an unlock must never wait on the cloud.

    python bench/cloud_independence.py [--rounds 30]     # prints one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ble_stack.bleak_backend import BumbleBleakClient, BumbleBleakScanner
from ble_stack.virtual_link import VirtualRadio
from cloud_sim.server import start_cloud
from phone_client.central import run_command
from phone_client.cloud_client import CloudClient
from phone_client.keystore import KeyStore
from phonekey.demo_cloud import enroll, register_vehicle
from protocol import Command
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import init_vehicle, open_store

VIN = "1HGCM82633A004352"
MODES = ("none", "http-500", "blackhole")
LABELS = {"none": "up", "http-500": "http_500", "blackhole": "blackhole"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def measure(rounds: int, workdir: Path) -> dict[str, Any]:
    radio = VirtualRadio()
    cloud = await start_cloud(workdir / "cloud.db")
    try:
        card = init_vehicle(workdir / "car", VIN)
        with open_store(workdir / "car") as store:
            store.add_issuer(cloud.issuer_public_key)
        keystore = KeyStore(workdir / "renter")
        keystore.keygen()
        keystore.add_vehicle(card, issuer=cloud.issuer_public_key, cloud_url=cloud.url)
        token = await register_vehicle(cloud, card)
        await enroll(cloud, token, card, keystore.public_key())
        phone_device = await radio.create_device("phone")
        kwargs: dict[str, Any] = {
            "client_kwargs": {"backend": BumbleBleakClient, "bumble_device": phone_device},
            "scanner_kwargs": {"backend": BumbleBleakScanner, "bumble_device": phone_device},
        }
        samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        credential_kinds: dict[str, set[str | None]] = {mode: set() for mode in MODES}
        with open_store(workdir / "car") as store:
            device = await radio.create_device("vehicle")
            async with VehicleRuntime(store, device), CloudClient(cloud.url) as client:
                # Warm-up: the first credential comes from the cloud, then is cached.
                await run_command(keystore, VIN, Command.UNLOCK, cloud=client, **kwargs)
                command = Command.LOCK
                for round_index in range(rounds):
                    order = MODES[round_index % 3 :] + MODES[: round_index % 3]
                    for mode in order:
                        cloud.set_fault(mode)
                        outcome = await run_command(keystore, VIN, command, cloud=client, **kwargs)
                        samples[mode].append(outcome.latency.total * 1000)
                        credential_kinds[mode].add(outcome.credential)
                        command = Command.UNLOCK if command is Command.LOCK else Command.LOCK
                cloud.set_fault("none")
    finally:
        await cloud.close()

    stats = {
        LABELS[mode]: {
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(_percentile(values, 0.99), 3),
            "runs": len(values),
            "credential": sorted(str(kind) for kind in credential_kinds[mode]),
        }
        for mode, values in samples.items()
    }
    up = stats["up"]["p50_ms"]
    return {
        "benchmark": "cloud_independence",
        "what": "phone wall time from command to authenticated result (scan+connect+handshake)",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "persistence_fsync": True,
        "rounds_interleaved": rounds,
        "unlock": stats,
        "cloud_independence": {
            "http_500_ratio": round(stats["http_500"]["p50_ms"] / up, 3),
            "blackhole_ratio": round(stats["blackhole"]["p50_ms"] / up, 3),
            "target_ratio_max": 1.05,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of three (default 30)")
    args = parser.parse_args(argv)
    logging.getLogger("bumble").setLevel(logging.CRITICAL)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
        result = asyncio.run(measure(args.rounds, Path(tmp)))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
