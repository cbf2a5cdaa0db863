"""What the firmware writes to its event log for each vehicle event.

``log_events(event)`` maps a protocol event (the GATT server reports them)
to the ``LogEvent``s the store appends; ``is_success`` and ``failure_code``
tell the backoff which events prove a key and which are failed attempts.

Console and keycard actions, evictions and boot are logged by the runtime
directly (``LogKind.CARD_TAP``, ``FACTORY_RESET``, ``EVICTED``, ``BOOT``).
"""

from __future__ import annotations

from typing import Final

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
    VehicleEvent,
)
from protocol.types import Command, ResultCode

from .firmware_store import NO_KEY, LogEvent, LogKind

_COMMAND_KINDS: Final = {
    Command.UNLOCK: LogKind.UNLOCK,
    Command.LOCK: LogKind.LOCK,
    Command.STATUS: LogKind.STATUS,
}
_SUCCESSES: Final = (
    CommandExecuted,
    KeyEnrolled,
    KeyRemoved,
    ShareRevoked,
    OwnershipTransferred,
    ManageRefused,  # an authenticated refusal: the signature verified
)


def _key(value: bytes | None) -> bytes:
    """Key ids are 16 bytes; a share id is logged by its first 16 bytes."""
    return value[:16] if value is not None and len(value) >= 16 else NO_KEY


def log_events(event: VehicleEvent) -> list[LogEvent]:
    """The log entries for ``event`` (empty for events the log does not record)."""
    if isinstance(event, CommandExecuted):
        key_id = _key(event.key_id)
        if event.result is not ResultCode.OK:
            return [LogEvent(LogKind.DENIED, key_id, int(event.result))]
        entries = [LogEvent(_COMMAND_KINDS[event.command], key_id)]
        if event.share_id is not None:
            entries.append(LogEvent(LogKind.SHARE_USED, key_id))
        return entries
    if isinstance(event, RequestRejected):
        return [LogEvent(LogKind.DENIED, _key(event.key_id), int(event.code))]
    if isinstance(event, FastPathRefusedEvent):
        return [LogEvent(LogKind.DENIED, _key(event.key_id), int(event.reason))]
    if isinstance(event, ManageRefused):
        return [LogEvent(LogKind.DENIED, _key(event.key_id), int(event.result))]
    if isinstance(event, KeyEnrolled):
        return [LogEvent(LogKind.ENROLLED, _key(event.key_id))]
    if isinstance(event, KeyRemoved):
        return [LogEvent(LogKind.REMOVED, _key(event.key_id))]
    if isinstance(event, ShareRevoked):
        return [LogEvent(LogKind.SHARE_REVOKED, _key(event.share_id))]
    if isinstance(event, OwnershipTransferred):
        return [LogEvent(LogKind.OWNERSHIP_TRANSFER, _key(event.new_owner_key_id))]
    if isinstance(event, RevocationsUpdated):
        return [LogEvent(LogKind.REVOCATIONS)]
    if isinstance(event, ClockCorrected):
        return [LogEvent(LogKind.CLOCK_CORRECTED)]
    if isinstance(event, IssuerRotated):
        return [LogEvent(LogKind.ISSUER_ROTATED, _key(event.new_key_id))]
    return []


def is_success(event: VehicleEvent) -> bool:
    """An event that proves the requester's key (its signature or MAC verified)."""
    return isinstance(event, _SUCCESSES)


def failure_code(event: VehicleEvent) -> ResultCode | None:
    """The refusal code if ``event`` is a failed authentication attempt, else None."""
    if isinstance(event, RequestRejected):
        return event.code
    if isinstance(event, FastPathRefusedEvent):
        return event.reason
    return None
