"""The phone's side of one BLE connection, sans-IO.

Drive it like h11: ``receive_data`` for each notification payload,
``next_event`` until ``None``, ``data_to_send`` for frames to write. After the
first ``ChallengeReceived`` event, ``send_command`` produces a signed request;
the matching ``CommandCompleted`` event is the vehicle's authenticated answer.
``send_manage`` does the same for whitelist management (``ManageCompleted``).

Fast path: a ``CommandCompleted`` with ``fast_key`` set hands the caller a
secret to store (replacing any earlier one). Later ``send_fast_command``
uses it instead of a signature; the answer is a ``CommandCompleted`` with
``fast_path=True``, or a ``FastPathRefusedReceived`` event (drop the fast
key), after which the vehicle's next challenge arrives (``ChallengeReceived``)
and ``send_command`` works on the same session.

``next_event`` raises on anything that breaks the protocol (a forged or
mismatched answer, a challenge from another vehicle) and raises a
``VehicleRejected`` subclass when the vehicle sent an unauthenticated Error.
Either way the session is in ERROR for good: make a new connection.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace

from . import crypto, privacy
from .codec import decode, encode
from .errors import (
    BadResponseMac,
    LocalProtocolError,
    NoCommonVersion,
    ProtocolError,
    WrongVehicle,
    rejection_for,
)
from .events import (
    ChallengeReceived,
    CommandCompleted,
    FastPathRefusedReceived,
    ManageCompleted,
    PhoneEvent,
    VehicleStatusReceived,
)
from .framing import Clock, Reassembler, fragment
from .manage import InvalidManageArgument, check_length
from .messages import (
    Challenge,
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    CredentialPresentation,
    ErrorMessage,
    FastCommandRequest,
    FastPathRefused,
    IssuerUpdate,
    ManageRequest,
    ManageResponse,
    Message,
    RevocationUpdate,
    TimeUpdate,
    VehicleStatus,
)
from .states import PhoneState, phone_next_state
from .transcript import (
    fast_path_key,
    fast_request_mac,
    fast_response_key,
    fast_response_mac,
    fast_transcript_hash,
    manage_response_key,
    manage_response_mac,
    manage_transcript_hash,
    request_transcript_hash,
    response_key,
    response_mac,
)
from .types import Command, ManageOp, ResultCode
from .vehicle import SUPPORTED_VERSIONS, check_versions


@dataclass(frozen=True)
class _Held:
    challenge: Challenge
    encoded: bytes
    version: int


@dataclass(frozen=True)
class _Pending:
    request: CommandRequest | ManageRequest | FastCommandRequest
    transcript_hash: bytes
    response_key: bytes = field(repr=False)
    fast_key: bytes | None = field(default=None, repr=False)  # offered if the answer is OK


class PhoneConnection:
    def __init__(
        self,
        private_key: crypto.PrivateKey,
        vehicle_public_key: crypto.PublicKey,
        *,
        clock: Clock,
        rng: crypto.Random,
        att_mtu: int = 23,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
    ) -> None:
        check_versions(versions)
        self._private_key = private_key
        self._key_id = crypto.key_id(private_key.public_key())
        self._vehicle_key = vehicle_public_key
        self._vehicle_point = crypto.public_bytes(vehicle_public_key, compressed=False)
        self._rng = rng
        self.att_mtu = att_mtu
        self._versions = versions
        self._reassembler = Reassembler(clock)
        self._incoming: deque[bytes] = deque()
        self._outgoing: list[bytes] = []
        self._held: _Held | None = None
        self._pending: _Pending | None = None
        self._credential_digest: bytes | None = None
        self.state = PhoneState.WAIT_CHALLENGE
        self.error: ProtocolError | None = None

    @property
    def key_id(self) -> bytes:
        return self._key_id

    # --- driver API -----------------------------------------------------------
    def receive_data(self, frame: bytes) -> None:
        if self.state is PhoneState.ERROR:
            raise LocalProtocolError("session is in ERROR; reconnect")
        self._incoming.append(bytes(frame))

    def next_event(self) -> PhoneEvent | None:
        while self._incoming:
            if self.state is PhoneState.ERROR:
                return None
            frame = self._incoming.popleft()
            try:
                event = self._handle_frame(frame)
            except ProtocolError as exc:
                self.state = PhoneState.ERROR
                self.error = exc
                self._held = self._pending = None
                raise
            if event is not None:
                return event
        return None

    def data_to_send(self) -> list[bytes]:
        frames, self._outgoing = self._outgoing, []
        return frames

    def request_challenge(self) -> None:
        """Ask for a fresh challenge (e.g. when the held one may have expired)."""
        if self.state not in (PhoneState.WAIT_CHALLENGE, PhoneState.READY):
            raise LocalProtocolError(f"cannot request a challenge in state {self.state.value}")
        self._held = None
        self.state = PhoneState.WAIT_CHALLENGE
        self._send(ChallengeRequest())

    def present_credential(self, credential: bytes) -> None:
        """Send an issuer-signed credential for our key; every later request on
        this session binds its digest. Needs no answer, so it adds no round trip:
        call it right after connecting, even before the first challenge."""
        if self.state is PhoneState.ERROR:
            raise LocalProtocolError("session is in ERROR; reconnect")
        self._send(CredentialPresentation(credential))
        self._credential_digest = hashlib.sha256(credential).digest()

    def send_revocation_update(self, delta: bytes) -> None:
        """Hand the vehicle an issuer-signed revocation delta (after a command)."""
        self._send_update(RevocationUpdate(delta))

    def send_time_update(self, signed_time: bytes) -> None:
        """Hand the vehicle issuer-signed time bound to its latest time nonce."""
        self._send_update(TimeUpdate(signed_time))

    def send_issuer_update(self, rotation: bytes) -> None:
        """Hand the vehicle an issuer rotation signed by an issuer key it trusts."""
        self._send_update(IssuerUpdate(rotation))

    def _send_update(self, message: RevocationUpdate | TimeUpdate | IssuerUpdate) -> None:
        if self.state not in (PhoneState.WAIT_CHALLENGE, PhoneState.READY):
            raise LocalProtocolError(f"cannot send an update in state {self.state.value}")
        self._send(message)

    def send_command(self, command: Command, counter: int) -> None:
        """Sign ``command`` over the held challenge. ``counter`` must be above
        every counter this key used with this vehicle (persist it first)."""
        if self.state is not PhoneState.READY or self._held is None:
            raise LocalProtocolError(f"no challenge held (state {self.state.value})")
        try:
            command = Command(command)
        except ValueError:
            raise LocalProtocolError(f"undefined command {command!r}") from None
        if not 0 < counter < 2**64:
            raise LocalProtocolError("counter must be in 1..2**64-1")
        held, self._held = self._held, None
        ephemeral = crypto.private_key_from_random(self._rng)
        unsigned = CommandRequest(
            version=held.version,
            offered_versions=held.challenge.versions,
            nonce=held.challenge.nonce,
            key_id=self._key_id,
            counter=counter,
            command=command,
            ephemeral_key=crypto.public_bytes(ephemeral.public_key()),
            signature=b"",
        )
        th = request_transcript_hash(
            held.encoded, self._vehicle_point, unsigned, self._credential_digest
        )
        request = replace(unsigned, signature=crypto.sign(self._private_key, th))
        shared = crypto.ecdh(ephemeral, self._vehicle_key)
        key = response_key(shared, request.nonce, request.version, th)
        # The vehicle keeps a fast key only for whitelisted keys without a
        # credential or share; with one presented there is nothing to offer.
        fast_key = (
            fast_path_key(shared, request.version, th) if self._credential_digest is None else None
        )
        self._pending = _Pending(request, th, key, fast_key)
        self._send(request)
        self.state = PhoneState.AWAIT_RESPONSE

    def send_manage(self, operation: ManageOp, argument: bytes, counter: int) -> None:
        """Sign a whitelist operation over the held challenge (see
        protocol/manage.py for the argument builders). ``counter`` is the
        same per-vehicle counter as for commands (persist it first)."""
        held = self._held_challenge()
        try:
            operation = ManageOp(operation)
            check_length(operation, argument)
        except (ValueError, InvalidManageArgument) as exc:
            raise LocalProtocolError(f"cannot send this management request: {exc}") from None
        self._check_counter(counter)
        self._held = None
        ephemeral = crypto.private_key_from_random(self._rng)
        unsigned = ManageRequest(
            version=held.version,
            offered_versions=held.challenge.versions,
            nonce=held.challenge.nonce,
            key_id=self._key_id,
            counter=counter,
            operation=operation,
            argument=bytes(argument),
            ephemeral_key=crypto.public_bytes(ephemeral.public_key()),
            signature=b"",
        )
        th = manage_transcript_hash(
            held.encoded, self._vehicle_point, unsigned, self._credential_digest
        )
        request = replace(unsigned, signature=crypto.sign(self._private_key, th))
        shared = crypto.ecdh(ephemeral, self._vehicle_key)
        key = manage_response_key(shared, request.nonce, request.version, th)
        self._pending = _Pending(request, th, key)
        self._send(request)
        self.state = PhoneState.AWAIT_MANAGE_RESPONSE

    def send_fast_command(self, command: Command, counter: int, fast_key: bytes) -> None:
        """Send ``command`` authenticated with ``fast_key`` (from an earlier
        ``CommandCompleted.fast_key``) instead of a signature. The answer is a
        ``CommandCompleted`` (``fast_path=True``) or ``FastPathRefusedReceived``."""
        held = self._held_challenge()
        try:
            command = Command(command)
        except ValueError:
            raise LocalProtocolError(f"undefined command {command!r}") from None
        if len(fast_key) != crypto.MAC_LEN:
            raise LocalProtocolError(f"a fast key is {crypto.MAC_LEN} bytes")
        self._check_counter(counter)
        self._held = None
        unsigned = FastCommandRequest(
            version=held.version,
            nonce=held.challenge.nonce,
            key_id=self._key_id,
            counter=counter,
            command=command,
            mac=b"",
        )
        th = fast_transcript_hash(held.encoded, self._vehicle_point, unsigned)
        request = replace(unsigned, mac=fast_request_mac(fast_key, unsigned.version, th))
        key = fast_response_key(fast_key, request.nonce, request.version, th)
        self._pending = _Pending(request, th, key)
        self._send(request)
        self.state = PhoneState.AWAIT_FAST_RESPONSE

    def _held_challenge(self) -> _Held:
        if self.state is not PhoneState.READY or self._held is None:
            raise LocalProtocolError(f"no challenge held (state {self.state.value})")
        return self._held

    @staticmethod
    def _check_counter(counter: int) -> None:
        if not 0 < counter < 2**64:
            raise LocalProtocolError("counter must be in 1..2**64-1")

    # --- handling ---------------------------------------------------------------
    def _handle_frame(self, frame: bytes) -> PhoneEvent | None:
        data = self._reassembler.feed(frame)
        if data is None:
            return None
        message = decode(data)
        next_state = phone_next_state(self.state, message)
        event: PhoneEvent | None = None
        if isinstance(message, ErrorMessage):
            # Unauthenticated: report the failure, never a vehicle state.
            raise rejection_for(message.code)
        if isinstance(message, Challenge):
            event = self._accept_challenge(message, data)
        elif isinstance(message, VehicleStatus):
            event = VehicleStatusReceived(message.revocation_version, message.time_nonce)
        elif isinstance(message, CommandResponse):
            event = self._accept_response(message)
        elif isinstance(message, ManageResponse):
            event = self._accept_manage_response(message)
        elif isinstance(message, FastPathRefused):
            self._pending = None
            event = FastPathRefusedReceived(message.reason)
        self.state = next_state
        return event

    def _accept_challenge(self, challenge: Challenge, encoded: bytes) -> ChallengeReceived:
        expected = privacy.challenge_vehicle_tag(self._vehicle_point, challenge.nonce)
        if not crypto.constant_time_equal(challenge.vehicle_tag, expected):
            raise WrongVehicle("the challenge's vehicle tag is not this card's vehicle")
        common = set(challenge.versions) & set(self._versions)
        if not common:
            raise NoCommonVersion(
                f"vehicle offers versions {challenge.versions}, phone speaks {self._versions}"
            )
        version = max(common)
        self._held = _Held(challenge, encoded, version)
        return ChallengeReceived(version)

    def _accept_response(self, response: CommandResponse) -> CommandCompleted:
        pending, self._pending = self._pending, None
        assert pending is not None  # guaranteed by the state table
        request = pending.request
        assert isinstance(request, CommandRequest | FastCommandRequest)
        fast = isinstance(request, FastCommandRequest)
        mac_of = fast_response_mac if fast else response_mac
        expected = mac_of(pending.response_key, request.version, pending.transcript_hash, response)
        if not crypto.constant_time_equal(expected, response.mac):
            raise BadResponseMac("the response is not the vehicle's answer to our request")
        # Covered by the MAC already; checked so a vehicle bug cannot confuse us.
        if response.command is not request.command or response.counter != request.counter:
            raise BadResponseMac("the response answers a different command")
        return CommandCompleted(
            command=response.command,
            result=response.result,
            lock_state=response.lock_state,
            counter=response.counter,
            fast_key=pending.fast_key if response.result is ResultCode.OK else None,
            fast_path=fast,
        )

    def _accept_manage_response(self, response: ManageResponse) -> ManageCompleted:
        pending, self._pending = self._pending, None
        assert pending is not None  # guaranteed by the state table
        request = pending.request
        assert isinstance(request, ManageRequest)
        expected = manage_response_mac(
            pending.response_key, request.version, pending.transcript_hash, response
        )
        if not crypto.constant_time_equal(expected, response.mac):
            raise BadResponseMac("the response is not the vehicle's answer to our request")
        if response.operation is not request.operation or response.counter != request.counter:
            raise BadResponseMac("the response answers a different operation")
        return ManageCompleted(response.operation, response.result, response.counter)

    def _send(self, message: Message) -> None:
        self._outgoing.extend(fragment(encode(message), self.att_mtu))
