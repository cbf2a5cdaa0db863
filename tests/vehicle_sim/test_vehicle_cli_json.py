"""`--json` on `phonekey vehicle init|add-key|provision|add-card|tap-card|remove-key|
factory-reset`, through phonekey.cli.main: one JSON object on stdout whose ids are
the ones `vehicle show --json` reports afterwards, on a stopped vehicle's state and
through a running vehicle's console; a failure prints the same keys with
``error: {code, reason}``, the same exit code and the same stderr line as without
--json."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_vehicle_control import running_vehicle  # noqa: F401  (the running-vehicle rig)
from vehicle_testkit import VIN

from phonekey.cli import build_parser
from protocol import crypto
from protocol.card import VehicleCard
from protocol.credentials import revocation_id
from vehicle_sim.keycard import card_id, create_card
from vehicle_sim.state_store import open_store

Cli = Callable[[list[str]], int]

# The documented shapes (README, "Seeing what happened"; each command's --help).
COMMON = {"ok", "command", "state", "error"}
KEYS = {
    "init": COMMON | {"vin", "vehicle_id", "card", "issuers"},
    "add-key": COMMON | {"key_id", "role", "previous_role", "changed", "key_count", "live"},
    "provision": COMMON | {"vin", "issuer_id", "added", "issuers", "card"},
    "add-card": COMMON | {"card_id", "card_file", "created", "added", "live"},
    "tap-card": COMMON | {"card_id", "action", "lock_state", "was", "pairing_window_s"},
    "remove-key": COMMON | {"key_id", "role", "live"},
    "factory-reset": COMMON | {"card_id", "key_count", "live"},
}


def _json_of(capsys: pytest.CaptureFixture[str], command: str) -> dict[str, Any]:
    """The one object on stdout (json.loads refuses anything more), checked for
    its command's keys; nothing on stderr."""
    out, err = capsys.readouterr()
    data: dict[str, Any] = json.loads(out)
    assert set(data) == KEYS[command] and data["command"] == command
    assert data["ok"] is True and data["error"] is None and err == ""
    return data


def _show(vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert vehicle_cli(["vehicle", "show", "--state", str(state_dir), "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def _key() -> tuple[str, str]:
    """A public key as the CLI takes it, and its key id in hex."""
    key = crypto.generate_private_key().public_key()
    return crypto.public_key_to_text(key), crypto.key_id(key).hex()


def test_init_json_names_the_vehicle_show_reports(
    vehicle_cli: Cli, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer, issuer_id = _key()
    argv = ["vehicle", "init", "--vin", VIN.lower(), "--state", str(state_dir)]
    assert vehicle_cli([*argv, "--issuer", issuer, "--json"]) == 0
    data = _json_of(capsys, "init")
    assert data["state"] == str(state_dir.absolute()) and data["vin"] == VIN
    assert data["issuers"] == [issuer_id]
    card = VehicleCard.from_text(data["card"])
    assert card.vin == VIN and card.vehicle_id.hex() == data["vehicle_id"]

    report = _show(vehicle_cli, state_dir, capsys)
    assert report["vehicle_id"] == data["vehicle_id"] and report["card"] == data["card"]
    assert report["issuers"] == data["issuers"]
    # The identity key stays in its file: nothing of it in the object.
    with open_store(state_dir, read_only=True) as store:
        secret = crypto.private_key_to_pem(store.identity.private_key).decode()
    assert secret.splitlines()[1] not in json.dumps(data)


def test_add_key_json_on_the_stopped_state(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, key_id = _key()
    add = ["vehicle", "add-key", "--state", str(state_dir), "--key", key, "--json"]
    assert vehicle_cli([*add, "--role", "owner"]) == 0
    data = _json_of(capsys, "add-key")
    assert (data["key_id"], data["role"], data["previous_role"]) == (key_id, "owner", None)
    assert data["changed"] is True and data["key_count"] == 1 and data["live"] is False
    assert [(k["key_id"], k["role"]) for k in _show(vehicle_cli, state_dir, capsys)["keys"]] == [
        (key_id, "owner")
    ]

    assert vehicle_cli([*add, "--role", "guest"]) == 0
    data = _json_of(capsys, "add-key")
    assert (data["role"], data["previous_role"], data["changed"]) == ("guest", "owner", True)
    assert vehicle_cli([*add, "--role", "guest"]) == 0
    data = _json_of(capsys, "add-key")
    assert (data["previous_role"], data["changed"], data["key_count"]) == ("guest", False, 1)
    assert [k["role"] for k in _show(vehicle_cli, state_dir, capsys)["keys"]] == ["guest"]


def test_provision_json_and_show_agree(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer, issuer_id = _key()
    argv = ["vehicle", "provision", "--state", str(state_dir), "--issuer", issuer, "--json"]
    assert vehicle_cli(argv) == 0
    data = _json_of(capsys, "provision")
    assert (data["vin"], data["issuer_id"], data["added"]) == (VIN, issuer_id, True)
    report = _show(vehicle_cli, state_dir, capsys)
    assert data["issuers"] == report["issuers"] == [issuer_id]
    assert data["card"] == report["card"]
    assert VehicleCard.from_text(data["card"]).issuer == crypto.public_key_from_text(issuer)
    assert vehicle_cli(argv) == 0
    assert _json_of(capsys, "provision")["added"] is False


def test_card_commands_json_on_the_stopped_state(
    vehicle_cli: Cli,
    card: VehicleCard,
    state_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = ["--state", str(state_dir)]
    card_file = tmp_path / "card.pem"
    add_card = ["vehicle", "add-card", *state, "--card", str(card_file), "--json"]
    assert vehicle_cli(add_card) == 0
    data = _json_of(capsys, "add-card")
    made = card_id(crypto.private_key_from_pem(card_file.read_bytes())).hex()
    assert (data["card_id"], data["card_file"]) == (made, str(card_file.absolute()))
    assert (data["created"], data["added"], data["live"]) == (True, True, False)
    assert _show(vehicle_cli, state_dir, capsys)["keycards"] == [made]
    # The card file is a private key: the object names it, never holds it.
    assert card_file.read_text().splitlines()[1] not in json.dumps(data)
    assert vehicle_cli(add_card) == 0
    data = _json_of(capsys, "add-card")
    assert (data["created"], data["added"]) == (False, False)

    lost, lost_id = _key()
    kept, kept_id = _key()
    for key in (lost, kept):
        assert vehicle_cli(["vehicle", "add-key", *state, "--key", key, "--role", "owner"]) == 0
    capsys.readouterr()
    remove = ["vehicle", "remove-key", *state, "--key-id", lost_id.upper(), "--card"]
    assert vehicle_cli([*remove, str(card_file), "--json"]) == 0
    data = _json_of(capsys, "remove-key")
    assert (data["key_id"], data["role"], data["live"]) == (lost_id, "owner", False)
    assert [k["key_id"] for k in _show(vehicle_cli, state_dir, capsys)["keys"]] == [kept_id]

    reset = ["vehicle", "factory-reset", *state, "--card", str(card_file), "--json"]
    assert vehicle_cli(reset) == 0
    data = _json_of(capsys, "factory-reset")
    assert (data["card_id"], data["key_count"], data["live"]) == (made, 0, False)
    assert _show(vehicle_cli, state_dir, capsys)["keys"] == []


def _fails_alike(
    vehicle_cli: Cli, argv: list[str], capsys: pytest.CaptureFixture[str], code: int
) -> dict[str, Any]:
    """Run ``argv`` with and without --json: the same exit code and stderr line;
    with it, one object on stdout whose error carries that code."""
    assert vehicle_cli(argv) == code
    plain = capsys.readouterr()
    assert vehicle_cli([*argv, "--json"]) == code
    out, err = capsys.readouterr()
    assert err == plain.err and err.count("\n") == 1 and plain.out == ""
    data: dict[str, Any] = json.loads(out)
    command = argv[1]
    assert set(data) == KEYS[command] and data["command"] == command and data["ok"] is False
    assert data["error"]["code"] == code and data["error"]["reason"] in err
    assert all(data[key] is None for key in KEYS[command] - COMMON)
    return data


def test_failures_with_json(
    vehicle_cli: Cli, card: VehicleCard, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state", str(state_dir)]
    key, key_id = _key()
    card_file = state_dir.parent / "card.pem"
    create_card(card_file)
    _fails_alike(vehicle_cli, ["vehicle", "init", "--vin", "BAD-VIN", *state], capsys, 2)
    data = _fails_alike(vehicle_cli, ["vehicle", "init", "--vin", VIN, *state], capsys, 4)
    assert "already holds a vehicle" in data["error"]["reason"]
    assert data["state"] == str(state_dir.absolute())
    _fails_alike(vehicle_cli, ["vehicle", "provision", *state, "--issuer", "p256:zz"], capsys, 2)
    remove = ["vehicle", "remove-key", *state, "--key-id", key_id, "--card", str(card_file)]
    _fails_alike(vehicle_cli, remove, capsys, 1)  # a card the vehicle does not know
    _fails_alike(vehicle_cli, ["vehicle", "tap-card", *state, "--card", str(card_file)], capsys, 4)
    missing = ["vehicle", "add-card", *state, "--card", str(card_file), "--with-card", "/nope"]
    _fails_alike(vehicle_cli, missing, capsys, 1)
    _fails_alike(vehicle_cli, ["vehicle", "factory-reset", *state, "--card", "/nope"], capsys, 1)

    with open_store(state_dir) as store:
        store.apply_revocations(1, (revocation_id(card.vehicle_id, bytes.fromhex(key_id)),))
    add = ["vehicle", "add-key", *state, "--key", key, "--role", "owner"]
    data = _fails_alike(vehicle_cli, add, capsys, 1)
    assert "revocation list" in data["error"]["reason"]
    assert _show(vehicle_cli, state_dir, capsys)["keys"] == []


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_each_help_documents_its_json_keys() -> None:
    commands = _subcommands(_subcommands(build_parser())["vehicle"])
    for command, keys in KEYS.items():
        assert "--json" in commands[command].format_help(), command
        text = next(a.help for a in commands[command]._actions if "--json" in a.option_strings)
        assert text is not None and all(key in text for key in keys), (command, text)


# --- through a running vehicle's console ---------------------------------------------------
async def cli(vehicle_cli: Cli, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command in a thread (it blocks on the socket this loop serves); its stdout."""
    assert await asyncio.to_thread(vehicle_cli, list(argv)) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert err == ""
    return out


async def test_live_commands_json_through_the_console(
    running_vehicle: Path,  # noqa: F811
    vehicle_cli: Cli,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = ["--state", str(running_vehicle)]
    key, key_id = _key()

    async def run(command: str, *argv: str) -> dict[str, Any]:
        out = await cli(vehicle_cli, capsys, "vehicle", command, *state, *argv, "--json")
        data: dict[str, Any] = json.loads(out)
        assert set(data) == KEYS[command] and data["ok"] is True and data["error"] is None
        return data

    async def show() -> dict[str, Any]:
        report: dict[str, Any] = json.loads(
            await cli(vehicle_cli, capsys, "vehicle", "show", *state, "--json")
        )
        assert report["running"] is True
        return report

    data = await run("add-key", "--key", key, "--role", "driver")
    assert (data["key_id"], data["role"], data["live"], data["changed"]) == (
        key_id,
        "driver",
        True,
        True,
    )
    assert [(k["key_id"], k["role"]) for k in (await show())["keys"]] == [(key_id, "driver")]

    card_file = tmp_path / "card.pem"
    data = await run("add-card", "--card", str(card_file))  # the first card: no tap needed
    assert (data["created"], data["added"], data["live"]) == (True, True, True)
    assert (await show())["keycards"] == [data["card_id"]]
    card = data["card_id"]

    data = await run("tap-card", "--card", str(card_file), "--unlock")
    assert (data["card_id"], data["action"], data["lock_state"], data["was"]) == (
        card,
        "unlock",
        "unlocked",
        "locked",
    )
    assert data["pairing_window_s"] is None
    assert (await show())["lock_state"] == "unlocked"
    data = await run("tap-card", "--card", str(card_file), "--window", "45")
    assert (data["action"], data["pairing_window_s"], data["lock_state"]) == ("pair", 45, None)
    assert (await show())["pairing_window_s"] > 0

    stranger = tmp_path / "stranger.pem"
    create_card(stranger)
    tap = ["vehicle", "tap-card", *state, "--card", str(stranger), "--lock", "--json"]
    assert await asyncio.to_thread(vehicle_cli, tap) == 1
    out, err = capsys.readouterr()
    refused = json.loads(out)
    assert refused["ok"] is False and refused["error"]["code"] == 1
    assert "not registered" in refused["error"]["reason"] and err.count("\n") == 1

    data = await run("remove-key", "--key-id", key_id, "--card", str(card_file))
    assert (data["key_id"], data["role"], data["live"]) == (key_id, "driver", True)
    assert (await show())["keys"] == []
    await run("add-key", "--key", key, "--role", "owner")
    data = await run("factory-reset", "--card", str(card_file))
    assert (data["card_id"], data["key_count"], data["live"]) == (card, 0, True)
    assert (await show())["keys"] == []

    # provision needs the stopped vehicle: refused, as an object too.
    issuer, _ = _key()
    argv = ["vehicle", "provision", *state, "--issuer", issuer, "--json"]
    assert await asyncio.to_thread(vehicle_cli, argv) == 4
    out, err = capsys.readouterr()
    busy = json.loads(out)
    assert busy["ok"] is False and busy["error"]["code"] == 4 and "running" in err
