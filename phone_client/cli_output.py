"""How `phonekey phone unlock|lock|status|scan` word their result: a line for
people, one JSON object for machines (--json), and a live status on a TTY."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .outcome import CommandOutcome

if TYPE_CHECKING:
    from .scanning import SeenVehicle


def print_result(outcome: CommandOutcome) -> None:
    from protocol import Command

    state = outcome.lock_state.name.lower()
    details = f"key {outcome.key_id[:4].hex()}, {_path_text(outcome)}{_latency_text(outcome)}"
    if not outcome.ok:
        print(
            f"denied: vehicle {outcome.vin} refused {outcome.command.name.lower()}: this key's "
            f"role does not permit it; the vehicle is {state} ({details})",
            file=sys.stderr,
            flush=True,
        )
    elif outcome.command is Command.STATUS:
        print(f"{outcome.vin} is {state} ({details})", flush=True)
    else:
        print(f"{state} {outcome.vin} ({details})", flush=True)


def _path_text(outcome: CommandOutcome) -> str:
    if outcome.fast_path:
        return "fast path, "
    if outcome.fast_path_refused is not None:
        return f"fast path refused ({outcome.fast_path_refused}), full handshake, "
    return ""


def _latency_text(outcome: CommandOutcome) -> str:
    latency = outcome.latency
    parts = [
        f"{name} {_ms(value)}"
        for name, value in (
            ("scan", latency.scan),
            ("connect", latency.connect),
            ("challenge", latency.challenge),
            ("command", latency.command),
        )
        if value is not None
    ]
    return f"{_ms(latency.total)}: " + ", ".join(parts)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


class StatusLine:
    """A live status line on stderr, rewritten in place with a carriage return.

    Only when stderr is a terminal (and the caller allows it): piped output,
    scripts and --json get nothing extra.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = enabled and callable(isatty) and bool(isatty())
        self._shown = False

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Erase the status, so the next line starts clean."""
        if self.live and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def outcome_json(outcome: CommandOutcome) -> dict[str, Any]:
    """`phonekey phone unlock|lock|status --json`: the vehicle answered."""
    latency = outcome.latency
    return {
        "ok": outcome.ok,
        "result": outcome.result.name.lower(),  # "ok" or "forbidden"
        "command": outcome.command.name.lower(),
        "vin": outcome.vin,
        "lock_state": outcome.lock_state.name.lower(),
        "fast_path": outcome.fast_path,
        "fast_path_refused": outcome.fast_path_refused,
        "credential": outcome.credential,
        "cloud": outcome.cloud,
        "key_id": outcome.key_id.hex(),
        "counter": outcome.counter,
        "att_mtu": outcome.att_mtu,
        "latency_ms": {
            name: None if value is None else round(value * 1000, 3)
            for name, value in (
                ("total", latency.total),
                ("scan", latency.scan),
                ("connect", latency.connect),
                ("challenge", latency.challenge),
                ("command", latency.command),
                ("cloud_wait", latency.cloud_wait),
            )
        },
        "message": outcome.message,
        "error": None
        if outcome.ok
        else {"code": 1, "reason": "this key's role does not permit it"},
    }


def failure_json(command: str, vin: str | None, code: int, reason: str) -> dict[str, Any]:
    """The same shape when no authenticated answer came (denied, not found, ...)."""
    return {
        "ok": False,
        "result": "denied" if reason.startswith("denied") else "error",
        "command": command,
        "vin": vin,
        "lock_state": None,
        "fast_path": False,
        "fast_path_refused": None,
        "credential": None,
        "cloud": None,
        "key_id": None,
        "counter": None,
        "att_mtu": None,
        "latency_ms": None,
        "message": "",
        "error": {"code": code, "reason": reason},
    }


def scan_json(
    seen: Sequence[SeenVehicle] | None, error: tuple[int, str] | None = None
) -> dict[str, Any]:
    """`phonekey phone scan --json`: the vehicles heard (null when the scan could
    not run); ``error`` is the exit code and reason of a failure, none heard included."""
    return {
        "ok": error is None,
        "command": "scan",
        "vehicles": None
        if seen is None
        else [
            {"address": v.address, "rssi": v.rssi, "tag": v.tag.hex(), "vin": v.vin} for v in seen
        ],
        "error": None if error is None else {"code": error[0], "reason": error[1]},
    }


def print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True), flush=True)
