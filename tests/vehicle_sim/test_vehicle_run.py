"""`phonekey vehicle run`: serves phones, prints a line per decision, stops on
a signal with exit 0 and leaves its state unlocked."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from vehicle_testkit import STEP_TIMEOUT, VIN, PhoneFactory

from ble_stack.transports import default_radio
from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command, CommandCompleted, LockState
from protocol.card import VehicleCard
from vehicle_sim.cli_run import default_adv_interval, run_vehicle
from vehicle_sim.state_store import FileVehicleStore, open_store


@pytest.fixture
async def radio() -> VirtualRadio:
    """The radio `--transport virtual` uses, so the test's phones can reach it."""
    return default_radio()


async def _wait_for_line(out: io.StringIO, text: str) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while text not in out.getvalue():
            await asyncio.sleep(0.01)


async def test_run_serves_phones_and_prints_each_decision(
    card: VehicleCard, state_dir: Path, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    stranger = await make_phone("stranger", role=None)
    store.close()  # provisioning done: `run` takes the state over

    out, stop = io.StringIO(), asyncio.Event()
    run = asyncio.create_task(run_vehicle(state_dir, "virtual", stop=stop, out=out))
    try:
        await _wait_for_line(out, f"vehicle {VIN} advertising on virtual")
        address = await owner.scan_for(VIN)
        await owner.connect(address)
        assert isinstance(await owner.next_event(), ChallengeReceived)
        await owner.send(Command.UNLOCK)
        done = await owner.next_event()
        assert isinstance(done, CommandCompleted) and done.lock_state is LockState.UNLOCKED
        await _wait_for_line(out, "unlock by key")

        await stranger.connect(address)
        await stranger.next_event()
        await stranger.send(Command.LOCK)
        await stranger.next_event()
        await _wait_for_line(out, "denied key")
    finally:
        stop.set()
        assert await asyncio.wait_for(run, STEP_TIMEOUT) == 0

    lines = out.getvalue().splitlines()
    assert lines[1].startswith(f"unlock by key {owner.key_id[:4].hex()} (owner)")
    assert "locked -> unlocked" in lines[1]
    assert lines[2].startswith(f"denied key {stranger.key_id[:4].hex()}")
    assert "unknown-key" in lines[2]
    assert lines[-1] == f"vehicle {VIN} stopped"
    with open_store(state_dir) as reopened:  # lock released, state persisted
        assert reopened.lock_state() is LockState.UNLOCKED


def test_default_advertising_interval_depends_on_the_transport() -> None:
    assert default_adv_interval("virtual") == 20
    assert default_adv_interval("tcp-client:127.0.0.1:9000") == 20
    assert default_adv_interval("usb:0") == 100
    assert default_adv_interval("serial:/dev/ttyACM0,1000000") == 100


_RUN = (
    "import sys, phonekey.cli as c; c._SUBCOMMANDS = {'vehicle': 'vehicle_sim.cli'}; "
    "sys.exit(c.main(sys.argv[1:]))"
)


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM delivery is POSIX")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_process_stops_cleanly_on_a_signal(
    card: VehicleCard, state_dir: Path, signum: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _RUN,
            "vehicle",
            "run",
            "--state",
            str(state_dir),
            "--transport",
            "virtual",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"vehicle {VIN} advertising on virtual"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=STEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == f"vehicle {VIN} stopped" and "Traceback" not in err
    with open_store(state_dir):  # the lock was released
        pass


async def test_run_json_prints_one_object_per_line(
    card: VehicleCard, state_dir: Path, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    store.close()
    out, stop = io.StringIO(), asyncio.Event()
    run = asyncio.create_task(
        run_vehicle(state_dir, "virtual", stop=stop, out=out, json_lines=True)
    )
    try:
        await _wait_for_line(out, '"event": "advertising"')
        address = await owner.scan_for(VIN)
        await owner.connect(address)
        assert isinstance(await owner.next_event(), ChallengeReceived)
        await owner.send(Command.UNLOCK)
        assert isinstance(await owner.next_event(), CommandCompleted)
        await _wait_for_line(out, '"event": "command_executed"')
    finally:
        stop.set()
        assert await asyncio.wait_for(run, STEP_TIMEOUT) == 0

    events = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON
    assert events[0]["event"] == "advertising" and events[0]["vin"] == VIN
    assert VehicleCard.from_text(events[0]["card"]).vehicle_id == card.vehicle_id
    executed = next(e for e in events if e["event"] == "command_executed")
    assert executed["key_id"] == owner.key_id.hex()
    assert (executed["command"], executed["result"], executed["lock_state"]) == (
        "unlock",
        "ok",
        "unlocked",
    )
    assert events[-1] == {"event": "stopped", "vin": VIN}
