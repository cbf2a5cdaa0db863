"""What the phone CLI prints: --json, -v/--debug, the live status on a TTY,
--capture's rules, and the exit codes every --help lists."""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from phone_client.cli_output import StatusLine, outcome_json
from phone_client.outcome import CommandOutcome, Latency
from phonekey.cli import build_parser, main
from protocol import Command, LockState, ResultCode, crypto
from protocol.card import VehicleCard

VIN = "PHNCAR1"
JSON_KEYS = {
    "ok", "result", "command", "vin", "lock_state", "fast_path", "fast_path_refused",
    "credential", "cloud", "key_id", "counter", "att_mtu", "latency_ms", "message", "error",
}  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    card = VehicleCard(VIN, crypto.generate_private_key().public_key()).to_text()
    assert main(["phone", "--home", str(tmp_path), "keygen"]) == 0
    assert main(["phone", "--home", str(tmp_path), "add-vehicle", card]) == 0
    capsys.readouterr()
    return tmp_path


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("bumble").setLevel(logging.NOTSET)


def unlock(home: Path, *extra: str) -> list[str]:
    return ["phone", "--home", str(home), "unlock", "--vin", VIN, *extra]


def test_json_of_an_answer_has_the_documented_shape() -> None:
    outcome = CommandOutcome(
        vin=VIN,
        command=Command.UNLOCK,
        result=ResultCode.OK,
        lock_state=LockState.UNLOCKED,
        counter=7,
        key_id=bytes(range(16)),
        att_mtu=247,
        frames_written=1,
        latency=Latency(scan=0.01, connect=0.002, challenge=0.001, command=0.0005, total=0.0135),
        credential="whitelist",
        fast_path=True,
    )
    data = json.loads(json.dumps(outcome_json(outcome)))
    assert set(data) == JSON_KEYS
    assert data["ok"] is True and data["result"] == "ok" and data["error"] is None
    assert data["lock_state"] == "unlocked" and data["command"] == "unlock"
    assert data["fast_path"] is True and data["credential"] == "whitelist"
    assert data["latency_ms"] == {
        "total": 13.5, "scan": 10.0, "connect": 2.0, "challenge": 1.0, "command": 0.5,
        "cloud_wait": None,
    }  # fmt: skip
    forbidden = outcome_json(CommandOutcome(**{**outcome.__dict__, "result": ResultCode.FORBIDDEN}))
    assert forbidden["ok"] is False and forbidden["result"] == "forbidden"
    assert forbidden["error"]["code"] == 1


def test_json_of_a_failure_is_one_object_with_code_and_reason(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*unlock(home, "--transport", "virtual", "--timeout", "0.2", "--json")])
    out, err = capsys.readouterr()
    assert code == 3
    data = json.loads(out)  # exactly one object on stdout
    assert set(data) == JSON_KEYS and data["ok"] is False and data["result"] == "error"
    assert data["error"]["code"] == 3 and "not found" in data["error"]["reason"]
    assert data["command"] == "unlock" and data["vin"] == VIN
    assert len(err.strip().splitlines()) == 1  # the one-line reason for people stays


def test_capture_without_a_transport_is_a_one_line_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*unlock(home, "--capture", str(home / "x.btsnoop"))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--capture needs --transport" in err and "OS adapter" in err
    assert not (home / "x.btsnoop").exists()


def test_capture_on_a_transport_writes_a_btsnoop_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = home / "phone.btsnoop"
    args = unlock(home, "--transport", "virtual", "--timeout", "0.2", "--capture", str(capture))
    assert main(args) == 3
    assert capture.read_bytes().startswith(b"btsnoop\0")
    bad = home / "missing-dir" / "x.btsnoop"
    assert main([*unlock(home, "--transport", "virtual", "--capture", str(bad))]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write capture file")


def test_debug_adds_a_traceback_and_verbose_only_logs(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import phone_client.cli as phone_cli

    levels: list[tuple[int, int]] = []
    explain = phone_cli._explain

    def spy(exc: Exception) -> tuple[int, str]:  # runs inside the command, as it fails
        levels.append((logging.getLogger().level, logging.getLogger("bumble").level))
        return explain(exc)

    monkeypatch.setattr(phone_cli, "_explain", spy)
    before = logging.getLogger().level
    refused = ["--transport", "tcp-client:127.0.0.1:1"]
    assert main([*unlock(home, *refused)]) == 4
    assert "Traceback" not in capsys.readouterr().err
    assert main([*unlock(home, *refused, "-v")]) == 4
    assert "Traceback" not in capsys.readouterr().err
    assert main(["phone", "--home", str(home), "--debug", "unlock", "--vin", VIN, *refused]) == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: cannot open")
    assert levels[1] == (logging.INFO, logging.WARNING)
    assert levels[2] == (logging.DEBUG, logging.DEBUG)
    assert logging.getLogger().level == before  # put back after each command


def test_live_status_on_a_tty_and_nothing_extra_otherwise(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = unlock(home, "--transport", "virtual", "--timeout", "0.2")
    assert main(args) == 3
    plain = capsys.readouterr()
    assert "\r" not in plain.err and plain.out == ""

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 3
    tty = capsys.readouterr()
    assert f"\rlooking for vehicle {VIN}..." in tty.err and "\rscanning..." in tty.err
    # The status is erased before the same one-line error as without a terminal.
    assert tty.err.endswith("\r\x1b[K" + plain.err)
    assert tty.out == ""
    # --json and the log flags own the terminal: no status then.
    assert main([*args, "--json"]) == 3
    assert "\r" not in capsys.readouterr().err


def test_status_line_rewrites_in_place_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        line = StatusLine(stream)
        line.show("scanning...")
        line.show("connected")
        line.clear()
    assert tty.getvalue() == "\rscanning...\x1b[K\rconnected\x1b[K\r\x1b[K"
    assert pipe.getvalue() == ""
    off = Tty()
    StatusLine(off, enabled=False).show("x")
    assert off.getvalue() == ""


def _parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                child_path = f"{path} {name}".strip()
                yield child_path, child.format_help()
                yield from _parsers(child, child_path)


def test_every_help_lists_its_exit_codes() -> None:
    helps = dict(_parsers(build_parser()))
    assert len(helps) > 30
    for path, text in helps.items():
        assert "exit codes:" in text, path
        assert "  0  " in text, path
    assert "  5  " in helps["vehicle log"] and "  5  " not in helps["vehicle run"]
    assert "  3  timed out, or the vehicle was not found" in helps["phone unlock"]
    assert "  3  " not in helps["vehicle run"]
    for command in ("unlock", "lock", "status"):
        assert "--json" in helps[f"phone {command}"] and "--capture" in helps[f"phone {command}"]
    for path in ("vehicle run", "demo", "phone unlock"):
        assert "--capture" in helps[path] and "-v, --verbose" in helps[path], path
        assert "--debug" in helps[path], path


def test_a_wrong_vehicle_is_explained_as_a_card_to_add_again() -> None:
    from phone_client import cli as phone_cli
    from protocol import WrongVehicle

    code, reason = phone_cli._explain(WrongVehicle("the challenge's vehicle tag is not ..."))
    assert code == 1
    assert "not the one of this phone's card" in reason and "phonekey vehicle show" in reason
