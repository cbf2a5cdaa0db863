"""Protocol messages as frozen dataclasses.

These are what callers build and receive; the byte layouts live privately in
``codec.py`` and are specified in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Command, LockState, ManageOp, ResultCode


@dataclass(frozen=True)
class Challenge:
    """Vehicle -> phone, unauthenticated. Sent when the phone subscribes and
    again after every response, so the next command needs no extra round trip."""

    versions: tuple[int, ...]  # handshake versions the vehicle offers
    vehicle_tag: bytes  # privacy.challenge_vehicle_tag(vehicle key, nonce) (16 bytes)
    nonce: bytes  # 16 fresh random bytes, single use


@dataclass(frozen=True)
class ChallengeRequest:
    """Phone -> vehicle: ask for a fresh challenge (e.g. the last one expired)."""


@dataclass(frozen=True)
class CommandRequest:
    """Phone -> vehicle: a command signed over the whole transcript."""

    version: int  # chosen handshake version, one of the offered ones
    offered_versions: tuple[int, ...]  # the offer as the phone received it
    nonce: bytes  # the challenge's nonce (16 bytes)
    key_id: bytes  # the phone's key id (16 bytes)
    counter: int  # strictly increasing per phone key (u64)
    command: Command
    ephemeral_key: bytes  # phone's ephemeral P-256 public key, compressed (33 bytes)
    signature: bytes  # ECDSA-P256-SHA256 over the request transcript, r||s (64 bytes)


@dataclass(frozen=True)
class CommandResponse:
    """Vehicle -> phone, authenticated by a MAC bound to the request."""

    result: ResultCode  # OK or FORBIDDEN
    command: Command
    counter: int
    lock_state: LockState  # state after the command, as persisted
    mac: bytes  # HMAC-SHA256 (32 bytes)


@dataclass(frozen=True)
class ErrorMessage:
    """Vehicle -> phone, unauthenticated refusal before authentication.

    Anyone on the air can forge one, so the phone reports it as a failure and
    never as vehicle state."""

    code: ResultCode


@dataclass(frozen=True)
class CredentialPresentation:
    """Phone -> vehicle: an issuer-signed credential for the phone's key, sent
    just before the CommandRequest it authorises (no answer of its own, so it
    adds no round trip). The request's transcript then binds its digest."""

    credential: bytes  # encoded protocol.credentials.Credential


@dataclass(frozen=True)
class VehicleStatus:
    """Vehicle -> phone, unauthenticated, sent after each response and update,
    off the critical path: the revocation list version the vehicle holds (so a
    phone knows whether it carries newer news) and a fresh nonce for the
    issuer to sign the time against. A liar gains nothing: deltas and time are
    issuer-signed and checked by the vehicle."""

    revocation_version: int
    time_nonce: bytes  # 16 bytes


@dataclass(frozen=True)
class RevocationUpdate:
    """Phone -> vehicle: an issuer-signed ``RevocationDelta`` carried offline."""

    delta: bytes


@dataclass(frozen=True)
class TimeUpdate:
    """Phone -> vehicle: issuer-signed time bound to the vehicle's time nonce."""

    signed_time: bytes


@dataclass(frozen=True)
class IssuerUpdate:
    """Phone -> vehicle: an ``IssuerRotation`` signed by an issuer key the
    vehicle trusts, naming the key that succeeds it."""

    rotation: bytes


@dataclass(frozen=True)
class ManageRequest:
    """Phone -> vehicle: a signed whitelist operation. Checked and signed like
    a ``CommandRequest`` (its own transcript label); see protocol/manage.py
    for the argument of each operation."""

    version: int
    offered_versions: tuple[int, ...]
    nonce: bytes  # the challenge's nonce (16 bytes)
    key_id: bytes  # the requester's key id (16 bytes)
    counter: int  # shares the per-key counter with commands (u64)
    operation: ManageOp
    argument: bytes  # operation-specific, fixed length per operation
    ephemeral_key: bytes  # compressed (33 bytes)
    signature: bytes  # ECDSA-P256-SHA256 over the manage transcript, r||s (64 bytes)


@dataclass(frozen=True)
class ManageResponse:
    """Vehicle -> phone, authenticated by a MAC bound to the manage request."""

    result: ResultCode  # OK, FORBIDDEN, NOT_FOUND or LAST_OWNER
    operation: ManageOp
    counter: int
    mac: bytes  # HMAC-SHA256 (32 bytes)


@dataclass(frozen=True)
class FastCommandRequest:
    """Phone -> vehicle: a command authenticated with the fast-path key (no
    public-key operation on either side). Answered by a ``CommandResponse``
    whose MAC key comes from the fast key, or by ``FastPathRefused``."""

    version: int  # one of the versions the outstanding challenge offers
    nonce: bytes  # the outstanding challenge's nonce (16 bytes)
    key_id: bytes
    counter: int
    command: Command
    mac: bytes  # HMAC-SHA256 under the fast key over the fast transcript (32 bytes)


@dataclass(frozen=True)
class FastPathRefused:
    """Vehicle -> phone, unauthenticated, NOT fatal: the fast attempt failed;
    a new Challenge follows, on which the phone may send a full request."""

    reason: ResultCode


Message = (
    Challenge
    | ChallengeRequest
    | CommandRequest
    | CommandResponse
    | ErrorMessage
    | CredentialPresentation
    | VehicleStatus
    | RevocationUpdate
    | TimeUpdate
    | IssuerUpdate
    | ManageRequest
    | ManageResponse
    | FastCommandRequest
    | FastPathRefused
)
