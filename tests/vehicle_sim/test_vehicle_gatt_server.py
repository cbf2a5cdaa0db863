"""PhonekeyGattServer on its own (no runtime), with a clock the test controls:
stalled messages time out, and sessions follow the connection's ATT MTU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from vehicle_testkit import STEP_TIMEOUT, PhoneFactory

from ble_stack.virtual_link import VirtualRadio
from protocol import ChallengeReceived, Command, RequestRejected, VehicleRejected
from protocol.events import CommandExecuted
from vehicle_sim.advertising import adv_secret, build_vehicle_advertisement
from vehicle_sim.gatt_server import PhonekeyGattServer
from vehicle_sim.state_store import FileVehicleStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served(
    radio: VirtualRadio, store: FileVehicleStore
) -> AsyncIterator[tuple[PhonekeyGattServer, FakeClock, list[object]]]:
    clock = FakeClock()
    seen: list[object] = []
    device = await radio.create_device("vehicle")
    server = PhonekeyGattServer(
        device,
        store.identity,
        store,
        on_event=lambda _p, e: seen.append(e),
        clock=clock,
        tick=0.01,
    )
    server.attach()
    await device.power_on()
    advertising_data, scan_response = build_vehicle_advertisement(adv_secret(store.identity), 0)
    await device.start_advertising(
        advertising_data=advertising_data,
        scan_response_data=scan_response,
        advertising_interval_min=20,
        advertising_interval_max=20,
    )
    try:
        yield server, clock, seen
    finally:
        await server.close()
        radio.remove_device(device)
        await device.power_off()


async def test_stalled_message_is_dropped_with_an_error(
    served: tuple[PhonekeyGattServer, FakeClock, list[object]], make_phone: PhoneFactory
) -> None:
    server, clock, seen = served
    phone = await make_phone()
    await phone.connect(server.device.random_address, mtu=None)  # 23: requests fragment
    assert isinstance(await phone.next_event(), ChallengeReceived)
    assert phone.protocol is not None
    phone.protocol.send_command(Command.UNLOCK, 1)
    frames = phone.protocol.data_to_send()
    assert len(frames) > 2

    await phone.write_raw(frames[0], with_response=True)
    clock.now += 10  # the rest never comes

    refusal = await phone.next_event()
    assert isinstance(refusal, VehicleRejected)
    async with asyncio.timeout(STEP_TIMEOUT):
        await phone.disconnected.wait()
    [rejected] = seen
    assert isinstance(rejected, RequestRejected) and "incomplete" in rejected.reason


async def test_session_fragments_for_the_negotiated_mtu(
    served: tuple[PhonekeyGattServer, FakeClock, list[object]], make_phone: PhoneFactory
) -> None:
    server, _clock, seen = served
    phone = await make_phone()
    await phone.connect(server.device.random_address, mtu=185)
    [session] = server._sessions.values()
    assert session.protocol.att_mtu == 185
    assert isinstance(await phone.next_event(), ChallengeReceived)
    await phone.send(Command.UNLOCK)
    await phone.next_event()
    assert isinstance(seen[0], CommandExecuted)


async def test_late_write_on_a_dropped_link_opens_no_session(
    served: tuple[PhonekeyGattServer, FakeClock, list[object]], make_phone: PhoneFactory
) -> None:
    server, _clock, _seen = served
    phone = await make_phone()
    await phone.connect(server.device.random_address)
    [vehicle_side] = server.device.connections.values()
    assert server.session_count == 1
    await phone.disconnect()
    async with asyncio.timeout(STEP_TIMEOUT):
        while server.session_count or server.device.connections:
            await asyncio.sleep(0.01)
    # A write bumble had queued before the link dropped runs only now.
    await server.command_characteristic.write_value(vehicle_side, bytes([1, 0x80, 0, 200]))
    assert server.session_count == 0
