"""In-process virtual radio: bumble software controllers sharing one LocalLink.

Every device made by a `VirtualRadio` gets its own `VirtualController` on the
radio's link, so devices in one process can advertise, scan, connect and talk
GATT to each other with no Bluetooth hardware. `radio_hub` reuses the same
pieces to put controllers of several processes on one link.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import TypeVar

from bumble import core, hci, ll
from bumble.controller import Controller
from bumble.device import Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, TransportSink, TransportSource

_ReportT = TypeVar(
    "_ReportT",
    hci.HCI_LE_Advertising_Report_Event.Report,
    hci.HCI_LE_Extended_Advertising_Report_Event.Report,
)
_LEGACY_SCAN_RSP = hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP
_EXT_SCAN_RSP = hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
_EXT_ADV_PROPERTIES = hci.HCI_LE_Set_Extended_Advertising_Parameters_Command.AdvertisingProperties
_EXT_SCANNABLE = _EXT_ADV_PROPERTIES.SCANNABLE_ADVERTISING
_POWER_OFF = hci.HCI_ErrorCode.REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR
_LEGACY_SCANNABLE_TYPES = (
    hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType.ADV_IND,
    hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType.ADV_SCAN_IND,
)


class VirtualController(Controller):
    """bumble's software controller, with the fixes a virtual link needs.

    - A cancelled connection attempt is reported as failed, as real
      controllers do, instead of hanging the host.
    - Scan responses carry the advertiser's scan response data, only for
      scannable advertising and active scans. Stock bumble repeats the
      advertising data instead, so a name sent in the scan response (where
      the 31-byte limit pushes it) would never be seen.
    - A CONNECT_IND it can no longer accept fails the initiator's link
      (0x3E) instead of leaving it believing it is connected.
    - Disconnecting an unknown handle fails at once instead of hanging.
    - HCI Reset really resets: connections drop and advertising and scanning
      stop, so a host that (re)attaches starts from a clean controller.
    """

    def drop_radio_activity(self, reason: int) -> None:
        """Stop advertising and scanning, and drop every LE link.

        Peers get a disconnection with `reason`; this controller's own host
        is told nothing, as after HCI Reset or a vanished host.
        """
        self.le_legacy_advertiser.stop()
        for advertising_set in self.advertising_sets.values():
            advertising_set.stop()
        self.advertising_sets.clear()
        self.le_scan_enable = False
        self.pending_le_connection = None
        for connection in list(self.le_connections.values()):
            try:
                connection.send_ll_control_pdu(ll.TerminateInd(error_code=reason))
            except core.InvalidArgumentError:
                pass  # the peer's controller has already left the link
        self.le_connections.clear()

    def unplug(self, reason: int = _POWER_OFF) -> None:
        """Take this controller off its link as if its radio were switched off."""
        self.drop_radio_activity(reason)
        if self in self.link.controllers:
            self.link.remove_controller(self)

    def on_hci_reset_command(
        self, command: hci.HCI_Reset_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Stock bumble's reset is a no-op ("TODO: cleanup what needs to be
        # reset"), so a new host would inherit the last one's links and adverts.
        self.drop_radio_activity(_POWER_OFF)
        return super().on_hci_reset_command(command)

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

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        # Every controller on the link hears every CONNECT_IND. Stock bumble
        # silently ignores one for an address it no longer advertises on, e.g.
        # the second of two centrals racing for one advertisement, while the
        # loser's controller has already reported the connection as made.
        # On air the loser's link never gets a reply and fails with 0x3E.
        was_connected = packet.initiator_address in self.le_connections
        super().on_le_connect_ind(packet)
        accepted = not was_connected and packet.initiator_address in self.le_connections
        if not accepted and self._owns_address(packet.advertiser_address):
            with contextlib.suppress(core.InvalidArgumentError):  # initiator already gone
                self.link.send_ll_control_pdu(
                    sender_address=packet.advertiser_address,
                    receiver_address=packet.initiator_address,
                    packet=ll.TerminateInd(
                        error_code=hci.HCI_ErrorCode.CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR
                    ),
                )

    def _owns_address(self, address: hci.Address) -> bool:
        return (
            address in (self.random_address, self.public_address)
            or address == self.le_legacy_advertiser.address
            or any(s.address == address for s in self.advertising_sets.values())
        )

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        # For an unknown handle stock bumble says "pending" and then nothing,
        # so the host waits forever; a real controller rejects it at once.
        handle = command.connection_handle
        known = (
            self.find_connection_by_handle(handle) is not None
            or self.find_classic_sco_link_by_handle(handle) is not None
            or handle in self.central_cis_links
            or handle in self.peripheral_cis_links
        )
        if not known:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return
        super().on_hci_disconnect_command(command)

    def on_hci_le_set_extended_scan_parameters_command(
        self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Stock bumble drops the scan type here; keep it to know active from passive.
        self.le_scan_type = command.scan_types[0] if command.scan_types else 0
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
            legacy = [
                fixed
                for report in packet.reports
                if (fixed := self._fix_report(report, report.event_type == _LEGACY_SCAN_RSP))
                is not None
            ]
            if not legacy:
                return
            packet = hci.HCI_LE_Advertising_Report_Event(legacy)
        elif isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
            extended = [
                kept
                for report in packet.reports
                if (kept := self._fix_report(report, bool(report.event_type & _EXT_SCAN_RSP)))
                is not None
            ]
            if not extended:
                return
            packet = hci.HCI_LE_Extended_Advertising_Report_Event(extended)
        super().send_hci_packet(packet)

    def _fix_report(self, report: _ReportT, is_scan_response: bool) -> _ReportT | None:
        if not is_scan_response:
            return report
        data = self._scan_response_of(report.address)
        return None if data is None else dataclasses.replace(report, data=data)

    def _scan_response_of(self, address: hci.Address) -> bytes | None:
        """What the advertiser at `address` answers a scan request with, if anything."""
        if self.le_scan_type != hci.HCI_LE_Set_Scan_Parameters_Command.ACTIVE_SCANNING:
            return None
        advertiser = self.link.find_le_controller(address)
        if advertiser is None:
            return None
        legacy = advertiser.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            if legacy.advertising_type in _LEGACY_SCANNABLE_TYPES:
                return legacy.scan_response_data
            return None
        for advertising_set in advertiser.advertising_sets.values():
            parameters = advertising_set.parameters
            if advertising_set.enabled and advertising_set.address == address and parameters:
                if parameters.advertising_event_properties & _EXT_SCANNABLE:
                    return bytes(advertising_set.scan_response_data)
                return None
        return None


class VirtualRadio:
    """One shared virtual radio medium (a bumble `LocalLink`).

    Must be used from inside a running event loop: bumble's controllers
    create futures on the running loop when they are made.

    By default connection data moves on the next loop turn. With
    ``connection_interval_ms`` it moves only at connection events of that
    interval, with ``loss`` as retransmissions drawn from ``seed``
    (``ble_stack.link_timing.ConnectionEventLink``).
    """

    def __init__(
        self, *, connection_interval_ms: float | None = None, loss: float = 0.0, seed: int = 0
    ) -> None:
        self.link: LocalLink
        if connection_interval_ms is None:
            if loss:
                raise ValueError("loss needs a connection interval to retransmit at")
            self.link = LocalLink()  # type: ignore[no-untyped-call]  # bumble lacks a hint
        else:
            from .link_timing import ConnectionEventLink

            self.link = ConnectionEventLink(connection_interval_ms, loss=loss, seed=seed)
        self._used_addresses: set[bytes] = set()
        self._controllers: dict[int, VirtualController] = {}  # by id() of the Device

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

    def controller_of(self, device: Device) -> VirtualController:
        """The controller a device made by `create_device` is attached to."""
        return self._controllers[id(device)]

    def remove_device(self, device: Device) -> None:
        """Switch off a device's radio: drop its links and leave the medium."""
        controller = self._controllers.pop(id(device), None)
        if controller is not None:
            controller.unplug()
            self._used_addresses.discard(controller.public_address.address_bytes)
