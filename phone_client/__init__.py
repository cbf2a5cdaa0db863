"""The phone side of phonekey: a key store and a BLE central built on bleak.

    from phone_client import KeyStore, PhoneKey, run_command

The BLE code only uses bleak's public API; pass ``backend=`` (and its
options) through ``client_kwargs`` / ``scanner_kwargs`` to run on something
other than the operating system's adapter, e.g. ble_stack's bumble backends.
"""

from .central import CommandOutcome, Latency, PhoneKey, run_command
from .errors import (
    AdapterUnavailable,
    BluetoothError,
    CommandTimeout,
    ConnectionLost,
    KeyStoreError,
    PhoneError,
    UnknownVehicle,
    VehicleNotFound,
)
from .keystore import KeyStore, default_home
from .scanning import SeenVehicle, find_vehicle, scan_vehicles
from .session import CommandStats, SessionTimings, VehicleSession

__all__ = [
    "AdapterUnavailable",
    "BluetoothError",
    "CommandOutcome",
    "CommandStats",
    "CommandTimeout",
    "ConnectionLost",
    "KeyStore",
    "KeyStoreError",
    "Latency",
    "PhoneError",
    "PhoneKey",
    "SeenVehicle",
    "SessionTimings",
    "UnknownVehicle",
    "VehicleNotFound",
    "VehicleSession",
    "default_home",
    "find_vehicle",
    "run_command",
    "scan_vehicles",
]
