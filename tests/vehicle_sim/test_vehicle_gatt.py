"""The vehicle's GATT service end to end over a virtual radio, with plain bumble
centrals as phones: challenge on subscribe, signed command, authenticated
answer, refusals that drop the link, and several phones at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from vehicle_testkit import STEP_TIMEOUT, BlePhone, PhoneFactory, RunningVehicle

from protocol import (
    ChallengeReceived,
    Command,
    CommandCompleted,
    CommandExecuted,
    LockState,
    RequestRejected,
    ResultCode,
    Role,
    VehicleRejected,
)
from vehicle_sim.state_store import open_store


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


async def command(phone: BlePhone, cmd: Command) -> CommandCompleted:
    await phone.send(cmd)
    event = await phone.next_event()
    assert isinstance(event, CommandCompleted), event
    # The vehicle issues the next challenge right after answering.
    assert isinstance(await phone.next_event(), ChallengeReceived)
    return event


@pytest.mark.parametrize("mtu", [None, 247], ids=["mtu23", "mtu247"])
async def test_owner_unlocks_with_one_signed_command(
    vehicle: RunningVehicle, make_phone: PhoneFactory, mtu: int | None
) -> None:
    phone = await make_phone()
    await phone.connect(vehicle.device.random_address, mtu=mtu)
    # Subscribing alone brings the first challenge.
    assert isinstance(await phone.next_event(), ChallengeReceived)

    done = await command(phone, Command.UNLOCK)

    assert (done.result, done.lock_state, done.counter) == (ResultCode.OK, LockState.UNLOCKED, 1)
    # Durable before the answer: a fresh read-only open sees it.
    with open_store(vehicle.store.state_dir, read_only=True) as disk:
        assert disk.lock_state() is LockState.UNLOCKED
        assert disk.last_counter(phone.key_id) == 1
    [(peer, executed)] = vehicle.seen
    assert peer == str(phone.device.random_address)
    assert isinstance(executed, CommandExecuted)
    assert executed.key_id == phone.key_id and executed.lock_state_before is LockState.LOCKED

    locked = await command(phone, Command.LOCK)
    assert (locked.lock_state, locked.counter) == (LockState.LOCKED, 2)
    await phone.disconnect()
    await until(lambda: vehicle.runtime.gatt.session_count == 0)


async def test_guest_status_is_an_authenticated_refusal(
    vehicle: RunningVehicle, make_phone: PhoneFactory
) -> None:
    phone = await make_phone(role=Role.GUEST)
    await phone.connect(vehicle.device.random_address)
    await phone.next_event()
    done = await command(phone, Command.STATUS)
    assert done.result is ResultCode.FORBIDDEN
    assert not phone.disconnected.is_set()  # authenticated answers keep the link


async def test_unknown_key_gets_an_error_and_is_disconnected(
    vehicle: RunningVehicle, make_phone: PhoneFactory
) -> None:
    stranger = await make_phone("stranger", role=None)
    await stranger.connect(vehicle.device.random_address)
    assert isinstance(await stranger.next_event(), ChallengeReceived)

    await stranger.send(Command.UNLOCK)

    refusal = await stranger.next_event()
    assert isinstance(refusal, VehicleRejected) and refusal.code is ResultCode.UNKNOWN_KEY
    async with asyncio.timeout(STEP_TIMEOUT):
        await stranger.disconnected.wait()
    await until(lambda: vehicle.runtime.gatt.session_count == 0)
    assert vehicle.store.lock_state() is LockState.LOCKED
    [(_, rejected)] = vehicle.seen
    assert isinstance(rejected, RequestRejected)
    assert rejected.code is ResultCode.UNKNOWN_KEY and rejected.key_id == stranger.key_id

    # The vehicle keeps advertising and serving: the owner still gets in.
    owner = await make_phone("owner")
    await owner.connect(vehicle.device.random_address)
    await owner.next_event()
    assert (await command(owner, Command.UNLOCK)).lock_state is LockState.UNLOCKED


async def test_garbage_frame_is_malformed_and_disconnected(
    vehicle: RunningVehicle, make_phone: PhoneFactory
) -> None:
    phone = await make_phone()
    await phone.connect(vehicle.device.random_address)
    await phone.next_event()
    await phone.write_raw(b"\x07\xc0junk", with_response=True)  # wrong wire version
    async with asyncio.timeout(STEP_TIMEOUT):
        await phone.disconnected.wait()
    [(_, rejected)] = vehicle.seen
    assert isinstance(rejected, RequestRejected) and rejected.code is ResultCode.MALFORMED


async def test_two_phones_connected_at_the_same_time(
    vehicle: RunningVehicle, make_phone: PhoneFactory
) -> None:
    first = await make_phone("first")
    second = await make_phone("second", role=Role.DRIVER)
    await first.connect(vehicle.device.random_address)
    # The vehicle advertises again while connected, so a second phone gets in.
    await second.connect(vehicle.device.random_address)
    assert len(vehicle.device.connections) == 2
    assert vehicle.runtime.gatt.session_count == 2
    for phone in (first, second):
        assert isinstance(await phone.next_event(), ChallengeReceived)

    assert (await command(first, Command.UNLOCK)).lock_state is LockState.UNLOCKED
    status = await command(second, Command.STATUS)
    assert (status.result, status.lock_state) == (ResultCode.OK, LockState.UNLOCKED)
    assert (await command(second, Command.LOCK)).lock_state is LockState.LOCKED

    await first.disconnect()
    await until(lambda: vehicle.runtime.gatt.session_count == 1)
    # The other session is untouched by the first one leaving.
    assert (await command(second, Command.UNLOCK)).counter == 3


async def test_advertising_resumes_after_disconnect(
    vehicle: RunningVehicle, make_phone: PhoneFactory
) -> None:
    phone = await make_phone()
    for _ in range(2):
        await phone.connect(vehicle.device.random_address)
        await phone.next_event()
        await phone.disconnect()
        phone.disconnected.clear()
        await until(lambda: vehicle.device.is_advertising)


async def test_storage_failure_is_refused_and_nothing_changes(
    vehicle: RunningVehicle, make_phone: PhoneFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    phone = await make_phone()
    await phone.connect(vehicle.device.random_address)
    await phone.next_event()

    def failing_commit(_change: object) -> None:
        raise OSError(28, "No space left on device")

    # Whatever the store's medium, its commit fails and nothing is written.
    monkeypatch.setattr(vehicle.store, "commit", failing_commit)
    await phone.send(Command.UNLOCK)

    refusal = await phone.next_event()
    assert isinstance(refusal, VehicleRejected) and refusal.code is ResultCode.INTERNAL
    async with asyncio.timeout(STEP_TIMEOUT):
        await phone.disconnected.wait()
    assert vehicle.store.lock_state() is LockState.LOCKED
    assert vehicle.store.last_counter(phone.key_id) == 0
