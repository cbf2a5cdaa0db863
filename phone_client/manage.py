"""Whitelist management over BLE: enroll, add or remove a key, revoke a share,
transfer ownership (docs/protocol.md section 11).

Each operation is one signed ``ManageRequest`` on a fresh session, answered
under the vehicle's MAC. OK returns a ``ManageOutcome``; the authenticated
refusals raise typed errors (``NotOwner`` for FORBIDDEN, ``KeyNotOnVehicle``
for NOT_FOUND, ``LastOwner`` for LAST_OWNER); unauthenticated refusals raise
the protocol's ``VehicleRejected`` subclasses as they are, e.g.
``RejectedEnrollmentClosed`` when no keycard opened the enrollment window.

The phone's own records follow the vehicle's answer: an enrolled phone is on
the whitelist; a phone that removed its own key or transferred the vehicle
is not any more (its fast-path key is dropped); a revoked share is marked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from protocol import ManageOp, ResultCode, Role, crypto
from protocol import manage as arguments
from protocol.shares import Share

from .central import DEFAULT_TIMEOUT, PhoneKey
from .errors import KeyNotOnVehicle, LastOwner, ManageRefused, NotOwner
from .keystore import KeyStore
from .share_book import ShareBook

_WHAT: Final = {
    ManageOp.ENROLL: "enroll this phone",
    ManageOp.ADD_KEY: "add the key",
    ManageOp.REMOVE_KEY: "remove the key",
    ManageOp.REVOKE_SHARE: "revoke the share",
    ManageOp.TRANSFER_OWNERSHIP: "transfer ownership",
}


@dataclass(frozen=True)
class ManageOutcome:
    """The vehicle's authenticated OK to one whitelist operation."""

    vin: str
    operation: ManageOp
    counter: int
    key_id: bytes  # this phone's key id
    seconds: float  # scan until the answer


class Manager:
    """Runs whitelist operations for the phone of ``keystore`` (radio options as
    for ``run_command``)."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        client_kwargs: Mapping[str, Any] | None = None,
        scanner_kwargs: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_mtu: int | None = None,
    ) -> None:
        self.keystore = keystore
        self.timeout = timeout
        self._phone = PhoneKey(
            keystore, client_kwargs=client_kwargs, scanner_kwargs=scanner_kwargs, max_mtu=max_mtu
        )

    async def enroll(self, vin: str) -> ManageOutcome:
        """Become an owner while the vehicle's keycard enrollment window is open."""
        argument = arguments.enroll_argument(self.keystore.public_key())
        outcome = await self.run(vin, ManageOp.ENROLL, argument)
        self.keystore.set_whitelist_accepted(outcome.vin, True)
        return outcome

    async def add_key(self, vin: str, public_key: crypto.PublicKey, role: Role) -> ManageOutcome:
        return await self.run(vin, ManageOp.ADD_KEY, arguments.add_key_argument(public_key, role))

    async def remove_key(self, vin: str, key_id: bytes) -> ManageOutcome:
        outcome = await self.run(vin, ManageOp.REMOVE_KEY, arguments.remove_key_argument(key_id))
        if key_id == outcome.key_id:
            self._left_vehicle(outcome.vin)
        return outcome

    async def revoke_share(self, vin: str, share: Share) -> ManageOutcome:
        argument = arguments.revoke_share_argument(share.share_id, share.not_after)
        outcome = await self.run(vin, ManageOp.REVOKE_SHARE, argument)
        ShareBook(self.keystore).mark_revoked(outcome.vin, share.share_id)
        return outcome

    async def transfer(self, vin: str, new_owner: crypto.PublicKey) -> ManageOutcome:
        argument = arguments.transfer_argument(new_owner)
        outcome = await self.run(vin, ManageOp.TRANSFER_OWNERSHIP, argument)
        if crypto.key_id(new_owner) != outcome.key_id:
            self._left_vehicle(outcome.vin)
        return outcome

    async def run(self, vin: str, operation: ManageOp, argument: bytes) -> ManageOutcome:
        """Scan, connect, send one operation, disconnect; raises on anything but OK."""
        card = self.keystore.vehicle(vin)
        start = time.perf_counter()
        async with self._phone.connect(card, timeout=self.timeout) as session:
            # No fast path here: management always runs the full, signed handshake.
            done = await session.manage(operation, argument)
        seconds = time.perf_counter() - start
        if done.result is not ResultCode.OK:
            raise refusal(card.vin, operation, done.result)
        return ManageOutcome(card.vin, operation, done.counter, session.key_id, seconds)

    def _left_vehicle(self, vin: str) -> None:
        """This phone's key is no longer on the vehicle's whitelist."""
        self.keystore.set_whitelist_accepted(vin, False)
        self.keystore.fast_keys.drop(vin)


def refusal(vin: str, operation: ManageOp, result: ResultCode) -> ManageRefused:
    """The typed error of an authenticated refusal."""
    what = _WHAT.get(operation, operation.name.lower())
    if result is ResultCode.FORBIDDEN:
        return NotOwner(
            f"vehicle {vin} refused to {what}: this phone's key is not an owner there", result
        )
    if result is ResultCode.NOT_FOUND:
        return KeyNotOnVehicle(
            f"vehicle {vin} refused to {what}: that key is not on its whitelist", result
        )
    if result is ResultCode.LAST_OWNER:
        return LastOwner(
            f"vehicle {vin} refused to {what}: it would be left without an owner "
            "(add another owner first)",
            result,
        )
    return ManageRefused(f"vehicle {vin} refused to {what} ({result.name})", result)
