"""Unlock latency on the virtual adapter: cold, warm (fast path) and cached credential.

- ``cold``: first contact: a whitelisted phone that never talked to this
  vehicle (a fresh one every run) runs the full handshake on a fresh
  connection.
- ``cached_credential``: a phone enrolled only through the cloud (not on the
  whitelist) presents the credential it cached earlier; the cloud is not
  consulted.
- ``warm``: a phone that talked to this vehicle before: the phone client
  uses the fast path by itself (an HMAC under the key the last full
  handshake established, no public-key operation on the vehicle); every
  warm run is checked to have been answered on the fast path
  (``CommandOutcome.fast_path``), else the section fails rather than report
  a full handshake as warm.

Each kind runs once per round in a rotating order (interleaved). Wall time
is the phone's, from the command to the authenticated result, split into
scan + connect and handshake (subscribe to result). Round trips and bytes:
see ``bench.rig``.

    python -m bench.unlock [--runs 30]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cloud_sim.server import start_cloud
from phonekey.demo_cloud import cache_credential_from, enroll, register_vehicle

from . import fast_path
from .rig import UnlockRig, UnlockSample, describe, section_main
from .stats import interleaved


async def measure(runs: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    cloud = await start_cloud(workdir / "cloud.db")
    try:
        rig = UnlockRig(workdir / "unlock", issuer=cloud.issuer_public_key)
        cold_phones = iter([rig.add_phone(f"cold{i}") for i in range(runs + 1)])
        renter = rig.add_phone("renter", whitelisted=False)
        token = await register_vehicle(cloud, rig.card)
        await enroll(cloud, token, rig.card, renter.public_key())
        await cache_credential_from(cloud, renter, rig.card, clock=time.time())
    finally:
        await cloud.close()  # the unlocks below never need it
    regular = rig.add_phone("regular")
    await rig.start()
    try:
        warm = await fast_path.probe(rig, regular)  # also holds the fast key now
        kinds = ["cold", "cached_credential"] + (["warm"] if warm is None else [])
        samples: dict[str, list[UnlockSample]] = {kind: [] for kind in kinds}

        async def one(kind: str) -> UnlockSample:
            if kind == "cold":
                sample = await rig.unlock(next(cold_phones))
            elif kind == "cached_credential":
                sample = await rig.unlock(renter)
            else:
                return await fast_path.unlock_fast(rig, regular)
            if sample.fast_path:
                raise fast_path.NotFastPath(f"a {kind} unlock was answered on the fast path")
            return sample

        for kind in kinds:  # warm-up, not counted
            await one(kind)
        for kind in interleaved(runs, kinds):
            samples[kind].append(await one(kind))
    finally:
        await rig.close()
    result: dict[str, Any] = {kind: describe(values) for kind, values in samples.items()}
    if warm is not None:
        result["warm"] = warm
    result["store_backend"] = rig.store_backend
    return result


def main(argv: list[str] | None = None) -> int:
    return section_main("unlock", measure, description=__doc__ or "", default_runs=30, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
