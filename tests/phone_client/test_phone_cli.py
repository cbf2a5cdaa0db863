"""`phonekey phone ...` through the real dispatcher, with temporary key stores."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from phone_client import KeyStore
from phonekey.cli import main
from protocol import crypto
from protocol.card import VehicleCard


def card_text(vin: str = "PHNCAR1") -> str:
    return VehicleCard(vin, crypto.generate_private_key().public_key()).to_text()


def test_keygen_prints_the_key_last_in_add_key_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phone", "--home", str(tmp_path), "keygen"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    key = crypto.public_key_from_text(last)  # what `vehicle add-key --key` parses
    assert last == crypto.public_key_to_text(key) == KeyStore(tmp_path).public_key_text()
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_home_works_before_and_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phone", "keygen", "--home", str(tmp_path / "a")]) == 0
    assert main(["phone", "--home", str(tmp_path / "b"), "keygen"]) == 0
    assert (tmp_path / "a" / "key.pem").exists()
    assert (tmp_path / "b" / "key.pem").exists()
    capsys.readouterr()
    assert main(["phone", "--home", str(tmp_path / "a"), "pubkey"]) == 0
    assert capsys.readouterr().out.strip() == KeyStore(tmp_path / "a").public_key_text()


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path)]
    assert main(["phone", *home, "keygen"]) == 0
    first = KeyStore(tmp_path).public_key_text()
    capsys.readouterr()
    assert main(["phone", *home, "keygen"]) == 4
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert KeyStore(tmp_path).public_key_text() == first
    assert main(["phone", *home, "keygen", "--force"]) == 0
    assert KeyStore(tmp_path).public_key_text() != first


def test_add_vehicle_stores_the_card_and_prints_vin_and_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = card_text("PHNCAR1")
    assert main(["phone", "--home", str(tmp_path), "add-vehicle", text]) == 0
    card = VehicleCard.from_text(text)
    out = capsys.readouterr().out
    assert "PHNCAR1" in out and card.vehicle_id.hex() in out
    assert KeyStore(tmp_path).vehicle("PHNCAR1") == card


def test_add_vehicle_rejects_a_bad_card_as_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phone", "--home", str(tmp_path), "add-vehicle", "phonekey-card:1:X"]) == 2
    assert "invalid vehicle card" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["unlock", "lock", "status"])
def test_command_refuses_a_vehicle_without_a_card_before_any_radio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main(["phone", "--home", str(tmp_path), "keygen"]) == 0
    capsys.readouterr()
    # An unopenable transport proves no radio was touched: the card check comes first.
    args = ["phone", "--home", str(tmp_path), command, "--vin", "NXCARD1"]
    assert main([*args, "--transport", "tcp-client:127.0.0.1:1"]) == 4
    err = capsys.readouterr().err
    assert "holds no key for vehicle NXCARD1" in err
    assert "phonekey phone add-vehicle" in err


def test_command_without_a_phone_key_is_a_local_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["phone", "--home", str(tmp_path), "add-vehicle", card_text("PHNCAR1")]) == 0
    assert main(["phone", "--home", str(tmp_path), "unlock", "--vin", "PHNCAR1"]) == 4
    assert "phonekey phone keygen" in capsys.readouterr().err


def test_unopenable_transport_is_a_local_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path)]
    assert main(["phone", *home, "keygen"]) == 0
    assert main(["phone", *home, "add-vehicle", card_text("PHNCAR1")]) == 0
    capsys.readouterr()
    args = ["phone", *home, "unlock", "--vin", "PHNCAR1", "--transport", "tcp-client:127.0.0.1:1"]
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "cannot open BLE transport" in err and "Traceback" not in err


def test_vehicle_not_found_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(tmp_path)]
    assert main(["phone", *home, "keygen"]) == 0
    assert main(["phone", *home, "add-vehicle", card_text("PHNCAR1")]) == 0
    capsys.readouterr()
    args = ["phone", *home, "unlock", "--vin", "PHNCAR1", "--transport", "virtual"]
    assert main([*args, "--timeout", "0.2"]) == 3
    err = capsys.readouterr().err
    assert "vehicle PHNCAR1 not found" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phone", "--home", str(tmp_path), "--debug", "status", "--vin", "X1"]) == 4
    assert "Traceback" in capsys.readouterr().err


def test_invalid_vin_and_mtu_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as bad_vin:
        main(["phone", "--home", str(tmp_path), "unlock", "--vin", "IOQ"])
    assert bad_vin.value.code == 2
    with pytest.raises(SystemExit) as bad_mtu:
        main(["phone", "--home", str(tmp_path), "unlock", "--vin", "V1", "--mtu", "22"])
    assert bad_mtu.value.code == 2


def test_os_adapter_failure_names_cause_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --transport the phone uses the OS adapter through bleak; when the
    OS stack is unusable (here: BlueZ's D-Bus missing, as bleak raises it on
    Linux), the phone says why and what to do, in one line, exit 4."""
    from bleak import BleakScanner

    from ble_stack import transport_errors

    async def no_dbus(self: BleakScanner) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(BleakScanner, "start", no_dbus)
    linux = transport_errors.HostInfo(platform="linux", has_usb_bus=False)
    monkeypatch.setattr(transport_errors, "current_host", lambda: linux)
    home = ["--home", str(tmp_path)]
    assert main(["phone", *home, "keygen"]) == 0
    assert main(["phone", *home, "add-vehicle", card_text("PHNCAR1")]) == 0
    capsys.readouterr()
    assert main(["phone", *home, "unlock", "--vin", "PHNCAR1", "--timeout", "2"]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "BlueZ is not reachable" in err and "--transport" in err
