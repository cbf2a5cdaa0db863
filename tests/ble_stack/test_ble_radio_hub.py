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
from bumble import hci
from bumble.device import Device
from bumble.transport import open_transport

from ble_stack.bleak_backend import BumbleBleakClient
from ble_stack.radio_cli import main as radio_main
from ble_stack.radio_hub import RadioHub
from ble_stack.transports import open_device
from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID
from ble_stack.virtual_link import VirtualRadio

# `python -m phonekey.cli radio` needs every package's CLI to exist; this
# entry point runs the same `register`/handler without them.
RADIO_COMMAND = [sys.executable, "-m", "ble_stack.radio_cli"]
SUPERVISION = 0.5  # seconds: short, so tests of vanishing hosts stay quick
CONNECTION_TIMEOUT = 0x08


async def start_radio(
    *listen_specs: str, supervision: float = SUPERVISION
) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start the radio and return it with the printed lines, up to `radio ready`."""
    args = [arg for spec in listen_specs for arg in ("--listen", spec)]
    process = await asyncio.create_subprocess_exec(
        *RADIO_COMMAND,
        *args,
        "--supervision-timeout",
        str(supervision),
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


async def next_line_with(process: asyncio.subprocess.Process, text: str) -> str:
    """The radio's next output line containing `text` (lines before it are skipped)."""
    assert process.stdout is not None
    async with asyncio.timeout(10):
        while line := (await process.stdout.readline()).decode():
            if text in line:
                return line.rstrip("\n")
    raise AssertionError(f"the radio exited without printing {text!r}")


def specs_of(lines: list[str]) -> list[str]:
    return [line.split("--transport ", 1)[1] for line in lines if "--transport " in line]


@pytest.fixture
async def radio_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    process, lines = await start_radio("tcp-server:127.0.0.1:0", "tcp-server:127.0.0.1:0")
    try:
        yield process, specs_of(lines)
    finally:
        await stop_radio(process)


@pytest.fixture
async def radio_specs(
    radio_process: tuple[asyncio.subprocess.Process, list[str]],
) -> list[str]:
    return radio_process[1]


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


def watch_disconnection(device: Device) -> tuple[asyncio.Event, list[int]]:
    """An event set when `device`'s only connection drops, and the reasons given."""
    (connection,) = device.connections.values()
    dropped, reasons = asyncio.Event(), []

    def on_disconnection(reason: int) -> None:
        reasons.append(reason)
        dropped.set()

    connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
    return dropped, reasons


async def test_host_leaving_drops_its_links_by_supervision_timeout_and_the_slot_can_be_reused(
    radio_process: tuple[asyncio.subprocess.Process, list[str]],
) -> None:
    radio, (vehicle_spec, phone_spec) = radio_process
    async with await open_device(phone_spec, name="phone") as phone_opened:
        phone = phone_opened.device
        vehicle_opened = await open_device(vehicle_spec, name="vehicle")
        await EchoPeripheral(vehicle_opened.device).start()
        client = BleakClient(
            await find_vehicle(phone), backend=BumbleBleakClient, bumble_device=phone
        )
        await client.connect()
        assert "host 2: connected to host 1" in await next_line_with(radio, "connected")
        dropped, reasons = watch_disconnection(phone)

        # The vehicle process dies without a word: only its socket closes.
        assert vehicle_opened.transport is not None
        await vehicle_opened.transport.close()
        gone = await next_line_with(radio, "host 1: gone")
        assert f"drop in {SUPERVISION:g} s (supervision timeout)" in gone
        await wait_for(dropped)
        assert reasons == [CONNECTION_TIMEOUT]  # missed connection events, not a goodbye
        assert "host 2: link to host 1 down (connection timeout, 0x08)" in await next_line_with(
            radio, "down"
        )
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
        assert lines[1:] == [
            f"host 2: --transport unix:{socket_path}",
            f"links of a host that goes away drop after {SUPERVISION:g} s (supervision timeout)",
        ]
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


@pytest.mark.parametrize("value", ["0", "33", "nan", "soon"])
def test_supervision_timeout_out_of_range_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        radio_main(["--listen", "tcp-server:127.0.0.1:0", "--supervision-timeout", value])
    assert exit_info.value.code == 2
    assert "--supervision-timeout" in capsys.readouterr().err


# --- in process: the hub's slots and a radio that vanishes --------------------------------
async def connect_echo(phone: Device) -> BleakClient:
    client = BleakClient(await find_vehicle(phone), backend=BumbleBleakClient, bumble_device=phone)
    await client.connect()
    return client


async def test_hub_gives_a_left_slot_a_fresh_controller_and_reports_what_happened() -> None:
    events: list[str] = []
    hub = RadioHub(
        ["tcp-server:127.0.0.1:0", "tcp-server:127.0.0.1:0"],
        supervision_timeout=SUPERVISION,
        on_event=events.append,
    )
    vehicle_spec, phone_spec = await hub.start()
    try:
        async with await open_device(phone_spec, name="phone") as phone_opened:
            vehicle_opened = await open_device(vehicle_spec, name="vehicle")
            await EchoPeripheral(vehicle_opened.device).start()
            await connect_echo(phone_opened.device)
            dropped, reasons = watch_disconnection(phone_opened.device)
            old = hub.slots[0].controller
            assert vehicle_opened.transport is not None
            await vehicle_opened.transport.close()
            await wait_for(dropped)
            await vehicle_opened.close()

            fresh = hub.slots[0].controller
            assert fresh is not old and old.vanished
            assert fresh.public_address != old.public_address  # a new "dongle"
            assert not fresh.le_connections and not fresh.is_advertising
            assert reasons == [CONNECTION_TIMEOUT]
            # Both hosts attach before the hub's first look: either order.
            assert sorted(events[:2]) == ["host 1: attached", "host 2: attached"]
            assert events[2:] == [
                "host 2: connected to host 1 (as central)",
                "host 1: connected to host 2 (as peripheral)",
                f"host 1: gone; its 1 link(s) drop in {SUPERVISION:g} s (supervision timeout); "
                "slot ready for a new host",
                "host 2: link to host 1 down (connection timeout, 0x08)",
            ]
    finally:
        await hub.close()


@pytest.mark.parametrize("interval_ms", [None, 15.0], ids=["local-link", "connection-events"])
async def test_vanished_radio_drops_peer_links_only_after_the_supervision_timeout(
    interval_ms: float | None,
) -> None:
    radio = VirtualRadio(connection_interval_ms=interval_ms)
    async with (
        await open_device("virtual", name="vehicle", radio=radio) as vehicle_opened,
        await open_device("virtual", name="phone", radio=radio) as phone_opened,
    ):
        await EchoPeripheral(vehicle_opened.device).start()
        client = await connect_echo(phone_opened.device)
        dropped, reasons = watch_disconnection(phone_opened.device)
        loop = asyncio.get_running_loop()
        vanished_at = loop.time()
        radio.remove_device(vehicle_opened.device, supervision_timeout=SUPERVISION)
        assert client.is_connected  # nobody told the phone anything
        # Writes go nowhere meanwhile; the link is only lost when the timeout ends.
        await client.write_gatt_char(COMMAND_CHAR_UUID, b"lost", response=False)
        await wait_for(dropped)
        assert loop.time() - vanished_at >= SUPERVISION - 0.01  # never early
        assert reasons == [CONNECTION_TIMEOUT]
        assert not client.is_connected


async def test_hanging_up_on_a_vanished_peer_completes_at_once() -> None:
    radio = VirtualRadio()
    async with (
        await open_device("virtual", name="vehicle", radio=radio) as vehicle_opened,
        await open_device("virtual", name="phone", radio=radio) as phone_opened,
    ):
        await EchoPeripheral(vehicle_opened.device).start()
        client = await connect_echo(phone_opened.device)
        radio.remove_device(vehicle_opened.device, supervision_timeout=30.0)
        async with asyncio.timeout(2):  # not the 30 s a silent peer would cost
            await client.disconnect()
        assert not phone_opened.device.connections


async def test_removing_a_device_by_default_still_tells_peers_at_once() -> None:
    radio = VirtualRadio()
    async with (
        await open_device("virtual", name="vehicle", radio=radio) as vehicle_opened,
        await open_device("virtual", name="phone", radio=radio) as phone_opened,
    ):
        await EchoPeripheral(vehicle_opened.device).start()
        await connect_echo(phone_opened.device)
        dropped, reasons = watch_disconnection(phone_opened.device)
        radio.remove_device(vehicle_opened.device)
        await wait_for(dropped)
        assert reasons == [
            hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR
        ]


async def test_host_reattaching_at_once_gets_a_fresh_controller() -> None:
    hub = RadioHub(["tcp-server:127.0.0.1:0", "tcp-server:127.0.0.1:0"], supervision_timeout=30)
    vehicle_spec, phone_spec = await hub.start()
    try:
        async with await open_device(phone_spec, name="phone") as phone_opened:
            first = await open_device(vehicle_spec, name="vehicle")
            await EchoPeripheral(first.device).start()
            await connect_echo(phone_opened.device)
            assert first.transport is not None
            await first.transport.close()
            await first.close()
            # Back before the hub looked at the slot again: its first command
            # already lands on a fresh controller, not on the crashed host's one.
            async with await open_device(vehicle_spec, name="vehicle again") as again:
                await EchoPeripheral(again.device).start()
                assert not again.device.connections
                async with BleakClient(
                    await find_vehicle(phone_opened.device),
                    backend=BumbleBleakClient,
                    bumble_device=phone_opened.device,
                ) as client:
                    assert await echo_round_trip(client, b"xy") == b"yx"
    finally:
        await hub.close()


async def test_a_host_reconnecting_at_once_to_the_radio_process_is_answered(
    radio_specs: list[str],
) -> None:
    # bumble's server transports share one sink between connections, and the
    # end of an old connection, processed after a new one attached, used to
    # wipe out the new one: its HCI commands went unanswered and it hung
    # powering on. A script that reconnects in-process hits exactly this.
    vehicle_spec, _ = radio_specs
    for attempt in range(3):
        async with await open_transport(vehicle_spec) as transport:
            device = Device.with_hci(
                "quick", hci.Address("F0:F1:F2:F3:F4:F8"), transport.source, transport.sink
            )
            try:
                async with asyncio.timeout(10):
                    await device.power_on()
                    await device.power_off()
            except TimeoutError:
                pytest.fail(f"reconnection {attempt} got no answer to its HCI commands")
