"""`phonekey vehicle show|log|add-card|tap-card|remove-key|factory-reset`: the console.

A running vehicle owns its state, so these go through its control socket
(``vehicle_sim.control``) when one answers in the state directory; on a
stopped vehicle, `show` and `log` read the state read-only, and `add-card`,
`remove-key` and `factory-reset` open it for writing (console access to the
key module). A keycard tap needs a running vehicle. Errors map to the exit
codes of `phonekey --help`; `log` exits 5 when the log's chain does not verify.
With --json, `show` and `log` print their report with ok, command, state and
error added; a log that does not verify still prints it, ok false, error code 5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phonekey.cli_args import number_in_range

from .cli import EXIT_LOG_TAMPERED, EXIT_OK, Refused, UsageError, _state_dir
from .cli_json import Output, report_json

if TYPE_CHECKING:
    from protocol import crypto

    from .control_client import ControlClient
    from .firmware_store import FirmwareStore

_window_arg = number_in_range(float, lambda v: 1 <= v <= 300, "must be within 1..300 s")

Sub = Callable[..., argparse.ArgumentParser]


def register_console(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], _sub: Sub
) -> None:
    p = _sub(
        commands,
        "show",
        "print keys and roles, counters, keycards, issuers, revocations, lockout, clock, "
        "lock state and log length (a running vehicle answers through its control socket)",
        _show,
    )

    p = _sub(
        commands,
        "log",
        "print the event log; exit 5 if its MAC chain does not verify (tampered)",
        _log,
    )

    p = _sub(
        commands,
        "add-card",
        "create a keycard file (P-256 key, 0600) if missing and register it; on a running "
        "vehicle that has a card already, --with-card must tap an existing card",
        _add_card,
    )
    p.add_argument("--card", required=True, type=Path, metavar="FILE", help="the card file")
    p.add_argument(
        "--with-card", type=Path, metavar="FILE", help="a registered card that vouches for it"
    )

    p = _sub(
        commands,
        "tap-card",
        "tap a keycard on the running vehicle: --pair (the default) opens the pairing window "
        "for an owner phone to enroll over BLE; --unlock/--lock act as the backup key",
        _tap_card,
    )
    p.add_argument("--card", required=True, type=Path, metavar="FILE", help="the card file")
    action = p.add_mutually_exclusive_group()
    for flag in ("unlock", "lock", "pair"):
        action.add_argument(
            f"--{flag}", dest="action", action="store_const", const=flag, help=f"{flag}"
        )
    p.add_argument(
        "--window",
        type=_window_arg,
        default=None,
        metavar="SECONDS",
        help="how long the pairing window stays open (default 30, at most 300)",
    )

    p = _sub(
        commands,
        "remove-key",
        "remove a (lost) phone key with a registered keycard",
        _remove_key,
    )
    p.add_argument("--key-id", required=True, metavar="HEX", help="the 16-byte key id, hex")
    p.add_argument("--card", required=True, type=Path, metavar="FILE", help="the card file")

    p = _sub(
        commands,
        "factory-reset",
        "wipe keys, shares and fast-path secrets (keycard plus console); keeps identity, "
        "keycards, issuers, revocations, counters and the log",
        _factory_reset,
    )
    p.add_argument("--card", required=True, type=Path, metavar="FILE", help="the card file")


def console(state_dir: Path) -> ControlClient | None:
    """A console connection to the vehicle running on ``state_dir``, if one is."""
    from .control_client import ControlClient, VehicleNotRunning

    try:
        return ControlClient(state_dir)
    except VehicleNotRunning:
        return None


def _show(args: argparse.Namespace) -> int:
    from .report import render_show, show_report
    from .state_store import open_store

    state_dir = _state_dir(args)
    client = console(state_dir)
    if client is not None:
        with client:
            report = client.request("show")
    else:
        # Stopped: read-only, no lock taken.
        with open_store(state_dir, read_only=True) as store:
            report = show_report(store)
    _print_report(args, "show", report, render_show)
    return EXIT_OK


def _log(args: argparse.Namespace) -> int:
    from .report import log_report, render_log
    from .state_store import open_store

    state_dir = _state_dir(args)
    client = console(state_dir)
    if client is not None:
        with client:
            report = client.request("log")
    else:
        with open_store(state_dir, read_only=True) as store:
            report = log_report(store.read_log())
    # A log that does not verify is printed anyway, then fails (exit 5); with --json
    # its object keeps the entries and says so in ok and error.
    failure = None
    if not report["verified"]:
        failure = (EXIT_LOG_TAMPERED, f"the event log does not verify: {report['problem']}")
    _print_report(args, "log", report, render_log, failure)
    if failure is not None:
        print(f"phonekey vehicle log: error: {failure[1]}", file=sys.stderr)
        return failure[0]
    return EXIT_OK


def _print_report(
    args: argparse.Namespace,
    command: str,
    report: dict[str, Any],
    render: Callable[[dict[str, Any]], list[str]],
    failure: tuple[int, str] | None = None,
) -> None:
    if args.json:
        data = report_json(command, _state_dir(args), report, failure)
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in render(report):
            print(line)


def _add_card(args: argparse.Namespace) -> int:
    from .keycard import TapAction, card_id, create_card, load_card
    from .state_store import open_store

    state_dir = _state_dir(args)
    out = Output(args, "add-card", state_dir)
    voucher = load_card(args.with_card) if args.with_card is not None else None
    path: Path = args.card
    created = not path.exists()
    card = create_card(path) if created else load_card(path)
    public = card.public_key()
    client = console(state_dir)
    live = client is not None
    if client is not None:
        with client:
            if voucher is not None:
                from protocol import crypto

                result = client.tap(voucher, TapAction.ADD_CARD, crypto.public_bytes(public))
            else:
                result = client.request("add-card", card_key=_key_text(public))
        added = bool(result["added"])
    else:
        with open_store(state_dir) as opened:  # stopped: console access to its state
            store = opened
            if voucher is not None:
                _check_card_locally(store, voucher)
            added = store.add_keycard(public)
    verb = "created and registered" if created else "registered"
    if not added:
        out.say(f"keycard {card_id(card).hex()} is already registered")
    else:
        out.say(f"{verb} keycard {card_id(card).hex()} ({path})")
    return out.done(
        card_id=card_id(card).hex(),
        card_file=str(path.absolute()),
        created=created,
        added=added,
        live=live,
    )


def _tap_card(args: argparse.Namespace) -> int:
    from .control_client import ControlClient
    from .keycard import TapAction, card_id, load_card

    card = load_card(args.card)
    action = TapAction.from_name(args.action or "pair")
    if args.window is not None and action is not TapAction.PAIR:
        raise UsageError("--window only goes with --pair")
    extra = {"window": args.window} if args.window is not None else {}
    state_dir = _state_dir(args)
    out = Output(args, "tap-card", state_dir)
    with ControlClient(state_dir) as client:  # a tap needs a powered vehicle
        result = client.tap(card, action, **extra)
    short = card_id(card)[:4].hex()
    if action is TapAction.PAIR:
        out.say(
            f"keycard {short}: pairing window open for {result['pairing_window_s']:g} s; "
            "enroll an owner phone over BLE now"
        )
    else:
        out.say(f"keycard {short}: doors {result['lock_state']} (were {result['was']})")
    return out.done(
        card_id=card_id(card).hex(),
        action=action.label,
        lock_state=result.get("lock_state"),
        was=result.get("was"),
        pairing_window_s=result.get("pairing_window_s"),
    )


def _remove_key(args: argparse.Namespace) -> int:
    from .keycard import TapAction, load_card
    from .state_store import open_store

    try:
        key_id = bytes.fromhex(args.key_id)
    except ValueError:
        key_id = b""
    if len(key_id) != 16:
        raise UsageError("--key-id must be 32 hex digits (a 16-byte key id)")
    card = load_card(args.card)
    state_dir = _state_dir(args)
    out = Output(args, "remove-key", state_dir)
    client = console(state_dir)
    if client is not None:
        with client:
            result = client.tap(card, TapAction.REMOVE_KEY, key_id)
        role = result["role"]
    else:
        from .firmware_store import LogEvent, LogKind

        with open_store(state_dir) as opened:
            store = opened
            _check_card_locally(store, card)
            removed = store.remove_key(key_id)
            if removed is None:
                raise Refused(f"key {key_id.hex()} is not on the whitelist")
            store.log_event(LogEvent(LogKind.REMOVED, key_id))
            store.flush_log()
            role = removed.role.name.lower()
    out.say(f"removed key {key_id.hex()} ({role})")
    return out.done(key_id=key_id.hex(), role=role, live=client is not None)


def _factory_reset(args: argparse.Namespace) -> int:
    from .keycard import TapAction, card_id, load_card
    from .state_store import open_store

    card = load_card(args.card)
    state_dir = _state_dir(args)
    out = Output(args, "factory-reset", state_dir)
    client = console(state_dir)
    if client is not None:
        with client:
            key_count = int(client.tap(card, TapAction.FACTORY_RESET)["keys"])
    else:
        from .firmware_store import LogEvent, LogKind

        with open_store(state_dir) as opened:
            store = opened
            _check_card_locally(store, card)
            store.factory_reset()
            store.log_event(LogEvent(LogKind.FACTORY_RESET, card_id(card)))
            store.flush_log()
            key_count = len(store.keys())
    out.say("factory reset: every phone key, share and fast-path secret is gone")
    return out.done(card_id=card_id(card).hex(), key_count=key_count, live=client is not None)


def _check_card_locally(store: FirmwareStore, card: crypto.PrivateKey) -> None:
    """The card is registered and holds its key (a tap on a stopped vehicle's state)."""
    from .keycard import TapAction, card_id, sign_tap, verify_tap

    nonce = os.urandom(16)
    vehicle_id = store.identity.vehicle_id
    signature = sign_tap(card, vehicle_id, nonce, TapAction.FACTORY_RESET)
    verify_tap(
        store.keycards(), card_id(card), signature, vehicle_id, nonce, TapAction.FACTORY_RESET
    )


def _key_text(key: crypto.PublicKey) -> str:
    from protocol import crypto

    return crypto.public_key_to_text(key)
