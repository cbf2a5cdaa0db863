"""`phonekey bench --quick --json`: the report has the keys and shapes issue 6 names.

Shape only: no figure is checked against any target (timings are the
benchmark's business, not the tests').
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNLOCK_FIELDS = ("p50_ms", "p99_ms", "runs", "round_trips", "bytes_to_vehicle", "bytes_to_phone")


def waiting(entry: Any) -> bool:
    """A figure that is not available yet must say why (and not be an error)."""
    return isinstance(entry, dict) and entry.get("available") is False and bool(entry.get("why"))


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "phonekey.cli", "bench", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_report_says_what_it_ran_on(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert {"python", "platform", "cpu", "cpus"} <= set(report["machine"])
    assert report["persistence_fsync"] in (True, None)
    assert "how" in report["persistence"]
    assert not any("error" in v for v in report.values() if isinstance(v, dict))


def test_unlock_kinds(report: dict[str, Any]) -> None:
    for kind in ("cold", "cached_credential", "warm"):
        entry = report["unlock"][kind]
        if kind == "warm" and waiting(entry):
            continue
        assert all(isinstance(entry[field], int | float) for field in UNLOCK_FIELDS), kind
        assert entry["runs"] >= 1 and entry["round_trips"] >= 1
        assert entry["bytes_to_vehicle"] > 0 and entry["bytes_to_phone"] > 0
        assert {"p50_ms", "p99_ms", "runs"} <= set(entry["scan_connect"])
        assert {"p50_ms", "p99_ms", "runs"} <= set(entry["handshake"])
    # Each kind took the path it is filed under (the phone client's own report).
    assert report["unlock"]["cold"]["fast_path_runs"] == 0
    warm = report["unlock"]["warm"]
    assert waiting(warm) or warm["fast_path_runs"] == warm["runs"]
    # A credential rides with the request: more bytes to the vehicle, no extra round trip.
    cold, cached = report["unlock"]["cold"], report["unlock"]["cached_credential"]
    assert cached["bytes_to_vehicle"] > cold["bytes_to_vehicle"]
    assert cached["round_trips"] == cold["round_trips"]


def test_radio_per_interval(report: dict[str, Any]) -> None:
    radio = report["radio"]
    assert radio["intervals_ms"] == [7.5, 15.0, 30.0]
    for interval in radio["intervals_ms"]:
        entry = radio[f"{interval:g}"]
        assert entry["interval_ms"] == interval
        full = entry["full"]
        assert {"p50_ms", "p99_ms", "runs", "p50_intervals", "handshake_p50_intervals"} <= set(full)
        assert "p50_ms" in entry["fast"] or waiting(entry["fast"])


def test_mcu_scale_throughput_cloud(report: dict[str, Any]) -> None:
    mcu = report["mcu"]
    assert waiting(mcu) or (
        "p50_ms" in mcu["full"] and ("p50_ms" in mcu["fast"] or waiting(mcu["fast"]))
    )
    if not waiting(mcu):
        # The MCU time was charged: a verify and an ECDH per full handshake, none on the fast path.
        assert mcu["full"]["charged_ops_per_unlock"] == {"ecdh": 1.0, "ecdsa_verify": 1.0}
        assert mcu["full"]["fast_path_runs"] == 0
        if not waiting(mcu["fast"]):
            assert mcu["fast"]["charged_ops_per_unlock"] == {}
            assert mcu["fast"]["fast_path_runs"] == mcu["fast"]["runs"]
    scale = report["scale"]
    assert waiting(scale) or {"ratio_max_keys", "max_keys", "flash_bytes_per_key"} <= set(scale)
    if not waiting(scale):
        assert scale["max_keys"] >= 256 and scale["flash_bytes_per_key"] > 0
        assert scale["held"]["max_keys"]["keys"] == scale["max_keys"]
        assert scale["held"]["max_keys"]["revocations"] == 10_000
        rss = scale["vehicle_rss"]
        assert "error" not in rss, f"vehicle_rss failed: {rss['error']}"
        assert waiting(rss) or rss["max_keys"]["rss_after_unlocks_kib"] > 0
    assert isinstance(report["throughput"]["ratio_to_crypto"], float)
    independence = report["cloud_independence"]
    assert isinstance(independence["http_500_ratio"], float)
    assert isinstance(independence["blackhole_ratio"], float)
    assert report["cloud"]["credentials_per_s"] > 0


def test_summary_without_json_and_section_choice() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "phonekey.cli", "bench", "--quick", "--section", "throughput"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "handshakes/s" in done.stdout and "unlock" not in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "phonekey.cli", "bench", "--section", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
