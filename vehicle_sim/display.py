"""Short, key-safe text for the vehicle's logs and CLI output.

Key ids appear as their first 4 bytes in hex: enough to tell a household's
phones apart, and never a key. Nothing here ever formats private keys.
"""

from __future__ import annotations

import datetime

from protocol.events import (
    ClockCorrected,
    CommandExecuted,
    FastPathRefusedEvent,
    IssuerRotated,
    KeyEnrolled,
    KeyRemoved,
    ManageRefused,
    OwnershipTransferred,
    RequestRejected,
    RevocationsUpdated,
    ShareRevoked,
)
from protocol.types import LockState, ResultCode

SHORT_ID_BYTES = 4

ReportedEvent = (
    CommandExecuted
    | RequestRejected
    | FastPathRefusedEvent
    | ManageRefused
    | KeyEnrolled
    | KeyRemoved
    | ShareRevoked
    | OwnershipTransferred
    | RevocationsUpdated
    | IssuerRotated
    | ClockCorrected
)
"""What the vehicle decided or learnt: every vehicle event but ChallengeIssued."""


def short_id(key_id: bytes) -> str:
    return key_id[:SHORT_ID_BYTES].hex()


def lock_word(state: LockState) -> str:
    return state.name.lower()


def iso_utc(unix_seconds: int) -> str:
    """``2025-06-01T12:00:00Z``; the raw number if it is beyond what a date can show."""
    try:
        moment = datetime.datetime.fromtimestamp(unix_seconds, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"unix time {unix_seconds}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_key(event: CommandExecuted) -> str:
    """``key ab12cd34 (driver)``, or ``key ab12cd34 (driver, cloud credential #7)``
    when an issuer credential, not the whitelist, authorised the command."""
    role = event.role.name.lower()
    if event.credential_serial is not None:
        return f"key {short_id(event.key_id)} ({role}, cloud credential #{event.credential_serial})"
    return f"key {short_id(event.key_id)} ({role})"


def describe_event(event: ReportedEvent, peer: str | None = None) -> str:
    """One line on what the vehicle decided or learnt, for its console."""
    origin = f" from {peer}" if peer else ""
    if isinstance(event, CommandExecuted):
        return _describe_command(event, origin)
    if isinstance(event, RequestRejected):
        who = f" key {short_id(event.key_id)}" if event.key_id is not None else ""
        return f"denied{who}{origin}: {_code_word(event.code)} ({event.reason})"
    if isinstance(event, FastPathRefusedEvent):
        return f"fast path refused key {short_id(event.key_id)}{origin}: {_code_word(event.reason)}"
    if isinstance(event, ManageRefused):
        operation = event.operation.name.lower().replace("_", "-")
        return (
            f"{operation} by key {short_id(event.key_id)}{origin} refused: "
            f"{_code_word(event.result)}"
        )
    if isinstance(event, KeyEnrolled):
        return (
            f"key {short_id(event.key_id)} enrolled as {event.role.name.lower()}"
            f" by key {short_id(event.by_key_id)}{origin} ({event.method})"
        )
    if isinstance(event, KeyRemoved):
        return f"key {short_id(event.key_id)} removed by key {short_id(event.by_key_id)}{origin}"
    if isinstance(event, ShareRevoked):
        return (
            f"share {short_id(event.share_id)} revoked by key {short_id(event.by_key_id)}{origin}"
        )
    if isinstance(event, OwnershipTransferred):
        return (
            f"ownership transferred to key {short_id(event.new_owner_key_id)}"
            f" by key {short_id(event.by_key_id)}{origin}"
        )
    if isinstance(event, RevocationsUpdated):
        added = "1 key" if event.added == 1 else f"{event.added} keys"
        return (
            f"revocations updated{origin}: version {event.from_version} -> "
            f"{event.to_version}, {added} revoked"
        )
    if isinstance(event, IssuerRotated):
        return (
            f"issuer key rotated{origin}: now trusts {short_id(event.new_key_id)} "
            f"(signed by {short_id(event.old_key_id)}, kept for credentials it issued)"
        )
    delta = event.after - event.before
    return (
        f"clock corrected{origin} by issuer-signed time: {iso_utc(event.after)} "
        f"(was {iso_utc(event.before)}, {delta:+d} s)"
    )


def _describe_command(event: CommandExecuted, origin: str) -> str:
    who = describe_key(event)
    command = event.command.name.lower()
    if event.result is not ResultCode.OK:
        return (
            f"{command} by {who}{origin}: {event.result.name.lower()}, "
            f"{lock_word(event.lock_state)} (counter {event.counter})"
        )
    change = (
        f"{lock_word(event.lock_state_before)} -> {lock_word(event.lock_state)}"
        if event.lock_state is not event.lock_state_before
        else f"still {lock_word(event.lock_state)}"
    )
    via = ", share" if event.share_id is not None else ""
    via += ", fast path" if event.fast_path else ""
    return f"{command} by {who}{origin}: ok, {change} (counter {event.counter}{via})"


def _code_word(code: ResultCode) -> str:
    return code.name.lower().replace("_", "-")
