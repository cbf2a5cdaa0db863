"""What the firmware writes to its event log for each vehicle event.

``log_events(event)`` maps a protocol event (the GATT server reports them)
to the ``LogEvent``s the store appends. It dispatches on the event's class
name and reads fields by name, so events that newer protocol versions add
(enrollment, removal, shares, fast path) are logged as soon as they exist,
and unknown ones are skipped rather than crash the vehicle.

Console and keycard actions, evictions and boot are logged by the runtime
directly (``LogKind.CARD_TAP``, ``FACTORY_RESET``, ``EVICTED``, ``BOOT``).
"""

from __future__ import annotations

from typing import Final

from protocol.types import Command, ResultCode

from .firmware_store import NO_KEY, LogEvent, LogKind

_COMMAND_KINDS: Final = {
    Command.UNLOCK: LogKind.UNLOCK,
    Command.LOCK: LogKind.LOCK,
    Command.STATUS: LogKind.STATUS,
}


def _key(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) >= 16:
        return value[:16]
    return NO_KEY


def _code(value: object) -> int:
    return int(value) if isinstance(value, int) else int(ResultCode.INTERNAL)


def log_events(event: object) -> list[LogEvent]:
    """The log entries for ``event`` (empty for events the log does not record)."""
    name = type(event).__name__
    get = event.__getattribute__
    if name == "CommandExecuted":
        key_id = _key(get("key_id"))
        result = get("result")
        if result is not ResultCode.OK:
            return [LogEvent(LogKind.DENIED, key_id, _code(result))]
        entries = [LogEvent(_COMMAND_KINDS.get(get("command"), LogKind.STATUS), key_id)]
        if getattr(event, "share_id", None) is not None:
            entries.append(LogEvent(LogKind.SHARE_USED, key_id))
        return entries
    if name == "RequestRejected":
        return [LogEvent(LogKind.DENIED, _key(get("key_id")), _code(get("code")))]
    if name in ("FastPathRefusedEvent", "ManageRefused"):
        reason = get("reason") if name == "FastPathRefusedEvent" else get("result")
        return [LogEvent(LogKind.DENIED, _key(get("key_id")), _code(reason))]
    if name == "KeyEnrolled":
        return [LogEvent(LogKind.ENROLLED, _key(get("key_id")))]
    if name == "KeyRemoved":
        return [LogEvent(LogKind.REMOVED, _key(get("key_id")))]
    if name == "ShareRevoked":
        return [LogEvent(LogKind.SHARE_REVOKED, _key(get("share_id")))]
    if name == "OwnershipTransferred":
        return [LogEvent(LogKind.OWNERSHIP_TRANSFER, _key(get("new_owner_key_id")))]
    if name == "RevocationsUpdated":
        return [LogEvent(LogKind.REVOCATIONS)]
    if name == "ClockCorrected":
        return [LogEvent(LogKind.CLOCK_CORRECTED)]
    if name == "IssuerRotated":
        return [LogEvent(LogKind.ISSUER_ROTATED, _key(get("new_key_id")))]
    return []


def is_success(event: object) -> bool:
    """An event that proves the requester's key (its signature or MAC verified)."""
    return type(event).__name__ in (
        "CommandExecuted",
        "KeyEnrolled",
        "KeyRemoved",
        "ShareRevoked",
        "OwnershipTransferred",
        "ManageRefused",
    )


def failure_code(event: object) -> ResultCode | None:
    """The refusal code if ``event`` is a failed authentication attempt, else None."""
    name = type(event).__name__
    if name == "RequestRejected":
        code = getattr(event, "code", None)
    elif name == "FastPathRefusedEvent":
        code = getattr(event, "reason", None)
    else:
        return None
    return code if isinstance(code, ResultCode) else ResultCode.MALFORMED
