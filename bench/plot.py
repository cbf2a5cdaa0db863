#!/usr/bin/env python3
"""Plot unlock latency against the connection interval (full and fast path).

    phonekey bench --json --section radio > report.json
    python bench/plot.py report.json [--out docs/img/unlock-vs-interval.png]

Needs matplotlib (``pip install -e '.[bench]'``). Draws the handshake
(subscription to authenticated result) and the whole unlock (scan, connect,
GATT discovery, handshake) at each interval of the report's ``radio``
section, medians with p99 whiskers, beside the floor of one connection
interval per round trip. A path the report marks unavailable is left out and
named in the legend.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "unlock-vs-interval.png"


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radio = report["radio"]
    intervals: list[float] = radio["intervals_ms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    styles = {"full": ("tab:blue", "o"), "fast": ("tab:green", "s")}
    missing: list[str] = []
    for path, (color, marker) in styles.items():
        entries = [radio[f"{i:g}"].get(path, {}) for i in intervals]
        if not all("p50_ms" in e for e in entries):
            missing.append(path)
            continue
        for axis, part in ((left, "handshake"), (right, "")):
            picked = [e[part] if part else e for e in entries]
            p50 = [p["p50_ms"] for p in picked]
            p99 = [p["p99_ms"] for p in picked]
            axis.errorbar(
                intervals,
                p50,
                yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]],
                color=color,
                marker=marker,
                capsize=3,
                label=f"{path} handshake" if axis is left else f"{path} unlock",
            )
    round_trips = radio[f"{intervals[0]:g}"]["full"]["round_trips"] + 1
    left.plot(
        intervals,
        [round_trips * i for i in intervals],
        "k--",
        label=f"floor: {round_trips} round trips x 1 interval",
    )
    for name in missing:
        left.plot([], [], " ", label=f"{name} path: not available yet")
    left.set_title("subscription to authenticated result")
    right.set_title("whole unlock: scan, connect, discovery, handshake")
    for axis in (left, right):
        axis.set_xlabel("connection interval (ms)")
        axis.set_ylabel("latency (ms), median with p99")
        axis.set_xticks(intervals)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    machine = report.get("machine", {})
    fig.suptitle(
        "phonekey unlock on the connection-event radio model "
        f"({machine.get('cpu', '?')}, Python {machine.get('python', '?')})",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="JSON from `phonekey bench --json`")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    plot(json.loads(args.report.read_text()), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
