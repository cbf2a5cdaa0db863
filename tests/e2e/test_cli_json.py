"""The --json outputs chained across processes, as a script would chain them:
`vehicle init --json` gives the card the phone adds, `vehicle add-key --json`
the key id `vehicle show --json` then lists, and `phone scan --json` hears the
running vehicle and names it by the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_rig import VIN, Background, last_line, radio, run


def run_json(*args: str) -> dict[str, Any]:
    """`phonekey ARGS... --json`: exit 0 and exactly one JSON object on stdout."""
    result = run(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_json_outputs_chain_from_init_to_scan(tmp_path: Path) -> None:
    car, home = tmp_path / "car", tmp_path / "phone"
    init = run_json("vehicle", "init", "--vin", VIN, "--state", str(car))
    assert init["ok"] is True and init["vin"] == VIN and init["state"] == str(car)
    key = last_line(run("phone", "--home", str(home), "keygen"))
    added = run_json("vehicle", "add-key", "--state", str(car), "--key", key, "--role", "owner")
    assert added["ok"] is True and added["live"] is False and added["role"] == "owner"
    show = run_json("vehicle", "show", "--state", str(car))
    assert show["vehicle_id"] == init["vehicle_id"] and show["card"] == init["card"]
    assert [(k["key_id"], k["role"]) for k in show["keys"]] == [(added["key_id"], "owner")]
    assert run("phone", "--home", str(home), "add-vehicle", init["card"]).returncode == 0

    with radio(slots=2) as air:
        vehicle = Background("vehicle", "run", "--state", str(car), "--transport", air.specs[0])
        try:
            vehicle.wait_for("advertising")
            scan = run_json("phone", "--home", str(home), "scan", "--transport", air.specs[1])
        finally:
            assert vehicle.stop() == 0, vehicle.lines
    assert scan == {
        "ok": True,
        "command": "scan",
        "vehicles": [
            {
                "address": scan["vehicles"][0]["address"],
                "rssi": scan["vehicles"][0]["rssi"],
                "tag": scan["vehicles"][0]["tag"],
                "vin": VIN,  # the card from init --json resolves its private tag
            }
        ],
        "error": None,
    }
    tag = scan["vehicles"][0]["tag"]
    assert len(bytes.fromhex(tag)) >= 4 and isinstance(scan["vehicles"][0]["rssi"], int)
