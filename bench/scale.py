"""Scale: unlock time with one key and with the largest whitelist the flash
layout holds (``FlashStats.max_keys``, at least 256), plus 10,000 revocation
entries; flash bytes per key; resident memory of the vehicle process.

Two vehicles on their own virtual radios, both on the flash store and both
trusting one credential issuer (so every handshake also checks the
revocation list): ``one_key`` holds only the phone's key; ``max_keys`` holds
the phone's key plus ``max_keys - 1`` others (``add_keys``, one bulk
commit) and 10,000 revocation ids (``apply_revocations``). Unlocks through
the phone client alternate between the two (interleaved), full handshake and
fast path each (``bench.fast_path``). ``ratio_max_keys`` is the mean
full-handshake unlock at max keys over the mean at one key (target <= 1.1;
means: see ``bench.stats.mean``, the medians are in ``unlock``);
``ratio_max_keys_fast`` the same on the fast path.

Resident memory: both state directories are then served by real
``phonekey vehicle run`` processes (``bench.vehicle_rss``): the phone's
first unlock there is a full handshake (its fast key dropped first), the
rest take the fast path.

    python -m bench.scale [--runs 20]
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Final

from protocol import Role, crypto
from protocol.credentials import REVOCATION_ID_LEN

from . import fast_path, vehicle_rss
from .rig import VIN, UnlockRig, UnlockSample, describe, section_main
from .stats import interleaved, mean, ratio

REVOCATIONS: Final = 10_000
TARGET_RATIO_MAX: Final = 1.1


def _stats_of(store: Any) -> Any:
    stats = getattr(store, "stats", None)
    if stats is None:
        raise RuntimeError(f"{type(store).__name__} has no stats(): not the flash store")
    return stats()


def _fill(store: Any) -> None:
    """Up to the layout's key limit, plus ``REVOCATIONS`` revocation ids."""
    limit = _stats_of(store).max_keys
    others = limit - len(store.keys())
    store.add_keys((crypto.generate_private_key().public_key(), Role.DRIVER) for _ in range(others))
    store.apply_revocations(
        store.revocation_version() + 1, [os.urandom(REVOCATION_ID_LEN) for _ in range(REVOCATIONS)]
    )


async def measure(runs: int, workdir: Path, *, rss_unlocks: int = 2) -> dict[str, Any]:
    issuer = crypto.generate_private_key().public_key()
    rigs = {
        "one_key": UnlockRig(workdir / "one", issuer=issuer),
        "max_keys": UnlockRig(workdir / "max", issuer=issuer, provision=_fill),
    }
    phones = {label: rig.add_phone("phone") for label, rig in rigs.items()}
    held: dict[str, dict[str, Any]] = {}
    try:
        for label, rig in rigs.items():
            await rig.start()
            stats = _stats_of(rig.store)
            held[label] = {
                "keys": len(rig.store.keys()),
                "revocations": rig.store.revoked_count(),
                "flash_used_bytes": stats.used_bytes,
                "flash_image_bytes": stats.image_bytes,
            }
        warm = None
        for label, rig in rigs.items():
            warm = warm or await fast_path.probe(rig, phones[label])
        paths = ["full"] + (["fast"] if warm is None else [])
        keys = [(label, path) for path in paths for label in rigs]
        samples: dict[tuple[str, str], list[UnlockSample]] = {key: [] for key in keys}

        async def one(label: str, path: str) -> UnlockSample:
            if path == "fast":
                return await fast_path.unlock_fast(rigs[label], phones[label])
            return await fast_path.unlock_full(rigs[label], phones[label])

        for label, path in keys:  # warm-up, not counted
            await one(label, path)
        for label, path in interleaved(runs, keys):
            samples[(label, path)].append(await one(label, path))
        stats = _stats_of(rigs["max_keys"].store)
    finally:
        for rig in rigs.values():
            await rig.close()

    def average(label: str, path: str, part: str = "") -> float:
        chosen = samples[(label, path)]
        return mean([s.handshake_ms if part else s.total_ms for s in chosen])

    result: dict[str, Any] = {
        "store_backend": rigs["max_keys"].store_backend,
        "max_keys": stats.max_keys,
        "max_revocations": stats.max_revocations,
        "flash_bytes_per_key": stats.bytes_per_key,
        "revocations": REVOCATIONS,
        "held": held,
        "ratio_max_keys": ratio(average("max_keys", "full"), average("one_key", "full")),
        "ratio_max_keys_handshake": ratio(
            average("max_keys", "full", "handshake"), average("one_key", "full", "handshake")
        ),
        "ratio_of": "mean unlock times",
        "target_ratio_max": TARGET_RATIO_MAX,
        "unlock": {f"{lab}_{path}": describe(values) for (lab, path), values in samples.items()},
    }
    if warm is None:
        result["ratio_max_keys_fast"] = ratio(
            average("max_keys", "fast"), average("one_key", "fast")
        )
    else:
        result["ratio_max_keys_fast"] = warm
    for keystore in phones.values():
        keystore.fast_keys.drop(VIN)  # the first unlock served there is a full handshake
    try:
        result["vehicle_rss"] = await asyncio.to_thread(
            vehicle_rss.measure,
            [
                (label, workdir / name / "car", workdir / name / "phone")
                for label, name in (("one_key", "one"), ("max_keys", "max"))
            ],
            rss_unlocks,
        )
    except Exception as exc:  # the latency figures stand without it
        result["vehicle_rss"] = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    rss = result["vehicle_rss"]
    if "max_keys" in rss:
        result["vehicle_rss_mib"] = rss["max_keys"]["rss_after_unlocks_mib"]
    return result


def main(argv: list[str] | None = None) -> int:
    return section_main("scale", measure, description=__doc__ or "", default_runs=20, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
