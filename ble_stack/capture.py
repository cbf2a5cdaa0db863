"""btsnoop captures of a bumble device's HCI traffic, for Wireshark and tshark.

`HciCapture(device, path)` records every HCI packet between the device's
host and its controller (commands, events, ACL data carrying L2CAP, ATT and
SMP) into a btsnoop file (datalink 1002, "HCI UART (H4)"), which Wireshark
opens as is and `tshark -r FILE -Y btatt` decodes into ATT frames.

Used by `ble_stack.transports.open_device(capture=...)` (any spec) and
`VirtualRadio.create_device(capture=...)`. It records the host side of a
bumble device only: an operating system's own adapter (used through bleak
when no --transport is given) is not reachable from here; capture that with
the platform's tools (btmon on Linux, PacketLogger on macOS, the Bluetooth
ETW trace on Windows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from bumble.device import Device

__all__ = ["CaptureError", "HciCapture", "capture_path_for"]


class CaptureError(OSError):
    """The capture file cannot be written (one line: the path and why)."""


class HciCapture:
    """A btsnoop log of one device's HCI traffic, written until `close()`.

    Attach before the device is powered on to have the whole exchange,
    including the reset and the controller's feature reads Wireshark uses.
    """

    def __init__(self, device: Device, path: str | os.PathLike[str]) -> None:
        from bumble.snoop import BtSnooper

        self.path = Path(path)
        try:
            self._output: BinaryIO | None = open(self.path, "wb")  # closed in close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise CaptureError(f"cannot write capture file {self.path}: {reason}") from None
        self._device = device
        device.host.snooper = BtSnooper(self._output)

    @property
    def closed(self) -> bool:
        return self._output is None

    def close(self) -> None:
        """Stop recording and close the file. Idempotent."""
        if self._output is None:
            return
        if self._device.host.snooper is not None:
            self._device.host.snooper = None
        self._output.close()
        self._output = None


def capture_path_for(path: str | os.PathLike[str], label: str) -> Path:
    """`demo.btsnoop` + `owner` -> `demo-owner.btsnoop`: one file per device."""
    base = Path(path)
    return base.with_name(f"{base.stem}-{label}{base.suffix}")
