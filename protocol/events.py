"""Events that the connection objects hand to their drivers, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import Command, LockState, ManageOp, ResultCode, Role


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
    # The fast-path secret both sides now hold (after an OK full handshake by
    # a whitelisted key without a credential or share): keep it (secretly)
    # for ``send_fast_command``. Replaces any earlier one. Never logged.
    fast_key: bytes | None = field(default=None, repr=False, compare=False)
    fast_path: bool = False  # True if this answered a FastCommandRequest


@dataclass(frozen=True)
class ManageCompleted:
    """Authenticated outcome of a ManageRequest: OK, FORBIDDEN (not an
    owner), NOT_FOUND (key to remove unknown) or LAST_OWNER (refused: the
    vehicle would have no owner left)."""

    operation: ManageOp
    result: ResultCode
    counter: int


@dataclass(frozen=True)
class FastPathRefusedReceived:
    """Unauthenticated: the vehicle refused the fast attempt (``reason``).
    Drop the fast key and wait for the next ``ChallengeReceived`` (it follows
    at once), then send a full command on the same session."""

    reason: ResultCode


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
    share_id: bytes | None = None  # set when an offline share authorised it
    fast_path: bool = False  # authenticated with the fast-path key (no public-key op)


@dataclass(frozen=True)
class KeyEnrolled:
    """A key was added to the whitelist, or its role changed."""

    key_id: bytes
    role: Role
    by_key_id: bytes  # the requester (the new key itself for "enrollment-window")
    method: str  # "enrollment-window" or "owner"


@dataclass(frozen=True)
class KeyRemoved:
    key_id: bytes
    by_key_id: bytes


@dataclass(frozen=True)
class ShareRevoked:
    share_id: bytes
    by_key_id: bytes


@dataclass(frozen=True)
class OwnershipTransferred:
    """Every key, share revocation and fast key was wiped; the new owner is the only key."""

    new_owner_key_id: bytes
    by_key_id: bytes


@dataclass(frozen=True)
class ManageRefused:
    """An authenticated ManageRequest the vehicle refused under its MAC
    (FORBIDDEN, NOT_FOUND or LAST_OWNER); nothing but the counter changed."""

    key_id: bytes
    operation: ManageOp
    result: ResultCode


@dataclass(frozen=True)
class FastPathRefusedEvent:
    """The vehicle refused a fast-path request and issued a new challenge."""

    key_id: bytes
    reason: ResultCode
    detail: str = ""


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


PhoneEvent = (
    ChallengeReceived
    | CommandCompleted
    | VehicleStatusReceived
    | ManageCompleted
    | FastPathRefusedReceived
)
VehicleEvent = (
    ChallengeIssued
    | CommandExecuted
    | RequestRejected
    | RevocationsUpdated
    | ClockCorrected
    | IssuerRotated
    | KeyEnrolled
    | KeyRemoved
    | ShareRevoked
    | OwnershipTransferred
    | ManageRefused
    | FastPathRefusedEvent
)
