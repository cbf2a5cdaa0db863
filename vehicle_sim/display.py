"""Short, key-safe text for the vehicle's logs and CLI output.

Key ids appear as their first 4 bytes in hex: enough to tell a household's
phones apart, and never a key. Nothing here ever formats private keys.
"""

from __future__ import annotations

import datetime
import enum

from protocol.events import (
    ClockCorrected,
    CommandExecuted,
    IssuerRotated,
    RequestRejected,
    RevocationsUpdated,
)
from protocol.types import LockState, ResultCode

SHORT_ID_BYTES = 4

ReportedEvent = object
"""What the vehicle decided or learnt: every vehicle event but ChallengeIssued
(``CommandExecuted``, ``RequestRejected``, ``RevocationsUpdated``, ... and the
key-management, share and fast-path events of newer protocol versions, which
are described by field name so this module does not depend on them)."""


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
    line = _describe_known(event, peer)
    if line is not None:
        return line
    return _describe_by_name(event, f" from {peer}" if peer else "")


def _describe_by_name(event: object, origin: str) -> str:
    name = type(event).__name__
    key = getattr(event, "key_id", None)
    by = getattr(event, "by_key_id", None)
    by_text = f" by key {short_id(by)}" if isinstance(by, bytes) else ""
    if name == "KeyEnrolled":
        role = getattr(event, "role", None)
        role_text = role.name.lower() if isinstance(role, enum.Enum) else "?"
        method = getattr(event, "method", "")
        return f"key {_short(key)} enrolled as {role_text}{by_text}{origin} ({method})"
    if name == "KeyRemoved":
        return f"key {_short(key)} removed{by_text}{origin}"
    if name == "ShareRevoked":
        return f"share {_short(getattr(event, 'share_id', None))} revoked{by_text}{origin}"
    if name == "OwnershipTransferred":
        new = getattr(event, "new_owner_key_id", None)
        return f"ownership transferred to key {_short(new)}{by_text}{origin}"
    if name in ("FastPathRefusedEvent", "ManageRefused"):
        reason = getattr(event, "reason", None) or getattr(event, "result", None)
        code = reason.name.lower().replace("_", "-") if isinstance(reason, enum.Enum) else "?"
        what = "fast path refused" if name == "FastPathRefusedEvent" else "management refused"
        return f"{what} key {_short(key)}{origin}: {code}"
    return f"{name}{origin}"


def _short(value: object) -> str:
    return short_id(value) if isinstance(value, bytes) else "?"


def _describe_known(event: ReportedEvent, peer: str | None) -> str | None:
    """One line for an executed command, a refused request, or signed news
    (revocations, time) that a phone carried to the vehicle."""
    origin = f" from {peer}" if peer else ""
    if isinstance(event, CommandExecuted):
        who = describe_key(event)
        command = event.command.name.lower()
        if event.result is ResultCode.OK:
            change = (
                f"{lock_word(event.lock_state_before)} -> {lock_word(event.lock_state)}"
                if event.lock_state is not event.lock_state_before
                else f"still {lock_word(event.lock_state)}"
            )
            via = ", share" if getattr(event, "share_id", None) is not None else ""
            via += ", fast path" if getattr(event, "fast_path", False) else ""
            return f"{command} by {who}{origin}: ok, {change} (counter {event.counter}{via})"
        return (
            f"{command} by {who}{origin}: {event.result.name.lower()}, "
            f"{lock_word(event.lock_state)} (counter {event.counter})"
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
    if isinstance(event, ClockCorrected):
        delta = event.after - event.before
        return (
            f"clock corrected{origin} by issuer-signed time: {iso_utc(event.after)} "
            f"(was {iso_utc(event.before)}, {delta:+d} s)"
        )
    if isinstance(event, RequestRejected):
        who = f" key {short_id(event.key_id)}" if event.key_id is not None else ""
        code = event.code.name.lower().replace("_", "-")
        return f"denied{who}{origin}: {code} ({event.reason})"
    return None
