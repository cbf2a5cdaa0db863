"""`--json` on `phonekey vehicle init|add-key|provision|add-card|tap-card|remove-key|
factory-reset`: one JSON object on stdout, for scripts.

The convention is the one of `phonekey phone unlock --json`: every object has
``ok``, ``command``, ``error`` (null, or ``{"code": EXIT_CODE, "reason": "..."}``)
and here ``state`` (the state directory, absolute), plus the command's own
keys (``RESULT_KEYS``). A failure prints the same keys, the command's own ones
null, exits with the same code as without --json and still prints its
one-line reason on stderr. Ids are lowercase hex; no private key ever appears
(a keycard is named by its file and its public id).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final

RESULT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    # vehicle id and issuer key ids as `vehicle show --json` names them
    "init": ("vin", "vehicle_id", "card", "issuers"),
    # live: done by the running vehicle through its console (else on its stopped state)
    "add-key": ("key_id", "role", "previous_role", "changed", "key_count", "live"),
    "provision": ("vin", "issuer_id", "added", "issuers", "card"),
    "add-card": ("card_id", "card_file", "created", "added", "live"),
    "tap-card": ("card_id", "action", "lock_state", "was", "pairing_window_s"),
    "remove-key": ("key_id", "role", "live"),
    "factory-reset": ("card_id", "key_count", "live"),
}


def json_help(command: str) -> str:
    """The --json help of ``command``: the keys of its object."""
    keys = ", ".join(("ok", "command", "state", *RESULT_KEYS[command], "error"))
    return (
        f"print one JSON object instead of text: {keys}; on failure ok is false, "
        'error is {"code": EXIT_CODE, "reason": "..."} and the keys of this command are null'
    )


def wants_json(args: argparse.Namespace, command: str) -> bool:
    return command in RESULT_KEYS and bool(getattr(args, "json", False))


def result_json(command: str, state_dir: Path, **fields: Any) -> dict[str, Any]:
    """The object of a command that succeeded; ``fields`` must be its ``RESULT_KEYS``."""
    expected = RESULT_KEYS[command]
    if set(fields) != set(expected):
        raise ValueError(f"{command} --json: fields {sorted(fields)} are not {sorted(expected)}")
    return {
        "ok": True,
        "command": command,
        "state": str(state_dir.absolute()),
        **fields,
        "error": None,
    }


def failure_json(command: str, state_dir: Path | None, code: int, reason: str) -> dict[str, Any]:
    """The same keys when the command failed: its own ones null."""
    return {
        "ok": False,
        "command": command,
        "state": None if state_dir is None else str(state_dir.absolute()),
        **dict.fromkeys(RESULT_KEYS[command]),
        "error": {"code": code, "reason": reason},
    }


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True), flush=True)


class Output:
    """What a command prints: its human lines as they come, or, with --json,
    nothing until ``done`` prints the one object."""

    def __init__(self, args: argparse.Namespace, command: str, state_dir: Path) -> None:
        self.json = wants_json(args, command)
        self.command = command
        self.state_dir = state_dir

    def say(self, line: str) -> None:
        if not self.json:
            print(line)

    def done(self, **fields: Any) -> int:
        if self.json:
            print_json(result_json(self.command, self.state_dir, **fields))
        return 0
