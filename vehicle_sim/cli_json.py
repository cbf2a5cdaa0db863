"""`--json` on `phonekey vehicle ...`: JSON on stdout, for scripts.

`init|add-key|provision|add-card|tap-card|remove-key|factory-reset` print one
object in the convention of `phonekey phone unlock --json`: every object has
``ok``, ``command``, ``error`` (null, or ``{"code": EXIT_CODE, "reason": "..."}``)
and here ``state`` (the state directory, absolute), plus the command's own
keys (``RESULT_KEYS``). A failure prints the same keys, the command's own ones
null, exits with the same code as without --json and still prints its
one-line reason on stderr. Ids are lowercase hex; no private key ever appears
(a keycard is named by its file and its public id).

`show` and `log` print their report (``vehicle_sim.report``) with those four
keys added (``report_json``); a failure prints only the four (``failure_json``),
except a log whose MAC chain does not verify: its report, entries included,
with ``ok`` false and error code 5. `run` prints JSON lines
(``vehicle_sim.cli_run``) and ends a failure, at start-up or later, with one
``{"event": "failed", "ok": false, ...}`` line (``run_failure_json``).
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


OWN_SHAPES: Final = ("show", "log", "run")
"""Commands with --json whose success shape is their own (not ``RESULT_KEYS``)."""

RUN_FAILED_EVENT: Final = "failed"

REPORT_HELP: Final = (
    "print the report as one JSON object, with ok (true), command, state and error (null) "
    'added; on failure only ok (false), command, state and error {"code": EXIT_CODE, '
    '"reason": "..."}'
)
JSON_HELP: Final = {
    "show": REPORT_HELP,
    "log": REPORT_HELP
    + "; when the MAC chain does not verify (exit 5): the report, entries included, with "
    "ok false and error code 5",
    "run": "print one JSON object per line for each event; a failure, at start-up or later, "
    f'ends with one line {{"event": "{RUN_FAILED_EVENT}", "ok": false, "state", "transport", '
    '"error": {"code": EXIT_CODE, "reason": "..."}} (stdout; stderr gets the usual line)',
}


def json_help(command: str) -> str:
    """The --json help of ``command``: the keys of its object."""
    if command in JSON_HELP:
        return JSON_HELP[command]
    keys = ", ".join(("ok", "command", "state", *RESULT_KEYS[command], "error"))
    return (
        f"print one JSON object instead of text: {keys}; on failure ok is false, "
        'error is {"code": EXIT_CODE, "reason": "..."} and the keys of this command are null'
    )


def wants_json(args: argparse.Namespace, command: str) -> bool:
    return (command in RESULT_KEYS or command in OWN_SHAPES) and bool(getattr(args, "json", False))


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
    """The same keys when the command failed: its own ones null (`show` and
    `log` have none here: ok, command, state and error only)."""
    return {
        "ok": False,
        "command": command,
        "state": None if state_dir is None else str(state_dir.absolute()),
        **dict.fromkeys(RESULT_KEYS.get(command, ())),
        "error": {"code": code, "reason": reason},
    }


def report_json(
    command: str, state_dir: Path, report: dict[str, Any], error: tuple[int, str] | None = None
) -> dict[str, Any]:
    """`show --json` and `log --json`: the report with ok, command, state and error
    added; ``error`` (code, reason) for a report printed although the command
    fails (a log whose chain does not verify)."""
    added = {
        "ok": error is None,
        "command": command,
        "state": str(state_dir.absolute()),
        "error": None if error is None else {"code": error[0], "reason": error[1]},
    }
    if set(added) & set(report):
        raise ValueError(f"{command} --json: the report has {sorted(set(added) & set(report))}")
    return {**report, **added}


def run_failure_json(
    state_dir: Path | None, transport: str, code: int, reason: str
) -> dict[str, Any]:
    """The last line of `run --json` when it fails, at start-up or after advertising,
    like its other lines an ``event``: ``failed``."""
    return {
        "event": RUN_FAILED_EVENT,
        "ok": False,
        "state": None if state_dir is None else str(state_dir.absolute()),
        "transport": transport,
        "error": {"code": code, "reason": reason},
    }


def print_json(data: dict[str, Any], *, sort_keys: bool = True) -> None:
    """One line on stdout; ``sort_keys=False`` keeps ``event`` first on a `run` line."""
    print(json.dumps(data, sort_keys=sort_keys), flush=True)


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
