"""Short, key-safe text for the vehicle's logs and CLI output.

Key ids appear as their first 4 bytes in hex: enough to tell a household's
phones apart, and never a key. Nothing here ever formats private keys.
"""

from __future__ import annotations

from protocol.events import CommandExecuted, RequestRejected
from protocol.types import LockState, ResultCode

SHORT_ID_BYTES = 4


def short_id(key_id: bytes) -> str:
    return key_id[:SHORT_ID_BYTES].hex()


def lock_word(state: LockState) -> str:
    return state.name.lower()


def describe_event(event: CommandExecuted | RequestRejected, peer: str | None = None) -> str:
    """One line for an executed command or a refused request."""
    origin = f" from {peer}" if peer else ""
    if isinstance(event, CommandExecuted):
        who = f"key {short_id(event.key_id)} ({event.role.name.lower()})"
        command = event.command.name.lower()
        if event.result is ResultCode.OK:
            change = (
                f"{lock_word(event.lock_state_before)} -> {lock_word(event.lock_state)}"
                if event.lock_state is not event.lock_state_before
                else f"still {lock_word(event.lock_state)}"
            )
            return f"{command} by {who}{origin}: ok, {change} (counter {event.counter})"
        return (
            f"{command} by {who}{origin}: {event.result.name.lower()}, "
            f"{lock_word(event.lock_state)} (counter {event.counter})"
        )
    who = f" key {short_id(event.key_id)}" if event.key_id is not None else ""
    code = event.code.name.lower().replace("_", "-")
    return f"denied{who}{origin}: {code} ({event.reason})"
