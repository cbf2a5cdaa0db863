"""Every "cannot open transport" message, from the real exception of the layer that raises it.

Failures are injected below bumble where possible (usb1's context and devices,
pyserial, the HCI socket and libc), so bumble's own transport code runs and
raises what it raises on a real machine; the rest runs for real here (no USB
bus, no AF_BLUETOOTH, a pty that never answers).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import serial
import serial_asyncio
import usb1
from bumble.transport import hci_socket as bumble_hci_socket
from bumble.transport import usb as bumble_usb
from bumble.transport.common import TransportInitError

from ble_stack import transport_errors
from ble_stack.errors import TransportOpenError
from ble_stack.transport_errors import HostInfo, explain_open_error
from ble_stack.transports import open_device

LINUX = HostInfo("linux", has_usb_bus=True)
WINDOWS = HostInfo("win32", has_usb_bus=True)
MACOS = HostInfo("darwin", has_usb_bus=True)
BT_CLASS = (0xE0, 0x01, 0x01)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Callable[[HostInfo], None]:
    def use(info: HostInfo) -> None:
        monkeypatch.setattr(transport_errors, "current_host", lambda: info)

    use(LINUX)
    return use


async def open_error(spec: str, **kwargs: Any) -> TransportOpenError:
    with pytest.raises(TransportOpenError) as raised:
        opened = await open_device(spec, name="vehicle", **kwargs)
        await opened.close()
    error = raised.value
    lines = str(error).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"cannot open BLE transport {spec!r}: ")
    assert lines[1].startswith("  fix: ")
    assert "Traceback" not in str(error)
    return error


# --- USB: a fake libusb context under bumble's real usb transport ---------------------
class FakeUsbHandle:
    def __init__(self, claim_error: Exception | None) -> None:
        self.claim_error = claim_error

    def getConfiguration(self) -> int:
        return 1

    def getTransfer(self, **_kwargs: Any) -> None:
        return None

    def claimInterface(self, _number: int) -> None:
        if self.claim_error is not None:
            raise self.claim_error

    def close(self) -> None:
        pass


class FakeUsbDevice:
    def __init__(
        self,
        vid: int = 0x0A12,
        pid: int = 0x0001,
        klass: tuple[int, int, int] = BT_CLASS,
        open_error: Exception | None = None,
        claim_error: Exception | None = None,
    ) -> None:
        self.vid, self.pid, self.klass = vid, pid, klass
        self.open_error, self.claim_error = open_error, claim_error

    def getVendorID(self) -> int:
        return self.vid

    def getProductID(self) -> int:
        return self.pid

    def getSerialNumber(self) -> str:
        return "0001"

    def getDeviceClass(self) -> int:
        return self.klass[0]

    def getDeviceSubClass(self) -> int:
        return self.klass[1]

    def getDeviceProtocol(self) -> int:
        return self.klass[2]

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def open(self) -> FakeUsbHandle:
        if self.open_error is not None:
            raise self.open_error
        return FakeUsbHandle(self.claim_error)

    def close(self) -> None:
        pass


class FakeEndpoint:
    def getNumber(self) -> int:
        return 0

    def getAlternateSetting(self) -> int:
        return 0

    def getAddress(self) -> int:
        return 0x81


@pytest.fixture
def usb_bus(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install a fake libusb: `usb_bus(devices, open_error=...)`."""

    def install(devices: list[FakeUsbDevice], open_error: BaseException | None = None) -> None:
        class FakeContext:
            def open(self) -> None:
                if open_error is not None:
                    raise open_error

            def getDeviceIterator(self, skip_on_error: bool = False) -> Iterator[FakeUsbDevice]:
                return iter(devices)

            def close(self) -> None:
                pass

        endpoint = FakeEndpoint()
        endpoints = (1, endpoint, None, endpoint, endpoint, None, endpoint, None)
        monkeypatch.setattr(bumble_usb, "load_libusb", lambda: None)
        monkeypatch.setattr(bumble_usb, "find_endpoints", lambda *_args: endpoints)
        monkeypatch.setattr(usb1, "USBContext", FakeContext)
        monkeypatch.setattr(usb1, "hasCapability", lambda _cap: False)

    return install


@pytest.mark.parametrize(
    ("spec", "cause", "fix"),
    [
        ("usb:0", "no USB Bluetooth controller found", "usb:N counts only Bluetooth-class"),
        ("usb:1", "no USB Bluetooth controller found at index 1", "plug the dongle in"),
        ("usb:0a12:0001", "no USB device 0a12:0001", "`lsusb` or `phonekey doctor`"),
    ],
)
async def test_usb_no_such_device(
    usb_bus: Callable[..., None], host: Any, spec: str, cause: str, fix: str
) -> None:
    usb_bus([FakeUsbDevice(0x1D6B, 0x0002, klass=(0x09, 0, 0))])  # a hub, not Bluetooth
    error = await open_error(spec)
    assert error.cause == cause
    assert fix in error.fix


@pytest.mark.parametrize(
    ("info", "fix"),
    [
        (
            LINUX,
            "add a udev rule for the dongle and replug it (see docs/hardware.md), or run as root",
        ),
        (WINDOWS, "install the WinUSB driver for the dongle with Zadig (see docs/hardware.md)"),
        (MACOS, "macOS may hold the dongle"),
    ],
)
async def test_usb_permission_denied(
    usb_bus: Callable[..., None], host: Callable[[HostInfo], None], info: HostInfo, fix: str
) -> None:
    host(info)
    usb_bus([FakeUsbDevice(open_error=usb1.USBErrorAccess(usb1.ERROR_ACCESS))])
    error = await open_error("usb:0")
    assert error.cause == "permission denied on the USB dongle"
    assert error.fix.startswith(fix)


@pytest.mark.parametrize(
    ("info", "cause", "fix"),
    [
        (LINUX, "another program or the kernel's Bluetooth stack", "`sudo hciconfig hciX down`"),
        (WINDOWS, "Windows' Bluetooth driver holds it", "Zadig"),
        (MACOS, "macOS's Bluetooth stack", "a dongle macOS does not claim"),
    ],
)
async def test_usb_busy(
    usb_bus: Callable[..., None],
    host: Callable[[HostInfo], None],
    info: HostInfo,
    cause: str,
    fix: str,
) -> None:
    host(info)
    usb_bus([FakeUsbDevice(claim_error=usb1.USBErrorBusy(usb1.ERROR_BUSY))])
    error = await open_error("usb:0a12:0001")
    assert error.cause.startswith("the USB dongle is busy")
    assert cause in error.cause and fix in error.fix
    if info is LINUX:
        assert "systemctl stop bluetooth" in error.fix


async def test_usb_without_winusb(
    usb_bus: Callable[..., None], host: Callable[[HostInfo], None]
) -> None:
    host(WINDOWS)
    usb_bus([FakeUsbDevice(open_error=usb1.USBErrorNotSupported(usb1.ERROR_NOT_SUPPORTED))])
    error = await open_error("usb:0")
    assert error.cause == "the USB dongle has no WinUSB driver"
    assert "Zadig" in error.fix


async def test_usb_libusb_missing(usb_bus: Callable[..., None], host: Any) -> None:
    # What usb1 raises when no libusb-1.0 can be loaded.
    usb_bus([], open_error=OSError(errno.ENOENT, "cannot find a suitable libusb-1.0", ["x.so"]))
    error = await open_error("usb:0")
    assert error.cause == "libusb is missing (the libusb-1.0 library could not be loaded)"
    assert "pip install libusb-package" in error.fix


async def test_usb_python_package_missing(monkeypatch: pytest.MonkeyPatch, host: Any) -> None:
    async def no_usb1(_spec: str) -> None:
        raise ModuleNotFoundError("No module named 'usb1'", name="usb1")

    monkeypatch.setattr("bumble.transport.open_transport", no_usb1)
    error = await open_error("usb:0")
    assert "'libusb1', which is missing" in error.cause
    assert error.fix == "pip install libusb1 libusb-package"


@pytest.mark.parametrize("has_bus", [False, True])
async def test_usb_libusb_cannot_start(
    usb_bus: Callable[..., None], host: Callable[[HostInfo], None], has_bus: bool
) -> None:
    host(HostInfo("linux", has_usb_bus=has_bus))
    usb_bus([], open_error=usb1.USBErrorOther(usb1.ERROR_OTHER))
    error = await open_error("usb:0")
    if has_bus:
        assert error.cause == "libusb failed: USBErrorOther"
        assert "--debug" in error.fix
    else:
        assert error.cause.startswith("libusb sees no USB bus on this machine")
        assert "virtual radio" in error.fix


@pytest.mark.skipif(os.path.isdir("/dev/bus/usb"), reason="this machine has a USB bus")
async def test_usb_here_for_real() -> None:
    error = await open_error("usb:0")
    assert error.cause.startswith("libusb sees no USB bus on this machine")


# --- serial ------------------------------------------------------------------------------
def fail_serial(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    def serial_for_url(*_args: Any, **_kwargs: Any) -> None:
        raise exc

    monkeypatch.setattr(serial_asyncio.serial, "serial_for_url", serial_for_url)


async def test_serial_port_missing_for_real(tmp_path: Path, host: Any) -> None:
    error = await open_error(f"serial:{tmp_path / 'ttyACM0'},1000000")
    assert error.cause == f"no serial port {tmp_path / 'ttyACM0'}"
    assert error.fix.startswith("check the path: ls /dev/ttyACM* /dev/ttyUSB*")


async def test_serial_port_missing_on_windows(
    monkeypatch: pytest.MonkeyPatch, host: Callable[[HostInfo], None]
) -> None:
    host(WINDOWS)
    fail_serial(
        monkeypatch,
        serial.SerialException("could not open port 'COM7': FileNotFoundError(2, 'x')"),
    )
    error = await open_error("serial:COM7,1000000")
    assert error.cause == "no serial port COM7"
    assert "Device Manager" in error.fix


@pytest.mark.parametrize(
    ("exc", "cause", "fix"),
    [
        (
            serial.SerialException(
                errno.EACCES,
                "could not open port /dev/ttyACM0: [Errno 13] Permission denied: '/dev/ttyACM0'",
            ),
            "permission denied on /dev/ttyACM0",
            "dialout group",
        ),
        (
            serial.SerialException(
                errno.EBUSY,
                "could not open port /dev/ttyACM0: [Errno 16] Device or resource busy",
            ),
            "/dev/ttyACM0 is busy: another program has it open",
            "ModemManager",
        ),
        (
            serial.SerialException(
                "Could not exclusively lock port /dev/ttyACM0: [Errno 11] Resource unavailable"
            ),
            "/dev/ttyACM0 is busy: another program has it open",
            "close serial monitors",
        ),
    ],
)
async def test_serial_failures(
    monkeypatch: pytest.MonkeyPatch, host: Any, exc: Exception, cause: str, fix: str
) -> None:
    fail_serial(monkeypatch, exc)
    error = await open_error("serial:/dev/ttyACM0,1000000")
    assert error.cause == cause
    assert fix in error.fix


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
async def test_serial_not_a_tty_for_real(host: Any) -> None:
    error = await open_error("serial:/dev/null,115200")
    assert error.cause == "/dev/null is not a serial port"


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    if sys.platform == "win32":
        pytest.skip("needs a pty")
    controller_fd, port_fd = os.openpty()
    yield controller_fd, os.ttyname(port_fd)
    os.close(controller_fd)
    os.close(port_fd)


async def test_serial_silent_controller_fails_on_hci_reset(
    pty_pair: tuple[int, str], host: Any
) -> None:
    """Wrong baud rate, wrong firmware: a port that opens and never answers."""
    _, path = pty_pair
    error = await open_error(f"serial:{path},115200", reset_timeout=0.2)
    assert error.cause == f"no answer to HCI Reset within 0.2 s from {path} at 115200 baud"
    assert "baud rate" in error.fix and "hci_uart" in error.fix


async def test_serial_controller_answering_reset_opens(pty_pair: tuple[int, str]) -> None:
    controller_fd, path = pty_pair
    loop = asyncio.get_running_loop()
    received = bytearray()

    def answer() -> None:
        received.extend(os.read(controller_fd, 1024))
        if bytes([0x01, 0x03, 0x0C, 0x00]) in received:
            received.clear()
            # Command Complete: 1 credit, opcode 0x0C03, status 0
            os.write(controller_fd, bytes([0x04, 0x0E, 0x04, 0x01, 0x03, 0x0C, 0x00]))

    loop.add_reader(controller_fd, answer)
    try:
        opened = await open_device(f"serial:{path},1000000", name="vehicle")
        assert opened.transport is not None
        await opened.close()
    finally:
        loop.remove_reader(controller_fd)


def test_bumble_resync_timeout_is_the_same_message() -> None:
    error = explain_open_error(
        "serial:/dev/ttyACM0,resync",
        TransportInitError("the controller did not answer the commands sent to resynchronize"),
        10,
        LINUX,
    )
    assert error.cause == "no answer to HCI Reset from /dev/ttyACM0 at 1000000 baud"


# --- hci-socket ------------------------------------------------------------------------
class FakeLibc:
    def __init__(self, code: int) -> None:
        self.code = code
        outer = self

        class Bind:
            argtypes: Any = None
            restype: Any = None

            def __call__(self, *_args: Any) -> int:
                return -1 if outer.code else 0

        self.bind = Bind()


def fake_hci_socket(monkeypatch: pytest.MonkeyPatch, bind_errno: int) -> None:
    """A kernel with AF_BLUETOOTH whose bind() of the HCI user channel fails."""
    fake_socket_module = SimpleNamespace(
        AF_BLUETOOTH=31,
        SOCK_RAW=socket.SOCK_RAW,
        SOCK_NONBLOCK=getattr(socket, "SOCK_NONBLOCK", 0),
        BTPROTO_HCI=1,
        socket=lambda *_args: SimpleNamespace(fileno=lambda: 99, close=lambda: None),
    )
    libc = FakeLibc(bind_errno)
    fake_ctypes = SimpleNamespace(
        cdll=SimpleNamespace(LoadLibrary=lambda _name: None),
        CDLL=lambda *_args, **_kwargs: libc,
        get_errno=lambda: bind_errno,
        c_int=int,
        c_char=bytes,
        POINTER=lambda _t: object,
        create_string_buffer=bytes,
    )
    monkeypatch.setattr(bumble_hci_socket, "socket", fake_socket_module)
    monkeypatch.setattr(bumble_hci_socket, "ctypes", fake_ctypes)


@pytest.mark.parametrize(
    ("code", "cause", "fix"),
    [
        (errno.ENODEV, "no Bluetooth adapter hci1", "ls /sys/class/bluetooth"),
        (
            errno.EBUSY,
            "hci1 is busy: it is up, or bluetoothd holds it",
            "`sudo hciconfig hci1 down`",
        ),
        (errno.EPERM, "permission denied: the HCI user channel needs CAP_NET_ADMIN", "setcap"),
    ],
)
async def test_hci_socket_bind_failures(
    monkeypatch: pytest.MonkeyPatch, host: Any, code: int, cause: str, fix: str
) -> None:
    fake_hci_socket(monkeypatch, code)
    error = await open_error("hci-socket:1")
    assert error.cause == cause
    assert fix in error.fix


async def test_hci_socket_kernel_module_missing(monkeypatch: pytest.MonkeyPatch, host: Any) -> None:
    def no_family(*_args: Any) -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    fake_hci_socket(monkeypatch, 0)
    monkeypatch.setattr(bumble_hci_socket.socket, "socket", no_family)
    error = await open_error("hci-socket:0")
    assert error.cause == "this kernel has no Bluetooth support (no AF_BLUETOOTH)"


@pytest.mark.skipif(hasattr(socket, "AF_BLUETOOTH"), reason="this Python has AF_BLUETOOTH")
async def test_hci_socket_here_for_real(host: Callable[[HostInfo], None]) -> None:
    error = await open_error("hci-socket:0")
    assert error.cause == "this kernel has no Bluetooth support (no AF_BLUETOOTH)"
    assert "usb:0" in error.fix and "virtual radio" in error.fix
    host(MACOS)
    error = await open_error("hci-socket:0")
    assert error.cause == "hci-socket works on Linux only"


# --- specs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ("bogus:thing", "unknown transport 'bogus'"),
        ("usb:zero", "expected usb:N, usb:VID:PID or usb:VID:PID/SERIAL"),
        ("usb:", "expected usb:N, usb:VID:PID or usb:VID:PID/SERIAL"),
        ("serial:", "expected serial:DEVICE[,BAUD]"),
        ("serial:,115200", "expected serial:DEVICE[,BAUD]"),
        ("hci-socket:first", "expected hci-socket:N"),
    ],
)
async def test_bad_specs(spec: str, cause: str) -> None:
    error = await open_error(spec)
    assert error.cause == cause


@pytest.mark.parametrize(
    "spec", ["usb:0", "usb:12", "usb:0a12:0001", "usb:0A12:0001/ABC", "usb:[driver=rtk]0", "usb:0!"]
)
async def test_good_usb_specs_reach_libusb(
    usb_bus: Callable[..., None], host: Any, spec: str
) -> None:
    usb_bus([])
    error = await open_error(spec)
    assert not error.cause.startswith("expected")


def test_hardware_open_timeout_says_replug() -> None:
    error = explain_open_error("usb:0", TimeoutError(), 10, LINUX)
    assert error.cause == "the usb transport did not open within 10 s"
    assert error.fix.startswith("replug the controller")


def test_unexplained_errors_point_at_debug() -> None:
    error = explain_open_error("usb:0", RuntimeError("boom\nsecond line"), 10, LINUX)
    assert error.cause == "RuntimeError: boom"
    assert "--debug" in error.fix
