"""Why a transport would not open, and what to do about it.

The one place that maps what bumble, libusb (usb1), pyserial and the OS raise
while opening a transport to a `TransportOpenError`: a cause and a fix, each
one line, no traceback. The messages depend on the operating system (a busy
dongle is fixed differently on Linux and Windows), so `explain_open_error`
takes a `HostInfo`; tests pass their own.

docs/hardware.md has a troubleshooting table keyed by these causes.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from dataclasses import dataclass

from ble_stack.errors import TransportOpenError

HARDWARE_DOC = "see docs/hardware.md"
RADIO_FIX = "is `phonekey radio` running and listening there?"
VIRTUAL_HINT = "or use the virtual radio: `--transport virtual` or `phonekey radio`"
SPEC_HELP = (
    "use virtual, tcp-client:HOST:PORT, unix:PATH, usb:0, usb:VID:PID, "
    "serial:/dev/ttyACM0,1000000 or hci-socket:0"
)
DEBUG_HINT = "run with --debug for the traceback"


@dataclass(frozen=True)
class HostInfo:
    """What the messages depend on: the OS (`sys.platform`) and whether a USB bus is visible."""

    platform: str
    has_usb_bus: bool

    @property
    def linux(self) -> bool:
        return self.platform.startswith("linux")

    @property
    def windows(self) -> bool:
        return self.platform == "win32"

    @property
    def macos(self) -> bool:
        return self.platform == "darwin"


def current_host() -> HostInfo:
    has_usb_bus = os.path.isdir("/dev/bus/usb") if sys.platform.startswith("linux") else True
    return HostInfo(sys.platform, has_usb_bus)


class ResetTimeout(Exception):
    """The controller behind a freshly opened transport did not answer HCI Reset."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer to HCI Reset within {timeout:g} s")
        self.timeout = timeout


def explain_open_error(
    spec: str, error: BaseException, timeout: float, host: HostInfo | None = None
) -> TransportOpenError:
    """Turn whatever bumble or the OS raised while opening `spec` into a cause and a fix."""
    host = host or current_host()
    scheme, _, rest = spec.partition(":")
    kind = type(error).__name__
    text = str(error)
    explained: tuple[str, str] | None = None
    if isinstance(error, TimeoutError):
        explained = _explain_timeout(scheme, rest, timeout)
    elif kind == "TransportSpecError":
        explained = f"unknown transport {scheme!r}", SPEC_HELP
    elif isinstance(error, ModuleNotFoundError):
        explained = _explain_missing_module(scheme, error.name or text, host)
    elif scheme in ("usb", "pyusb"):
        explained = _explain_usb(scheme, rest, error, host)
    elif scheme == "serial":
        explained = _explain_serial(rest, error, host)
    elif scheme == "hci-socket":
        explained = _explain_hci_socket(rest, error, host)
    elif isinstance(error, ConnectionRefusedError):
        explained = f"connection refused at {rest}", RADIO_FIX
    elif isinstance(error, FileNotFoundError) and scheme in ("unix", "unix-client"):
        explained = f"no socket at {rest}", RADIO_FIX
    elif isinstance(error, socket.gaierror):
        explained = f"cannot resolve host in {rest!r}", "check the host name in the spec"
    elif scheme == "vhci":
        explained = f"cannot open /dev/vhci: {text or kind}", "modprobe hci_vhci, or use virtual"
    elif isinstance(error, PermissionError):
        explained = f"permission denied: {text}", f"run with the needed rights; {HARDWARE_DOC}"
    cause, fix = explained or _unexplained(kind, text)
    return TransportOpenError(spec, cause, fix)


def _unexplained(kind: str, text: str) -> tuple[str, str]:
    first = text.splitlines()[0] if text else ""
    return (f"{kind}: {first}" if first else kind), f"{DEBUG_HINT}; {HARDWARE_DOC}"


def _explain_timeout(scheme: str, rest: str, timeout: float) -> tuple[str, str]:
    if scheme in ("usb", "pyusb", "serial", "hci-socket"):
        return (
            f"the {scheme} transport did not open within {timeout:g} s",
            f"replug the controller and retry; {DEBUG_HINT}",
        )
    return f"no answer within {timeout:g} s", "check the address and that it is reachable"


def _explain_missing_module(scheme: str, name: str, host: HostInfo) -> tuple[str, str]:
    if name in ("usb1", "libusb_package"):
        return (
            f"bumble's usb transport needs the Python package {_PIP_NAMES[name]!r}, "
            "which is missing",
            "pip install libusb1 libusb-package",
        )
    if name in ("serial", "serial_asyncio"):
        return (
            f"bumble's serial transport needs the Python package {_PIP_NAMES[name]!r}, "
            "which is missing",
            "pip install pyserial pyserial-asyncio",
        )
    return (
        f"bumble's {scheme} transport needs the missing module {name!r}",
        f"pip install it; {HARDWARE_DOC}",
    )


_PIP_NAMES = {
    "usb1": "libusb1",
    "libusb_package": "libusb-package",
    "serial": "pyserial",
    "serial_asyncio": "pyserial-asyncio",
}


# --- USB (libusb through usb1) ---------------------------------------------------------
def _explain_usb(
    scheme: str, rest: str, error: BaseException, host: HostInfo
) -> tuple[str, str] | None:
    kind = type(error).__name__
    text = str(error)
    if kind == "NoBackendError":  # pyusb
        return "pyusb finds no libusb backend", "use usb:... (its libusb is bundled) instead"
    if isinstance(error, OSError) and "libusb" in text:
        return "libusb is missing (the libusb-1.0 library could not be loaded)", _libusb_fix(host)
    if kind == "TransportInitError" and "not found" in text:
        return _usb_not_found(rest)
    if kind == "TransportInitError" and "no compatible interface" in text:
        target = rest.rstrip("!")
        return (
            f"USB device {target} has no Bluetooth HCI interface",
            f"check it is a Bluetooth controller; to force its first interface use usb:{target}!",
        )
    if kind == "USBErrorAccess":
        return "permission denied on the USB dongle", _usb_access_fix(host)
    if kind == "USBErrorBusy":
        return _usb_busy(host)
    if kind == "USBErrorNotSupported" and host.windows:
        return "the USB dongle has no WinUSB driver", _ZADIG
    if kind == "USBErrorNoDevice":
        return "the USB dongle went away while opening (unplugged?)", "replug it and retry"
    if kind.startswith("USBError") and not host.has_usb_bus:
        return (
            "libusb sees no USB bus on this machine (no /dev/bus/usb: a container or VM?)",
            f"pass the dongle through to this machine, {VIRTUAL_HINT}",
        )
    if kind.startswith("USBError"):
        return f"libusb failed: {kind}", f"replug the dongle and retry; {DEBUG_HINT}"
    return None


_ZADIG = "install the WinUSB driver for the dongle with Zadig (see docs/hardware.md)"


def _libusb_fix(host: HostInfo) -> str:
    if host.macos:
        return "pip install libusb-package (bundles it), or brew install libusb"
    if host.linux:
        return "pip install libusb-package (bundles it), or install your distribution's libusb-1.0"
    return "pip install libusb-package (bundles it)"


def _usb_not_found(rest: str) -> tuple[str, str]:
    listing = "`phonekey doctor` lists USB devices"
    if rest.isdigit():
        where = "" if rest == "0" else f" at index {rest}"
        return (
            f"no USB Bluetooth controller found{where}",
            f"plug the dongle in; {listing} (usb:N counts only Bluetooth-class devices; "
            "try usb:VID:PID)",
        )
    return f"no USB device {rest}", f"check the hex ids with `lsusb` or {listing}"


def _usb_access_fix(host: HostInfo) -> str:
    if host.windows:
        return _ZADIG
    if host.macos:
        return "macOS may hold the dongle: try another dongle (see docs/hardware.md)"
    return "add a udev rule for the dongle and replug it (see docs/hardware.md), or run as root"


def _usb_busy(host: HostInfo) -> tuple[str, str]:
    if host.windows:
        return "the USB dongle is busy: Windows' Bluetooth driver holds it", _ZADIG
    if host.macos:
        return (
            "the USB dongle is busy: macOS's Bluetooth stack or another program holds it",
            "quit the other program, or use a dongle macOS does not claim (docs/hardware.md)",
        )
    return (
        "the USB dongle is busy: another program or the kernel's Bluetooth stack holds it",
        "stop the other program; or `sudo hciconfig hciX down` and keep bluetoothd off it "
        "(`sudo systemctl stop bluetooth`)",
    )


# --- serial (H4 UART through pyserial) ------------------------------------------------
def _explain_serial(rest: str, error: BaseException, host: HostInfo) -> tuple[str, str] | None:
    parts = rest.split(",")
    path = parts[0]
    baud = next((part for part in parts[1:] if part.isdigit()), "1000000")
    code = getattr(error, "errno", None)
    text = str(error)
    if isinstance(error, ResetTimeout) or "did not answer" in text:
        seconds = f" within {error.timeout:g} s" if isinstance(error, ResetTimeout) else ""
        return (
            f"no answer to HCI Reset{seconds} from {path} at {baud} baud",
            "match the firmware's baud rate (e.g. ,1000000 or ,115200), try ,rtscts, and check "
            "it runs an HCI UART firmware (e.g. Zephyr hci_uart)",
        )
    if code == errno.ENOENT or "No such file" in text or "FileNotFoundError" in text:
        return f"no serial port {path}", _serial_path_fix(host)
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        fix = (
            "add yourself to the dialout group (`sudo usermod -aG dialout $USER`, "
            "then log in again)"
            if host.linux
            else "close other programs using it and check you may open it"
        )
        return f"permission denied on {path}", fix
    if code == errno.EBUSY or "lock" in text or "busy" in text.lower():
        return (
            f"{path} is busy: another program has it open",
            "close serial monitors and other phonekey processes; on Linux also "
            "ModemManager (`sudo systemctl stop ModemManager`)",
        )
    if code == errno.ENOTTY or "configure port" in text:
        return f"{path} is not a serial port", "point serial: at the controller's tty"
    return None


def _serial_path_fix(host: HostInfo) -> str:
    if host.windows:
        return "use the COM port Device Manager shows, e.g. serial:COM3,1000000"
    if host.macos:
        return "check the path: ls /dev/cu.usbmodem* /dev/cu.usbserial*"
    return "check the path: ls /dev/ttyACM* /dev/ttyUSB* (and that the board is plugged in)"


# --- Linux HCI user channel -------------------------------------------------------------
def _explain_hci_socket(rest: str, error: BaseException, host: HostInfo) -> tuple[str, str] | None:
    index = rest or "0"
    code = getattr(error, "errno", None)
    if not host.linux:
        return "hci-socket works on Linux only", f"use usb:0 for a dongle, {VIRTUAL_HINT}"
    if "not supported on this platform" in str(error) or code == errno.EAFNOSUPPORT:
        return (
            "this kernel has no Bluetooth support (no AF_BLUETOOTH)",
            f"use usb:0 (libusb needs no kernel Bluetooth), {VIRTUAL_HINT}",
        )
    if code == errno.ENODEV:
        return (
            f"no Bluetooth adapter hci{index}",
            "list adapters with `hciconfig` or `ls /sys/class/bluetooth`",
        )
    if code in (errno.EBUSY, errno.EALREADY):
        return (
            f"hci{index} is busy: it is up, or bluetoothd holds it",
            f"`sudo hciconfig hci{index} down` (or `sudo btmgmt --index {index} power off`) and "
            "keep bluetoothd off it (`sudo systemctl stop bluetooth`)",
        )
    if code in (errno.EPERM, errno.EACCES):
        return (
            "permission denied: the HCI user channel needs CAP_NET_ADMIN",
            'run as root, or `sudo setcap cap_net_admin+eip "$(readlink -f "$(which python3)")"`',
        )
    return None


# --- the phone's OS adapter (bleak) ----------------------------------------------------
PHONE_TRANSPORT_HINT = "or give the phone --transport (a dongle, or `phonekey radio`)"


def explain_os_adapter_error(error: BaseException, host: HostInfo | None = None) -> tuple[str, str]:
    """Cause and fix when bleak cannot use the operating system's Bluetooth adapter."""
    host = host or current_host()
    kind = type(error).__name__
    text = str(error)
    if host.linux:
        if isinstance(error, FileNotFoundError | ConnectionRefusedError):
            return (
                "BlueZ is not reachable: no D-Bus system bus",
                f"start D-Bus and bluetoothd (`sudo systemctl start bluetooth`), "
                f"{PHONE_TRANSPORT_HINT}",
            )
        if "ServiceUnknown" in text or "org.bluez" in text:
            return (
                "bluetoothd is not running",
                f"`sudo systemctl start bluetooth`, {PHONE_TRANSPORT_HINT}",
            )
    if isinstance(error, TimeoutError):
        return "the OS Bluetooth stack did not answer", f"retry; {PHONE_TRANSPORT_HINT}"
    if "No Bluetooth adapters" in text:
        return (
            "the OS has no Bluetooth adapter",
            f"plug one in or unblock it (`rfkill list`), {PHONE_TRANSPORT_HINT}",
        )
    if "powered" in text.lower() or "turned off" in text.lower():
        return "the OS Bluetooth adapter is off", "turn Bluetooth on (`bluetoothctl power on`)"
    first = text.splitlines()[0] if text else ""
    return (
        f"the OS Bluetooth stack is unusable ({kind}{': ' + first if first else ''})",
        f"{DEBUG_HINT}; {PHONE_TRANSPORT_HINT}",
    )
