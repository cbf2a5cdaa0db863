"""The demo's firmware steps: fast path, keycard, enrollment and offline sharing.

Runs against the demo's live vehicle: the owner's next unlock rides the fast
path (no public-key operation on the vehicle); with every phone "lost", the
keycard opens and locks the car; a keycard tap opens the pairing window in
which a new phone enrolls itself as an owner (and outside one, a stranger's
enrollment is refused); the owner shares a guest key with a friend offline,
the friend unlocks with it, and the owner revokes it over BLE.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from phone_client.manage import Manager
from phone_client.share_book import ShareBook, share_text
from protocol import Command, Role, crypto
from protocol.card import VehicleCard
from protocol.shares import issue_share
from vehicle_sim.keycard import TapAction
from vehicle_sim.runtime import VehicleRuntime

if TYPE_CHECKING:
    from .demo import Demo, Outcome, _Phone

SHARE_DAYS = 7


async def firmware_steps(
    demo: Demo,
    runtime: VehicleRuntime,
    keycard: crypto.PrivateKey,
    card: VehicleCard,
    owner: _Phone,
    stranger: _Phone,
) -> None:
    await demo._step(
        owner, Command.UNLOCK, "owner unlocks on the fast path", "unlocked", expect_fast=True
    )
    await demo._step(owner, Command.LOCK, "owner locks", "locked")

    def tap(action: TapAction) -> Callable[[], Awaitable[Outcome]]:
        async def run() -> Outcome:
            result = runtime.card_reader.tap_with_card(keycard, action)
            return "unlocked" if result.get("lock_state") == "unlocked" else "locked"

        return run

    demo.say("\n-- every phone is lost or dead: the keycard is the backup key --")
    await demo._action_step("keycard unlocks", "unlocked", tap(TapAction.UNLOCK))
    await demo._action_step("keycard locks", "locked", tap(TapAction.LOCK))

    new_phone = await demo._make_phone("new-phone", card, whitelisted=True)
    await demo._action_step(
        "stranger enrolls without a keycard: denied", "denied", _enroll(demo, stranger)
    )
    runtime.card_reader.tap_with_card(keycard, TapAction.PAIR, window=30.0)
    demo.say("keycard tapped: the pairing window is open for 30 s")
    await demo._action_step(
        "new phone enrolls as owner in the window", "enrolled", _enroll(demo, new_phone)
    )
    await demo._step(new_phone, Command.UNLOCK, "new owner phone unlocks", "unlocked")
    await demo._step(new_phone, Command.LOCK, "new owner phone locks", "locked")

    demo.say("\n-- the owner shares a guest key with a friend, offline --")
    friend = await demo._make_phone("friend", card, whitelisted=False)
    share = issue_share(
        owner.keystore.private_key,
        vehicle_id=card.vehicle_id,
        holder_key=friend.keystore.public_key(),
        role=Role.GUEST,
        not_before=int(time.time()) - 60,
        not_after=int((datetime.now(UTC) + timedelta(days=SHARE_DAYS)).timestamp()),
    )
    ShareBook(owner.keystore).record_issued(card.vin, share)
    owner_key = owner.keystore.public_key()
    ShareBook(friend.keystore).import_text(share_text(card, share, owner_key))
    demo.say(f"owner signed share {share.share_id.hex()[:8]} (guest, {SHARE_DAYS} days)")
    await demo._step(friend, Command.UNLOCK, "friend unlocks with the share", "unlocked")
    await demo._step(friend, Command.LOCK, "friend locks with the share", "locked")
    await demo._action_step(
        "owner revokes the share over BLE",
        "revoked",
        _revoke_share(demo, owner, card, share.share_id),
    )
    await demo._step(friend, Command.UNLOCK, "friend with a revoked share: denied", "denied")


def _manager(phone: _Phone) -> Manager:
    from .demo import STEP_TIMEOUT

    return Manager(
        phone.keystore,
        client_kwargs=phone.client_kwargs,
        scanner_kwargs=phone.scanner_kwargs,
        timeout=STEP_TIMEOUT,
    )


def _enroll(demo: Demo, phone: _Phone) -> Callable[[], Awaitable[Outcome]]:
    async def run() -> Outcome:
        await _manager(phone).enroll(demo.vin)
        return "enrolled"

    return run


def _revoke_share(
    demo: Demo, owner: _Phone, card: VehicleCard, share_id: bytes
) -> Callable[[], Awaitable[Outcome]]:
    async def run() -> Outcome:
        held = ShareBook(owner.keystore).find_issued(card.vin, share_id.hex())
        await _manager(owner).revoke_share(card.vin, held.share)
        return "revoked"

    return run
