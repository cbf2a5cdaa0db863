"""The running vehicle's console: `phonekey vehicle ...` commands reach it
through control.sock (0600, removed on exit, a stale one replaced); `show`
and `log` also read a stopped vehicle's state. The CLI runs in a thread
because it blocks on the socket served by this test's event loop."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from vehicle_testkit import STEP_TIMEOUT, VIN

from protocol import crypto
from protocol.card import VehicleCard
from protocol.types import Role
from vehicle_sim.cli_run import run_vehicle
from vehicle_sim.control import SOCKET_NAME
from vehicle_sim.control_client import ControlClient, ControlError, running

Cli = Callable[[list[str]], int]


@pytest.fixture
async def running_vehicle(card: VehicleCard, state_dir: Path) -> AsyncIterator[Path]:
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_vehicle(state_dir, "virtual", stop=stop, out=out))
    async with asyncio.timeout(STEP_TIMEOUT):
        while "advertising" not in out.getvalue():
            await asyncio.sleep(0.01)
    try:
        yield state_dir
    finally:
        stop.set()
        assert await asyncio.wait_for(task, STEP_TIMEOUT) == 0


async def cli(vehicle_cli: Cli, *argv: str) -> int:
    return await asyncio.to_thread(vehicle_cli, list(argv))


async def test_console_commands_reach_the_running_vehicle(
    running_vehicle: Path, vehicle_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state", str(running_vehicle)]
    sock = running_vehicle / SOCKET_NAME
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert await asyncio.to_thread(running, running_vehicle)

    key = crypto.generate_private_key().public_key()
    text = crypto.public_key_to_text(key)
    # add-key works on a running vehicle now: through the console, not the files.
    assert (
        await cli(vehicle_cli, "vehicle", "add-key", *state, "--key", text, "--role", "driver") == 0
    )
    assert "added key" in capsys.readouterr().out

    assert await cli(vehicle_cli, "vehicle", "show", *state, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is True and report["vin"] == VIN
    assert [k["role"] for k in report["keys"]] == ["driver"]
    assert report["keys"][0]["key_id"] == crypto.key_id(key).hex()
    assert report["connections"]["max_connections"] == 3
    assert report["lockout"]["level"] == 0 and report["lock_state"] == "locked"
    assert report["log"]["verified"] is True and report["log"]["length"] >= 2  # boot, enrolled

    assert await cli(vehicle_cli, "vehicle", "log", *state) == 0
    out = capsys.readouterr().out
    assert "boot" in out and "enrolled" in out and "chain verified" in out

    def bad_requests() -> list[str]:
        kinds = []
        with ControlClient(running_vehicle) as client:
            for op in ("launch-missiles", "tap"):
                try:
                    client.request(op)
                except ControlError as exc:
                    kinds.append(exc.kind)
        return kinds

    assert await asyncio.to_thread(bad_requests) == ["usage", "usage"]


async def test_show_and_log_read_a_stopped_vehicle_and_the_socket_is_gone(
    card: VehicleCard, state_dir: Path, vehicle_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_vehicle(state_dir, "virtual", stop=stop, out=out))
    async with asyncio.timeout(STEP_TIMEOUT):
        while not (state_dir / SOCKET_NAME).exists():
            await asyncio.sleep(0.01)
    stop.set()
    assert await asyncio.wait_for(task, STEP_TIMEOUT) == 0
    assert not (state_dir / SOCKET_NAME).exists()

    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and "connections" not in report
    assert report["log"]["length"] >= 1  # the boot of the run
    assert vehicle_cli(["vehicle", "log", "--state", str(state_dir), "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert log["verified"] and log["entries"][0]["kind"] == "boot"


async def test_a_stale_socket_is_replaced(
    card: VehicleCard, state_dir: Path, vehicle_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / SOCKET_NAME))  # a vehicle killed without cleaning up
    stale.close()
    assert not running(state_dir)
    out, stop = io.StringIO(), asyncio.Event()
    task = asyncio.create_task(run_vehicle(state_dir, "virtual", stop=stop, out=out))
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            while "advertising" not in out.getvalue():
                await asyncio.sleep(0.01)
        assert await asyncio.to_thread(running, state_dir)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, STEP_TIMEOUT) == 0


async def test_tap_card_needs_a_running_vehicle(
    card: VehicleCard,
    state_dir: Path,
    tmp_path: Path,
    vehicle_cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    card_file = tmp_path / "card.pem"
    assert (
        vehicle_cli(["vehicle", "add-card", "--state", str(state_dir), "--card", str(card_file)])
        == 0
    )
    capsys.readouterr()
    code = vehicle_cli(["vehicle", "tap-card", "--state", str(state_dir), "--card", str(card_file)])
    err = capsys.readouterr().err
    assert code == 4 and "no vehicle is running" in err and err.count("\n") == 1


def test_log_exits_5_when_the_chain_does_not_verify(
    card: VehicleCard, state_dir: Path, vehicle_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    from vehicle_sim.firmware_store import LogEvent, LogKind
    from vehicle_sim.flash.layout import decode_superblock
    from vehicle_sim.state_store import open_store

    with open_store(state_dir) as store:
        for kind in (LogKind.BOOT, LogKind.UNLOCK, LogKind.LOCK):
            store.log_event(LogEvent(kind, b"\x07" * 16))
        store.flush_log()
        store.add_key(crypto.generate_private_key().public_key(), Role.OWNER)  # a commit
    assert vehicle_cli(["vehicle", "log", "--state", str(state_dir)]) == 0
    capsys.readouterr()

    # Someone who can rewrite the flash turns the first LOCK into an UNLOCK.
    image = state_dir / "vehicle.flash"
    data = bytearray(image.read_bytes())
    log_start = decode_superblock(bytes(data), len(data)).log_address
    region = data[log_start:]
    # entry body: seq u64, time u64, kind u8, pad u8, reason u16, count u32, key id
    lock_entry = region.index(bytes([LogKind.LOCK, 0, 0, 0, 1, 0, 0, 0]) + b"\x07" * 16)
    region[lock_entry] = LogKind.UNLOCK
    data[log_start:] = region
    image.write_bytes(bytes(data))

    code = vehicle_cli(["vehicle", "log", "--state", str(state_dir)])
    captured = capsys.readouterr()
    assert code == 5
    assert "CHAIN DOES NOT VERIFY" in captured.out and "does not verify" in captured.err
