"""The vehicle's side of one BLE connection, sans-IO.

Drive it like h11: feed each received ATT payload to ``receive_data``, call
``next_event`` until it returns ``None``, and send every frame that
``data_to_send`` returns. Call ``start`` when the phone subscribes to
notifications: that pushes the first challenge, so the phone's first command
costs a single round trip.

Checks run cheapest first (state, nonce, version offer, key known, counter,
point validity) and only then the signature, so bogus traffic costs the
vehicle no public-key operation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from . import credentials, crypto
from .codec import NONCE_LEN, decode, encode
from .errors import (
    BadPublicKey,
    BadSignature,
    ChallengeExpired,
    CredentialRefused,
    CredentialRefusedExpired,
    CredentialRefusedNotYetValid,
    CredentialRefusedRevoked,
    HandshakeError,
    LocalProtocolError,
    ProtocolError,
    StaleCounter,
    UnknownChallenge,
    UnknownKey,
    UnsupportedVersion,
    UpdateRefused,
    VersionMismatch,
)
from .events import (
    ChallengeIssued,
    ClockCorrected,
    CommandExecuted,
    IssuerRotated,
    RequestRejected,
    RevocationsUpdated,
    VehicleEvent,
)
from .framing import Clock, Reassembler, fragment
from .messages import (
    Challenge,
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    CredentialPresentation,
    ErrorMessage,
    IssuerUpdate,
    Message,
    RevocationUpdate,
    TimeUpdate,
    VehicleStatus,
)
from .states import VehicleState, vehicle_next_state
from .store import CredentialTrust, StateChange, VehicleStore, WhitelistEntry
from .transcript import request_transcript_hash, response_key, response_mac
from .types import Command, LockState, ResultCode

_T = TypeVar("_T")

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
TIME_NONCE_LIFETIME = 60.0
"""Seconds a time nonce stays fresh: enough for the phone to ask the issuer."""
DEFAULT_CHALLENGE_LIFETIME = 30.0
"""Seconds a challenge stays valid: long enough for a phone at MTU 23 on a slow
link, short enough that a captured challenge is useless soon after."""


@dataclass(frozen=True)
class VehicleIdentity:
    """The vehicle's long-term identity: its P-256 key and its VIN."""

    private_key: crypto.PrivateKey
    vin: str

    @property
    def public_key(self) -> crypto.PublicKey:
        return self.private_key.public_key()

    @property
    def vehicle_id(self) -> bytes:
        return crypto.key_id(self.public_key)


@dataclass
class _Outstanding:
    challenge: Challenge
    encoded: bytes
    issued_at: float


class VehicleConnection:
    def __init__(
        self,
        identity: VehicleIdentity,
        store: VehicleStore,
        *,
        clock: Clock,
        rng: crypto.Random,
        att_mtu: int = 23,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
        challenge_lifetime: float = DEFAULT_CHALLENGE_LIFETIME,
        trust: CredentialTrust | None = None,
        credential_leeway: int = credentials.MAX_LEEWAY,
    ) -> None:
        check_versions(versions)
        if not 0 <= credential_leeway <= credentials.MAX_LEEWAY:
            raise ValueError(f"credential leeway must be 0..{credentials.MAX_LEEWAY} s")
        self._trust = trust
        self._leeway = credential_leeway
        self._presented: credentials.Credential | None = None
        self._time_nonce: tuple[bytes, float] | None = None
        self._identity = identity
        self._store = store
        self._clock = clock
        self._rng = rng
        self.att_mtu = att_mtu
        self._versions = versions
        self._lifetime = challenge_lifetime
        self._reassembler = Reassembler(clock)
        self._incoming: deque[bytes] = deque()
        self._outgoing: list[bytes] = []
        self._events: deque[VehicleEvent] = deque()
        self._outstanding: _Outstanding | None = None
        self.state = VehicleState.IDLE
        self.error: ProtocolError | None = None
        self._claimed_key_id: bytes | None = None

    # --- driver API -----------------------------------------------------------
    def start(self) -> None:
        """Issue the first challenge (call when the phone subscribes)."""
        if self.state is VehicleState.ERROR:
            raise LocalProtocolError("session is in ERROR")
        self._issue_challenge()
        # The status goes out at once too: a vehicle whose clock refuses every
        # credential must still hand a credential-only phone a time nonce.
        self._send_status()
        self.state = VehicleState.CHALLENGED

    def receive_data(self, frame: bytes) -> None:
        if self.state is VehicleState.ERROR:
            raise LocalProtocolError("session is in ERROR; disconnect the peer")
        self._incoming.append(bytes(frame))

    def next_event(self) -> VehicleEvent | None:
        if self._events:
            return self._events.popleft()
        while self._incoming and self.state is not VehicleState.ERROR:
            frame = self._incoming.popleft()
            try:
                self._handle_frame(frame)
            except ProtocolError as exc:
                self._reject(exc)
            if self._events:
                return self._events.popleft()
        return None

    def data_to_send(self) -> list[bytes]:
        frames, self._outgoing = self._outgoing, []
        return frames

    def check_timeouts(self) -> None:
        """Drop a stalled partial message (call periodically)."""
        if self.state is VehicleState.ERROR:
            return
        try:
            self._reassembler.check_timeout()
        except ProtocolError as exc:
            self._reject(exc)

    # --- handling ---------------------------------------------------------------
    def _handle_frame(self, frame: bytes) -> None:
        data = self._reassembler.feed(frame)
        if data is None:
            return
        message = decode(data)
        next_state = vehicle_next_state(self.state, message)
        if isinstance(message, ChallengeRequest):
            self._issue_challenge()
        elif isinstance(message, CredentialPresentation):
            self._presented = self._check_presented(message.credential)
        elif isinstance(message, RevocationUpdate):
            self._apply_revocation_update(message.delta)
        elif isinstance(message, TimeUpdate):
            self._apply_time_update(message.signed_time)
        elif isinstance(message, IssuerUpdate):
            self._apply_issuer_update(message.rotation)
        elif isinstance(message, CommandRequest):
            self._claimed_key_id = message.key_id
            self._handle_request(message)
        self.state = next_state

    def _handle_request(self, request: CommandRequest) -> None:
        outstanding = self._take_outstanding(request)
        if request.offered_versions != outstanding.challenge.versions:
            raise VersionMismatch(
                f"request echoes offer {request.offered_versions}, "
                f"vehicle sent {outstanding.challenge.versions}"
            )
        if request.version not in outstanding.challenge.versions:
            raise UnsupportedVersion(f"version {request.version} was not offered")
        trust = self._trust
        revoked_id = credentials.revocation_id(self._identity.vehicle_id, request.key_id)
        if trust is not None and self._read_store(lambda: trust.is_revoked(revoked_id)):
            # Revocation names (vehicle, key) pairs, so it covers whitelisted keys too,
            # but only on this vehicle.
            raise CredentialRefusedRevoked("this key has been revoked")
        presented = self._presented
        credential_digest = None
        authorised_by_credential = False
        entry = self._read_store(lambda: self._store.whitelist_entry(request.key_id))
        if presented is not None:
            if not crypto.constant_time_equal(presented.holder_key_id, request.key_id):
                raise CredentialRefused("the presented credential names another key")
            credential_digest = presented.digest()
            if entry is None:  # a whitelisted key keeps its (higher) whitelist role
                entry = WhitelistEntry(presented.holder_key, presented.role)
                authorised_by_credential = True
        if entry is None:
            raise UnknownKey("key id not on the whitelist")
        if request.counter <= self._read_store(lambda: self._store.last_counter(request.key_id)):
            raise StaleCounter("counter not above the last accepted one")
        try:
            ephemeral = crypto.public_key_from_bytes(request.ephemeral_key)
        except crypto.InvalidKeyEncoding as exc:
            raise BadPublicKey(str(exc)) from None
        if presented is not None:
            # Claims again (time moved since the presentation), then the issuer's signature.
            self._check_claims(presented)
            try:
                credentials.verify_credential_signature(presented, issuers=self._issuers())
            except credentials.CredentialError as exc:
                raise CredentialRefused(f"credential refused: {exc}") from None
        th = request_transcript_hash(
            outstanding.encoded, self._identity.public_key, request, credential_digest
        )
        phone_key = crypto.public_key_from_bytes(entry.public_key)
        try:
            crypto.verify(phone_key, request.signature, th)
        except crypto.InvalidSignature:
            raise BadSignature("signature does not verify over the transcript") from None

        # Authenticated from here on.
        before = self._read_store(self._store.lock_state)
        if entry.role.permits(request.command):
            result = ResultCode.OK
            after = _lock_state_after(request.command, before)
        else:
            result = ResultCode.FORBIDDEN
            after = before
        # Persist before acknowledging: counter, spent nonce and lock state.
        try:
            self._store.commit(
                StateChange(
                    key_id=request.key_id,
                    counter=request.counter,
                    nonce=request.nonce,
                    lock_state=after,
                )
            )
        except Exception as exc:
            raise _StorageFailure(f"could not persist the command: {exc}") from exc
        unsigned = CommandResponse(result, request.command, request.counter, after, b"")
        key = response_key(
            crypto.ecdh(self._identity.private_key, ephemeral), request.nonce, request.version, th
        )
        mac = response_mac(key, request.version, th, unsigned)
        self._send(replace(unsigned, mac=mac))
        self._events.append(
            CommandExecuted(
                key_id=request.key_id,
                role=entry.role,
                command=request.command,
                result=result,
                lock_state_before=before,
                lock_state=after,
                counter=request.counter,
                credential_serial=(
                    presented.serial if presented is not None and authorised_by_credential else None
                ),
            )
        )
        self._issue_challenge()
        self._send_status()

    def _take_outstanding(self, request: CommandRequest) -> _Outstanding:
        """Consume the session's challenge: whatever happens next, it is spent."""
        outstanding, self._outstanding = self._outstanding, None
        if outstanding is None or not crypto.constant_time_equal(
            request.nonce, outstanding.challenge.nonce
        ):
            raise UnknownChallenge("nonce was not issued on this session or is spent")
        if self._read_store(lambda: self._store.nonce_spent(request.nonce)):
            raise UnknownChallenge("nonce already spent")
        if self._clock() - outstanding.issued_at > self._lifetime:
            raise ChallengeExpired(f"challenge older than {self._lifetime:g} s")
        return outstanding

    def _send_status(self) -> None:
        """Tell the phone, after the answer, what signed news the vehicle could use."""
        trust = self._trust
        if trust is None:
            return
        nonce = self._rng(NONCE_LEN)
        self._time_nonce = (nonce, self._clock())
        self._send(VehicleStatus(self._read_store(trust.revocation_version), nonce))

    def _apply_revocation_update(self, data: bytes) -> None:
        trust = self._require_trust()
        try:
            delta = credentials.RevocationDelta.from_bytes(data)
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"revocation delta refused: {exc}") from None
        current = self._read_store(trust.revocation_version)
        # Old news or a gap is ignored before any signature work, so strangers
        # cannot make the vehicle verify deltas it would not apply.
        if delta.from_version == current:
            try:
                credentials.verify_revocation_delta(delta, issuers=self._issuers())
            except credentials.CredentialError as exc:
                raise UpdateRefused(f"revocation delta refused: {exc}") from None
            try:
                trust.apply_revocations(delta.to_version, delta.added)
            except Exception as exc:
                raise _StorageFailure(f"could not persist revocations: {exc}") from exc
            self._events.append(RevocationsUpdated(current, delta.to_version, len(delta.added)))
        self._send_status()

    def _apply_time_update(self, data: bytes) -> None:
        trust = self._require_trust()
        pending, self._time_nonce = self._time_nonce, None
        try:
            signed = credentials.SignedTime.from_bytes(data)
            if pending is None or self._clock() - pending[1] > TIME_NONCE_LIFETIME:
                raise credentials.SignedTimeRejected("no fresh time nonce outstanding")
            issuer_time = credentials.verify_signed_time(
                signed, issuers=self._issuers(), expected_nonce=pending[0]
            )
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"signed time refused: {exc}") from None
        before = self._read_store(trust.now)
        try:
            trust.correct_clock(issuer_time)
        except Exception as exc:
            raise _StorageFailure(f"could not persist the clock: {exc}") from exc
        self._events.append(ClockCorrected(before, issuer_time))
        self._send_status()

    def _apply_issuer_update(self, data: bytes) -> None:
        """Trust the new issuer key of a rotation signed by a trusted issuer key.

        The signer stays trusted as the second key, so credentials it issued
        keep working until they expire. A rotation to a key already trusted is
        old news: ignored before any signature work, without an error."""
        trust = self._require_trust()
        try:
            rotation = credentials.IssuerRotation.from_bytes(data)
        except credentials.CredentialError as exc:
            raise UpdateRefused(f"issuer rotation refused: {exc}") from None
        issuers = self._issuers()
        if rotation.new_issuer_key_id not in issuers:
            try:
                credentials.verify_issuer_rotation(rotation, issuers=issuers)
            except credentials.CredentialError as exc:
                raise UpdateRefused(f"issuer rotation refused: {exc}") from None
            try:
                trust.rotate_issuer(rotation.old_issuer_key_id, rotation.new_public_key)
            except Exception as exc:
                raise _StorageFailure(f"could not persist the issuer rotation: {exc}") from exc
            self._events.append(
                IssuerRotated(rotation.old_issuer_key_id, rotation.new_issuer_key_id)
            )
        self._send_status()

    def _require_trust(self) -> CredentialTrust:
        if self._trust is None:
            raise UpdateRefused("this vehicle trusts no issuer")
        return self._trust

    def _issuers(self) -> Mapping[bytes, crypto.PublicKey]:
        if self._trust is None:
            return {}
        return self._read_store(self._trust.issuer_keys)

    def _check_presented(self, data: bytes) -> credentials.Credential:
        """Decode and run the cheap checks now; the signature waits for the request."""
        try:
            credential = credentials.Credential.from_bytes(data)
        except credentials.CredentialMalformed as exc:
            raise CredentialRefused(f"credential malformed: {exc}") from None
        self._check_claims(credential)
        return credential

    def _check_claims(self, credential: credentials.Credential) -> None:
        trust = self._trust
        if trust is None:
            raise CredentialRefused("this vehicle trusts no credential issuer")
        try:
            credentials.check_credential_claims_at_time(
                credential,
                issuers=self._issuers(),
                vehicle_id=self._identity.vehicle_id,
                now=self._read_store(trust.now),
                leeway=self._leeway,
                is_revoked=lambda rev_id: self._read_store(lambda: trust.is_revoked(rev_id)),
            )
        except credentials.CredentialExpired as exc:
            raise CredentialRefusedExpired(str(exc)) from None
        except credentials.CredentialNotYetValid as exc:
            raise CredentialRefusedNotYetValid(str(exc)) from None
        except credentials.CredentialRevoked as exc:
            raise CredentialRefusedRevoked(str(exc)) from None
        except credentials.CredentialError as exc:
            raise CredentialRefused(f"credential refused: {exc}") from None

    def _read_store(self, read: Callable[[], _T]) -> _T:
        """A store read that fails must end the session with INTERNAL, not crash it."""
        try:
            return read()
        except Exception as exc:
            raise _StorageFailure(f"could not read the vehicle state: {exc}") from exc

    def _issue_challenge(self) -> None:
        challenge = Challenge(
            versions=self._versions,
            vehicle_id=self._identity.vehicle_id,
            nonce=self._rng(NONCE_LEN),
        )
        encoded = encode(challenge)
        self._outstanding = _Outstanding(challenge, encoded, self._clock())
        self._outgoing.extend(fragment(encoded, self.att_mtu))
        self._events.append(ChallengeIssued(challenge.nonce))

    def _send(self, message: Message) -> None:
        self._outgoing.extend(fragment(encode(message), self.att_mtu))

    def _reject(self, exc: ProtocolError) -> None:
        """Answer with an unauthenticated Error and stay in ERROR."""
        code = exc.code if isinstance(exc, HandshakeError) else ResultCode.MALFORMED
        if isinstance(exc, _StorageFailure):
            code = ResultCode.INTERNAL
        self._outstanding = None
        self.state = VehicleState.ERROR
        self.error = exc
        self._send(ErrorMessage(code))
        self._events.append(
            RequestRejected(code=code, reason=str(exc), key_id=self._claimed_key_id)
        )


def check_versions(versions: tuple[int, ...]) -> None:
    """Refuse at construction a version list no Challenge could carry."""
    if (
        not versions
        or len(set(versions)) != len(versions)
        or not all(0 < v < 256 for v in versions)
    ):
        raise ValueError(f"versions must be distinct values in 1..255, got {versions!r}")


class _StorageFailure(LocalProtocolError):
    """The store could not persist a command; nothing was acknowledged."""


def _lock_state_after(command: Command, current: LockState) -> LockState:
    if command is Command.UNLOCK:
        return LockState.UNLOCKED
    if command is Command.LOCK:
        return LockState.LOCKED
    return current
