"""The cross-process virtual radio: `phonekey radio` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ble_testkit import EchoPeripheral, find_vehicle, wait_for
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from ble_stack.bleak_backend import BumbleBleakClient
from ble_stack.radio_cli import main as radio_main
from ble_stack.transports import open_device
from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID

# `python -m phonekey.cli radio` needs every package's CLI to exist; this
# entry point runs the same `register`/handler without them.
RADIO_COMMAND = [sys.executable, "-m", "ble_stack.radio_cli"]


async def start_radio(*listen_specs: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start the radio and return it with the printed lines, up to `radio ready`."""
    args = [arg for spec in listen_specs for arg in ("--listen", spec)]
    process = await asyncio.create_subprocess_exec(
        *RADIO_COMMAND,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            while (line := (await process.stdout.readline()).decode()) != "radio ready\n":
                assert line, f"radio exited early: {await process.communicate()}"
                lines.append(line.rstrip("\n"))
    except BaseException:
        await stop_radio(process)
        raise
    return process, lines


async def stop_radio(process: asyncio.subprocess.Process, signum: int = signal.SIGTERM) -> int:
    """Stop the radio; kill it if it does not exit promptly. Returns its exit code."""
    if process.returncode is None:
        process.send_signal(signum)
        try:
            async with asyncio.timeout(5):
                await process.communicate()
        except TimeoutError:
            process.kill()
            await process.communicate()
    assert process.returncode is not None
    return process.returncode


def specs_of(lines: list[str]) -> list[str]:
    return [line.split("--transport ", 1)[1] for line in lines]


@pytest.fixture
async def radio_specs() -> AsyncIterator[list[str]]:
    process, lines = await start_radio("tcp-server:127.0.0.1:0", "tcp-server:127.0.0.1:0")
    try:
        yield specs_of(lines)
    finally:
        await stop_radio(process)


async def echo_round_trip(client: BleakClient, payload: bytes) -> bytes:
    received: asyncio.Queue[bytearray] = asyncio.Queue()

    def on_event(_sender: BleakGATTCharacteristic, data: bytearray) -> None:
        received.put_nowait(data)

    await client.start_notify(EVENT_CHAR_UUID, on_event)
    await client.write_gatt_char(COMMAND_CHAR_UUID, payload, response=True)
    async with asyncio.timeout(2):
        return bytes(await received.get())


async def test_two_processes_talk_through_the_radio(radio_specs: list[str]) -> None:
    vehicle_spec, phone_spec = radio_specs
    async with (
        await open_device(vehicle_spec, name="vehicle") as vehicle_opened,
        await open_device(phone_spec, name="phone") as phone_opened,
    ):
        vehicle = EchoPeripheral(vehicle_opened.device)
        await vehicle.start()
        found = await find_vehicle(phone_opened.device)
        async with BleakClient(
            found, backend=BumbleBleakClient, bumble_device=phone_opened.device, timeout=5
        ) as client:
            assert client.mtu_size == 247
            assert await echo_round_trip(client, b"challenge") == b"egnellahc"
            await client.write_gatt_char(COMMAND_CHAR_UUID, b"no-ack", response=False)


async def test_host_leaving_drops_its_links_and_the_slot_can_be_reused(
    radio_specs: list[str],
) -> None:
    vehicle_spec, phone_spec = radio_specs
    async with await open_device(phone_spec, name="phone") as phone_opened:
        phone = phone_opened.device
        vehicle_opened = await open_device(vehicle_spec, name="vehicle")
        await EchoPeripheral(vehicle_opened.device).start()
        dropped = asyncio.Event()
        client = BleakClient(
            await find_vehicle(phone),
            backend=BumbleBleakClient,
            bumble_device=phone,
            disconnected_callback=lambda _c: dropped.set(),
        )
        await client.connect()

        # The vehicle process dies without a word: only its socket closes.
        assert vehicle_opened.transport is not None
        await vehicle_opened.transport.close()
        await wait_for(dropped)
        await vehicle_opened.close()  # quick: the transport is known to be gone

        # A new vehicle process attaches to the same slot and starts clean.
        async with await open_device(vehicle_spec, name="vehicle again") as again:
            await EchoPeripheral(again.device).start()
            async with BleakClient(
                await find_vehicle(phone), backend=BumbleBleakClient, bumble_device=phone
            ) as client:
                assert await echo_round_trip(client, b"ab") == b"ba"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_radio_prints_specs_and_exits_cleanly(tmp_path: Path, signum: int) -> None:
    socket_path = tmp_path / "radio.sock"
    process, lines = await start_radio("tcp-server:127.0.0.1:0", f"unix-server:{socket_path}")
    try:
        assert re.fullmatch(r"host 1: --transport tcp-client:127\.0\.0\.1:\d+", lines[0])
        assert int(lines[0].rsplit(":", 1)[1]) > 0
        assert lines[1:] == [f"host 2: --transport unix:{socket_path}"]
        assert socket_path.exists()
    finally:
        returncode = await stop_radio(process, signum)
    assert returncode == 0
    assert not socket_path.exists()


def test_bad_listen_spec_fails_with_one_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert radio_main(["--listen", "tcp-client:127.0.0.1:9000"]) == 1
    error = capsys.readouterr().err
    assert "expected tcp-server:HOST:PORT or unix-server:PATH" in error
    assert "Traceback" not in error
