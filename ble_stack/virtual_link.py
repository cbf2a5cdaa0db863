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
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bumble import core, hci, ll
from bumble.controller import Connection as LinkConnection
from bumble.controller import Controller
from bumble.device import Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, TransportSink, TransportSource

from .capture import HciCapture

logger = logging.getLogger(__name__)

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
CONNECTION_TIMEOUT = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR
"""0x08: what a controller reports when its peer stopped answering for a supervision timeout."""
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
    - `vanish` models a radio that falls silent (power cut, process killed):
      its peers' controllers notice missed connection events and report the
      link lost with CONNECTION_TIMEOUT after a supervision timeout. Stock
      bumble never times a link out.
    - A host disconnecting a link whose peer vanished gets its disconnection
      at once (nobody will acknowledge the LL_TERMINATE_IND), and no command
      aimed at a vanished peer raises into the transport carrying the HCI.

    `on_link_event(controller, event)` (optional) sees every LE Connection
    Complete and Disconnection Complete event this controller sends its host,
    with the connection still known (`find_connection_by_handle`).
    `route_host_packet` (optional) may hand a host's packet to another controller.
    """

    on_link_event: Callable[[VirtualController, hci.HCI_Event], None] | None = None
    # Called before each packet from a host; returns the controller that should
    # handle it (the radio hub swaps in a fresh one when a new host shows up).
    route_host_packet: Callable[[VirtualController], VirtualController] | None = None
    host_packets = 0  # HCI packets received from hosts so far
    vanished = False

    def on_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if self.route_host_packet is not None:
            target = self.route_host_packet(self)
            if target is not self:
                target.on_hci_packet(packet)
                return
        if self.vanished:
            return  # a silent radio does nothing its former host asks
        self.host_packets += 1
        super().on_hci_packet(packet)

    def on_hci_command_packet(self, command: hci.HCI_Command) -> None:
        try:
            super().on_hci_command_packet(command)
        except core.InvalidArgumentError as error:
            # An LL control PDU for a peer that left the link. Raising here would
            # fail the transport that carries this host's HCI (the radio hub's
            # socket); a real controller would just never hear back.
            logger.debug("%s: %s (peer gone): %s", self.name, command.name, error)

    def drop_radio_activity(self, reason: int) -> None:
        """Stop advertising and scanning, and drop every LE link.

        Peers get a disconnection with `reason`; this controller's own host
        is told nothing, as after HCI Reset or a vanished host.
        """
        self._stop_radio()
        for connection in list(self.le_connections.values()):
            try:
                connection.send_ll_control_pdu(ll.TerminateInd(error_code=reason))
            except core.InvalidArgumentError:
                pass  # the peer's controller has already left the link
        self.le_connections.clear()

    def unplug(self, reason: int = _POWER_OFF) -> None:
        """Take this controller off its link as if its radio were switched off
        cleanly: peers are told at once, with `reason`."""
        self.drop_radio_activity(reason)
        if self in self.link.controllers:
            self.link.remove_controller(self)

    def vanish(self, supervision_timeout: float) -> list[asyncio.TimerHandle]:
        """Fall silent and leave the link, like a radio that lost power or
        whose host process died: nothing is sent to anyone.

        Each peer's controller keeps its link until `supervision_timeout`
        seconds without a connection event have passed, then reports it lost
        with CONNECTION_TIMEOUT (0x08) to its host, unless that host
        disconnected first. Data sent meanwhile is lost. This controller's
        own host is detached and told nothing. Returns the peers' timers
        (cancel them to keep those links up forever, e.g. on shutdown).
        """
        if supervision_timeout < 0:
            raise ValueError("the supervision timeout cannot be negative")
        peers: list[tuple[Controller, LinkConnection]] = []
        for connection in self.le_connections.values():
            peer = self.link.find_le_controller(connection.peer_address)
            if peer is None or peer is self:
                continue
            peer_connection = peer.le_connections.get(connection.self_address)
            if peer_connection is not None:
                peers.append((peer, peer_connection))
        self.vanished = True
        self.host = None
        self.on_link_event = None
        self.route_host_packet = None
        self._stop_radio()
        self.le_connections.clear()
        if self in self.link.controllers:
            self.link.remove_controller(self)
        loop = asyncio.get_running_loop()
        return [
            loop.call_later(supervision_timeout, _link_timed_out, peer, peer_connection)
            for peer, peer_connection in peers
        ]

    def _stop_radio(self) -> None:
        """Stop advertising, scanning and connecting (links are left alone)."""
        self.le_legacy_advertiser.stop()
        for advertising_set in self.advertising_sets.values():
            advertising_set.stop()
        self.advertising_sets.clear()
        self.le_scan_enable = False
        self.pending_le_connection = None

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
        connection = self.find_le_connection_by_handle(handle)
        try:
            super().on_hci_disconnect_command(command)
        except core.InvalidArgumentError:
            # The peer vanished (see `vanish`): the command status is out, and
            # no acknowledgement will ever come, so end the link here.
            if connection is not None and (
                self.le_connections.get(connection.peer_address) is connection
            ):
                self.on_le_disconnected(connection, command.reason)

    def on_hci_le_set_extended_scan_parameters_command(
        self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command
    ) -> hci.HCI_StatusReturnParameters:
        # Stock bumble drops the scan type here; keep it to know active from passive.
        self.le_scan_type = command.scan_types[0] if command.scan_types else 0
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        observer = self.on_link_event
        if observer is not None and isinstance(
            packet, hci.HCI_LE_Connection_Complete_Event | hci.HCI_Disconnection_Complete_Event
        ):
            try:
                observer(self, packet)
            except Exception:
                logger.exception("link event observer failed")
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


def _link_timed_out(controller: Controller, connection: LinkConnection) -> None:
    """`controller` missed its peer for a supervision timeout: the link is lost."""
    if controller.le_connections.get(connection.peer_address) is connection:
        controller.on_le_disconnected(connection, CONNECTION_TIMEOUT)


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
        self._captures: dict[int, HciCapture] = {}  # by id() of the Device

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

    async def create_device(
        self, name: str, address: str | None = None, *, capture: str | Path | None = None
    ) -> Device:
        """Make a bumble Device with its own controller on this radio.

        `address` is the device's random static address ("C0:11:22:33:44:55");
        by default a unique one is allocated. The device is not powered on.
        `capture` names a btsnoop file for the device's HCI traffic
        (ble_stack.capture), closed by `remove_device` or `close_captures`.
        """
        static_address = hci.Address(address) if address else self.allocate_address()
        controller = self.add_controller(f"{name} controller", static_address)
        host = Host(controller_source=controller, controller_sink=AsyncPipeSink(controller))
        device = Device(name=name, address=static_address, host=host)
        if capture is not None:
            try:
                self._captures[id(device)] = HciCapture(device, capture)
            except OSError:
                controller.unplug()
                self.release_address(controller)
                raise
        self._controllers[id(device)] = controller
        return device

    def close_captures(self) -> None:
        """Finish every capture file still open (devices stay on the radio)."""
        for recording in self._captures.values():
            recording.close()
        self._captures.clear()

    def controller_of(self, device: Device) -> VirtualController:
        """The controller a device made by `create_device` is attached to."""
        return self._controllers[id(device)]

    def release_address(self, controller: VirtualController) -> None:
        """Let a controller's address be allocated again (after it left the link)."""
        self._used_addresses.discard(controller.public_address.address_bytes)

    def remove_device(self, device: Device, *, supervision_timeout: float | None = None) -> None:
        """Switch off a device's radio: drop its links and leave the medium.

        By default peers are told at once (a clean power-off, reason 0x15).
        With `supervision_timeout` the radio vanishes instead (a crash or a
        power cut): peers lose their links with CONNECTION_TIMEOUT (0x08)
        that many seconds later; see `VirtualController.vanish`.
        """
        controller = self._controllers.pop(id(device), None)
        recording = self._captures.pop(id(device), None)
        if recording is not None:
            recording.close()
        if controller is not None:
            if supervision_timeout is None:
                controller.unplug()
            else:
                controller.vanish(supervision_timeout)
            self.release_address(controller)
