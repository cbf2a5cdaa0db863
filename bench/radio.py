"""Unlock latency on a radio that moves data only at connection events.

For each connection interval (7.5, 15 and 30 ms, the range phones use for an
active session) a vehicle and a phone share a ``VirtualRadio`` built on
``ble_stack.link_timing.ConnectionEventLink``; one more radio runs 15 ms with
5 % of link-layer PDUs lost (retransmitted at later events). Runs rotate
across the radios, so every configuration sees the same machine.

Figures: the phone's wall time from command to authenticated result, in ms
and in connection intervals, split into scan + connect (advertising at 20 ms,
then GATT discovery at one round trip per interval at best) and handshake
(subscribe to result: the subscription's round trip, which brings the
challenge, then one round trip per request). The physical floor of the
handshake is one connection interval per round trip.

    python -m bench.radio [--runs 20]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from ble_stack.link_timing import DEFAULT_PDUS_PER_EVENT, LL_PAYLOAD_DLE

from . import fast_path
from .rig import UnlockRig, UnlockSample, describe, section_main
from .stats import interleaved

INTERVALS_MS: Final = (7.5, 15.0, 30.0)
LOSSY: Final = ("15ms_loss_5pct", 15.0, 0.05)


def _label(interval_ms: float) -> str:
    return f"{interval_ms:g}"


def _in_intervals(described: dict[str, Any], interval_ms: float) -> dict[str, Any]:
    described["p50_intervals"] = round(described["p50_ms"] / interval_ms, 2)
    described["handshake_p50_intervals"] = round(described["handshake"]["p50_ms"] / interval_ms, 2)
    # Subscription round trip + the protocol's: one interval each at the least.
    described["floor_handshake_ms"] = round((1 + described["round_trips"]) * interval_ms, 1)
    return described


async def measure(runs: int, workdir: Path, seed: int = 1) -> dict[str, Any]:
    configs: list[tuple[str, float, float]] = [(_label(i), i, 0.0) for i in INTERVALS_MS]
    configs.append(LOSSY)
    rigs: dict[str, UnlockRig] = {}
    phones = {}
    for label, interval, loss in configs:
        rig = UnlockRig(
            workdir / f"radio-{label}", connection_interval_ms=interval, loss=loss, seed=seed
        )
        phones[label] = rig.add_phone("phone")
        rigs[label] = rig
    try:
        for rig in rigs.values():
            await rig.start()
        first = configs[0][0]
        warm = await fast_path.probe(rigs[first], phones[first])
        paths = ["full"] + (["fast"] if warm is None else [])
        samples: dict[tuple[str, str], list[UnlockSample]] = {
            (label, path): [] for label, _, _ in configs for path in paths
        }

        async def one(label: str, path: str) -> UnlockSample:
            if path == "fast":
                return await fast_path.unlock_fast(rigs[label], phones[label])
            return await fast_path.unlock_full(rigs[label], phones[label])

        keys = list(samples)
        for label, path in keys:  # warm-up (and the fast key), not counted
            await one(label, path)
        for label, path in interleaved(runs, keys):
            samples[(label, path)].append(await one(label, path))
    finally:
        for rig in rigs.values():
            await rig.close()

    result: dict[str, Any] = {
        "model": {
            "link": "ble_stack.link_timing.ConnectionEventLink",
            "pdus_per_event": DEFAULT_PDUS_PER_EVENT,
            "ll_payload_octets": LL_PAYLOAD_DLE,
            "advertising_interval_ms": 20,
            "loss_seed": seed,
        },
        "intervals_ms": list(INTERVALS_MS),
    }
    for label, interval, loss in configs:
        entry: dict[str, Any] = {"interval_ms": interval, "loss": loss}
        for path in paths:
            entry[path] = _in_intervals(describe(samples[(label, path)]), interval)
        if warm is not None:
            entry["fast"] = warm
        result[label] = entry
    return result


def main(argv: list[str] | None = None) -> int:
    return section_main("radio", measure, description=__doc__ or "", default_runs=20, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
