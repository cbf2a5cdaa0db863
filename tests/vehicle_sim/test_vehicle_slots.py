"""Connection slots on the virtual radio: strangers cannot hold every slot,
eviction order, handshake and idle timeouts, and flat memory under churn.
The firmware's clock is the test's (no timed assertions)."""

from __future__ import annotations

import asyncio

from firmware_testkit import command, firmware_vehicle, try_connect, until
from vehicle_testkit import STEP_TIMEOUT, BlePhone, PhoneFactory

from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command, LockState
from vehicle_sim.firmware_store import LogKind
from vehicle_sim.slots import Slot, SlotPolicy, choose_victim, expiry
from vehicle_sim.state_store import FileVehicleStore


async def _stranger_holds_a_slot(phone: BlePhone, address: object) -> None:
    assert await try_connect(phone, address)
    assert isinstance(await phone.next_event(), ChallengeReceived)


async def test_strangers_flooding_the_slots_cannot_keep_the_owner_out(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    strangers = [await make_phone(f"stranger{i}", role=None) for i in range(7)]
    async with firmware_vehicle(radio, store) as fw:
        gatt, address = fw.runtime.gatt, fw.runtime.device.random_address
        for stranger in strangers[:3]:  # every slot taken by a stranger doing nothing
            await _stranger_holds_a_slot(stranger, address)
        assert gatt.session_count == 3

        fw.clock.now += 5  # past the grace period, well within the handshake timeout
        assert await try_connect(owner, address)  # evicts the oldest stranger
        assert isinstance(await owner.next_event(), ChallengeReceived)
        async with asyncio.timeout(STEP_TIMEOUT):
            await strangers[0].disconnected.wait()

        # More strangers arrive while the owner unlocks: they take the old
        # strangers' slots, then find nothing evictable and are dropped.
        async def flood() -> None:
            for stranger in strangers[3:]:
                await try_connect(stranger, address)

        done, _ = await asyncio.gather(command(owner, Command.UNLOCK), flood())
        assert done.lock_state is LockState.UNLOCKED
        assert not owner.disconnected.is_set()
        assert fw.sleep.delays == []  # nothing was held back
        assert gatt.evictions == 3 and gatt.refused >= 1
        await until(lambda: gatt.session_count <= 3)
        fw.runtime.store.flush_log()  # evictions are aggregated like denials
        entries = fw.runtime.store.read_log().entries
        assert sum(e.count for e in entries if e.kind is LogKind.EVICTED) == 3
        assert LogKind.UNLOCK in [e.kind for e in entries]

        # Once idle past the grace, strangers still go first: a new one
        # evicts the oldest stranger, not the authenticated owner.
        fw.clock.now += 3
        await try_connect(strangers[0], address)
        assert gatt.evictions == 4
        assert not owner.disconnected.is_set()
        assert (await command(owner, Command.LOCK)).lock_state is LockState.LOCKED


async def test_a_half_done_handshake_times_out(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    stranger = await make_phone("stranger", role=None)
    async with firmware_vehicle(radio, store) as fw:
        # Connected, subscribed, challenged, and then nothing.
        await _stranger_holds_a_slot(stranger, fw.runtime.device.random_address)
        fw.clock.now += 9.9
        await asyncio.sleep(0.6)  # a tick: still connected before the timeout
        assert not stranger.disconnected.is_set()
        fw.clock.now += 0.2
        async with asyncio.timeout(STEP_TIMEOUT):
            await stranger.disconnected.wait()
        await until(lambda: fw.runtime.gatt.session_count == 0)
        assert fw.runtime.gatt.timeouts == 1


async def test_an_idle_authenticated_connection_times_out(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    owner = await make_phone("owner")
    async with firmware_vehicle(radio, store) as fw:
        assert await try_connect(owner, fw.runtime.device.random_address)
        await owner.next_event()
        await command(owner, Command.UNLOCK)
        fw.clock.now += 30  # authenticated: the handshake timeout no longer applies
        await asyncio.sleep(0.6)
        assert not owner.disconnected.is_set()
        fw.clock.now += 31
        async with asyncio.timeout(STEP_TIMEOUT):
            await owner.disconnected.wait()


async def test_memory_is_flat_after_many_connect_disconnect_cycles(
    radio: VirtualRadio, store: FileVehicleStore, make_phone: PhoneFactory
) -> None:
    phone = await make_phone("churn", role=None)
    async with firmware_vehicle(radio, store) as fw:
        gatt, device = fw.runtime.gatt, fw.runtime.device
        for _ in range(25):
            assert await try_connect(phone, device.random_address)
            await phone.next_event()
            await phone.disconnect()
            await until(lambda: gatt.session_count == 0 and not device.connections)
        assert gatt._sessions == {} and gatt._disconnects == set()
        assert len(fw.runtime._tasks) <= 1  # at most the last advertising restart
        assert gatt.evictions == gatt.refused == 0


def test_eviction_order_and_timeouts_as_pure_rules() -> None:
    policy = SlotPolicy(max_connections=3, grace=2.0)
    owner = Slot(opened_at=0.0, last_request=10.0, authenticated=True)
    old, young = Slot(opened_at=1.0, last_request=1.0), Slot(opened_at=9.5, last_request=9.5)
    assert choose_victim([owner, old, young], 10.0, policy) is old
    assert choose_victim([owner, young], 10.0, policy) is None  # owner active, stranger young
    assert choose_victim([owner, young], 13.0, policy) is young  # strangers before owners
    assert choose_victim([owner], 13.0, policy) is owner  # idle authenticated, last
    assert expiry(old, 11.0, policy) == "handshake-timeout"
    assert expiry(owner, 69.9, policy) is None
    assert expiry(owner, 70.0, policy) == "idle-timeout"
