"""Open a bumble Device from a transport spec string.

Specs:
  virtual                       a controller on an in-process VirtualRadio
  tcp-client:HOST:PORT          a controller hosted by `phonekey radio`
  unix:PATH                     the same over a unix socket
  usb:0, usb:VID:PID            a USB Bluetooth dongle
  serial:/dev/ttyACM0,1000000   an H4 UART controller
  hci-socket:0                  a Linux HCI socket
and anything else bumble's `open_transport` accepts. bumble's transport code
(libusb, pyserial, ...) is imported only when a spec needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ble_stack.capture import CaptureError, HciCapture
from ble_stack.errors import TransportOpenError
from ble_stack.transport_errors import ResetTimeout, explain_open_error
from ble_stack.virtual_link import VirtualRadio

if TYPE_CHECKING:
    from bumble.device import Device
    from bumble.transport.common import Transport

__all__ = [
    "DEFAULT_OPEN_TIMEOUT",
    "SERIAL_RESET_TIMEOUT",
    "OpenedDevice",
    "default_radio",
    "explain_open_error",
    "open_device",
]

DEFAULT_OPEN_TIMEOUT = 10.0
SERIAL_RESET_TIMEOUT = 3.0
"""How long a serial controller has to answer HCI Reset before the open fails."""
# H4: command packet HCI_Reset (opcode 0x0C03), and the opcode in its Command Complete.
_HCI_RESET = bytes([0x01, 0x03, 0x0C, 0x00])
_RESET_OPCODE = bytes([0x03, 0x0C])
# What bumble's usb transport parses: N, VID:PID, VID:PID/SERIAL, VID:PID#N, BUS-PORT.PORT,
# then an optional ! (forced mode) and +sco=N; `[driver=rtk]`-style metadata is removed first.
_USB_SPEC = re.compile(r"(\d+|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}([/#].+)?|\d+-[\d.]+)!?(\+sco=\d+)?")
_METADATA = re.compile(r"\[[^\]]*\]")

_default_radios: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VirtualRadio] = (
    weakref.WeakKeyDictionary()
)


def default_radio() -> VirtualRadio:
    """The radio `virtual` specs share, one per event loop.

    Per loop because bumble controllers are bound to the loop they were made
    in; a test's fresh loop gets a fresh, empty radio.
    """
    loop = asyncio.get_running_loop()
    radio = _default_radios.get(loop)
    if radio is None:
        radio = _default_radios[loop] = VirtualRadio()
    return radio


class OpenedDevice:
    """A bumble Device plus what must be released with it.

    `transport` is the bumble transport for non-virtual specs (None for
    `virtual`); `transport.source.terminated` completes if the far end goes
    away, e.g. when `phonekey radio` exits.
    """

    def __init__(
        self,
        device: Device,
        spec: str,
        closers: list[Callable[[], Awaitable[None]]],
        transport: Transport | None = None,
    ) -> None:
        self.device = device
        self.spec = spec
        self.transport = transport
        self._closers = closers
        self._closed = False

    @property
    def transport_lost(self) -> bool:
        return self.transport is not None and self.transport.source.terminated.done()

    async def close(self) -> None:
        """Drop the device's connections, then release its transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.device.powered_on and not self.transport_lost:
            # Tell peers we are leaving, but never hang on a dead controller.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    for connection in list(self.device.connections.values()):
                        await connection.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.device.power_off()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()

    async def __aenter__(self) -> OpenedDevice:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def open_device(
    spec: str,
    *,
    name: str,
    address: str | None = None,
    radio: VirtualRadio | None = None,
    capture: str | None = None,
    timeout: float = DEFAULT_OPEN_TIMEOUT,
    reset_timeout: float = SERIAL_RESET_TIMEOUT,
) -> OpenedDevice:
    """Open the transport named by `spec` and build a Device on it.

    `address` is the device's random static address (default: a random one).
    `radio` is the VirtualRadio for `virtual` specs (default: `default_radio()`).
    `capture` names a btsnoop file that records all HCI traffic of the device
    (ble_stack.capture; CaptureError if it cannot be written); for non-virtual
    specs the BUMBLE_SNOOPER variable works as in bumble.
    A `serial:` controller must answer HCI Reset within `reset_timeout`
    seconds, so a wrong baud rate fails here with a message instead of
    hanging the first command. The device is returned not powered on.
    Raises TransportOpenError (cause and fix: ble_stack.transport_errors).
    """
    from bumble import hci
    from bumble.device import Device
    from bumble.host import Host

    closers: list[Callable[[], Awaitable[None]]] = []
    transport: Transport | None = None
    static_address = hci.Address(address) if address else None
    if spec == "virtual":
        radio = radio or default_radio()
        device = await radio.create_device(name, address)

        async def unplug() -> None:
            radio.remove_device(device)

        closers.append(unplug)
    else:
        _check_spec_shape(spec)
        from bumble.transport import open_transport

        try:
            async with asyncio.timeout(timeout):
                transport = await open_transport(spec)
        except Exception as error:
            raise explain_open_error(spec, error, timeout) from error
        if spec.startswith("serial:"):
            try:
                await _probe_hci_reset(transport, reset_timeout)
            except ResetTimeout as error:
                with contextlib.suppress(Exception):
                    await transport.close()
                raise explain_open_error(spec, error, timeout) from error
        closers.append(transport.close)
        host = Host(controller_source=transport.source, controller_sink=transport.sink)
        device = Device(name=name, address=static_address, host=host)

    if capture is not None:
        try:
            recording = HciCapture(device, capture)
        except CaptureError:
            for closer in reversed(closers):
                with contextlib.suppress(Exception):
                    await closer()
            raise

        async def close_capture() -> None:
            recording.close()

        # Closers run last to first: this one after the transport is gone.
        closers.insert(0, close_capture)
    return OpenedDevice(device, spec, closers, transport)


def _check_spec_shape(spec: str) -> None:
    """Catch malformed client specs here, where the message can say what's wrong."""
    scheme, _, rest = spec.partition(":")
    if scheme == "tcp-client":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TransportOpenError(
                spec, "expected tcp-client:HOST:PORT", "e.g. tcp-client:127.0.0.1:9000"
            )
    elif scheme in ("unix", "unix-client") and not rest:
        raise TransportOpenError(spec, "expected unix:PATH", "e.g. unix:/tmp/phonekey-1.sock")
    elif scheme == "usb" and not _USB_SPEC.fullmatch(_METADATA.sub("", rest)):
        raise TransportOpenError(
            spec, "expected usb:N, usb:VID:PID or usb:VID:PID/SERIAL", "e.g. usb:0 or usb:0a12:0001"
        )
    elif scheme == "serial" and not rest.split(",")[0]:
        raise TransportOpenError(
            spec, "expected serial:DEVICE[,BAUD]", "e.g. serial:/dev/ttyACM0,1000000"
        )
    elif scheme == "hci-socket" and rest and not rest.isdigit():
        raise TransportOpenError(spec, "expected hci-socket:N", "e.g. hci-socket:0 for hci0")


async def _probe_hci_reset(transport: Transport, timeout: float) -> None:
    """Send HCI Reset and wait for its Command Complete; raise ResetTimeout if none comes.

    The Host built next takes the packet sink over, so nothing of this stays.
    """
    answered = asyncio.Event()

    class _Probe:
        def on_packet(self, packet: bytes) -> None:
            # 0x04 event, 0x0E Command Complete, length, credits, opcode
            if packet[:2] == b"\x04\x0e" and packet[4:6] == _RESET_OPCODE:
                answered.set()

    transport.source.set_packet_sink(_Probe())
    transport.sink.on_packet(_HCI_RESET)
    try:
        async with asyncio.timeout(timeout):
            await answered.wait()
    except TimeoutError:
        raise ResetTimeout(timeout) from None
