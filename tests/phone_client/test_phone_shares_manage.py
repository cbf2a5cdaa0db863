"""Offline shares and whitelist management, end to end on the virtual radio
with the real vehicle runtime: a friend's phone unlocks with a share (not
outside its window, not after revocation), a keycard window lets a phone
enroll, owners add and remove keys, and ownership moves to a new phone."""

from __future__ import annotations

import time

import pytest
from phone_issue4_rig import (
    VIN,
    Phone,
    PhoneFactory,
    Vehicle,
)

from phone_client import KeyUnavailable
from phone_client.errors import KeyNotOnVehicle, LastOwner, NotOwner
from phone_client.share_book import share_text
from protocol import Command, LockState, ManageOp, ResultCode, Role
from protocol.errors import (
    RejectedEnrollmentClosed,
    RejectedShare,
    RejectedShareOutsideWindow,
    RejectedShareRevoked,
    RejectedUnknownKey,
)
from protocol.events import KeyEnrolled, OwnershipTransferred
from protocol.shares import Share, issue_share

DAY = 86400


def share_for(
    owner: Phone, friend: Phone, vehicle: Vehicle, *, start: int = 0, role: Role = Role.GUEST
) -> Share:
    """What `phonekey phone share` does on the owner's phone, and
    `import-share` on the friend's."""
    now = int(time.time())
    share = issue_share(
        owner.keystore.private_key,
        vehicle_id=vehicle.card.vehicle_id,
        holder_key=friend.keystore.public_key(),
        role=role,
        not_before=now + start - 60,
        not_after=now + start + DAY,
    )
    owner.shares().record_issued(VIN, share)
    friend.shares().import_text(share_text(vehicle.card, share))
    return share


async def test_friend_unlocks_with_a_share_and_its_role_limits_apply(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    owner = await make_phone("owner")
    friend = await make_phone("friend", role=None, card=False)
    share = share_for(owner, friend, vehicle)
    outcome = await friend.run(Command.UNLOCK)
    assert outcome.ok and outcome.credential == "share" and not outcome.fast_path
    assert outcome.lock_state is LockState.UNLOCKED
    assert vehicle.executed()[-1].share_id == share.share_id
    assert not friend.keystore.fast_keys.held(VIN)  # a share holder gets no fast key
    status = await friend.run(Command.STATUS)  # a guest may not ask for the status
    assert status.result is ResultCode.FORBIDDEN


async def test_share_outside_its_window_is_refused(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    owner = await make_phone("owner")
    friend = await make_phone("friend", role=None, card=False)
    share_for(owner, friend, vehicle, start=2 * DAY)
    with pytest.raises(RejectedShareOutsideWindow):
        await friend.run(Command.UNLOCK)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_revoked_share_stops_working(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    owner = await make_phone("owner")
    friend = await make_phone("friend", role=None, card=False)
    share = share_for(owner, friend, vehicle)
    assert (await friend.run(Command.UNLOCK)).ok
    await owner.run(Command.LOCK)
    await owner.manager().revoke_share(VIN, share)
    assert owner.shares().issued(VIN)[0].state(int(time.time())) == "revoked"
    with pytest.raises(RejectedShareRevoked):
        await friend.run(Command.UNLOCK)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_only_an_owner_revokes_and_a_share_holder_cannot_manage(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    owner = await make_phone("owner")
    driver = await make_phone("driver", role=Role.DRIVER)
    friend = await make_phone("friend", role=None, card=False)
    share = share_for(owner, friend, vehicle)
    with pytest.raises(NotOwner) as refused:
        await driver.manager().revoke_share(VIN, share)
    assert refused.value.result is ResultCode.FORBIDDEN
    assert (await friend.run(Command.UNLOCK)).ok


async def test_share_signed_by_a_driver_is_refused(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    driver = await make_phone("driver", role=Role.DRIVER)
    friend = await make_phone("friend", role=None, card=False)
    share_for(driver, friend, vehicle)
    with pytest.raises(RejectedShare):
        await friend.run(Command.UNLOCK)


async def test_enroll_in_an_open_window_then_the_window_is_closed(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    await make_phone("owner")
    newcomer = await make_phone("newcomer", role=None)
    latecomer = await make_phone("latecomer", role=None)
    vehicle.open_window()
    outcome = await newcomer.manager().enroll(VIN)
    assert outcome.operation is ManageOp.ENROLL
    entry = vehicle.store.whitelist_entry(newcomer.key_id)
    assert entry is not None and entry.role is Role.OWNER
    assert any(
        isinstance(e, KeyEnrolled) and e.method == "enrollment-window" for e in vehicle.events
    )
    assert newcomer.keystore.whitelist_accepted(VIN)
    assert (await newcomer.run(Command.UNLOCK)).ok
    # The enrollment consumed the window: the next phone is refused.
    with pytest.raises(RejectedEnrollmentClosed):
        await latecomer.manager().enroll(VIN)
    assert vehicle.store.whitelist_entry(latecomer.key_id) is None


async def test_enroll_without_a_window_is_refused(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    stranger = await make_phone("stranger", role=None)
    with pytest.raises(RejectedEnrollmentClosed):
        await stranger.manager().enroll(VIN)
    assert vehicle.store.whitelist_entry(stranger.key_id) is None


async def test_owner_adds_and_removes_a_key(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    owner = await make_phone("owner")
    friend = await make_phone("friend", role=None)
    with pytest.raises(RejectedUnknownKey):
        await friend.run()
    await owner.manager().add_key(VIN, friend.keystore.public_key(), Role.DRIVER)
    assert (await friend.run(Command.UNLOCK)).ok
    await owner.manager().remove_key(VIN, friend.key_id)
    with pytest.raises(RejectedUnknownKey):
        await friend.run(Command.LOCK)
    with pytest.raises(KeyNotOnVehicle):
        await owner.manager().remove_key(VIN, friend.key_id)


async def test_management_refusals_are_typed(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    owner = await make_phone("owner")
    driver = await make_phone("driver", role=Role.DRIVER)
    with pytest.raises(NotOwner):
        await driver.manager().add_key(VIN, driver.keystore.public_key(), Role.OWNER)
    with pytest.raises(LastOwner):
        await owner.manager().remove_key(VIN, owner.key_id)
    entry = vehicle.store.whitelist_entry(owner.key_id)
    assert entry is not None and entry.role is Role.OWNER


async def test_transfer_hands_the_vehicle_over_and_locks_the_old_owner_out(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    old = await make_phone("old")
    new = await make_phone("new", role=None)
    friend = await make_phone("friend", role=None, card=False)
    share_for(old, friend, vehicle)
    await old.run(Command.UNLOCK)  # the old owner holds a fast key too
    assert old.keystore.fast_keys.held(VIN)
    await old.manager().transfer(VIN, new.keystore.public_key())
    assert any(isinstance(e, OwnershipTransferred) for e in vehicle.events)
    assert not old.keystore.fast_keys.held(VIN) and not old.keystore.whitelist_accepted(VIN)
    assert (await new.run(Command.LOCK)).ok
    with pytest.raises((RejectedUnknownKey, KeyUnavailable)):
        await old.run(Command.UNLOCK)
    with pytest.raises(RejectedShare):  # the old owner's shares died with the transfer
        await friend.run(Command.UNLOCK)
    assert vehicle.store.lock_state() is LockState.LOCKED
