"""The vehicle's side of one BLE connection, sans-IO.

Drive it like h11: feed each received ATT payload to ``receive_data``, call
``next_event`` until it returns ``None``, and send every frame that
``data_to_send`` returns. Call ``start`` when the phone subscribes to
notifications: that pushes the first challenge, so the phone's first command
costs a single round trip.

Checks run cheapest first (state, nonce, version offer, key known, counter,
point validity) and only then the signature, so bogus traffic costs the
vehicle no public-key operation; ``crypto_ops`` counts the ones it did.

The handlers live beside this module: the shared core and authentication in
vehicle_base.py, issuer news in vehicle_updates.py, whitelist management in
vehicle_manage.py, the fast path in vehicle_fastpath.py.

Keyword arguments beyond the original ones (all default to the old
behaviour): ``vehicle_time`` (calendar unix seconds for shares; default
``trust.now`` if a trust is given, else shares are refused), ``enrollment``
(an ``EnrollmentWindow``; None: ENROLL from unknown keys is always refused)
and ``fast_path`` (store fast-path keys and accept ``FastCommandRequest``;
needs a store that persists fast keys).
"""

from __future__ import annotations

from .codec import decode, response_maced_part
from .events import CommandExecuted
from .messages import (
    ChallengeRequest,
    CommandRequest,
    CommandResponse,
    CredentialPresentation,
    FastCommandRequest,
    IssuerUpdate,
    ManageRequest,
    RevocationUpdate,
    TimeUpdate,
)
from .states import vehicle_next_state
from .store import StateChange
from .transcript import fast_path_key, request_transcript_hash, response_key, response_mac
from .types import ResultCode
from .vehicle_base import (
    DEFAULT_CHALLENGE_LIFETIME,
    SUPPORTED_VERSIONS,
    TIME_NONCE_LIFETIME,
    StorageFailure,
    VehicleIdentity,
    check_versions,
)
from .vehicle_fastpath import MAX_FAST_REFUSALS, FastPathHandler
from .vehicle_manage import ManageHandler
from .vehicle_updates import UpdateHandlers

__all__ = [
    "DEFAULT_CHALLENGE_LIFETIME",
    "MAX_FAST_REFUSALS",
    "SUPPORTED_VERSIONS",
    "TIME_NONCE_LIFETIME",
    "StorageFailure",
    "VehicleConnection",
    "VehicleIdentity",
    "check_versions",
]


class VehicleConnection(UpdateHandlers, ManageHandler, FastPathHandler):
    def _handle_frame(self, frame: bytes) -> None:
        data = self._reassembler.feed(frame)
        if data is None:
            return
        message = decode(data)
        self._received = data
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
        elif isinstance(message, ManageRequest):
            self._claimed_key_id = message.key_id
            self._handle_manage(message)
        elif isinstance(message, FastCommandRequest):
            self._claimed_key_id = message.key_id
            self._handle_fast(message)
        self.state = next_state

    def _handle_request(self, request: CommandRequest) -> None:
        outstanding = self._begin(request)
        auth = self._authenticate(request, outstanding, request_transcript_hash)

        # Authenticated from here on.
        before, result, after = self._command_outcome(auth.entry.role, request.command)
        shared = self._ecdh(auth.ephemeral)
        fast_keys: tuple[tuple[bytes, bytes], ...] = ()
        if (
            self._fast_path
            and result is ResultCode.OK
            and auth.via == "whitelist"
            and self._presented is None
        ):
            # Same commit as the counter: the phone derives the same key from
            # this response, so both sides hold it or neither is told.
            fast_keys = (
                (request.key_id, fast_path_key(shared, request.version, auth.transcript_hash)),
            )
        # Persist before acknowledging: counter, spent nonce, lock state, fast key.
        self._commit(
            StateChange(
                key_id=request.key_id,
                counter=request.counter,
                nonce=request.nonce,
                lock_state=after,
                set_fast_keys=fast_keys,
            ),
            "the command",
        )
        body = response_maced_part(
            CommandResponse(result, request.command, request.counter, after, b"")
        )
        key = response_key(shared, request.nonce, request.version, auth.transcript_hash)
        mac = response_mac(key, request.version, auth.transcript_hash, body)
        self._answer(
            body,
            mac,
            CommandExecuted(
                key_id=request.key_id,
                role=auth.entry.role,
                command=request.command,
                result=result,
                lock_state_before=before,
                lock_state=after,
                counter=request.counter,
                credential_serial=auth.credential_serial,
                share_id=auth.share_id,
            ),
        )
