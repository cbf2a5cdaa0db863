"""A virtual link that moves connection traffic only at connection events.

On air, two connected BLE devices talk only at *connection events*: every
connection interval (7.5 ms to 4 s, agreed at connect) the central opens an
event at the connection's anchor point and the pair exchange a bounded number
of link-layer PDUs, alternating central and peripheral; the rest of the time
the radio is silent. Data a host hands its controller between two events
waits for the next one, and a PDU that is not acknowledged is sent again at a
later event, ahead of anything queued behind it (the link layer's sequence
numbers keep order). So a GATT write answered by a notification can never
complete in less than one connection interval, whatever the hosts' speed,
and a request the answer to which is computed while an event is under way
misses that event.

bumble's ``LocalLink`` delivers every L2CAP PDU on the next loop turn. Adding
a fixed per-packet delay to it is *not* a model of this: a delay shifts each
packet by the same amount from the moment it is sent, so a reply that takes
0.1 ms to compute costs delay + 0.1 ms, not "the rest of this interval plus
the next one"; several fragments of one write would each pay the delay in
parallel instead of sharing an event's capacity; and a retransmission would
not push the PDUs behind it. The latency on air is quantised to the
connection's event grid, and only a grid reproduces that.

``ConnectionEventLink`` does, for each LE connection on the link:

- Its anchor is taken when the central sends CONNECT_IND (plus 1.25 ms, the
  transmit window delay); its events fall at ``anchor + k * interval``.
- L2CAP PDUs (ATT, SMP, L2CAP signalling) are cut into link-layer PDUs of
  ``ll_payload_octets`` bytes (251 with Data Length Extension, 27 without)
  and queued per direction. At each event up to ``pdus_per_event`` PDUs move
  in each direction, only those queued before the event's time; the
  receiver gets an L2CAP PDU when its last fragment arrives.
- ``loss``: each transmission attempt is lost with that probability (drawn
  from ``random.Random(seed)``, so a run repeats exactly for one seed and
  traffic pattern). A lost PDU ends its direction's share of the event and
  is retransmitted first at the next event.

What stays as bumble does it, documented rather than modelled: advertising,
scanning and the connection setup (CONNECT_IND reaches the advertiser at
once; the vehicle's advertising interval already paces connects); link-layer
control procedures (termination, feature exchange, encryption, parameter
updates) are delivered at once, and a termination drops what its connection
still had queued; host flow control (completed-packet events come at once);
every connection uses this link's interval whatever the central asked for.

    radio = VirtualRadio(connection_interval_ms=15, loss=0.05, seed=1)
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from bumble import core, hci, ll
from bumble.link import LocalLink

if TYPE_CHECKING:
    from bumble import controller

Direction = Literal["to_peripheral", "to_central"]

MIN_INTERVAL_MS: Final = 7.5  # Core spec Vol 6, Part B, 4.5.1
MAX_INTERVAL_MS: Final = 4000.0
TRANSMIT_WINDOW_DELAY_MS: Final = 1.25  # CONNECT_IND to the first anchor (legacy PDU)
LL_PAYLOAD_DLE: Final = 251  # max LL data payload with Data Length Extension (BLE 4.2+)
LL_PAYLOAD_LEGACY: Final = 27
_DIRECTIONS: Final[tuple[Direction, Direction]] = ("to_peripheral", "to_central")
DEFAULT_PDUS_PER_EVENT: Final = 4
"""PDUs per direction per event. Phones commonly allow 4-6 per event; the
vehicle's controller may allow more. With 251-byte PDUs one is usually enough."""


@dataclass(frozen=True)
class Delivery:
    """One link-layer PDU that reached its receiver (recorded when ``record``)."""

    connection: int  # sequence number of the connection on this link, from 1
    direction: Direction
    event: int  # index k of the connection event that carried it
    event_time: float  # anchor + k * interval, loop clock (s)
    delivered_at: float  # loop clock when the event ran (>= event_time)
    anchor: float
    queued_at: float  # loop clock when its L2CAP PDU was handed to the link
    queued_event: int  # index of the last event at or before queued_at (-1: before the first)
    attempts: int  # transmissions it took (1 without loss)
    size: int  # LL payload bytes
    completes_sdu: bool  # the last fragment of its L2CAP PDU


@dataclass
class _Pdu:
    payload_size: int
    queued_at: float
    queued_event: int
    source: hci.Address
    destination: hci.Address
    sdu: bytes | None  # the whole L2CAP PDU, on its last fragment only
    attempts: int = 0


@dataclass
class _Connection:
    number: int
    anchor: float
    central: bytes
    peripheral: bytes
    queues: dict[Direction, deque[_Pdu]] = field(
        default_factory=lambda: {"to_peripheral": deque(), "to_central": deque()}
    )
    last_event: int = -1
    timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for queue in self.queues.values():
            queue.clear()


class ConnectionEventLink(LocalLink):
    """A ``LocalLink`` whose LE connection data moves only at connection events.

    ``record=True`` keeps a ``Delivery`` per PDU in ``deliveries`` (for tests
    and traces; leave it off for long runs).
    """

    def __init__(
        self,
        connection_interval_ms: float,
        *,
        loss: float = 0.0,
        seed: int = 0,
        pdus_per_event: int = DEFAULT_PDUS_PER_EVENT,
        ll_payload_octets: int = LL_PAYLOAD_DLE,
        record: bool = False,
    ) -> None:
        if not MIN_INTERVAL_MS <= connection_interval_ms <= MAX_INTERVAL_MS:
            raise ValueError(
                f"connection interval must be {MIN_INTERVAL_MS:g}-{MAX_INTERVAL_MS:g} ms"
            )
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be a probability in [0, 1)")
        if pdus_per_event < 1:
            raise ValueError("at least one PDU per event")
        if not LL_PAYLOAD_LEGACY <= ll_payload_octets <= LL_PAYLOAD_DLE:
            raise ValueError(f"LL payload must be {LL_PAYLOAD_LEGACY}-{LL_PAYLOAD_DLE} bytes")
        super().__init__()  # type: ignore[no-untyped-call]  # bumble lacks a hint
        self.interval = connection_interval_ms / 1000.0
        self.loss = loss
        self.pdus_per_event = pdus_per_event
        self.ll_payload_octets = ll_payload_octets
        self.record = record
        self.deliveries: list[Delivery] = []
        self.retransmissions = 0
        self.unscheduled = 0  # connections seen without their CONNECT_IND (anchored late)
        # A simulation's loss draws, not a secret: reproducible by design.
        self._random = random.Random(seed)  # noqa: S311
        self._connections: dict[frozenset[bytes], _Connection] = {}
        self._count = 0

    # --- connection lifecycle -----------------------------------------------------------
    def send_advertising_pdu(
        self, sender_controller: controller.Controller, packet: ll.AdvertisingPdu
    ) -> None:
        if isinstance(packet, ll.ConnectInd):
            self._open(packet.initiator_address, packet.advertiser_address)
        super().send_advertising_pdu(sender_controller, packet)

    def send_ll_control_pdu(
        self, sender_address: hci.Address, receiver_address: hci.Address, packet: ll.ControlPdu
    ) -> None:
        super().send_ll_control_pdu(sender_address, receiver_address, packet)
        if isinstance(packet, ll.TerminateInd):
            connection = self._connections.pop(_pair(sender_address, receiver_address), None)
            if connection is not None:
                connection.close()

    def remove_controller(self, controller: controller.Controller) -> None:
        super().remove_controller(controller)
        gone = {controller.random_address.address_bytes, controller.public_address.address_bytes}
        for key in [key for key in self._connections if key & gone]:
            self._connections.pop(key).close()

    def _open(self, central: hci.Address, peripheral: hci.Address) -> _Connection:
        key = _pair(central, peripheral)
        old = self._connections.pop(key, None)
        if old is not None:
            old.close()
        self._count += 1
        anchor = asyncio.get_running_loop().time() + TRANSMIT_WINDOW_DELAY_MS / 1000.0
        connection = _Connection(
            self._count, anchor, central.address_bytes, peripheral.address_bytes
        )
        self._connections[key] = connection
        return connection

    # --- data -----------------------------------------------------------------------------
    def send_acl_data(
        self,
        sender_controller: controller.Controller,
        destination_address: hci.Address,
        transport: core.PhysicalTransport,
        data: bytes,
    ) -> None:
        if transport != core.PhysicalTransport.LE:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        source = sender_controller.random_address
        connection = self._connections.get(_pair(source, destination_address))
        if connection is None:
            self.unscheduled += 1
            connection = self._open(source, destination_address)
        direction: Direction = (
            "to_peripheral" if source.address_bytes == connection.central else "to_central"
        )
        now = asyncio.get_running_loop().time()
        queued_event = math.floor((now - connection.anchor) / self.interval)
        queue = connection.queues[direction]
        size = self.ll_payload_octets
        count = max(1, math.ceil(len(data) / size))
        for index in range(count):
            last = index == count - 1
            payload = len(data) - index * size if last else size
            queue.append(
                _Pdu(
                    payload, now, queued_event, source, destination_address, data if last else None
                )
            )
        self._schedule(connection)

    def _schedule(self, connection: _Connection) -> None:
        if connection.timer is not None or not any(connection.queues.values()):
            return
        loop = asyncio.get_running_loop()
        since_anchor = loop.time() - connection.anchor
        event = max(math.floor(since_anchor / self.interval) + 1, connection.last_event + 1, 0)
        when = connection.anchor + event * self.interval
        connection.timer = loop.call_at(when, self._run_event, connection, event)

    def _run_event(self, connection: _Connection, event: int) -> None:
        connection.timer = None
        connection.last_event = event
        event_time = connection.anchor + event * self.interval
        now = asyncio.get_running_loop().time()
        for direction in _DIRECTIONS:  # the central transmits first
            queue = connection.queues[direction]
            for _slot in range(self.pdus_per_event):
                if not queue or queue[0].queued_at > event_time:
                    break  # handed over after this event began: the next one carries it
                pdu = queue[0]
                pdu.attempts += 1
                if self.loss and self._random.random() < self.loss:
                    self.retransmissions += 1
                    break  # not acknowledged: sent again first at a later event
                queue.popleft()
                if self.record:
                    self.deliveries.append(
                        Delivery(
                            connection.number,
                            direction,
                            event,
                            event_time,
                            now,
                            connection.anchor,
                            pdu.queued_at,
                            pdu.queued_event,
                            pdu.attempts,
                            pdu.payload_size,
                            pdu.sdu is not None,
                        )
                    )
                if pdu.sdu is not None:
                    self._deliver(pdu.source, pdu.destination, pdu.sdu)
        self._schedule(connection)

    def _deliver(self, source: hci.Address, destination: hci.Address, sdu: bytes) -> None:
        receiver = self.find_le_controller(destination)
        if receiver is not None:  # else it left the link: the data is lost with it
            receiver.on_link_acl_data(source, core.PhysicalTransport.LE, sdu)


def _pair(a: hci.Address, b: hci.Address) -> frozenset[bytes]:
    return frozenset((a.address_bytes, b.address_bytes))
