"""Phones unlock the simulated vehicle through bleak's public API, end to end.

Everything is real: bumble host stacks and software controllers on one
VirtualRadio, the bleak backends over them, the vehicle_sim runtime with its
file store, and phone_client's central. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID
from phone_client import ConnectionLost, VehicleNotFound, scan_vehicles
from protocol import (
    Command,
    LockState,
    PhoneConnection,
    PhoneState,
    ResultCode,
    Role,
)
from protocol.card import VehicleCard
from protocol.errors import RejectedUnknownKey
from tests.phone_client.phone_issue4_rig import TIMEOUT, VIN, PhoneFactory, Vehicle


async def test_unlock_status_lock(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    phone = await make_phone()
    assert vehicle.store.lock_state() is LockState.LOCKED

    unlocked = await phone.run(Command.UNLOCK)
    assert (unlocked.result, unlocked.lock_state) == (ResultCode.OK, LockState.UNLOCKED)
    assert vehicle.store.lock_state() is LockState.UNLOCKED
    latency = unlocked.latency
    assert latency.scan is not None and latency.connect is not None
    assert latency.challenge is not None and 0 < latency.command < latency.total
    assert unlocked.key_id == phone.keystore.key_id()

    status = await phone.run(Command.STATUS)
    assert (status.command, status.lock_state) == (Command.STATUS, LockState.UNLOCKED)

    locked = await phone.run(Command.LOCK)
    assert locked.lock_state is LockState.LOCKED
    assert vehicle.store.lock_state() is LockState.LOCKED
    # Every command used a fresh, higher counter, and the vehicle recorded the last one.
    assert unlocked.counter < status.counter < locked.counter
    assert vehicle.store.last_counter(phone.keystore.key_id()) == locked.counter


async def test_commands_on_one_connection_take_one_round_trip_each(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    async with phone.central().connect(VIN, timeout=TIMEOUT) as session:
        assert session.att_mtu == 247
        for command, state in [
            (Command.UNLOCK, LockState.UNLOCKED),
            (Command.STATUS, LockState.UNLOCKED),
            (Command.LOCK, LockState.LOCKED),
        ]:
            done = await session.command(command)
            assert (done.result, done.lock_state) == (ResultCode.OK, state)
            stats = session.last_stats
            assert stats is not None and not stats.refreshed_challenge
            assert stats.frames_written == 1  # the whole request in one ATT write
        assert len(session.timings.commands) == 3
    assert vehicle.store.lock_state() is LockState.LOCKED


@pytest.mark.parametrize("mtu", [23, 247])
async def test_fragmented_and_single_frame_mtus(
    make_phone: PhoneFactory, vehicle: Vehicle, mtu: int
) -> None:
    phone = await make_phone(mtu=mtu)
    outcome = await phone.run(Command.UNLOCK)
    assert outcome.lock_state is LockState.UNLOCKED
    assert outcome.att_mtu == mtu
    if mtu == 247:
        assert outcome.frames_written == 1
    else:
        assert outcome.frames_written > 5  # ~200-byte request in 20-byte payloads


async def test_unknown_phone_is_denied_and_the_vehicle_stays_locked(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    stranger = await make_phone("stranger", role=None)
    with pytest.raises(RejectedUnknownKey) as info:
        await stranger.run(Command.UNLOCK)
    assert not info.value.authenticated
    assert vehicle.store.lock_state() is LockState.LOCKED
    # The refusal did not wedge the vehicle: its owner still gets through.
    owner = await make_phone("owner")
    assert (await owner.run(Command.STATUS)).lock_state is LockState.LOCKED


async def test_role_refusal_is_authenticated_and_reports_the_state(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    guest = await make_phone("guest", role=Role.GUEST)  # may lock and unlock, not ask status
    outcome = await guest.run(Command.STATUS)
    assert (outcome.result, outcome.ok) == (ResultCode.FORBIDDEN, False)
    assert outcome.lock_state is LockState.LOCKED


async def test_two_phones_unlock_at_once(make_phone: PhoneFactory, vehicle: Vehicle) -> None:
    alice, bob = await make_phone("alice"), await make_phone("bob")
    timeout = TIMEOUT
    outcomes = await asyncio.gather(
        alice.run(Command.UNLOCK, timeout=timeout), bob.run(Command.UNLOCK, timeout=timeout)
    )
    assert [o.lock_state for o in outcomes] == [LockState.UNLOCKED] * 2
    assert {o.key_id for o in outcomes} == {alice.keystore.key_id(), bob.keystore.key_id()}
    assert vehicle.store.lock_state() is LockState.UNLOCKED


async def test_phone_dropping_mid_request_leaves_the_vehicle_locked_and_ready(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    quitter = await make_phone("quitter", mtu=23)
    device = await quitter.central().find_vehicle(VIN, TIMEOUT)
    # Speak the protocol by hand so the phone can stop halfway through a request.
    connection = PhoneConnection(
        quitter.keystore.private_key,
        vehicle.card.public_key,
        clock=asyncio.get_running_loop().time,
        rng=os.urandom,
        att_mtu=23,
    )
    ready = asyncio.Event()

    def on_frame(_char: BleakGATTCharacteristic, data: bytearray) -> None:
        connection.receive_data(bytes(data))
        while connection.next_event() is not None:
            pass
        if connection.state is PhoneState.READY:
            ready.set()

    async with BleakClient(device, **quitter.client_kwargs) as client:
        await client.start_notify(EVENT_CHAR_UUID, on_frame)
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        connection.send_command(Command.UNLOCK, quitter.keystore.next_counter(VIN))
        frames = connection.data_to_send()
        assert len(frames) > 3
        for frame in frames[:3]:
            await client.write_gatt_char(COMMAND_CHAR_UUID, frame, response=False)
    # The half-sent request died with its connection, and so did the vehicle's session.
    await _until(lambda: not vehicle.device.connections)
    await asyncio.sleep(0.05)  # let bumble run any write still queued for the old link
    assert vehicle.runtime.gatt.session_count == 0
    assert vehicle.store.lock_state() is LockState.LOCKED

    owner = await make_phone("owner", mtu=23)
    assert (await owner.run(Command.UNLOCK)).lock_state is LockState.UNLOCKED


async def test_stale_challenge_is_replaced_before_use(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    async with phone.central(max_challenge_age=0.0).connect(VIN, timeout=TIMEOUT) as session:
        done = await session.command(Command.UNLOCK)
        assert done.lock_state is LockState.UNLOCKED
        assert session.last_stats is not None and session.last_stats.refreshed_challenge


async def test_link_dropped_mid_session_is_connection_lost(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    async with phone.central().connect(VIN, timeout=TIMEOUT) as session:
        for connection in list(vehicle.device.connections.values()):
            await connection.disconnect()  # the car drops the link
        with pytest.raises(ConnectionLost):
            await session.command(Command.UNLOCK)
    assert vehicle.store.lock_state() is LockState.LOCKED


async def test_vehicle_not_in_range_is_not_found(make_phone: PhoneFactory) -> None:
    phone = await make_phone()
    # A current card (with an advertising secret): an old one would take any
    # phonekey vehicle as a candidate (tests/e2e/test_private_advertising.py).
    elsewhere = VehicleCard("2FTRX18W1XCA01234", phone.keystore.public_key(), adv_secret=bytes(16))
    phone.keystore.add_vehicle(elsewhere)
    with pytest.raises(VehicleNotFound, match=elsewhere.vin):
        await phone.central().find_vehicle(elsewhere.vin, timeout=0.3)


async def test_scan_marks_vehicles_whose_card_the_phone_holds(
    make_phone: PhoneFactory, vehicle: Vehicle
) -> None:
    phone = await make_phone()
    seen = await scan_vehicles(
        0.3, known=phone.keystore.vehicles(), scanner_kwargs=phone.scanner_kwargs
    )
    assert [(v.vin, v.address) for v in seen] == [(VIN, str(vehicle.device.random_address))]
    # Strangers' scans see the tag but cannot name the car.
    anonymous = await scan_vehicles(0.3, scanner_kwargs=phone.scanner_kwargs)
    assert [v.vin for v in anonymous] == [None]


async def _until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
