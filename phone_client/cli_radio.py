"""The phone CLI's radio: --transport, --timeout, --mtu, --capture, and the live status.

Without --transport the phone uses the operating system's adapter through
bleak; that adapter's HCI traffic is not reachable from here, so --capture
needs a bumble transport (`usb:0`, `tcp-client:...`, `virtual`, ...). The live
status line (stderr, TTY only) follows the bleak backend in use through thin
subclasses that report scanning, connecting, connected and the challenge.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .cli_output import StatusLine

CAPTURE_NEEDS_TRANSPORT = (
    "--capture needs --transport: the OS adapter (used through bleak without --transport) "
    "cannot be captured from here; use btmon, PacketLogger or a bumble transport"
)


def add_radio(
    parser: argparse.ArgumentParser,
    timeout: float,
    *,
    mtu: bool,
    positive: Callable[[str], Any],
    mtu_arg: Callable[[str], Any],
) -> None:
    parser.add_argument(
        "--transport",
        metavar="SPEC",
        help="bumble transport to use instead of the OS adapter "
        "(e.g. tcp-client:127.0.0.1:9000, usb:0)",
    )
    parser.add_argument(
        "--capture",
        metavar="FILE",
        help="write a btsnoop log of the HCI traffic to FILE (opens in Wireshark); needs "
        "--transport: the OS adapter cannot be captured from here",
    )
    parser.add_argument(
        "--timeout",
        type=positive,
        default=timeout,
        metavar="S",
        help=f"seconds per stage (default {timeout:g})",
    )
    if mtu:
        parser.add_argument(
            "--mtu",
            type=mtu_arg,
            metavar="N",
            help="ATT MTU to request and fragment for, 23..517 (default: negotiated)",
        )


def check_capture(args: argparse.Namespace) -> str | None:
    """The one-line usage error for --capture without --transport, else None."""
    if getattr(args, "capture", None) and getattr(args, "transport", None) is None:
        return CAPTURE_NEEDS_TRANSPORT
    return None


async def with_radio(
    args: argparse.Namespace,
    body: Callable[[dict[str, Any]], Any],
    *,
    device_name: str,
    status: StatusLine | None = None,
) -> Any:
    """Run ``body`` with bleak kwargs for the OS adapter, or for a bumble device
    opened from --transport (closed afterwards whatever happens), reporting
    progress on ``status`` when it is live."""
    live = status is not None and status.live
    if args.transport is None:
        radio: dict[str, Any] = {}
        if live and status is not None:
            radio = _observed_platform_kwargs(status)
        return await body(radio)
    from ble_stack.bleak_backend import DEFAULT_MTU, BumbleBleakClient, BumbleBleakScanner
    from ble_stack.transports import open_device

    if live and status is not None:
        status.show(f"opening {args.transport}...")
    opened = await open_device(
        args.transport, name=device_name, capture=getattr(args, "capture", None)
    )
    client: type[Any] = BumbleBleakClient
    scanner: type[Any] = BumbleBleakScanner
    if live and status is not None:
        client, scanner = observed_client(client, status), observed_scanner(scanner, status)
    try:
        device = opened.device
        radio = {
            "client_kwargs": {
                "backend": client,
                "bumble_device": device,
                "mtu": getattr(args, "mtu", None) or DEFAULT_MTU,
            },
            "scanner_kwargs": {"backend": scanner, "bumble_device": device},
        }
        return await body(radio)
    finally:
        await opened.close()


def _observed_platform_kwargs(status: StatusLine) -> dict[str, Any]:
    """The OS adapter's bleak backends, observed; nothing if bleak cannot name them here."""
    try:
        from bleak.backends.client import get_platform_client_backend_type
        from bleak.backends.scanner import get_platform_scanner_backend_type

        client, _ = get_platform_client_backend_type()
        scanner, _ = get_platform_scanner_backend_type()
    except Exception:  # no backend for this platform: bleak says why when it is used
        return {}
    return {
        "client_kwargs": {"backend": observed_client(client, status)},
        "scanner_kwargs": {"backend": observed_scanner(scanner, status)},
    }


def observed_scanner(base: type[Any], status: StatusLine) -> type[Any]:
    """A subclass of the bleak scanner backend ``base`` that reports scanning."""

    async def start(self: Any) -> None:
        status.show("scanning...")
        await base.start(self)

    return type(f"Observed{base.__name__}", (base,), {"start": start})


def observed_client(base: type[Any], status: StatusLine) -> type[Any]:
    """A subclass of the bleak client backend ``base`` that reports connecting,
    connected, the vehicle's challenge and the command sent."""

    async def connect(self: Any, pair: bool, **kwargs: Any) -> None:
        status.show(f"connecting to {self.address}...")
        await base.connect(self, pair, **kwargs)
        status.show(f"connected to {self.address}; waiting for the challenge...")

    async def start_notify(self: Any, characteristic: Any, callback: Any, **kwargs: Any) -> None:
        heard = [False]

        def on_notify(data: bytearray) -> None:
            if not heard[0]:
                heard[0] = True
                status.show("challenge received; answering...")
            callback(data)

        await base.start_notify(self, characteristic, on_notify, **kwargs)

    async def write_gatt_char(self: Any, characteristic: Any, data: Any, response: bool) -> None:
        await base.write_gatt_char(self, characteristic, data, response)
        status.show("sent; waiting for the vehicle's answer...")

    return type(
        f"Observed{base.__name__}",
        (base,),
        {"connect": connect, "start_notify": start_notify, "write_gatt_char": write_gatt_char},
    )
