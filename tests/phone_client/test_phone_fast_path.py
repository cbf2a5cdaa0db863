"""The fast path end to end: phone_client through bleak and bumble's virtual
radio to the real vehicle runtime (GATT server, flash store). Nothing mocked;
the vehicle's protocol sessions are only observed (their ``crypto_ops``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from phone_issue4_rig import (
    VIN,
    PhoneFactory,
    RecordedConnections,
    Vehicle,
    phone_factory,
    running_vehicle,
)

from ble_stack.virtual_link import VirtualRadio
from protocol import Command, LockState, ResultCode, Role
from protocol.events import FastPathRefusedEvent
from vehicle_sim.runtime import FirmwareOptions


async def test_second_unlock_takes_the_fast_path_without_public_key_work(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    first = await phone.run(Command.UNLOCK)
    assert first.ok and not first.fast_path and first.fast_path_refused is None
    assert phone.keystore.fast_keys.held(VIN)
    full_ops = dict(vehicle.sessions[-1].crypto_ops)
    assert full_ops.get("ecdsa_verify", 0) >= 1 and full_ops.get("ecdh", 0) >= 1

    second = await phone.run(Command.LOCK)
    assert second.ok and second.fast_path and second.lock_state is LockState.LOCKED
    assert sum(vehicle.sessions[-1].crypto_ops.values()) == 0  # no public-key operation
    executed = vehicle.executed()
    assert [e.fast_path for e in executed] == [False, True]
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_fast_key_file_is_private_and_holds_no_readable_key_in_outcomes(
    make_phone: PhoneFactory,
) -> None:
    phone = await make_phone()
    outcome = await phone.run()
    path = phone.keystore.fast_keys.path
    assert path.stat().st_mode & 0o777 == 0o600
    secret = phone.keystore.fast_keys.get(VIN, phone.key_id, phone.keystore.vehicle(VIN).public_key)
    assert secret is not None
    assert secret.hex() not in repr(outcome) and secret.hex() not in (
        phone.keystore.state_path.read_text()
    )


async def test_vehicle_that_lost_the_fast_key_falls_back_on_the_same_session(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    owner, other = await make_phone("owner"), await make_phone("other")
    await owner.run()  # establishes the fast key on both sides
    assert vehicle.store.fast_key(owner.key_id) is not None
    # Another owner removes and re-adds this key: the vehicle drops its fast key.
    await other.manager().remove_key(VIN, owner.key_id)
    await other.manager().add_key(VIN, owner.keystore.public_key(), Role.OWNER)
    assert vehicle.store.fast_key(owner.key_id) is None

    connections = len(vehicle.sessions)
    async with owner.central().connect(VIN, timeout=5.0) as session:
        done = await session.command(Command.LOCK)
        stats = session.last_stats
    assert len(vehicle.sessions) == connections + 1  # one connection, no reconnect
    assert done.result is ResultCode.OK and not done.fast_path
    assert stats is not None and stats.fast_path_refused is ResultCode.FAST_KEY_UNKNOWN
    refusals = [e for e in vehicle.events if isinstance(e, FastPathRefusedEvent)]
    assert [e.reason for e in refusals] == [ResultCode.FAST_KEY_UNKNOWN]
    # The full handshake's new key is held by both sides: the next one is fast.
    again = await owner.run(Command.UNLOCK)
    assert again.ok and again.fast_path and again.fast_path_refused is None


async def test_stale_key_on_the_phone_is_dropped_and_replaced(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    await phone.run()
    card = phone.keystore.vehicle(VIN)
    # E.g. the phone restored from a backup: its key is not the vehicle's any more.
    phone.keystore.fast_keys.store(VIN, phone.key_id, card.public_key, bytes(32))
    outcome = await phone.run(Command.LOCK)
    assert outcome.ok and not outcome.fast_path and outcome.fast_path_refused == "bad mac"
    assert outcome.lock_state is LockState.LOCKED
    assert phone.keystore.fast_keys.get(VIN, phone.key_id, card.public_key) != bytes(32)
    assert (await phone.run(Command.STATUS)).fast_path


async def test_removed_key_gets_no_fast_unlock(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    from protocol.errors import RejectedUnknownKey

    owner, driver = await make_phone("owner"), await make_phone("driver", role=Role.DRIVER)
    assert (await driver.run()).ok
    await owner.manager().remove_key(VIN, driver.key_id)
    with pytest.raises(RejectedUnknownKey):
        await driver.run(Command.LOCK)  # fast refused, then the full handshake refused too
    assert vehicle.store.lock_state() is LockState.UNLOCKED


async def test_vehicle_without_fast_path_is_not_asked_again(
    radio: VirtualRadio, tmp_path: Path, sessions: RecordedConnections
) -> None:
    options = FirmwareOptions(fast_path=False)
    async with (
        running_vehicle(radio, tmp_path / "slow", sessions, options=options) as vehicle,
        phone_factory(radio, vehicle, tmp_path) as make,
    ):
        phone = await make()
        assert (await phone.run()).ok  # the phone derives a fast key; the vehicle keeps none
        refused = await phone.run(Command.LOCK)
        assert refused.ok and refused.fast_path_refused == "fast path unavailable"
        assert phone.keystore.fast_keys.unavailable(VIN)
        assert not phone.keystore.fast_keys.held(VIN)
        third = await phone.run(Command.UNLOCK)
        assert third.ok and not third.fast_path and third.fast_path_refused is None
