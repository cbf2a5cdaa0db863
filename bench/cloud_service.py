"""Credential cloud throughput: credentials issued per second on loopback.

The cloud runs as its own process (``phonekey cloud serve`` on a free port,
SQLite database in a temporary directory), so the load generator does not
share its event loop or interpreter lock. Phones enrolled beforehand send
signed ``POST /v1/credentials`` requests from ``concurrency`` connections at
once for ``duration`` seconds; every request is a real issuance (request
signature verified, enrolment looked up, credential signed). Requests are
signed before the timed part and reused: a replay inside the request's time
window only yields another credential for the same holder (see
protocol/cloud_request_auth.py), so the server does the same work.

    python -m bench.cloud_service [--duration 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from protocol import crypto
from protocol.cloud_request_auth import sign_credential_request
from vehicle_sim.state_store import init_vehicle

from .stats import machine_info, summary

_VIN = "1HGCM82633A004352"
_START_TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def _cloud_process(workdir: Path) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "phonekey.cli",
        "cloud",
        "serve",
        "--port",
        "0",
        "--db",
        str(workdir / "cloud.db"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        url = None
        async with asyncio.timeout(_START_TIMEOUT):
            while url is None:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the cloud process exited before serving")
                if line.startswith("cloud listening on "):
                    url = line.split()[-1]
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _post(session: aiohttp.ClientSession, url: str, body: Any, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as answer:
        data = await answer.json()
        if answer.status >= 400:
            raise RuntimeError(f"cloud refused benchmark setup: {data}")
        return data


async def measure(
    workdir: Path, *, duration: float = 5.0, concurrency: int = 16, phones: int = 32
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    card = init_vehicle(workdir / "car", _VIN)
    keys = [crypto.generate_private_key() for _ in range(phones)]
    async with _cloud_process(workdir) as url:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            registered = await _post(session, f"{url}/v1/vehicles", {"card": card.to_text()})
            token = registered["owner_token"]
            for key in keys:
                await _post(
                    session,
                    f"{url}/v1/vehicles/{card.vehicle_id.hex()}/phones",
                    {"public_key": crypto.public_key_to_text(key.public_key()), "role": "driver"},
                    token,
                )
            now = int(time.time())
            bodies = itertools.cycle(
                [sign_credential_request(key, card.vehicle_id, now) for key in keys]
            )
            latencies: list[float] = []
            failures = 0
            deadline = time.perf_counter() + duration

            async def worker() -> None:
                nonlocal failures
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    async with session.post(f"{url}/v1/credentials", json=next(bodies)) as answer:
                        data = await answer.read()
                    if answer.status == 200 and b'"credential"' in data:
                        latencies.append((time.perf_counter() - start) * 1000)
                    else:
                        failures += 1

            await _post(session, f"{url}/v1/credentials", next(bodies))  # warm-up
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    return {
        "credentials_per_s": round(len(latencies) / elapsed, 1),
        "issued": len(latencies),
        "failed": failures,
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "enrolled_phones": phones,
        "request_latency": summary(latencies) if latencies else None,
        "server": "phonekey cloud serve (separate process, aiohttp + SQLite) on 127.0.0.1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phonekey-bench-") as tmp:
        result = asyncio.run(
            measure(Path(tmp), duration=args.duration, concurrency=args.concurrency)
        )
    print(json.dumps({"machine": machine_info(), "cloud": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
