"""Shared helpers of the benchmarks: percentiles, interleaving, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..1) of ``values`` (not empty)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values_ms: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """``{"p50_ms", "p99_ms", "mean_ms", "runs"}`` of samples in milliseconds."""
    return {
        "p50_ms": round(statistics.median(values_ms), digits),
        "p99_ms": round(percentile(values_ms, 0.99), digits),
        "mean_ms": round(statistics.fmean(values_ms), digits),
        "runs": len(values_ms),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean(values: Sequence[float]) -> float:
    """What the target ratios compare: unlock times are multi-modal (the
    phone finds the vehicle at one of its advertising events, 20 ms apart),
    and a median jumps from one mode to the next when a few samples move;
    the mean moves with them smoothly."""
    return statistics.fmean(values)


def interleaved(rounds: int, labels: Sequence[_T]) -> Iterator[_T]:
    """Every label once per round, the order rotated each round, so slow
    stretches of a noisy machine fall on every label alike."""
    count = len(labels)
    for round_index in range(rounds):
        shift = round_index % count
        yield from (*labels[shift:], *labels[:shift])


def ratio(numerator: float, denominator: float, digits: int = 3) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def unavailable(why: str) -> dict[str, Any]:
    """A section (or figure) that cannot be measured yet, and why."""
    return {"available": False, "why": why}
