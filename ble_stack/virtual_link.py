"""In-process virtual radio: bumble software controllers sharing one LocalLink.

Every device made by a `VirtualRadio` gets its own `VirtualController` on the
radio's link, so devices in one process can advertise, scan, connect and talk
GATT to each other with no Bluetooth hardware. `radio_hub` reuses the same
pieces to put controllers of several processes on one link.
"""

from __future__ import annotations

import asyncio

from bumble import core, hci, ll
from bumble.controller import Controller
from bumble.device import Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, TransportSink, TransportSource


class VirtualController(Controller):
    """bumble's software controller, with the fixes a virtual link needs."""

    def on_hci_le_create_connection_cancel_command(
        self, _command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        # bumble's controller acknowledges the cancel but keeps the connection
        # pending and never reports the outcome, so a timed-out connect hangs
        # in the host and completes later as a stray connection. A real
        # controller drops the attempt and reports UNKNOWN_CONNECTION_IDENTIFIER
        # (Core spec Vol 4, Part E, 7.8.13), which is what the host waits for.
        pending = self.pending_le_connection
        if pending is not None:
            self.pending_le_connection = None
            failure = hci.HCI_LE_Connection_Complete_Event(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
                connection_handle=0,
                role=hci.Role.CENTRAL,
                peer_address_type=pending.peer_address_type,
                peer_address=pending.peer_address,
                connection_interval=0,
                peripheral_latency=0,
                supervision_timeout=0,
                central_clock_accuracy=0,
            )
            # The spec orders Command Complete before this event; deferring one
            # loop turn keeps that order because the caller sends it on return.
            asyncio.get_running_loop().call_soon(self.send_hci_packet, failure)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def unplug_controller(
    controller: Controller,
    reason: int = hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR,
) -> None:
    """Take a controller off its link as if its radio had been switched off.

    Peers connected to it get a disconnection with `reason`, and its
    advertising and scanning stop, so nothing on the link still sees it.
    """
    controller.le_legacy_advertiser.stop()
    for advertising_set in controller.advertising_sets.values():
        advertising_set.stop()
    controller.le_scan_enable = False
    controller.pending_le_connection = None
    for connection in list(controller.le_connections.values()):
        try:
            connection.send_ll_control_pdu(ll.TerminateInd(error_code=reason))
        except core.InvalidArgumentError:
            pass  # the peer's controller has already left the link
    controller.le_connections.clear()
    if controller in controller.link.controllers:
        controller.link.remove_controller(controller)


class VirtualRadio:
    """One shared virtual radio medium (a bumble `LocalLink`).

    Must be used from inside a running event loop: bumble's controllers
    create futures on the running loop when they are made.
    """

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]  # bumble lacks a hint
        self._used_addresses: set[bytes] = set()
        self._controllers: dict[int, Controller] = {}  # by id() of the Device

    def allocate_address(self) -> hci.Address:
        """Return a random static address no other device on this radio has."""
        while True:
            address = hci.Address.generate_static_address()
            low_bits = address.address_bytes[:5] + bytes([address.address_bytes[5] & 0x3F])
            # The spec forbids the random part being all zeros or all ones.
            if low_bits in (bytes(6), b"\xff" * 5 + b"\x3f"):
                continue
            if address.address_bytes not in self._used_addresses:
                self._used_addresses.add(address.address_bytes)
                return address

    def add_controller(
        self,
        name: str,
        address: hci.Address | None = None,
        host_source: TransportSource | None = None,
        host_sink: TransportSink | None = None,
    ) -> VirtualController:
        """Put a new controller on the link.

        Its public address reuses the bytes of `address` (or of a fresh one):
        bumble defaults it to all zeros, and two all-zero controllers on one
        link are indistinguishable.
        """
        address = address or self.allocate_address()
        self._used_addresses.add(address.address_bytes)
        return VirtualController(
            name,
            host_source=host_source,
            host_sink=host_sink,
            link=self.link,
            public_address=hci.Address(address.address_bytes, hci.Address.PUBLIC_DEVICE_ADDRESS),
        )

    async def create_device(self, name: str, address: str | None = None) -> Device:
        """Make a bumble Device with its own controller on this radio.

        `address` is the device's random static address ("C0:11:22:33:44:55");
        by default a unique one is allocated. The device is not powered on.
        """
        static_address = hci.Address(address) if address else self.allocate_address()
        controller = self.add_controller(f"{name} controller", static_address)
        host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
        device = Device(name=name, address=static_address, host=host)
        self._controllers[id(device)] = controller
        return device

    def controller_of(self, device: Device) -> Controller:
        """The controller a device made by `create_device` is attached to."""
        return self._controllers[id(device)]

    def remove_device(self, device: Device) -> None:
        """Switch off a device's radio: drop its links and leave the medium."""
        controller = self._controllers.pop(id(device), None)
        if controller is not None:
            unplug_controller(controller)
            self._used_addresses.discard(controller.public_address.address_bytes)
