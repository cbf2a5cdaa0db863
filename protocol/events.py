"""Events that the connection objects hand to their drivers, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from .types import Command, LockState, ResultCode, Role


# --- phone side ------------------------------------------------------------
@dataclass(frozen=True)
class ChallengeReceived:
    """The vehicle offered a fresh challenge; the phone may now send a command."""

    version: int  # the version the phone will use


@dataclass(frozen=True)
class CommandCompleted:
    """Authenticated outcome: the genuine vehicle executed (or refused, when
    ``result`` is FORBIDDEN) this command and is now in ``lock_state``."""

    command: Command
    result: ResultCode
    lock_state: LockState
    counter: int


# --- vehicle side ----------------------------------------------------------
@dataclass(frozen=True)
class ChallengeIssued:
    nonce: bytes


@dataclass(frozen=True)
class CommandExecuted:
    """The vehicle authenticated a request and committed its outcome."""

    key_id: bytes
    role: Role
    command: Command
    result: ResultCode  # OK, or FORBIDDEN when the role does not permit it
    lock_state_before: LockState
    lock_state: LockState
    counter: int
    credential_serial: int | None = None  # set when an issuer credential authorised it


@dataclass(frozen=True)
class RequestRejected:
    """The vehicle refused a message before authentication and sent an Error."""

    code: ResultCode
    reason: str
    key_id: bytes | None  # claimed key id, if the message got that far


@dataclass(frozen=True)
class VehicleStatusReceived:
    """Unauthenticated hint from the vehicle: its revocation list version and a
    nonce for signed time. Use it only to decide what signed news to send."""

    revocation_version: int
    time_nonce: bytes


@dataclass(frozen=True)
class RevocationsUpdated:
    from_version: int
    to_version: int
    added: int


@dataclass(frozen=True)
class ClockCorrected:
    before: int
    after: int


@dataclass(frozen=True)
class IssuerRotated:
    """The vehicle now trusts ``new_key_id``, vouched for by ``old_key_id``
    (kept as the second issuer key)."""

    old_key_id: bytes
    new_key_id: bytes


PhoneEvent = ChallengeReceived | CommandCompleted | VehicleStatusReceived
VehicleEvent = (
    ChallengeIssued
    | CommandExecuted
    | RequestRejected
    | RevocationsUpdated
    | ClockCorrected
    | IssuerRotated
)
