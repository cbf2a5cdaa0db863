"""The checks of `phonekey doctor`: each one ok, warn or fail, with a fix for the last two.

A check fails only when phonekey itself cannot work (Python or a package is
missing or too old) or when a transport the user named with --transport does
not open. Missing Bluetooth hardware is a warning: the virtual radio works
everywhere.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ble_stack.errors import TransportOpenError
from ble_stack.transport_errors import HostInfo, explain_open_error, explain_os_adapter_error

from .doctor_env import Environment, UsbDevice

Status = Literal["ok", "warn", "fail"]
PACKAGES = ("phonekey", "bumble", "bleak", "cryptography", "construct", "aiohttp")
MIN_PYTHON = (3, 11)
VIRTUAL_USE = "use the virtual radio: `phonekey demo`, or `phonekey radio` and `--transport`"


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    fix: str | None = None
    details: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Findings:
    """What the verdict needs to know beyond the statuses."""

    usb_controllers: list[UsbDevice] = field(default_factory=list)
    usb_serial_ports: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    os_adapter: str | None = None


def run_checks(
    env: Environment, specs: list[str], timeout: float = 5.0
) -> tuple[list[Check], Findings]:
    found = Findings()
    checks = [check_python(env), *check_packages(env), check_virtual(env)]
    checks += check_usb(env, found)
    checks.append(check_serial(env, found))
    if env.linux:
        checks.append(check_adapters(env, found))
    checks.append(check_hci_socket(env, found))
    checks.append(check_os_adapter(env, found))
    checks += [check_spec(env, spec, timeout) for spec in specs]
    return checks, found


def verdict(checks: list[Check], found: Findings) -> str:
    failed = [check.name for check in checks if check.status == "fail"]
    vehicle = [f"usb:{device.ids}" for device in found.usb_controllers]
    vehicle += [
        f"serial:{port},1000000 (if it runs HCI firmware)" for port in found.usb_serial_ports
    ]
    head = f"{len(failed)} failed ({', '.join(failed)}); " if failed else ""
    if not vehicle and not found.adapters and found.os_adapter is None:
        return head + f"no Bluetooth hardware usable here: {VIRTUAL_USE}"
    parts = [f"vehicle can try {', '.join(vehicle)}" if vehicle else "no dongle for the vehicle"]
    phone = found.os_adapter or "no usable OS adapter"
    parts.append(f"phone without --transport: {phone}")
    return head + "; ".join(parts)


# --- versions ------------------------------------------------------------------------------
def check_python(env: Environment) -> Check:
    version = ".".join(map(str, env.python_version))
    need = ".".join(map(str, MIN_PYTHON))
    if env.python_version[:2] >= MIN_PYTHON:
        return Check("python", "ok", f"{version} (needs >= {need})")
    return Check(
        "python", "fail", f"{version} is too old (needs >= {need})", "install Python 3.11+"
    )


def check_packages(env: Environment) -> list[Check]:
    wanted = {_req_name(req): _req_spec(req) for req in env.requirements()}
    checks = []
    for name in PACKAGES:
        spec = wanted.get(name, "")
        version = env.version_of(name)
        label = f"package {name}"
        need = f" (needs {spec})" if spec else ""
        if version is None and name == "phonekey":
            checks.append(
                Check(
                    label, "warn", "not installed; running from a source tree", "pip install -e ."
                )
            )
        elif version is None:
            fix = f"pip install '{name}{spec}' (or reinstall phonekey)"
            checks.append(Check(label, "fail", f"missing{need}", fix))
        elif spec and not satisfies(version, spec):
            status: Status = "fail" if _below_minimum(version, spec) else "warn"
            fix = f"pip install '{name}{spec}'"
            checks.append(Check(label, status, f"{version} does not match {spec}", fix))
        else:
            checks.append(Check(label, "ok", f"{version}{need}"))
    return checks


_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def _req_name(requirement: str) -> str:
    match = _REQ.match(requirement.split(";")[0])
    return match.group(1).lower().replace("_", "-") if match else requirement


def _req_spec(requirement: str) -> str:
    match = _REQ.match(requirement.split(";")[0])
    clauses = match.group(2).replace(" ", "").split(",") if match else []
    # Lowest bound first, as people write it: >=3.1,<3.2
    return ",".join(sorted((c for c in clauses if c), key=lambda c: not c.startswith(">")))


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def _compare(left: tuple[int, ...], right: tuple[int, ...]) -> int:
    width = max(len(left), len(right))
    a, b = left + (0,) * (width - len(left)), right + (0,) * (width - len(right))
    return (a > b) - (a < b)


_OPS = {
    "==": lambda c: c == 0,
    "!=": lambda c: c != 0,
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
}


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets a PEP 440 specifier like `>=3.1,<3.2` (release parts only)."""
    have = _release(version)
    for clause in filter(None, spec.split(",")):
        match = re.match(r"(~=|==|!=|>=|<=|>|<)(.+)", clause)
        if match is None:
            continue
        op, target = match.group(1), _release(match.group(2))
        if op == "~=":
            upper = (*target[:-2], target[-2] + 1) if len(target) > 1 else target
            if _compare(have, target) < 0 or _compare(have, upper) >= 0:
                return False
        elif not _OPS[op](_compare(have, target)):
            return False
    return True


def _below_minimum(version: str, spec: str) -> bool:
    lower = ",".join(c for c in spec.split(",") if c.startswith((">", "==", "~=")))
    return not satisfies(version, lower)


# --- transports ----------------------------------------------------------------------------
def _host(env: Environment) -> HostInfo:
    return HostInfo(env.platform, env.has_usb_bus)


def check_virtual(env: Environment) -> Check:
    try:
        env.open_spec("virtual", 5.0)
    except Exception as error:
        return Check(
            "virtual radio", "fail", f"{type(error).__name__}: {error}", "reinstall bumble"
        )
    return Check("virtual radio", "ok", "a software controller opened and powered on")


def check_usb(env: Environment, found: Findings) -> list[Check]:
    try:
        libusb = env.libusb_version()
        devices = env.list_usb()
    except Exception as error:
        explained = explain_open_error("usb:0", error, 0, _host(env))
        return [Check("usb", "warn", explained.cause, explained.fix)]
    details = [
        f"{device.ids} bus {device.bus:03d} device {device.address:03d}"
        + (" Bluetooth controller (class E0)" if device.bluetooth else "")
        for device in devices
    ]
    controllers = [device for device in devices if device.bluetooth]
    found.usb_controllers = controllers
    if not controllers:
        summary = f"libusb {libusb}: {len(devices)} USB devices, none a Bluetooth controller"
        fix = "plug in a Bluetooth dongle for the vehicle (docs/hardware.md); " + VIRTUAL_USE
        return [Check("usb", "warn", summary, fix, details)]
    ids = ", ".join(f"usb:{device.ids}" for device in controllers)
    checks = [Check("usb", "ok", f"libusb {libusb}: Bluetooth controllers {ids}", None, details)]
    if env.linux:
        checks.append(check_usb_permissions(env, controllers))
    return checks


def check_usb_permissions(env: Environment, controllers: list[UsbDevice]) -> Check:
    denied = []
    for device in controllers:
        node = env.dev_bus_usb / f"{device.bus:03d}" / f"{device.address:03d}"
        if not env.can_read_write(node):
            denied.append((device, node))
    if not denied:
        return Check("usb permissions", "ok", "this user may open every Bluetooth dongle")
    device, node = denied[0]
    vid, pid = device.ids.split(":")
    rule = (
        f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vid}", ATTR{{idProduct}}=="{pid}", '
        'MODE="0660", TAG+="uaccess"'
    )
    return Check(
        "usb permissions",
        "warn",
        f"no read/write access to {', '.join(str(n) for _, n in denied)}",
        f"add to /etc/udev/rules.d/99-phonekey.rules: {rule}; "
        "then `sudo udevadm control --reload` and replug (or run as root)",
        [f"usb:{d.ids} -> {n}" for d, n in denied],
    )


def check_serial(env: Environment, found: Findings) -> Check:
    try:
        ports = env.serial_ports()
    except Exception as error:
        return Check("serial", "warn", f"cannot list serial ports: {error}", "pip install pyserial")
    details = [
        f"{port.device}"
        + (f" usb {port.usb_ids}" if port.usb_ids else " (built-in UART)")
        + (f" {port.description}" if port.description else "")
        for port in ports
    ]
    usb_ports = [port.device for port in ports if port.usb_ids]
    found.usb_serial_ports = usb_ports
    if usb_ports:
        summary = f"USB serial ports {', '.join(usb_ports)} (an H4 controller may be one of them)"
        return Check("serial", "ok", summary, None, details)
    return Check(
        "serial",
        "warn",
        "no USB serial port (built-in UARTs only)" if ports else "no serial ports",
        "only needed for an H4 UART controller (e.g. nRF52 with Zephyr hci_uart): plug it in",
        details,
    )


def check_adapters(env: Environment, found: Findings) -> Check:
    """Linux: kernel Bluetooth adapters, whether they are up, and whether bluetoothd runs."""
    names = (
        sorted(p.name for p in env.sys_bluetooth.iterdir() if ":" not in p.name)
        if env.sys_bluetooth.is_dir()
        else []
    )
    found.adapters = names
    bluetoothd = env.process_running("bluetoothd")
    if bluetoothd is None:
        active = (env.run(["systemctl", "is-active", "bluetooth"]) or "").strip()
        bluetoothd = active == "active" if active else None
    daemon = {True: "bluetoothd running", False: "bluetoothd not running", None: "bluetoothd ?"}
    if not names:
        return Check(
            "adapters",
            "warn",
            f"no kernel Bluetooth adapters (no {env.sys_bluetooth}/hci*); {daemon[bluetoothd]}",
            "a dongle still works through usb:N (libusb needs no kernel Bluetooth); " + VIRTUAL_USE,
        )
    details = [f"{name}: {_adapter_state(env, name)}" for name in names]
    up = [name for name, line in zip(names, details, strict=True) if " UP" in line]
    summary = f"{', '.join(names)}; {daemon[bluetoothd]}"
    if up and bluetoothd:
        summary += f"; bluetoothd holds {', '.join(up)} (the phone side uses it through bleak)"
    first = up[0] if up else names[0]
    hint = (
        f"to hand {first} to the vehicle instead: `sudo hciconfig {first} down` (or "
        f"`sudo btmgmt --index {first[3:]} power off`) and keep bluetoothd off it"
    )
    return Check("adapters", "ok", summary, hint, details)


def _adapter_state(env: Environment, name: str) -> str:
    path = env.sys_bluetooth / name
    ids = _usb_ids_above(path)
    where = f"usb {ids}" if ids else "not USB"
    output = env.run(["hciconfig", name])
    if output is None:
        state = "state unknown (no hciconfig; try `btmgmt info`)"
    elif "UP" in output.split():
        state = "UP"
    elif "DOWN" in output.split():
        state = "DOWN"
    else:
        state = "state unknown"
    return f"{where}, {state}"


def _usb_ids_above(path: Path) -> str | None:
    """Walk from /sys/class/bluetooth/hciN up its device link to the USB device's ids."""
    try:
        current = (path / "device").resolve()
    except OSError:
        return None
    for directory in (current, *current.parents):
        vendor, product = directory / "idVendor", directory / "idProduct"
        if vendor.is_file() and product.is_file():
            return f"{vendor.read_text().strip()}:{product.read_text().strip()}"
    return None


def check_hci_socket(env: Environment, found: Findings) -> Check:
    if not env.linux:
        return Check("hci-socket", "ok", "Linux only; not needed here (use usb:N for a dongle)")
    if not env.has_af_bluetooth:
        return Check(
            "hci-socket",
            "warn",
            "this Python/kernel has no AF_BLUETOOTH: hci-socket cannot work",
            "use usb:N for a dongle (libusb needs no kernel Bluetooth); " + VIRTUAL_USE,
        )
    if not found.adapters:
        return Check("hci-socket", "warn", "AF_BLUETOOTH present, no adapter", "plug in a dongle")
    return Check(
        "hci-socket",
        "ok",
        f"AF_BLUETOOTH present; hci-socket:{found.adapters[0][3:]} needs the adapter down "
        "and root or CAP_NET_ADMIN",
    )


def check_os_adapter(env: Environment, found: Findings) -> Check:
    """The phone's default path: bleak on the OS adapter (BlueZ, CoreBluetooth, WinRT)."""
    try:
        found.os_adapter = env.probe_os_adapter()
    except Exception as error:
        cause, fix = explain_os_adapter_error(error, _host(env))
        return Check("phone OS adapter (bleak)", "warn", cause, fix)
    return Check("phone OS adapter (bleak)", "ok", found.os_adapter)


def check_spec(env: Environment, spec: str, timeout: float) -> Check:
    name = f"--transport {spec}"
    try:
        env.open_spec(spec, timeout)
    except TransportOpenError as error:
        return Check(name, "fail", error.cause, error.fix)
    except TimeoutError:
        return Check(
            name,
            "fail",
            f"opened, but the controller did not finish powering on within {timeout:g} s",
            "replug it; for serial: check the baud rate; run the vehicle with --debug",
        )
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        return Check(
            name, "fail", f"{type(error).__name__}: {first}", "run with --debug for the traceback"
        )
    return Check(name, "ok", "opened, and the controller powered on")
