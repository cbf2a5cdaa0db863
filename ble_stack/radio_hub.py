"""Cross-process virtual radio: one LocalLink, one controller per host slot.

A `RadioHub` serves each listen spec (`tcp-server:HOST:PORT` or
`unix-server:PATH`) through bumble's `open_transport`, with a
`VirtualController` behind it; all controllers share one link. An app process
attaches to a slot with `open_device("tcp-client:HOST:PORT")` (or `unix:PATH`)
and then advertises, scans and connects as if it had a radio of its own.

Each slot serves one host at a time. When a host goes away (its process
died, or it closed its socket) the slot's controller vanishes as a radio
that lost power would: peers hear nothing more and their controllers report
each link lost with CONNECTION_TIMEOUT (0x08) once `supervision_timeout`
seconds have passed, as a real radio does after missing connection events.
The slot gets a fresh controller at once, so the host (or a new one) can
attach again right away and starts from a clean state.

Address policy: every controller gets a public address allocated by the
radio (random static bytes, unique on the link). A replacement controller
gets a new one, as a new dongle would; the vanished one's goes back to the
pool. Hosts advertise and connect with their own random addresses anyway.

`on_event` receives one line per thing worth telling a person: a host
attached or left, a link came up or went down (with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bumble import hci
from bumble.transport import open_transport
from bumble.transport.common import SnoopingTransport, Transport

from ble_stack.errors import TransportOpenError
from ble_stack.virtual_link import VirtualController, VirtualRadio

logger = logging.getLogger(__name__)

# How often slots are checked for hosts leaving. bumble's server transports
# have no disconnect hook, so the hub looks at their current client instead.
POLL_INTERVAL = 0.05
DEFAULT_SUPERVISION_TIMEOUT = 4.0
"""Seconds before peers of a vanished host lose their links. Phones and
peripherals commonly ask for 2-6 s; the spec allows 0.1-32 s."""
MIN_SUPERVISION_TIMEOUT = 0.1
MAX_SUPERVISION_TIMEOUT = 32.0
_LOOPBACK = {"": "127.0.0.1", "_": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


@dataclass
class HostSlot:
    """One listen spec, the controller behind it, and the host attached to it."""

    number: int
    listen_spec: str
    connect_spec: str
    transport: Transport
    controller: VirtualController
    attached: Any = None  # the asyncio transport of the attached host, if any
    seen_packets: int = field(default=0)  # controller.host_packets when last checked

    def current_client(self) -> Any:
        return getattr(_unwrapped(self.transport).sink, "transport", None)


def _unwrapped(transport: Transport) -> Transport:
    return transport.transport if isinstance(transport, SnoopingTransport) else transport


def _keep_newest_client(transport: Transport) -> None:
    """Make the server transport's sink forget a client only when that client
    itself is gone.

    bumble's tcp-server and unix-server transports (bumble 0.0.236) share one
    sink between all their connections, and every connection's
    ``connection_lost``/``eof_received`` sets ``sink.transport = None``. When
    a host reconnects faster than its old connection's end is processed (a
    script reconnecting in-process, or the hub cutting off an old host that a
    new one replaced), the old connection's end wipes out the new one: the new
    host's commands reach its controller, the answers are dropped, and it
    hangs in power-on. The sink's ``transport`` becomes a property that
    ignores ``None`` while the client it holds is still open (its own end
    comes with ``is_closing()`` true, so it still clears)."""
    sink = _unwrapped(transport).sink
    if isinstance(sink, _NewestClientSink) or not hasattr(sink, "transport"):
        return
    client = sink.transport
    sink.__class__ = type("NewestClient" + type(sink).__name__, (_NewestClientSink, type(sink)), {})
    sink.__dict__.pop("transport", None)
    setattr(sink, "_client", client)  # noqa: B010  (sink is typed as bumble's TransportSink)


class _NewestClientSink:
    _client: Any = None

    @property
    def transport(self) -> Any:
        return self._client

    @transport.setter
    def transport(self, value: Any) -> None:
        current = self._client
        if value is None and current is not None and not current.is_closing():
            return  # an older connection ended after a newer one attached
        self._client = value


def _check_listen_spec(spec: str) -> None:
    scheme, _, rest = spec.partition(":")
    if scheme == "tcp-server":
        _, _, port = rest.rpartition(":")
        if port.isdigit() and int(port) < 65536:
            return
    elif scheme == "unix-server" and rest:
        return
    raise TransportOpenError(
        spec,
        "expected tcp-server:HOST:PORT or unix-server:PATH",
        "e.g. --listen tcp-server:127.0.0.1:0 (0 picks a free port)",
    )


def _connect_spec(listen_spec: str, transport: Transport) -> str:
    """The spec a host uses to reach this slot, with the real port if it was 0."""
    scheme, _, rest = listen_spec.partition(":")
    if scheme == "unix-server":
        return f"unix:{rest}"
    host, _, port = rest.rpartition(":")
    server = getattr(_unwrapped(transport), "server", None)
    if server is not None and server.sockets:
        port = str(server.sockets[0].getsockname()[1])
    return f"tcp-client:{_LOOPBACK.get(host, host)}:{port}"


class RadioHub:
    """Virtual controllers on one link, each reachable through a listen spec."""

    def __init__(
        self,
        listen_specs: Sequence[str],
        radio: VirtualRadio | None = None,
        *,
        supervision_timeout: float = DEFAULT_SUPERVISION_TIMEOUT,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if not listen_specs:
            raise ValueError("a radio hub needs at least one listen spec")
        if not MIN_SUPERVISION_TIMEOUT <= supervision_timeout <= MAX_SUPERVISION_TIMEOUT:
            raise ValueError(
                f"the supervision timeout must be within {MIN_SUPERVISION_TIMEOUT:g}"
                f"-{MAX_SUPERVISION_TIMEOUT:g} s"
            )
        for spec in listen_specs:
            _check_listen_spec(spec)
        self.listen_specs = list(listen_specs)
        self.supervision_timeout = supervision_timeout
        self._radio = radio
        self._on_event = on_event
        self.slots: list[HostSlot] = []
        self._watcher: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._names: dict[bytes, str] = {}  # addresses seen on links, by host

    @property
    def connect_specs(self) -> list[str]:
        return [slot.connect_spec for slot in self.slots]

    async def start(self) -> list[str]:
        """Open every listen spec; return the connect spec of each slot, in order."""
        self._radio = self._radio or VirtualRadio()
        try:
            for number, spec in enumerate(self.listen_specs, start=1):
                try:
                    transport = await open_transport(spec)
                except OSError as error:
                    raise TransportOpenError(
                        spec,
                        f"cannot listen: {error.strerror or error}",
                        "pick another port or path, or stop what is using it",
                    ) from error
                _keep_newest_client(transport)
                controller = self._new_controller(number, transport)
                self.slots.append(
                    HostSlot(number, spec, _connect_spec(spec, transport), transport, controller)
                )
        except BaseException:
            await self.close()
            raise
        self._watcher = asyncio.create_task(self._watch_hosts(), name="radio-hub-watcher")
        return self.connect_specs

    def _new_controller(self, number: int, transport: Transport) -> VirtualController:
        assert self._radio is not None
        controller = self._radio.add_controller(
            f"host {number}", host_source=transport.source, host_sink=transport.sink
        )
        controller.on_link_event = self._on_link_event
        controller.route_host_packet = self._route_host_packet
        return controller

    def _route_host_packet(self, controller: VirtualController) -> VirtualController:
        """Before a host's packet: a host that attached since the last look
        gets a fresh controller now, before its first command lands."""
        slot = next((s for s in self.slots if s.controller is controller), None)
        if slot is None:
            return controller
        client = slot.current_client()
        if client is not None and client is not slot.attached and slot.attached is not None:
            self._check_slot(slot, reset_parser=False)  # the stream is in sync: keep it
        return slot.controller

    def _say(self, line: str) -> None:
        logger.info("%s", line)
        if self._on_event is not None:
            self._on_event(line)

    async def _watch_hosts(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self._timers = [timer for timer in self._timers if not timer.cancelled()]
            for slot in self.slots:
                self._check_slot(slot)

    def _check_slot(self, slot: HostSlot, *, reset_parser: bool = True) -> None:
        client = slot.current_client()
        packets = slot.controller.host_packets
        # A host that came and went between two looks still used the controller.
        blink = client is None and slot.attached is None and packets != slot.seen_packets
        slot.seen_packets = packets
        if client is slot.attached and not blink:
            return
        previous, slot.attached = slot.attached, client
        if previous is not None and not previous.is_closing():
            # bumble let a second host in while the first was attached; both
            # would write into one HCI stream, so cut the first one off.
            logger.warning("host %d: a new host took over the slot", slot.number)
            previous.close()
        if previous is not None or blink:
            self._replace_controller(slot, reset_parser=reset_parser)
        if client is not None:
            self._say(f"host {slot.number}: attached")

    def _note_attached_hosts(self) -> None:
        """Report hosts that attached since the last look (before their links)."""
        for slot in self.slots:
            client = slot.current_client()
            if slot.attached is None and client is not None:
                slot.attached = client
                self._say(f"host {slot.number}: attached")

    def _replace_controller(self, slot: HostSlot, *, reset_parser: bool = True) -> None:
        """The slot's host left: its radio vanishes, a fresh one takes the slot."""
        assert self._radio is not None
        old = slot.controller
        links = len(old.le_connections)
        self._timers.extend(old.vanish(self.supervision_timeout))
        self._radio.release_address(old)
        parser = getattr(_unwrapped(slot.transport).source, "parser", None)
        if parser is not None and reset_parser:
            parser.reset()  # drop any half-received packet of the old host
        slot.controller = self._new_controller(slot.number, slot.transport)
        slot.seen_packets = 0
        dropping = (
            f"; its {links} link(s) drop in {self.supervision_timeout:g} s (supervision timeout)"
            if links
            else ""
        )
        self._say(f"host {slot.number}: gone{dropping}; slot ready for a new host")

    def _slot_of(self, address: hci.Address) -> str:
        for slot in self.slots:
            controller = slot.controller
            if address in (controller.random_address, controller.public_address):
                name = self._names[address.address_bytes] = f"host {slot.number}"
                return name
        # A host that has gone since: the name it had when its link came up.
        return self._names.get(address.address_bytes, str(address))

    def _on_link_event(self, controller: VirtualController, event: Any) -> None:
        slot = next((s for s in self.slots if s.controller is controller), None)
        if slot is None:
            return
        self._note_attached_hosts()
        if isinstance(event, hci.HCI_LE_Connection_Complete_Event):
            if event.status == hci.HCI_SUCCESS:
                role = "central" if event.role == hci.Role.CENTRAL else "peripheral"
                peer = self._slot_of(event.peer_address)
                self._say(f"host {slot.number}: connected to {peer} (as {role})")
            return
        connection = controller.find_connection_by_handle(event.connection_handle)
        peer = "a peer" if connection is None else self._slot_of(connection.peer_address)
        self._say(f"host {slot.number}: link to {peer} down ({_reason(event.reason)})")

    async def close(self) -> None:
        """Drop all links, disconnect hosts and stop listening."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for slot in self.slots:
            slot.controller.on_link_event = None
            slot.controller.route_host_packet = None
            slot.controller.unplug()
            client = slot.current_client()
            if client is not None:
                client.close()
            server = getattr(_unwrapped(slot.transport), "server", None)
            if server is not None:
                # bumble's server transports leave the listening socket open on close().
                server.close()
                await server.wait_closed()
            await slot.transport.close()
            scheme, _, path = slot.listen_spec.partition(":")
            if scheme == "unix-server" and not path.startswith("@"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self.slots.clear()


def _reason(code: int) -> str:
    try:
        name = hci.HCI_ErrorCode(code).name
    except ValueError:
        return f"reason 0x{code:02X}"
    return f"{name.removesuffix('_ERROR').lower().replace('_', ' ')}, 0x{code:02X}"
