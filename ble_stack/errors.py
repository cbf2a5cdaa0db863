"""Exceptions raised by ble_stack.

Each carries what failed, why, and what to do about it, because these errors
end up as the one-line reason the CLI prints.
"""

from __future__ import annotations


class BleStackError(Exception):
    """Base class of every error raised by ble_stack."""


class TransportOpenError(BleStackError):
    """A transport spec could not be opened.

    `str()` is two lines: what failed and why, then how to fix it.
    """

    def __init__(self, spec: str, cause: str, fix: str) -> None:
        super().__init__(spec, cause, fix)
        self.spec = spec
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"cannot open BLE transport {self.spec!r}: {self.cause}\n  fix: {self.fix}"
