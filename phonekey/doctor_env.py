"""What `phonekey doctor` looks at, behind one seam so tests can inject a machine.

`Environment` bundles every probe of the machine: package versions, libusb
and its device list, serial ports, AF_BLUETOOTH, /sys/class/bluetooth,
running processes, the OS adapter through bleak, and opening a transport
spec. None of it needs root; probes that cannot run say why.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# bumble's test for a Bluetooth HCI USB device: class, subclass, protocol
BT_HCI_CLASS = (0xE0, 0x01, 0x01)
# Device classes whose interfaces must be looked at instead (composite devices)
_COMPOSITE_CLASSES = (0x00, 0xEF)


@dataclass(frozen=True)
class UsbDevice:
    bus: int
    address: int
    vid: int
    pid: int
    device_class: int
    bluetooth: bool

    @property
    def ids(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"


@dataclass(frozen=True)
class SerialPort:
    device: str
    description: str
    usb_ids: str | None  # "vvvv:pppp" for USB serial adapters, None for built-in UARTs


@dataclass
class Environment:
    """The machine as the doctor sees it. Every field has a real default."""

    platform: str = sys.platform
    python_version: tuple[int, int, int] = (
        sys.version_info.major,
        sys.version_info.minor,
        sys.version_info.micro,
    )
    version_of: Callable[[str], str | None] = field(default=lambda name: _version_of(name))
    requirements: Callable[[], list[str]] = field(default=lambda: _requirements())
    libusb_version: Callable[[], str] = field(default=lambda: _libusb_version())
    list_usb: Callable[[], list[UsbDevice]] = field(default=lambda: _list_usb())
    serial_ports: Callable[[], list[SerialPort]] = field(default=lambda: _serial_ports())
    has_af_bluetooth: bool = hasattr(socket, "AF_BLUETOOTH")
    sys_bluetooth: Path = Path("/sys/class/bluetooth")
    dev_bus_usb: Path = Path("/dev/bus/usb")
    can_read_write: Callable[[Path], bool] = field(
        default=lambda path: os.access(path, os.R_OK | os.W_OK)
    )
    run: Callable[[list[str]], str | None] = field(default=lambda argv: _run(argv))
    process_running: Callable[[str], bool | None] = field(
        default=lambda name: _process_running(name)
    )
    probe_os_adapter: Callable[[], str] = field(default=lambda: _probe_os_adapter())
    open_spec: Callable[[str, float], None] = field(
        default=lambda spec, timeout: _open_spec(spec, timeout)
    )

    @property
    def linux(self) -> bool:
        return self.platform.startswith("linux")

    @property
    def has_usb_bus(self) -> bool:
        return self.dev_bus_usb.is_dir() if self.linux else True


# --- real probes -------------------------------------------------------------------------
def _version_of(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements() -> list[str]:
    """phonekey's Requires-Dist, or the pyproject.toml next to the sources."""
    try:
        requires = importlib.metadata.requires("phonekey")
    except importlib.metadata.PackageNotFoundError:
        requires = None
    if requires is not None:
        return [req for req in requires if "extra ==" not in req]
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        return []
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    return list(project.get("dependencies", []))


def _libusb_version() -> str:
    import usb1  # type: ignore[import-untyped]
    from bumble.transport.usb import load_libusb

    load_libusb()  # type: ignore[no-untyped-call]
    version = usb1.getVersion()
    return f"{version.major}.{version.minor}.{version.micro}"


def _list_usb() -> list[UsbDevice]:
    """Every USB device libusb sees. Raises what usb1 raises (mapped by the caller)."""
    import usb1
    from bumble.transport.usb import load_libusb

    load_libusb()  # type: ignore[no-untyped-call]
    devices = []
    with usb1.USBContext() as context:
        for device in context.getDeviceIterator(skip_on_error=True):
            with device:
                devices.append(
                    UsbDevice(
                        bus=device.getBusNumber(),
                        address=device.getDeviceAddress(),
                        vid=device.getVendorID(),
                        pid=device.getProductID(),
                        device_class=device.getDeviceClass(),
                        bluetooth=_looks_bluetooth(device),
                    )
                )
    return devices


def _looks_bluetooth(device: object) -> bool:
    """The test bumble's `usb:N` applies: class E0/01/01 on the device or an interface."""
    get = device.__getattribute__
    triple = (get("getDeviceClass")(), get("getDeviceSubClass")(), get("getDeviceProtocol")())
    if triple == BT_HCI_CLASS:
        return True
    if triple[0] not in _COMPOSITE_CLASSES:
        return False
    try:
        for configuration in device:  # type: ignore[attr-defined]
            for interface in configuration:
                for setting in interface:
                    found = (setting.getClass(), setting.getSubClass(), setting.getProtocol())
                    if found == BT_HCI_CLASS:
                        return True
    except Exception:  # noqa: S110 (unreadable descriptors: not a controller we can use)
        pass
    return False


def _serial_ports() -> list[SerialPort]:
    from serial.tools import list_ports  # type: ignore[import-untyped]

    ports = []
    for port in list_ports.comports():
        ids = f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else None
        description = port.description if port.description != "n/a" else ""
        ports.append(SerialPort(port.device, description, ids))
    return ports


def _run(argv: list[str]) -> str | None:
    """stdout of a read-only command, or None if it is missing, fails to start or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def _process_running(name: str) -> bool | None:
    """Whether a process called `name` runs (Linux /proc), None if that cannot be told."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    return True
            except OSError:
                continue
    return False


def _probe_os_adapter() -> str:
    """Name the OS adapter bleak would use; raise what bleak raises if it cannot."""
    if sys.platform.startswith("linux"):
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        async def probe() -> str:
            async with asyncio.timeout(3):
                manager = await get_global_bluez_manager()
            return f"BlueZ adapter {manager.get_default_adapter().rsplit('/', 1)[-1]}"

        return asyncio.run(probe())
    if sys.platform == "darwin":
        import CoreBluetooth  # type: ignore[import-not-found]  # noqa: F401

        return "CoreBluetooth (macOS asks the terminal for Bluetooth permission on first use)"
    if sys.platform == "win32":
        import winrt.windows.devices.bluetooth  # type: ignore[import-not-found]  # noqa: F401

        return "WinRT Bluetooth"
    raise RuntimeError(f"bleak has no backend for {sys.platform}")


def _open_spec(spec: str, timeout: float) -> None:
    """Open `spec` and power its controller on (HCI Reset and set-up), then close it."""
    from ble_stack.transports import open_device

    async def attempt() -> None:
        opened = await open_device(spec, name="phonekey doctor", timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await opened.device.power_on()
        finally:
            await opened.close()

    asyncio.run(attempt())
