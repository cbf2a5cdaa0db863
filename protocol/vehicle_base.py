"""The vehicle connection's core: session state, the driver API, challenges,
and the authentication every signed request goes through.

``VehicleConnection`` (protocol/vehicle.py) is this core plus the handlers of
each message kind (vehicle_updates.py, vehicle_manage.py,
vehicle_fastpath.py). Checks run cheapest first (state, nonce, version offer,
key known, counter, point validity) and only then public-key operations, each
counted in ``crypto_ops`` so a firmware can charge MCU time for them.
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from . import credentials, crypto, privacy, shares
from .codec import NONCE_LEN, challenge_prefix, encode
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
    ShareRefused,
    ShareRefusedOutsideWindow,
    ShareRefusedRevoked,
    StaleCounter,
    UnknownChallenge,
    UnknownKey,
    UnsupportedVersion,
    VersionMismatch,
)
from .events import ChallengeIssued, RequestRejected, VehicleEvent
from .framing import Clock, Reassembler, fragment
from .messages import (
    Challenge,
    CommandRequest,
    ErrorMessage,
    ManageRequest,
    Message,
    VehicleStatus,
)
from .states import VehicleState
from .store import (
    CredentialTrust,
    EnrollmentWindow,
    StateChange,
    VehicleStore,
    WhitelistEntry,
)
from .types import Command, LockState, ResultCode, Role

_T = TypeVar("_T")
_Request = TypeVar("_Request", contravariant=True)

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
TIME_NONCE_LIFETIME = 60.0
"""Seconds a time nonce stays fresh: enough for the phone to ask the issuer."""
DEFAULT_CHALLENGE_LIFETIME = 30.0
"""Seconds a challenge stays valid: long enough for a phone at MTU 23 on a slow
link, short enough that a captured challenge is useless soon after."""

Presented = credentials.Credential | shares.Share


class TranscriptFn(Protocol[_Request]):
    """``request_transcript_hash`` or ``manage_transcript_hash``."""

    def __call__(
        self,
        challenge_bytes: bytes,
        vehicle_public_key: bytes,
        request: _Request,
        credential_digest: bytes | None = None,
        *,
        signed_part: bytes | None = None,
    ) -> bytes: ...


@dataclass(frozen=True)
class VehicleIdentity:
    """The vehicle's long-term identity: its P-256 key and its VIN."""

    private_key: crypto.PrivateKey
    vin: str

    # Derived once per identity (the key never changes): every handshake needs them.
    @functools.cached_property
    def public_key(self) -> crypto.PublicKey:
        return self.private_key.public_key()

    @functools.cached_property
    def vehicle_id(self) -> bytes:
        return crypto.key_id(self.public_key)

    @functools.cached_property
    def public_point(self) -> bytes:
        """The uncompressed point (65 bytes) every transcript hashes."""
        return crypto.public_bytes(self.public_key, compressed=False)


@dataclass
class Outstanding:
    challenge: Challenge
    encoded: bytes
    issued_at: float


@dataclass(frozen=True)
class Authenticated:
    """A request whose signature verified, and what authorised it."""

    entry: WhitelistEntry  # the key and role that authorised the request
    via: str  # "whitelist", "credential", "share" or "enrollment"
    ephemeral: crypto.PublicKey
    transcript_hash: bytes
    credential_serial: int | None = None
    share_id: bytes | None = None


class VehicleBase:
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
        vehicle_time: Callable[[], int] | None = None,
        enrollment: EnrollmentWindow | None = None,
        fast_path: bool = False,
    ) -> None:
        if versions is not SUPPORTED_VERSIONS:  # the default is checked once, below
            check_versions(versions)
        if not 0 <= credential_leeway <= credentials.MAX_LEEWAY:
            raise ValueError(f"credential leeway must be 0..{credentials.MAX_LEEWAY} s")
        self._trust = trust
        self._leeway = credential_leeway
        self._vehicle_time = vehicle_time or (trust.now if trust is not None else None)
        self._enrollment = enrollment
        self._fast_path = fast_path
        self._presented: Presented | None = None
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
        self._outstanding: Outstanding | None = None
        self.state = VehicleState.IDLE
        self.error: ProtocolError | None = None
        self._claimed_key_id: bytes | None = None
        self._received = b""  # the message being handled, exactly as received
        self.crypto_ops: Counter[str] = Counter()
        """Public-key operations this connection performed: "ecdsa_verify", "ecdh"."""

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

    def _handle_frame(self, frame: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # --- authentication of signed requests ---------------------------------------
    def _begin(self, request: CommandRequest | ManageRequest) -> Outstanding:
        """Spend the challenge and check the version offer (the cheapest checks)."""
        outstanding = self._take_outstanding(request.nonce)
        if request.offered_versions != outstanding.challenge.versions:
            raise VersionMismatch(
                f"request echoes offer {request.offered_versions}, "
                f"vehicle sent {outstanding.challenge.versions}"
            )
        if request.version not in outstanding.challenge.versions:
            raise UnsupportedVersion(f"version {request.version} was not offered")
        return outstanding

    def _authenticate(
        self,
        request: _T,
        outstanding: Outstanding,
        transcript: TranscriptFn[_T],
        *,
        enrolling_key: bytes | None = None,
    ) -> Authenticated:
        """Key known (whitelist, presented credential or share, or the key
        ENROLLing in an open window), counter, point, then the signatures."""
        assert isinstance(request, CommandRequest | ManageRequest)
        key_id = request.key_id
        self._check_not_revoked(key_id)
        presented = self._presented
        digest = None
        via = "whitelist"
        entry = self._read_store(lambda: self._store.whitelist_entry(key_id))
        if presented is not None:
            if not crypto.constant_time_equal(presented.holder_key_id, key_id):
                if isinstance(presented, shares.Share):
                    raise ShareRefused("the presented share names another key")
                raise CredentialRefused("the presented credential names another key")
            digest = presented.digest()
            if entry is None and enrolling_key is None:
                # A whitelisted key keeps its (higher) whitelist role.
                entry = WhitelistEntry(presented.holder_key, presented.role)
                via = "share" if isinstance(presented, shares.Share) else "credential"
        if entry is None and enrolling_key is not None:
            entry = WhitelistEntry(enrolling_key, Role.OWNER)
            via = "enrollment"
        if entry is None:
            raise UnknownKey("key id not on the whitelist")
        if request.counter <= self._read_store(lambda: self._store.last_counter(key_id)):
            raise StaleCounter("counter not above the last accepted one")
        try:
            ephemeral = crypto.public_key_from_bytes(request.ephemeral_key)
        except crypto.InvalidKeyEncoding as exc:
            raise BadPublicKey(str(exc)) from None
        if via == "credential":
            assert isinstance(presented, credentials.Credential)
            # Claims again (time moved since the presentation), then the issuer's signature.
            self._check_credential_claims(presented)
            self.crypto_ops["ecdsa_verify"] += 1
            try:
                credentials.verify_credential_signature(presented, issuers=self._issuers())
            except credentials.CredentialError as exc:
                raise CredentialRefused(f"credential refused: {exc}") from None
        elif via == "share":
            assert isinstance(presented, shares.Share)
            signer_key = self._check_share_claims(presented)
            self.crypto_ops["ecdsa_verify"] += 1
            try:
                shares.verify_share_signature(presented, signer_key)
            except shares.ShareError as exc:
                raise ShareRefused(f"share refused: {exc}") from None
        th = transcript(
            outstanding.encoded,
            self._identity.public_point,
            request,
            digest,
            signed_part=self._received[: -crypto.SIGNATURE_LEN],
        )
        # Parsed (and validated) once per distinct key, then cached by its bytes.
        phone_key = crypto.cached_public_key(entry.public_key)
        self.crypto_ops["ecdsa_verify"] += 1
        try:
            crypto.verify(phone_key, request.signature, th)
        except crypto.InvalidSignature:
            raise BadSignature("signature does not verify over the transcript") from None
        serial = presented.serial if isinstance(presented, credentials.Credential) else None
        share_id = presented.share_id if isinstance(presented, shares.Share) else None
        return Authenticated(
            entry=entry,
            via=via,
            ephemeral=ephemeral,
            transcript_hash=th,
            credential_serial=serial if via == "credential" else None,
            share_id=share_id if via == "share" else None,
        )

    def _ecdh(self, ephemeral: crypto.PublicKey) -> bytes:
        self.crypto_ops["ecdh"] += 1
        return crypto.ecdh(self._identity.private_key, ephemeral)

    def _check_not_revoked(self, key_id: bytes) -> None:
        trust = self._trust
        if trust is None:
            return
        rev_id = credentials.revocation_id(self._identity.vehicle_id, key_id)
        if self._read_store(lambda: trust.is_revoked(rev_id)):
            # Revocation names (vehicle, key) pairs, so it covers whitelisted keys
            # too, but only on this vehicle.
            raise CredentialRefusedRevoked("this key has been revoked")

    def _take_outstanding(self, nonce: bytes) -> Outstanding:
        """Consume the session's challenge: whatever happens next, it is spent."""
        outstanding, self._outstanding = self._outstanding, None
        if outstanding is None or not crypto.constant_time_equal(
            nonce, outstanding.challenge.nonce
        ):
            raise UnknownChallenge("nonce was not issued on this session or is spent")
        if self._read_store(lambda: self._store.nonce_spent(nonce)):
            raise UnknownChallenge("nonce already spent")
        if self._clock() - outstanding.issued_at > self._lifetime:
            raise ChallengeExpired(f"challenge older than {self._lifetime:g} s")
        return outstanding

    # --- presentations: credentials and shares -----------------------------------------
    def _check_presented(self, data: bytes) -> Presented:
        """Decode (dispatching on the object type byte) and run the cheap
        checks now; the signature waits for the request."""
        kind = credentials.object_type(data)
        if kind == credentials.OBJECT_TYPE_SHARE:
            try:
                share = shares.Share.from_bytes(data)
            except shares.ShareError as exc:
                raise ShareRefused(f"share malformed: {exc}") from None
            self._check_share_claims(share)
            return share
        try:
            credential = credentials.Credential.from_bytes(data)
        except credentials.CredentialMalformed as exc:
            raise CredentialRefused(f"credential malformed: {exc}") from None
        self._check_credential_claims(credential)
        return credential

    def _check_credential_claims(self, credential: credentials.Credential) -> None:
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

    def _check_share_claims(self, share: shares.Share) -> crypto.PublicKey:
        """Every check of a share but its signature; returns the signer's key."""
        vehicle_time = self._vehicle_time
        if vehicle_time is None:
            raise ShareRefused("this vehicle has no calendar time to check shares against")
        trust = self._trust
        try:
            return shares.check_share_claims_at_time(
                share,
                signer=lambda kid: self._read_store(lambda: self._store.whitelist_entry(kid)),
                vehicle_id=self._identity.vehicle_id,
                now=self._read_store(vehicle_time),
                is_share_revoked=lambda sid: self._read_store(
                    lambda: self._store.share_revoked(sid)
                ),
                is_key_revoked=(
                    None
                    if trust is None
                    else lambda rev_id: self._read_store(lambda: trust.is_revoked(rev_id))
                ),
            )
        except shares.ShareRevoked as exc:
            raise ShareRefusedRevoked(str(exc)) from None
        except shares.ShareOutsideWindow as exc:
            raise ShareRefusedOutsideWindow(str(exc)) from None
        except shares.ShareError as exc:
            raise ShareRefused(f"share refused: {exc}") from None

    def _issuers(self) -> Mapping[bytes, crypto.PublicKey]:
        if self._trust is None:
            return {}
        return self._read_store(self._trust.issuer_keys)

    # --- store, challenges, sending -------------------------------------------------
    def _read_store(self, read: Callable[[], _T]) -> _T:
        """A store read that fails must end the session with INTERNAL, not crash it."""
        try:
            return read()
        except Exception as exc:
            raise StorageFailure(f"could not read the vehicle state: {exc}") from exc

    def _command_outcome(
        self, role: Role, command: Command
    ) -> tuple[LockState, ResultCode, LockState]:
        """(lock state before, result, lock state after) of an authenticated command."""
        before = self._read_store(self._store.lock_state)
        if role.permits(command):
            return before, ResultCode.OK, lock_state_after(command, before)
        return before, ResultCode.FORBIDDEN, before

    def _answer(self, maced_part: bytes, mac: bytes, *events: VehicleEvent) -> None:
        """Send the MAC'd response (its bytes without the MAC, from
        ``codec.response_maced_part``, then the MAC), report it, and push the
        next challenge and status."""
        self._outgoing.extend(fragment(maced_part + mac, self.att_mtu))
        self._events.extend(events)
        self._issue_challenge()
        self._send_status()

    def _commit(self, change: StateChange, what: str) -> None:
        """Persist before acknowledging; a failure answers INTERNAL, executes nothing."""
        try:
            self._store.commit(change)
        except Exception as exc:
            raise StorageFailure(f"could not persist {what}: {exc}") from exc

    def _issue_challenge(self) -> None:
        nonce = self._rng(NONCE_LEN)
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"rng returned {len(nonce)} bytes, not {NONCE_LEN}")
        # Not the vehicle id: a tag only holders of the card can recognise.
        tag = privacy.challenge_vehicle_tag(self._identity.public_point, nonce)
        challenge = Challenge(self._versions, tag, nonce)
        encoded = challenge_prefix(self._versions) + tag + nonce
        self._outstanding = Outstanding(challenge, encoded, self._clock())
        self._outgoing.extend(fragment(encoded, self.att_mtu))
        self._events.append(ChallengeIssued(nonce))

    def _send_status(self) -> None:
        """Tell the phone, after the answer, what signed news the vehicle could use."""
        trust = self._trust
        if trust is None:
            return
        nonce = self._rng(NONCE_LEN)
        self._time_nonce = (nonce, self._clock())
        self._send(VehicleStatus(self._read_store(trust.revocation_version), nonce))

    def _send(self, message: Message) -> None:
        self._outgoing.extend(fragment(encode(message), self.att_mtu))

    def _reject(self, exc: ProtocolError) -> None:
        """Answer with an unauthenticated Error and stay in ERROR."""
        code = exc.code if isinstance(exc, HandshakeError) else ResultCode.MALFORMED
        if isinstance(exc, StorageFailure):
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


check_versions(SUPPORTED_VERSIONS)


class StorageFailure(LocalProtocolError):
    """The store could not persist or read; nothing was acknowledged."""


def lock_state_after(command: Command, current: LockState) -> LockState:
    if command is Command.UNLOCK:
        return LockState.UNLOCKED
    if command is Command.LOCK:
        return LockState.LOCKED
    return current
