"""open_device: virtual devices, capture files, and failures explained."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ble_testkit import EchoPeripheral, find_vehicle

from ble_stack.errors import BleStackError, TransportOpenError
from ble_stack.transport_errors import HostInfo
from ble_stack.transports import default_radio, explain_open_error, open_device


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_virtual_devices_share_the_default_radio() -> None:
    async with (
        await open_device("virtual", name="vehicle") as vehicle_opened,
        await open_device("virtual", name="phone") as phone_opened,
    ):
        assert vehicle_opened.transport is None
        vehicle = EchoPeripheral(vehicle_opened.device)
        await vehicle.start()
        found = await find_vehicle(phone_opened.device)
        assert found.address == vehicle.address
    # Closing took both controllers off the radio.
    assert not default_radio().link.controllers


async def test_virtual_device_address_is_honoured() -> None:
    async with await open_device("virtual", name="v", address="C0:11:22:33:44:55") as opened:
        await opened.device.power_on()
        assert str(opened.device.random_address) == "C0:11:22:33:44:55"


async def test_capture_writes_a_btsnoop_file(tmp_path: Path) -> None:
    capture = tmp_path / "hci.btsnoop"
    opened = await open_device("virtual", name="v", capture=str(capture))
    await opened.device.power_on()
    await opened.close()
    data = capture.read_bytes()
    assert data.startswith(b"btsnoop\0")
    assert len(data) > 100  # header plus the power-on HCI exchange


async def test_refused_tcp_port_says_to_start_the_radio() -> None:
    spec = f"tcp-client:127.0.0.1:{free_port()}"
    with pytest.raises(TransportOpenError) as raised:
        await open_device(spec, name="phone")
    message = str(raised.value)
    assert isinstance(raised.value, BleStackError)
    assert spec in message
    assert "connection refused" in message
    assert "is `phonekey radio` running and listening there?" in message
    assert len(message.splitlines()) == 2


async def test_missing_unix_socket_says_to_start_the_radio(tmp_path: Path) -> None:
    with pytest.raises(TransportOpenError, match=r"(?s)no socket at .*phonekey radio"):
        await open_device(f"unix:{tmp_path / 'nope.sock'}", name="phone")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bogus:thing", "unknown transport 'bogus'"),
        ("virtual-radio", "unknown transport"),
        ("tcp-client:localhost", "expected tcp-client:HOST:PORT"),
        ("tcp-client:127.0.0.1:http", "expected tcp-client:HOST:PORT"),
        ("unix:", "expected unix:PATH"),
    ],
)
async def test_bad_specs_are_explained(spec: str, expected: str) -> None:
    with pytest.raises(TransportOpenError) as raised:
        await open_device(spec, name="phone")
    assert expected in str(raised.value)
    assert "fix:" in str(raised.value)


def test_usb_failures_point_at_the_hardware_doc() -> None:
    from bumble.transport.common import TransportInitError

    not_found = explain_open_error("usb:0", TransportInitError("device not found"), 10)
    assert str(not_found) == (
        "cannot open BLE transport 'usb:0': no USB Bluetooth controller found\n"
        "  fix: plug the dongle in; `phonekey doctor` lists USB devices (usb:N counts only "
        "Bluetooth-class devices; try usb:VID:PID)"
    )
    denied = explain_open_error(
        "usb:0", type("USBErrorAccess", (Exception,), {})(), 10, HostInfo("linux", True)
    )
    assert "permission" in denied.cause and "docs/hardware.md" in denied.fix
    timeout = explain_open_error("tcp-client:10.0.0.1:9", TimeoutError(), 2)
    assert timeout.cause == "no answer within 2 s"
