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
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ble_stack.errors import TransportOpenError
from ble_stack.virtual_link import VirtualRadio

if TYPE_CHECKING:
    from bumble.device import Device
    from bumble.transport.common import Transport

DEFAULT_OPEN_TIMEOUT = 10.0
_RADIO_FIX = "is `phonekey radio` running and listening there?"
_SPEC_HELP = (
    "use virtual, tcp-client:HOST:PORT, unix:PATH, usb:0, usb:VID:PID, "
    "serial:/dev/ttyACM0,1000000 or hci-socket:0"
)
_HARDWARE_DOC = "see docs/hardware.md"

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
) -> OpenedDevice:
    """Open the transport named by `spec` and build a Device on it.

    `address` is the device's random static address (default: a random one).
    `radio` is the VirtualRadio for `virtual` specs (default: `default_radio()`).
    `capture` names a btsnoop file that records all HCI traffic of the device;
    for non-virtual specs the BUMBLE_SNOOPER variable works as in bumble.
    The device is returned not powered on. Raises TransportOpenError.
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
        closers.append(transport.close)
        host = Host(controller_source=transport.source, controller_sink=transport.sink)
        device = Device(name=name, address=static_address, host=host)

    if capture is not None:
        _attach_capture(device, capture, closers)
    return OpenedDevice(device, spec, closers, transport)


def _attach_capture(
    device: Device, path: str, closers: list[Callable[[], Awaitable[None]]]
) -> None:
    from bumble.snoop import BtSnooper

    output = open(path, "wb")  # closed by close_capture below
    device.host.snooper = BtSnooper(output)

    async def close_capture() -> None:
        device.host.snooper = None
        output.close()

    # Run first on close, so the file is never written after it is closed.
    closers.insert(0, close_capture)


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


def explain_open_error(spec: str, error: BaseException, timeout: float) -> TransportOpenError:
    """Turn whatever bumble or the OS raised into a cause and a fix."""
    scheme, _, rest = spec.partition(":")
    kind = type(error).__name__
    text = str(error)
    cause, fix = f"{kind}: {text}" if text else kind, f"check the spec; {_HARDWARE_DOC}"
    if isinstance(error, TimeoutError):
        cause, fix = f"no answer within {timeout:g} s", "check the address and that it is reachable"
    elif isinstance(error, ConnectionRefusedError):
        cause, fix = f"connection refused at {rest}", _RADIO_FIX
    elif isinstance(error, FileNotFoundError) and scheme in ("unix", "unix-client"):
        cause, fix = f"no socket at {rest}", _RADIO_FIX
    elif isinstance(error, socket.gaierror):
        cause, fix = f"cannot resolve host in {rest!r}", "check the host name in the spec"
    elif kind == "TransportSpecError":
        cause, fix = f"unknown transport {scheme!r}", _SPEC_HELP
    elif isinstance(error, ModuleNotFoundError):
        cause = f"bumble's {scheme} transport needs the missing module {error.name!r}"
        fix = f"pip install it; {_HARDWARE_DOC}"
    elif scheme in ("usb", "pyusb"):
        cause, fix = _explain_usb(kind, text)
    elif scheme == "serial":
        cause = f"cannot open serial port: {text}"
        fix = "check the device path and that you may open it (dialout group)"
    elif scheme == "hci-socket":
        cause = f"cannot open HCI socket: {text or kind}"
        fix = f"needs Linux with Bluetooth, the adapter down, and CAP_NET_ADMIN; {_HARDWARE_DOC}"
    elif scheme == "vhci":
        cause, fix = f"cannot open /dev/vhci: {text or kind}", "modprobe hci_vhci, or use virtual"
    elif isinstance(error, PermissionError):
        cause, fix = f"permission denied: {text}", f"run with the needed rights; {_HARDWARE_DOC}"
    return TransportOpenError(spec, cause, fix)


def _explain_usb(kind: str, text: str) -> tuple[str, str]:
    if kind in ("TransportInitError", "USBErrorNotFound", "USBErrorNoDevice"):
        return "no USB Bluetooth dongle found", f"plug one in or {_HARDWARE_DOC}"
    if kind == "USBErrorAccess":
        return "no permission to open the USB dongle", f"add a udev rule or {_HARDWARE_DOC}"
    if kind == "USBErrorBusy":
        return (
            "the USB dongle is in use (bluetoothd?)",
            f"take it away from the OS stack; {_HARDWARE_DOC}",
        )
    return (
        f"USB is not usable on this machine ({kind}{': ' + text if text else ''})",
        f"use a machine with a USB dongle, or the virtual radio; {_HARDWARE_DOC}",
    )
