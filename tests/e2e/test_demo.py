"""`phonekey demo --json` is what a new user runs first: it must pass and say so."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_json_reports_every_step_as_expected() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "phonekey.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)  # stdout is one JSON object and nothing else
    assert result.returncode == 0, (result.stderr, report)
    assert report["ok"] is True
    steps = {step["name"]: step for step in report["steps"]}
    for step in report["steps"]:
        assert step["outcome"] == step["expected"], step
        assert set(step) == {
            "name",
            "expected",
            "outcome",
            "credential",
            "cloud",
            "latency_ms",
            "error",
            "fast_path",
            "expect_fast",
        }
    assert steps["unknown phone is denied"]["error"]
    assert steps["renter: first credential from the cloud"]["credential"] == "cloud"
    outage = steps["renter: cloud blackholed, cached credential"]
    assert (outage["credential"], outage["cloud"]) == ("cache", "blackhole")
    assert steps["renter: cloud HTTP 500, cached credential"]["cloud"] == "http-500"
    assert steps["revoked renter is denied"]["outcome"] == "denied"
    # The firmware part: fast path, keycard, enrollment window, offline share.
    assert steps["owner unlocks on the fast path"]["fast_path"] is True
    assert steps["keycard unlocks"]["outcome"] == "unlocked"
    assert steps["stranger enrolls without a keycard: denied"]["error"]
    assert steps["new phone enrolls as owner in the window"]["outcome"] == "enrolled"
    assert steps["new owner phone unlocks"]["fast_path"] is False  # first contact: full
    assert steps["friend unlocks with the share"]["credential"] == "share"
    assert steps["friend with a revoked share: denied"]["outcome"] == "denied"
