"""Whitelist management over BLE: the vehicle's handling of ``ManageRequest``.

Owners add and remove keys, revoke shares and transfer ownership; a key that
is not on the whitelist may ENROLL itself as an owner only while the
enrollment window (a keycard tap) is open. Checks run cheapest first: state,
nonce, version, the argument, key known or window open, counter, points; then
the signature. An authenticated refusal (FORBIDDEN, NOT_FOUND, LAST_OWNER)
comes under the vehicle's MAC and moves only the requester's counter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from .codec import response_maced_part
from .errors import BadManageArgument, EnrollmentClosed
from .events import (
    KeyEnrolled,
    KeyRemoved,
    ManageRefused,
    OwnershipTransferred,
    ShareRevoked,
    VehicleEvent,
)
from .manage import (
    AddKeyArgument,
    InvalidManageArgument,
    KeyArgument,
    ManageArgument,
    RemoveKeyArgument,
    RevokeShareArgument,
    parse_argument,
)
from .messages import ManageRequest, ManageResponse
from .store import StateChange, WhitelistEntry
from .transcript import manage_response_key, manage_response_mac, manage_transcript_hash
from .types import ManageOp, ResultCode, Role
from .vehicle_base import Authenticated, VehicleBase

ENROLLMENT_METHOD: Final = "enrollment-window"
OWNER_METHOD: Final = "owner"

_Decision = tuple[ResultCode, StateChange, list[VehicleEvent], bool]
"""(result, what to commit besides counter and nonce, events, consumes the window)."""


class ManageHandler(VehicleBase):
    def _handle_manage(self, request: ManageRequest) -> None:
        outstanding = self._begin(request)
        try:
            argument = parse_argument(request.operation, request.argument)
        except InvalidManageArgument as exc:
            raise BadManageArgument(str(exc)) from None
        enrolling_key = None
        if isinstance(argument, KeyArgument) and request.operation is ManageOp.ENROLL:
            if argument.key_id != request.key_id:
                raise BadManageArgument("ENROLL must name the requester's own key")
            known = self._read_store(lambda: self._store.whitelist_entry(request.key_id))
            if known is None:
                if not self._enrollment_open():
                    raise EnrollmentClosed("no enrollment window is open; tap the keycard first")
                enrolling_key = argument.public_key
        auth = self._authenticate(
            request, outstanding, manage_transcript_hash, enrolling_key=enrolling_key
        )

        # Authenticated from here on.
        result, change, events, consumes_window = self._decide(request, argument, auth)
        shared = self._ecdh(auth.ephemeral)
        self._commit(
            replace(change, key_id=request.key_id, counter=request.counter, nonce=request.nonce),
            "the management operation",
        )
        if consumes_window and self._enrollment is not None:
            self._enrollment.consume()
        body = response_maced_part(ManageResponse(result, request.operation, request.counter, b""))
        key = manage_response_key(shared, request.nonce, request.version, auth.transcript_hash)
        mac = manage_response_mac(key, request.version, auth.transcript_hash, body)
        self._answer(body, mac, *events)

    def _enrollment_open(self) -> bool:
        window = self._enrollment
        return window is not None and bool(self._read_store(window.is_open))

    def _decide(
        self, request: ManageRequest, argument: ManageArgument, auth: Authenticated
    ) -> _Decision:
        requester = request.key_id
        role = auth.entry.role
        if request.operation is ManageOp.ENROLL:
            return self._decide_enroll(requester, auth)
        is_owner = auth.via == "whitelist" and role.may_manage()
        if not is_owner:
            return self._refused(request, ResultCode.FORBIDDEN)
        if isinstance(argument, AddKeyArgument):
            if argument.role is Role.OWNER and not role.may_manage():  # pragma: no cover
                return self._refused(request, ResultCode.FORBIDDEN)
            target = argument.key_id
            current = self._read_store(lambda: self._store.whitelist_entry(target))
            if (
                current is not None
                and current.role is Role.OWNER
                and argument.role is not Role.OWNER
                and self._owner_count() <= 1
            ):
                return self._refused(request, ResultCode.LAST_OWNER)
            entry = WhitelistEntry(argument.public_key, argument.role)
            # A role change must not leave a fast key minted under the old role.
            change = StateChange(add_keys=(entry,), drop_fast_keys=(target,))
            event = KeyEnrolled(target, argument.role, requester, OWNER_METHOD)
            return ResultCode.OK, change, [event], False
        if isinstance(argument, RemoveKeyArgument):
            target = argument.key_id
            current = self._read_store(lambda: self._store.whitelist_entry(target))
            if current is None:
                return self._refused(request, ResultCode.NOT_FOUND)
            if current.role is Role.OWNER and self._owner_count() <= 1:
                return self._refused(request, ResultCode.LAST_OWNER)
            change = StateChange(remove_keys=(target,))
            return ResultCode.OK, change, [KeyRemoved(target, requester)], False
        if isinstance(argument, RevokeShareArgument):
            change = StateChange(revoke_shares=((argument.share_id, argument.not_after),))
            return ResultCode.OK, change, [ShareRevoked(argument.share_id, requester)], False
        assert isinstance(argument, KeyArgument)  # TRANSFER_OWNERSHIP
        new_owner = WhitelistEntry(argument.public_key, Role.OWNER)
        change = StateChange(wipe=True, add_keys=(new_owner,))
        return ResultCode.OK, change, [OwnershipTransferred(argument.key_id, requester)], False

    def _decide_enroll(self, requester: bytes, auth: Authenticated) -> _Decision:
        """ENROLL: in an open window the requester becomes an owner (new key,
        or an existing driver/guest upgraded) and the window closes; outside
        one a whitelisted owner gets OK (nothing to do), anyone else FORBIDDEN."""
        if auth.via == "enrollment" or (
            auth.entry.role is not Role.OWNER and self._enrollment_open()
        ):
            entry = WhitelistEntry(auth.entry.public_key, Role.OWNER)
            change = StateChange(add_keys=(entry,), drop_fast_keys=(requester,))
            event = KeyEnrolled(requester, Role.OWNER, requester, ENROLLMENT_METHOD)
            return ResultCode.OK, change, [event], True
        if auth.entry.role is Role.OWNER:
            return ResultCode.OK, StateChange(), [], False
        return (
            ResultCode.FORBIDDEN,
            StateChange(),
            [ManageRefused(requester, ManageOp.ENROLL, ResultCode.FORBIDDEN)],
            False,
        )

    def _refused(self, request: ManageRequest, result: ResultCode) -> _Decision:
        return (
            result,
            StateChange(),
            [ManageRefused(request.key_id, request.operation, result)],
            False,
        )

    def _owner_count(self) -> int:
        return sum(1 for e in self._read_store(self._store.keys) if e.role is Role.OWNER)
