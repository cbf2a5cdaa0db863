"""`phonekey doctor`: here for real (no Bluetooth at all), and on injected machines."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason

from ble_stack.errors import TransportOpenError
from phonekey.cli import main
from phonekey.doctor import run_doctor
from phonekey.doctor_checks import satisfies
from phonekey.doctor_env import Environment, SerialPort, UsbDevice

REQUIREMENTS = [
    "bleak<3.2,>=3.1",
    "bumble==0.0.236",
    "cryptography>=44",
    "construct<2.11,>=2.10",
    "aiohttp<4,>=3.9",
]
VERSIONS = {
    "phonekey": "0.1.0",
    "bumble": "0.0.236",
    "bleak": "3.1.0",
    "cryptography": "44.0.1",
    "construct": "2.10.70",
    "aiohttp": "3.9.5",
}
DONGLE = UsbDevice(bus=1, address=4, vid=0x0A12, pid=0x0001, device_class=0xE0, bluetooth=True)
HUB = UsbDevice(bus=1, address=1, vid=0x1D6B, pid=0x0002, device_class=0x09, bluetooth=False)


def no_adapter() -> str:
    raise FileNotFoundError(errno.ENOENT, "No such file or directory")


def opens(_spec: str, _timeout: float) -> None:
    return None


@pytest.fixture
def bare(tmp_path: Path) -> Environment:
    """A Linux machine with the right packages and no Bluetooth hardware at all."""
    (tmp_path / "dev-bus-usb").mkdir()
    return Environment(
        platform="linux",
        python_version=(3, 11, 7),
        version_of=VERSIONS.get,
        requirements=lambda: REQUIREMENTS,
        libusb_version=lambda: "1.0.26",
        list_usb=lambda: [HUB],
        serial_ports=lambda: [],
        has_af_bluetooth=False,
        sys_bluetooth=tmp_path / "no-sys-class-bluetooth",
        dev_bus_usb=tmp_path / "dev-bus-usb",
        can_read_write=lambda _path: True,
        run=lambda _argv: None,
        process_running=lambda _name: False,
        probe_os_adapter=no_adapter,
        open_spec=opens,
    )


def doctor(env: Environment, *specs: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = run_doctor(specs=list(specs), as_json=True, env=env, out=out)
    report = json.loads(out.getvalue())
    assert report["exit_code"] == code
    return code, report


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in report["checks"] if c["name"] == name]
    assert len(matches) == 1, [c["name"] for c in report["checks"]]
    found: dict[str, Any] = matches[0]
    return found


def assert_shape(report: dict[str, Any]) -> None:
    assert set(report) == {"ok", "exit_code", "verdict", "checks"}
    for item in report["checks"]:
        assert set(item) == {"name", "status", "summary", "fix", "details"}
        assert item["status"] in ("ok", "warn", "fail")
        assert item["summary"] and "\n" not in item["summary"]
        if item["status"] != "ok":
            assert item["fix"], item


# --- here, for real ----------------------------------------------------------------------
NO_BLUETOOTH_HERE = not (
    os.path.isdir("/dev/bus/usb")
    or os.path.isdir("/sys/class/bluetooth")
    or hasattr(socket, "AF_BLUETOOTH")
)


def test_doctor_runs_cleanly_here() -> None:
    code, report = doctor(Environment())
    assert_shape(report)
    assert code == 0 and report["ok"] is True
    assert check(report, "python")["status"] == "ok"
    for name in ("phonekey", "bumble", "bleak", "cryptography", "construct", "aiohttp"):
        assert check(report, f"package {name}")["status"] == "ok"
    assert check(report, "virtual radio")["status"] == "ok"


@pytest.mark.skipif(not NO_BLUETOOTH_HERE, reason="this machine has some Bluetooth support")
def test_doctor_says_honestly_there_is_no_bluetooth_here() -> None:
    _, report = doctor(Environment())
    assert report["verdict"].startswith("no Bluetooth hardware usable here: use the virtual radio")
    assert check(report, "usb")["status"] == "warn"
    assert check(report, "hci-socket")["summary"].startswith(
        "this Python/kernel has no AF_BLUETOOTH"
    )
    assert check(report, "phone OS adapter (bleak)")["status"] == "warn"


def test_cli_human_output_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok    python")
    assert lines[-1].startswith("verdict: ")
    assert main(["doctor", "--json", "--transport", "bogus:x"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = check(report, "--transport bogus:x")
    assert failed["status"] == "fail" and failed["summary"] == "unknown transport 'bogus'"
    assert report["verdict"].startswith("1 failed (--transport bogus:x)")


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["doctor", "--help"], ["vehicle", "run", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "exit codes:\n  0  " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["vehicle", "log", "--help"])
    assert "  5  `vehicle log`" in capsys.readouterr().out


# --- injected machines ------------------------------------------------------------------
def test_bare_machine_warns_but_passes(bare: Environment) -> None:
    code, report = doctor(bare)
    assert_shape(report)
    assert code == 0
    usb = check(report, "usb")
    assert usb["status"] == "warn"
    assert usb["summary"] == "libusb 1.0.26: 1 USB devices, none a Bluetooth controller"
    assert "plug in a Bluetooth dongle" in usb["fix"]
    assert check(report, "adapters")["status"] == "warn"
    assert report["verdict"].startswith("no Bluetooth hardware usable here")


def test_dongle_without_permission_gets_a_udev_rule(bare: Environment) -> None:
    env = replace(bare, list_usb=lambda: [HUB, DONGLE], can_read_write=lambda _path: False)
    code, report = doctor(env)
    assert code == 0
    usb = check(report, "usb")
    assert usb["status"] == "ok"
    assert usb["summary"] == "libusb 1.0.26: Bluetooth controllers usb:0a12:0001"
    assert "0a12:0001 bus 001 device 004 Bluetooth controller (class E0)" in usb["details"]
    permissions = check(report, "usb permissions")
    assert permissions["status"] == "warn"
    assert permissions["summary"].endswith("dev-bus-usb/001/004")
    assert 'ATTR{idVendor}=="0a12", ATTR{idProduct}=="0001"' in permissions["fix"]
    assert "udevadm control --reload" in permissions["fix"]
    assert report["verdict"].startswith("vehicle can try usb:0a12:0001")


def test_dongle_with_permission(bare: Environment) -> None:
    env = replace(bare, list_usb=lambda: [DONGLE])
    _, report = doctor(env)
    assert check(report, "usb permissions")["status"] == "ok"


def test_libusb_missing(bare: Environment) -> None:
    def missing() -> str:
        raise OSError(errno.ENOENT, "cannot find a suitable libusb-1.0", ["libusb-1.0.so"])

    _, report = doctor(replace(bare, libusb_version=missing))
    usb = check(report, "usb")
    assert usb["status"] == "warn"
    assert usb["summary"] == "libusb is missing (the libusb-1.0 library could not be loaded)"
    assert usb["fix"].startswith("pip install libusb-package")


def test_no_usb_bus(bare: Environment, tmp_path: Path) -> None:
    import usb1

    def fails() -> list[UsbDevice]:
        raise usb1.USBErrorOther(usb1.ERROR_OTHER)

    env = replace(bare, list_usb=fails, dev_bus_usb=tmp_path / "absent")
    usb = check(doctor(env)[1], "usb")
    assert usb["summary"].startswith("libusb sees no USB bus on this machine")


def fake_sys_class_bluetooth(root: Path) -> Path:
    """/sys/class/bluetooth/hci0 -> a USB interface below a device 0a12:0001."""
    device = root / "devices" / "usb1" / "1-2"
    interface = device / "1-2:1.0"
    interface.mkdir(parents=True)
    (device / "idVendor").write_text("0a12\n")
    (device / "idProduct").write_text("0001\n")
    adapter = root / "class" / "bluetooth" / "hci0"
    adapter.mkdir(parents=True)
    (adapter / "device").symlink_to(interface)
    (root / "class" / "bluetooth" / "hci0:12").mkdir()  # a connection entry, not an adapter
    return root / "class" / "bluetooth"


HCICONFIG_UP = "hci0:\tType: Primary  Bus: USB\n\tUP RUNNING \n\tRX bytes:1 acl:0\n"


def test_bluetoothd_holding_an_adapter(bare: Environment, tmp_path: Path) -> None:
    env = replace(
        bare,
        sys_bluetooth=fake_sys_class_bluetooth(tmp_path / "sys"),
        run=lambda argv: HCICONFIG_UP if argv[0] == "hciconfig" else None,
        process_running=lambda name: name == "bluetoothd",
        has_af_bluetooth=True,
        probe_os_adapter=lambda: "BlueZ adapter hci0",
    )
    code, report = doctor(env)
    assert code == 0
    adapters = check(report, "adapters")
    assert adapters["status"] == "ok"
    assert adapters["summary"] == (
        "hci0; bluetoothd running; bluetoothd holds hci0 (the phone side uses it through bleak)"
    )
    assert adapters["details"] == ["hci0: usb 0a12:0001, UP"]
    assert "`sudo hciconfig hci0 down`" in adapters["fix"]
    assert check(report, "hci-socket")["status"] == "ok"
    assert check(report, "phone OS adapter (bleak)") == {
        "name": "phone OS adapter (bleak)",
        "status": "ok",
        "summary": "BlueZ adapter hci0",
        "fix": None,
        "details": [],
    }
    assert "phone without --transport: BlueZ adapter hci0" in report["verdict"]


def test_bluetoothd_state_from_systemctl_when_proc_is_unreadable(
    bare: Environment, tmp_path: Path
) -> None:
    env = replace(
        bare,
        process_running=lambda _name: None,
        run=lambda argv: "inactive\n" if argv[0] == "systemctl" else None,
    )
    adapters = check(doctor(env)[1], "adapters")
    assert adapters["summary"].endswith("bluetoothd not running")


def test_bleak_without_adapter(bare: Environment) -> None:
    def no_adapters() -> str:
        raise BleakBluetoothNotAvailableError(
            "No Bluetooth adapters found.", BleakBluetoothNotAvailableReason.NO_BLUETOOTH
        )

    bleak = check(
        doctor(replace(bare, probe_os_adapter=no_adapters))[1], "phone OS adapter (bleak)"
    )
    assert bleak["status"] == "warn"
    assert bleak["summary"] == "the OS has no Bluetooth adapter"
    assert "--transport" in bleak["fix"]


def test_bleak_without_dbus(bare: Environment) -> None:
    bleak = check(doctor(bare)[1], "phone OS adapter (bleak)")
    assert bleak["summary"] == "BlueZ is not reachable: no D-Bus system bus"
    assert "systemctl start bluetooth" in bleak["fix"]


@pytest.mark.parametrize(
    ("name", "version", "status", "fix"),
    [
        ("construct", None, "fail", "pip install 'construct>=2.10,<2.11' (or reinstall phonekey)"),
        ("bleak", "3.0.1", "fail", "pip install 'bleak>=3.1,<3.2'"),
        ("bleak", "3.2.0", "warn", "pip install 'bleak>=3.1,<3.2'"),
        ("bumble", "0.0.235", "fail", "pip install 'bumble==0.0.236'"),
        ("phonekey", None, "warn", "pip install -e ."),
    ],
)
def test_package_versions(
    bare: Environment, name: str, version: str | None, status: str, fix: str
) -> None:
    versions = {**VERSIONS, name: version}
    code, report = doctor(replace(bare, version_of=versions.get))
    item = check(report, f"package {name}")
    assert item["status"] == status
    assert item["fix"] == fix
    assert code == (1 if status == "fail" else 0)
    if status == "fail":
        assert report["verdict"].startswith(f"1 failed (package {name})")


def test_old_python_fails(bare: Environment) -> None:
    code, report = doctor(replace(bare, python_version=(3, 10, 12)))
    assert code == 1
    assert check(report, "python")["summary"] == "3.10.12 is too old (needs >= 3.11)"


def test_usb_serial_port_is_a_candidate(bare: Environment) -> None:
    ports = [
        SerialPort("/dev/ttyS0", "", None),
        SerialPort("/dev/ttyACM0", "nRF52 Connect", "2fe3:0100"),
    ]
    _, report = doctor(replace(bare, serial_ports=lambda: ports))
    serial = check(report, "serial")
    assert serial["status"] == "ok"
    assert serial["details"] == [
        "/dev/ttyS0 (built-in UART)",
        "/dev/ttyACM0 usb 2fe3:0100 nRF52 Connect",
    ]
    assert "serial:/dev/ttyACM0,1000000" in report["verdict"]


def test_macos_has_no_adapter_check_and_no_hci_socket(bare: Environment) -> None:
    _, report = doctor(replace(bare, platform="darwin"))
    assert "adapters" not in {c["name"] for c in report["checks"]}
    hci = check(report, "hci-socket")
    assert hci["status"] == "ok" and hci["summary"].startswith("Linux only")


def test_named_transports_fail_with_the_transport_message(bare: Environment) -> None:
    def open_spec(spec: str, timeout: float) -> None:
        if spec == "usb:0":
            raise TransportOpenError(spec, "permission denied on the USB dongle", "udev rule")
        if spec == "serial:/dev/ttyACM0":
            raise TimeoutError

    code, report = doctor(
        replace(bare, open_spec=open_spec), "usb:0", "serial:/dev/ttyACM0", "virtual"
    )
    assert code == 1
    usb = check(report, "--transport usb:0")
    assert (usb["status"], usb["summary"], usb["fix"]) == (
        "fail",
        "permission denied on the USB dongle",
        "udev rule",
    )
    serial = check(report, "--transport serial:/dev/ttyACM0")
    assert serial["summary"] == "opened, but the controller did not finish powering on within 5 s"
    assert check(report, "--transport virtual")["status"] == "ok"


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("3.1.0", ">=3.1,<3.2", True),
        ("3.2", ">=3.1,<3.2", False),
        ("3.0.9", ">=3.1", False),
        ("0.0.236", "==0.0.236", True),
        ("44.0.1", ">=44", True),
        ("2.10.70", "~=2.10", True),
        ("3.0", "~=2.10", False),
        ("1.2.3rc1", ">=1.2", True),
    ],
)
def test_version_specifiers(version: str, spec: str, ok: bool) -> None:
    assert satisfies(version, spec) is ok
