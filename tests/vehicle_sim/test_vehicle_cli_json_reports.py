"""`--json` on `phonekey vehicle show|log|run`, through phonekey.cli.main: their
success shapes are their own (the report; JSON lines), but a failure prints JSON
on stdout too, in the convention of the other vehicle commands (ok false,
error {code, reason}), with the same exit code and the same one-line reason on
stderr as without --json."""

from __future__ import annotations

import argparse
import contextlib
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vehicle_testkit import VIN

from phonekey.cli import build_parser
from protocol import crypto
from protocol.card import VehicleCard
from protocol.types import Role
from vehicle_sim import cli_run
from vehicle_sim.firmware_store import LogEvent, LogKind
from vehicle_sim.flash.bank import BANK_HEADER_SIZE
from vehicle_sim.flash.layout import decode_superblock
from vehicle_sim.flash.records import MAC_LEN, read_record
from vehicle_sim.runtime import VehicleRuntime
from vehicle_sim.state_store import STATE_FILE_NAME, open_store

Cli = Callable[[list[str]], int]
FAILURE_KEYS = {"ok", "command", "state", "error"}
RUN_FAILURE_KEYS = {"event", "ok", "state", "transport", "error"}


def _same_failure(
    vehicle_cli: Cli, argv: list[str], capsys: pytest.CaptureFixture[str], code: int
) -> tuple[str, str]:
    """Run ``argv`` without and with --json: the same exit code and the same one
    stderr line; (stdout without --json, stdout with it)."""
    assert vehicle_cli(argv) == code
    plain = capsys.readouterr()
    assert vehicle_cli([*argv, "--json"]) == code
    out, err = capsys.readouterr()
    assert err == plain.err and err.count("\n") == 1 and "Traceback" not in err
    return plain.out, out


def _failure_object(
    vehicle_cli: Cli, argv: list[str], capsys: pytest.CaptureFixture[str], code: int
) -> dict[str, Any]:
    """A show/log failure: nothing on stdout without --json; with it, one object
    of ok, command, state and error only."""
    plain, out = _same_failure(vehicle_cli, argv, capsys, code)
    assert plain == "" and out.count("\n") == 1
    data: dict[str, Any] = json.loads(out)
    assert set(data) == FAILURE_KEYS and data["ok"] is False and data["command"] == argv[1]
    assert data["error"]["code"] == code and data["error"]["reason"]
    return data


def _tamper(state_dir: Path) -> None:
    """Rewrite the last committed record without the device key (a flipped payload
    byte, its CRC fixed): the image no longer verifies."""
    with open_store(state_dir) as store:
        store.add_key(crypto.generate_private_key().public_key(), Role.OWNER)
        bank, tail = store.journal.bank, store.journal.tail
        geometry = store.journal.geometry
    path = state_dir / STATE_FILE_NAME
    image = bytearray(path.read_bytes())
    at, last = geometry.bank_address(bank) + BANK_HEADER_SIZE, (0, 0)
    while at < geometry.bank_address(bank) + tail:
        record = read_record(memoryview(bytes(image)), at, len(image), mac_len=MAC_LEN)
        assert record is not None
        last, at = (at, record.length), at + record.length
    address, length = last
    image[address + 12] ^= 0x01
    crc_at = address + length - 5
    image[crc_at : crc_at + 4] = struct.pack("<I", zlib.crc32(image[address:crc_at]))
    path.write_bytes(bytes(image))


def _break_the_log_chain(state_dir: Path) -> None:
    """Turn a logged LOCK into an UNLOCK in the flash image: the MAC chain breaks."""
    with open_store(state_dir) as store:
        for kind in (LogKind.BOOT, LogKind.UNLOCK, LogKind.LOCK):
            store.log_event(LogEvent(kind, b"\x07" * 16))
        store.flush_log()
        store.add_key(crypto.generate_private_key().public_key(), Role.OWNER)
    image = state_dir / STATE_FILE_NAME
    data = bytearray(image.read_bytes())
    log_start = decode_superblock(bytes(data), len(data)).log_address
    region = data[log_start:]
    lock_entry = region.index(bytes([LogKind.LOCK, 0, 0, 0, 1, 0, 0, 0]) + b"\x07" * 16)
    region[lock_entry] = LogKind.UNLOCK
    data[log_start:] = region
    image.write_bytes(bytes(data))


# --- show and log -----------------------------------------------------------------------------
def test_show_and_log_json_add_ok_command_state_error_to_their_report(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command, report_keys in (("show", {"vin", "keys", "log"}), ("log", {"entries"})):
        assert vehicle_cli(["vehicle", command, "--state", str(state_dir), "--json"]) == 0
        out, err = capsys.readouterr()
        data = json.loads(out)
        assert err == "" and report_keys <= set(data)
        assert (data["ok"], data["command"], data["error"]) == (True, command, None)
        assert data["state"] == str(state_dir.absolute())


def test_show_and_log_json_on_a_missing_state_directory(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("show", "log"):
        argv = ["vehicle", command, "--state", str(state_dir)]
        data = _failure_object(vehicle_cli, argv, capsys, 4)
        assert "no vehicle in" in data["error"]["reason"]
        assert data["state"] == str(state_dir.absolute())


def test_show_and_log_json_on_a_tampered_flash_image(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tamper(state_dir)
    for command in ("show", "log"):
        argv = ["vehicle", command, "--state", str(state_dir)]
        data = _failure_object(vehicle_cli, argv, capsys, 4)
        assert "refuses to run" in data["error"]["reason"]


def test_log_json_on_a_broken_chain_keeps_the_entries_and_says_it_failed(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _break_the_log_chain(state_dir)
    plain, out = _same_failure(
        vehicle_cli, ["vehicle", "log", "--state", str(state_dir)], capsys, 5
    )
    assert "CHAIN DOES NOT VERIFY" in plain  # the text still prints
    data = json.loads(out)
    assert (data["ok"], data["command"], data["verified"]) == (False, "log", False)
    assert data["error"]["code"] == 5 and data["problem"] in data["error"]["reason"]
    assert data["error"]["reason"].startswith("the event log does not verify")
    # the entries the text lists (every one that still reads), one line each
    assert data["entries"] and data["entries"][0]["kind"] == "boot"
    assert len(data["entries"]) == len(plain.splitlines()) - 1


# --- run ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "reason"),
    [("tcp-client:127.0.0.1:1", "connection refused"), ("nonsense:1", "unknown transport")],
)
def test_run_json_ends_with_a_failed_line_when_the_transport_cannot_be_opened(
    vehicle_cli: Cli,
    card: VehicleCard,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    reason: str,
) -> None:
    argv = ["vehicle", "run", "--state", str(state_dir), "--transport", spec]
    plain, out = _same_failure(vehicle_cli, argv, capsys, 4)
    assert plain == "" and out.count("\n") == 1
    line = json.loads(out)
    assert set(line) == RUN_FAILURE_KEYS and next(iter(line)) == "event"
    assert (line["event"], line["ok"], line["transport"]) == ("failed", False, spec)
    assert line["error"]["code"] == 4 and reason in line["error"]["reason"]
    assert line["state"] == str(state_dir.absolute())


def test_run_json_on_a_missing_state_directory(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["vehicle", "run", "--state", str(state_dir), "--transport", "virtual"]
    _, out = _same_failure(vehicle_cli, argv, capsys, 4)
    line = json.loads(out)
    assert (line["event"], line["ok"], line["error"]["code"]) == ("failed", False, 4)


def test_run_json_ends_with_a_failed_line_after_advertising(
    vehicle_cli: Cli,
    card: VehicleCard,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fatal error once advertising (here: shutting the runtime down fails) ends
    the lines with ``failed`` instead of ``stopped``."""

    @contextlib.contextmanager
    def stop_at_once(stop: Any) -> Iterator[None]:
        stop.set()
        yield

    real_stop = VehicleRuntime.stop

    async def failing_stop(self: VehicleRuntime) -> None:
        await real_stop(self)
        raise RuntimeError("the controller went away")

    monkeypatch.setattr(cli_run, "_stop_on_signals", stop_at_once)
    monkeypatch.setattr(VehicleRuntime, "stop", failing_stop)
    argv = ["vehicle", "run", "--state", str(state_dir), "--transport", "virtual"]
    plain, out = _same_failure(vehicle_cli, argv, capsys, 1)
    assert plain.splitlines() == [f"vehicle {VIN} advertising on virtual"]
    first, last = (json.loads(line) for line in out.splitlines())
    assert first["event"] == "advertising" and "ok" not in first  # success lines as before
    assert set(last) == RUN_FAILURE_KEYS and (last["event"], last["ok"]) == ("failed", False)
    assert last["error"] == {"code": 1, "reason": "RuntimeError: the controller went away"}


# --- help ---------------------------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_each_help_documents_its_json_failure() -> None:
    commands = _subcommands(_subcommands(build_parser())["vehicle"])
    for command, words in {
        "show": ("ok", "command", "state", "error", "EXIT_CODE"),
        "log": ("ok", "error", "EXIT_CODE", "exit 5", "entries"),
        "run": ('"event": "failed"', '"ok": false', "EXIT_CODE", "transport"),
    }.items():
        text = next(a.help for a in commands[command]._actions if "--json" in a.option_strings)
        assert text is not None and all(word in text for word in words), (command, text)
