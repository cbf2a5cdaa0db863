"""`--capture FILE` writes btsnoop logs that tshark (Wireshark) decodes.

A real unlock through the CLI on `phonekey radio`: the vehicle and the phone
each capture their HCI traffic, and tshark must find in them the ATT writes to
the phonekey COMMAND characteristic and the notifications from its EVENT
characteristic. Skipped when tshark is missing, unless PHONEKEY_REQUIRE_TSHARK=1
(set by .ci/run, which installs it), so CI really runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_rig import VIN, Background, phone, provision, radio, run

from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID, PHONEKEY_SERVICE_UUID

WRITE_REQUEST, WRITE_COMMAND, NOTIFICATION = 0x12, 0x52, 0x1B
FIELDS = ("btatt.opcode", "btatt.handle", "btatt.uuid128", "btatt.service_uuid128")


def tshark_path() -> str:
    found = shutil.which("tshark")
    if found is None:
        if os.environ.get("PHONEKEY_REQUIRE_TSHARK") == "1":
            pytest.fail("tshark is required (PHONEKEY_REQUIRE_TSHARK=1) but not installed")
        pytest.skip("tshark is not installed (apt-get install tshark)")
    return found


def att_frames(tshark: str, capture: Path) -> list[dict[str, str]]:
    """The ATT frames tshark decodes in `capture`, one dict of FIELDS each."""
    args = [tshark, "-r", str(capture), "-Y", "btatt", "-T", "fields", "-E", "separator=/t"]
    for field in FIELDS:
        args += ["-e", field]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in done.stdout.splitlines()]


def plain(uuid: str) -> str:
    return uuid.replace("-", "").lower()


def test_captured_unlock_decodes_as_phonekey_att_traffic(tmp_path: Path) -> None:
    tshark = tshark_path()
    home = provision(tmp_path, owners=["alice"])
    vehicle_capture, phone_capture = tmp_path / "vehicle.btsnoop", tmp_path / "phone.btsnoop"
    with radio(slots=2) as rig:
        vehicle = Background(
            "vehicle", "run", "--state", str(home.car), "--transport", rig.specs[0],
            "--capture", str(vehicle_capture),
        )  # fmt: skip
        try:
            vehicle.wait_for("capturing HCI traffic to")
            unlock = run(
                *phone(home.phones["alice"], "unlock", rig.specs[1]),
                "--capture", str(phone_capture), "--json",
            )  # fmt: skip
            assert unlock.returncode == 0, unlock.stderr
            answer = json.loads(unlock.stdout)
            assert answer["ok"] and answer["lock_state"] == "unlocked" and answer["vin"] == VIN
        finally:
            assert vehicle.stop() == 0, vehicle.output

    # The phone, as GATT client, saw the discovery, so tshark names the characteristics.
    frames = att_frames(tshark, phone_capture)
    writes = [f for f in frames if int(f["btatt.opcode"], 16) in (WRITE_REQUEST, WRITE_COMMAND)]
    commands = [f for f in writes if f["btatt.uuid128"] == plain(COMMAND_CHAR_UUID)]
    notifications = [f for f in frames if int(f["btatt.opcode"], 16) == NOTIFICATION]
    events = [f for f in notifications if f["btatt.uuid128"] == plain(EVENT_CHAR_UUID)]
    assert commands, frames
    assert events, frames
    for frame in [*commands, *events]:
        assert frame["btatt.service_uuid128"] == plain(PHONEKEY_SERVICE_UUID), frame
    command_handles = {f["btatt.handle"] for f in commands}
    event_handles = {f["btatt.handle"] for f in events}
    assert len(command_handles) == len(event_handles) == 1
    assert command_handles != event_handles

    # The vehicle's side of the same exchange: writes in on that handle, notifications out.
    served = att_frames(tshark, vehicle_capture)
    received = {
        f["btatt.handle"]
        for f in served
        if int(f["btatt.opcode"], 16) in (WRITE_REQUEST, WRITE_COMMAND)
    }
    sent = {f["btatt.handle"] for f in served if int(f["btatt.opcode"], 16) == NOTIFICATION}
    assert command_handles <= received
    assert event_handles == sent
