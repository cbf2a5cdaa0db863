"""Exceptions raised by phone_client.

Each one's text is the one-line reason the CLI prints, so it says what went
wrong and, where there is something to do, what to do. Protocol outcomes
(``protocol.VehicleRejected`` subclasses, ``protocol.RemoteProtocolError``)
are not wrapped: they propagate as the protocol core raised them, so callers
can tell "unknown key" from "forged response" by type.
"""

from __future__ import annotations


class PhoneError(Exception):
    """Base class of every error raised by phone_client."""


class KeyStoreError(PhoneError):
    """The phone's local key store is missing, unreadable, unsafe or corrupt."""


class UnknownVehicle(KeyStoreError):
    """The phone holds no card for the vehicle it was asked to talk to."""

    def __init__(self, vin: str) -> None:
        super().__init__(
            f"this phone holds no key for vehicle {vin}; "
            "add its card with `phonekey phone add-vehicle`"
        )
        self.vin = vin


class AdapterUnavailable(PhoneError):
    """No usable Bluetooth adapter: the OS stack is absent or refused to scan."""


class VehicleNotFound(PhoneError):
    """No advertisement of the wanted vehicle arrived before the timeout."""


class CommandTimeout(PhoneError):
    """The vehicle did not answer (connect, challenge or response) in time."""


class ConnectionLost(PhoneError):
    """The link dropped while the phone was waiting for the vehicle."""


class BluetoothError(PhoneError):
    """The Bluetooth stack failed an operation (e.g. the GATT service is missing)."""
