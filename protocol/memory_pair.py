"""Drive a phone and a vehicle connection entirely in memory (like h11's
connection pair), for tests and for anyone exploring the protocol.

``pump`` moves frames both ways until neither side has anything to send,
collecting events; a man in the middle can be modelled by passing
``tamper_to_vehicle`` / ``tamper_to_phone`` functions that rewrite frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .events import PhoneEvent, VehicleEvent
from .phone import PhoneConnection
from .vehicle import VehicleConnection

FrameFilter = Callable[[bytes], bytes | None]
"""Return the frame to deliver (possibly modified), or None to drop it."""


@dataclass
class ConnectionPair:
    phone: PhoneConnection
    vehicle: VehicleConnection
    tamper_to_vehicle: FrameFilter | None = None
    tamper_to_phone: FrameFilter | None = None
    phone_events: list[PhoneEvent] = field(default_factory=list)
    vehicle_events: list[VehicleEvent] = field(default_factory=list)
    sent_to_vehicle: list[bytes] = field(default_factory=list)
    sent_to_phone: list[bytes] = field(default_factory=list)

    def pump(self) -> None:
        """Exchange frames until both sides are quiet. Phone-side protocol
        errors propagate to the caller, as they would to the phone's app."""
        while True:
            moved = False
            # Drain first: a frame injected straight into either side must be answered.
            while (vehicle_event := self.vehicle.next_event()) is not None:
                self.vehicle_events.append(vehicle_event)
            for frame in self.vehicle.data_to_send():
                moved = True
                self.sent_to_phone.append(frame)
                delivered = self.tamper_to_phone(frame) if self.tamper_to_phone else frame
                if delivered is not None:
                    self.phone.receive_data(delivered)
            while (phone_event := self.phone.next_event()) is not None:
                self.phone_events.append(phone_event)
            for frame in self.phone.data_to_send():
                moved = True
                self.sent_to_vehicle.append(frame)
                delivered = self.tamper_to_vehicle(frame) if self.tamper_to_vehicle else frame
                if delivered is not None:
                    self.vehicle.receive_data(delivered)
            while (vehicle_event := self.vehicle.next_event()) is not None:
                self.vehicle_events.append(vehicle_event)
            if not moved:
                return
