"""Cross-process virtual radio: one LocalLink, one controller per host slot.

A `RadioHub` serves each listen spec (`tcp-server:HOST:PORT` or
`unix-server:PATH`) through bumble's `open_transport`, with a
`VirtualController` behind it; all controllers share one link. An app process
attaches to a slot with `open_device("tcp-client:HOST:PORT")` (or `unix:PATH`)
and then advertises, scans and connects as if it had a radio of its own.

Each slot serves one host at a time. When a host goes away its peers see the
link drop, and the next host to attach gets a clean controller (it starts
with HCI Reset, which the VirtualController honours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
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
_HOST_GONE = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR  # what peers would see on air
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

    def current_client(self) -> Any:
        return getattr(_unwrapped(self.transport).sink, "transport", None)


def _unwrapped(transport: Transport) -> Transport:
    return transport.transport if isinstance(transport, SnoopingTransport) else transport


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

    def __init__(self, listen_specs: Sequence[str], radio: VirtualRadio | None = None) -> None:
        if not listen_specs:
            raise ValueError("a radio hub needs at least one listen spec")
        for spec in listen_specs:
            _check_listen_spec(spec)
        self.listen_specs = list(listen_specs)
        self._radio = radio
        self.slots: list[HostSlot] = []
        self._watcher: asyncio.Task[None] | None = None

    @property
    def connect_specs(self) -> list[str]:
        return [slot.connect_spec for slot in self.slots]

    async def start(self) -> list[str]:
        """Open every listen spec; return the connect spec of each slot, in order."""
        radio = self._radio = self._radio or VirtualRadio()
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
                controller = radio.add_controller(
                    f"host {number}", host_source=transport.source, host_sink=transport.sink
                )
                self.slots.append(
                    HostSlot(number, spec, _connect_spec(spec, transport), transport, controller)
                )
        except BaseException:
            await self.close()
            raise
        self._watcher = asyncio.create_task(self._watch_hosts(), name="radio-hub-watcher")
        return self.connect_specs

    async def _watch_hosts(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            for slot in self.slots:
                self._check_slot(slot)

    def _check_slot(self, slot: HostSlot) -> None:
        client = slot.current_client()
        if client is slot.attached:
            return
        previous, slot.attached = slot.attached, client
        if previous is not None:
            if not previous.is_closing():
                # bumble let a second host in while the first was attached; both
                # would write into one HCI stream, so cut the first one off.
                logger.warning("host %d: a new host took over the slot", slot.number)
                previous.close()
            logger.info("host %d detached", slot.number)
            slot.controller.drop_radio_activity(_HOST_GONE)
            parser = getattr(_unwrapped(slot.transport).source, "parser", None)
            if parser is not None:
                parser.reset()  # drop any half-received packet of the old host
        if client is not None:
            logger.info("host %d attached", slot.number)

    async def close(self) -> None:
        """Drop all links, disconnect hosts and stop listening."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for slot in self.slots:
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
