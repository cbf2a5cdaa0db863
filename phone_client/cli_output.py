"""How `phonekey phone unlock|lock|status` words the vehicle's answer."""

from __future__ import annotations

import sys

from .outcome import CommandOutcome


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
