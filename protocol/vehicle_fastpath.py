"""The fast path: a command authenticated with the persistent fast-path key,
so the vehicle does no public-key operation at all (docs/protocol.md
section 10).

Every check is cheap (nonce, version, revocation, whitelist, fast key,
counter, HMAC). A failure is NOT fatal: the vehicle answers FastPathRefused
with the reason, issues a new challenge, and the phone falls back to a full
CommandRequest on the same session. The nonce is spent either way, so a
recorded fast request can never be replayed. After ``MAX_FAST_REFUSALS`` on
one session the next failure ends it like any other protocol error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Final

from . import crypto
from .codec import response_maced_part
from .errors import (
    CredentialRefusedRevoked,
    FastPathFailure,
    HandshakeError,
    StaleCounter,
    UnknownKey,
    UnsupportedVersion,
)
from .events import CommandExecuted, FastPathRefusedEvent
from .messages import CommandResponse, FastCommandRequest, FastPathRefused
from .store import StateChange, WhitelistEntry
from .transcript import (
    fast_request_mac,
    fast_response_key,
    fast_response_mac,
    fast_transcript_hash,
)
from .types import ResultCode
from .vehicle_base import Outstanding, StorageFailure, VehicleBase

MAX_FAST_REFUSALS: Final = 3
"""Fast-path refusals one session may collect before the next one is fatal."""


@dataclass(frozen=True)
class _FastAuth:
    entry: WhitelistEntry
    fast_key: bytes
    transcript_hash: bytes


class FastPathHandler(VehicleBase):
    _fast_refusals: int = 0

    def _handle_fast(self, request: FastCommandRequest) -> None:
        try:
            auth = self._check_fast(request)
        except StorageFailure:
            raise
        except HandshakeError as exc:
            self._refuse_fast(request.key_id, exc)
            return
        before, result, after = self._command_outcome(auth.entry.role, request.command)
        self._commit(
            StateChange(
                key_id=request.key_id,
                counter=request.counter,
                nonce=request.nonce,
                lock_state=after,
            ),
            "the command",
        )
        body = response_maced_part(
            CommandResponse(result, request.command, request.counter, after, b"")
        )
        key = fast_response_key(auth.fast_key, request.nonce, request.version, auth.transcript_hash)
        mac = fast_response_mac(key, request.version, auth.transcript_hash, body)
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
                fast_path=True,
            ),
        )

    def _check_fast(self, request: FastCommandRequest) -> _FastAuth:
        key_id = request.key_id
        outstanding = self._take_outstanding(request.nonce)  # spent whatever happens next
        if not self._fast_path:
            raise FastPathFailure(
                ResultCode.FAST_PATH_UNAVAILABLE, "this vehicle does not offer the fast path"
            )
        if request.version not in outstanding.challenge.versions:
            raise UnsupportedVersion(f"version {request.version} was not offered")
        try:
            self._check_not_revoked(key_id)
        except CredentialRefusedRevoked:
            self._drop_fast_key(key_id)
            raise
        entry = self._read_store(partial(self._store.whitelist_entry, key_id))
        if entry is None:
            raise UnknownKey("key id not on the whitelist")
        fast_key = self._read_store(partial(self._store.fast_key, key_id))
        if fast_key is None:
            raise FastPathFailure(ResultCode.FAST_KEY_UNKNOWN, "no fast-path key for this key")
        if request.counter <= self._read_store(partial(self._store.last_counter, key_id)):
            raise StaleCounter("counter not above the last accepted one")
        th = self._fast_transcript(outstanding, request)
        expected = fast_request_mac(fast_key, request.version, th)
        if not crypto.constant_time_equal(expected, request.mac):
            raise FastPathFailure(ResultCode.BAD_MAC, "fast-path MAC does not verify")
        return _FastAuth(entry, fast_key, th)

    def _fast_transcript(self, outstanding: Outstanding, request: FastCommandRequest) -> bytes:
        return fast_transcript_hash(
            outstanding.encoded,
            self._identity.public_point,
            request,
            maced_part=self._received[: -crypto.MAC_LEN],
        )

    def _drop_fast_key(self, key_id: bytes) -> None:
        if self._read_store(partial(self._store.fast_key, key_id)) is not None:
            self._commit(StateChange(drop_fast_keys=(key_id,)), "the fast-key wipe")

    def _refuse_fast(self, key_id: bytes, exc: HandshakeError) -> None:
        self._fast_refusals += 1
        if self._fast_refusals > MAX_FAST_REFUSALS:
            raise exc  # fatal now: Error, session in ERROR
        self._send(FastPathRefused(exc.code))
        self._events.append(FastPathRefusedEvent(key_id, exc.code, str(exc)))
        self._issue_challenge()
