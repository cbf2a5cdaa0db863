"""`phonekey phone scan`: the live status of unlock on a TTY (nothing extra when
piped or with --json), and --json's one object, also when nothing is heard or the
scan cannot run. A scan that hears a vehicle: tests/e2e/test_cli_json.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from phonekey.cli import main
from protocol import crypto
from protocol.card import VehicleCard

VIN = "PHNCAR1"
SCAN_KEYS = {"ok", "command", "vehicles", "error"}


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    card = VehicleCard(VIN, crypto.generate_private_key().public_key()).to_text()
    assert main(["phone", "--home", str(tmp_path), "keygen"]) == 0
    assert main(["phone", "--home", str(tmp_path), "add-vehicle", card]) == 0
    capsys.readouterr()
    return tmp_path


def scan(home: Path, *extra: str) -> list[str]:
    return ["phone", "--home", str(home), "scan", *extra]


def test_scan_shows_the_live_status_on_a_tty_only(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = scan(home, "--transport", "virtual", "--timeout", "0.2")
    assert main(args) == 3
    plain = capsys.readouterr()
    assert "\r" not in plain.err and plain.out == ""
    assert plain.err == "no phonekey vehicle heard within 0.2 s\n"

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 3
    tty = capsys.readouterr()
    # The stages unlock shows, from the same status line and observed scanner.
    assert "\ropening virtual...\x1b[K" in tty.err and "\rscanning...\x1b[K" in tty.err
    assert tty.err.endswith("\r\x1b[K" + plain.err)  # erased before the result
    assert tty.out == ""
    for quiet in ("--json", "-v", "--debug"):
        assert main([*args, quiet]) == 3
        assert "\r" not in capsys.readouterr().err, quiet


def test_scan_json_when_nothing_is_heard(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(scan(home, "--transport", "virtual", "--timeout", "0.2", "--json")) == 3
    out, err = capsys.readouterr()
    data = json.loads(out)  # one object, nothing else on stdout
    assert set(data) == SCAN_KEYS and data["command"] == "scan"
    assert data["ok"] is False and data["vehicles"] == []
    assert data["error"] == {"code": 3, "reason": "no phonekey vehicle heard within 0.2 s"}
    assert err == "no phonekey vehicle heard within 0.2 s\n"  # the line for people stays


def test_scan_json_when_the_scan_cannot_run(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = scan(home, "--transport", "tcp-client:127.0.0.1:1", "--timeout", "0.2")
    assert main(args) == 4
    plain_err = capsys.readouterr().err
    assert main([*args, "--json"]) == 4
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert set(data) == SCAN_KEYS and data["ok"] is False and data["vehicles"] is None
    assert data["error"]["code"] == 4 and "cannot open" in data["error"]["reason"]
    assert err == plain_err and err.count("\n") == 1


def test_scan_help_lists_the_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["phone", "scan", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--json" in text and "--transport" in text
    for key in (*SCAN_KEYS, "address", "rssi", "tag", "vin"):
        assert key in text, key
