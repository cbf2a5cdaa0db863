"""The connection-event link model: traffic moves only at connection events.

Assertions are on event indices (anchor + k * interval on the loop clock),
never on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from ble_testkit import EchoPeripheral, find_vehicle
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bumble import core, hci, ll
from bumble.link import LocalLink

from ble_stack.bleak_backend import BumbleBleakClient
from ble_stack.link_timing import ConnectionEventLink, Delivery
from ble_stack.transports import open_device
from ble_stack.uuids import COMMAND_CHAR_UUID, EVENT_CHAR_UUID
from ble_stack.virtual_link import VirtualRadio

INTERVAL_MS = 15.0
LE = core.PhysicalTransport.LE


class FakeController:
    """Just enough of a bumble controller for the link to address and deliver to."""

    def __init__(self, address: str) -> None:
        self.random_address = hci.Address(address)
        self.public_address = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.le_connections: dict[Any, Any] = {}
        self.received: list[tuple[float, bytes]] = []

    def on_link_acl_data(self, _source: hci.Address, _transport: Any, data: bytes) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))

    def on_ll_advertising_pdu(self, _packet: Any) -> None:
        pass


def fake_pair(link: ConnectionEventLink) -> tuple[FakeController, FakeController]:
    central, peripheral = FakeController("C0:00:00:00:00:01"), FakeController("C0:00:00:00:00:02")
    link.add_controller(central)  # type: ignore[arg-type]
    link.add_controller(peripheral)  # type: ignore[arg-type]
    link.send_advertising_pdu(
        central,  # type: ignore[arg-type]
        ll.ConnectInd(
            initiator_address=central.random_address,
            advertiser_address=peripheral.random_address,
            interval=12,
            latency=0,
            timeout=100,
        ),
    )
    return central, peripheral


async def drain(link: ConnectionEventLink, events: int = 60) -> None:
    await asyncio.sleep(events * link.interval)


def check_on_grid(delivery: Delivery, link: ConnectionEventLink) -> None:
    assert delivery.event_time == pytest.approx(delivery.anchor + delivery.event * link.interval)
    assert delivery.delivered_at >= delivery.event_time - 1e-6  # never before its event
    assert delivery.event > delivery.queued_event  # never in the event it was queued in


# --- the link alone ---------------------------------------------------------------------
async def test_pdus_move_only_at_events_in_order_with_bounded_capacity() -> None:
    link = ConnectionEventLink(INTERVAL_MS, pdus_per_event=2, ll_payload_octets=27, record=True)
    central, peripheral = fake_pair(link)
    sdus = [bytes([i]) * 60 for i in range(5)]  # 3 LL PDUs each at 27 bytes: 15 PDUs
    for sdu in sdus:
        link.send_acl_data(central, peripheral.random_address, LE, sdu)  # type: ignore[arg-type]
    await drain(link, 12)
    assert [data for _, data in peripheral.received] == sdus
    assert len(link.deliveries) == 15
    for delivery in link.deliveries:
        check_on_grid(delivery, link)
    per_event = Counter((d.direction, d.event) for d in link.deliveries)
    assert max(per_event.values()) == 2
    # Queued together, so they fill consecutive events two at a time.
    first = link.deliveries[0].event
    assert [d.event - first for d in link.deliveries] == [i // 2 for i in range(15)]
    assert link.unscheduled == 0


async def test_both_directions_share_an_event() -> None:
    link = ConnectionEventLink(INTERVAL_MS, record=True)
    central, peripheral = fake_pair(link)
    link.send_acl_data(central, peripheral.random_address, LE, b"to peripheral")  # type: ignore[arg-type]
    link.send_acl_data(peripheral, central.random_address, LE, b"to central")  # type: ignore[arg-type]
    await drain(link, 3)
    assert {d.direction for d in link.deliveries} == {"to_peripheral", "to_central"}
    assert len({d.event for d in link.deliveries}) == 1
    assert [data for _, data in central.received] == [b"to central"]


async def test_lost_pdus_arrive_at_a_later_event_in_order() -> None:
    link = ConnectionEventLink(INTERVAL_MS, loss=0.4, seed=7, record=True)
    central, peripheral = fake_pair(link)
    sdus = [i.to_bytes(2, "big") for i in range(30)]
    for sdu in sdus:
        link.send_acl_data(central, peripheral.random_address, LE, sdu)  # type: ignore[arg-type]
    await drain(link, 80)
    assert [data for _, data in peripheral.received] == sdus
    assert link.retransmissions > 0
    retried = [d for d in link.deliveries if d.attempts > 1]
    assert retried
    for delivery in link.deliveries:
        check_on_grid(delivery, link)
    for delivery in retried:
        # Each failed attempt cost at least one event after the first chance.
        assert delivery.event >= delivery.queued_event + delivery.attempts


async def test_loss_draws_repeat_for_a_seed() -> None:
    async def pattern(seed: int) -> list[int]:
        link = ConnectionEventLink(INTERVAL_MS, loss=0.3, seed=seed, record=True)
        central, peripheral = fake_pair(link)
        for i in range(12):
            link.send_acl_data(central, peripheral.random_address, LE, bytes([i]))  # type: ignore[arg-type]
        await drain(link, 30)
        return [d.attempts for d in link.deliveries]

    assert await pattern(3) == await pattern(3)


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="interval"):
        ConnectionEventLink(5.0)
    with pytest.raises(ValueError, match="loss"):
        ConnectionEventLink(15.0, loss=1.0)
    with pytest.raises(ValueError, match="loss"):
        VirtualRadio(loss=0.1)


# --- real bumble stacks on the timed radio ----------------------------------------------
async def test_default_radio_is_the_plain_local_link() -> None:
    assert type(VirtualRadio().link) is LocalLink
    timed = VirtualRadio(connection_interval_ms=7.5)
    assert isinstance(timed.link, ConnectionEventLink)
    assert timed.link.interval == pytest.approx(0.0075)


async def test_gatt_write_notify_round_trip_spans_at_least_one_interval() -> None:
    radio = VirtualRadio(connection_interval_ms=INTERVAL_MS, loss=0.1, seed=2)
    link = radio.link
    assert isinstance(link, ConnectionEventLink)
    vehicle_opened = await open_device("virtual", name="vehicle", radio=radio)
    phone_opened = await open_device("virtual", name="phone", radio=radio)
    try:
        vehicle = EchoPeripheral(vehicle_opened.device)
        await vehicle.start()
        found = await find_vehicle(phone_opened.device)
        notified: asyncio.Queue[bytes] = asyncio.Queue()

        def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            notified.put_nowait(bytes(data))

        client = BleakClient(
            found, backend=BumbleBleakClient, bumble_device=phone_opened.device, timeout=10
        )
        async with client:
            await client.start_notify(EVENT_CHAR_UUID, on_notify)
            link.record = True
            values = [f"frame {i:02d}".encode() for i in range(8)]
            for value in values:
                await client.write_gatt_char(COMMAND_CHAR_UUID, value, response=False)
            echoed = [await asyncio.wait_for(notified.get(), 10) for _ in values]
            link.record = False
        assert vehicle.writes == values  # order kept through retransmissions
        assert echoed == [bytes(reversed(v)) for v in values]
        assert link.unscheduled == 0  # every connection was anchored at its CONNECT_IND
        deliveries = link.deliveries
        for delivery in deliveries:
            check_on_grid(delivery, link)
        writes = [d for d in deliveries if d.direction == "to_peripheral" and d.completes_sdu]
        notifications = [d for d in deliveries if d.direction == "to_central" and d.completes_sdu]
        assert len(writes) == len(notifications) == len(values)
        for write, notification in zip(writes, notifications, strict=True):
            # The echo is computed after the write's event: it rides a later one.
            assert notification.event >= write.event + 1
            assert notification.event_time - write.queued_at >= link.interval
    finally:
        await phone_opened.close()
        await vehicle_opened.close()
