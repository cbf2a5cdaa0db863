"""The phone side of phonekey: a key store and a BLE central built on bleak.

    from phone_client import KeyStore, PhoneKey, run_command

The BLE code only uses bleak's public API; pass ``backend=`` (and its
options) through ``client_kwargs`` / ``scanner_kwargs`` to run on something
other than the operating system's adapter, e.g. ble_stack's bumble backends.

Offline first: ``run_command(..., cloud=CloudClient(url))`` presents a cached
cloud credential at once and refreshes it beside the BLE exchange. The cloud
client lives in ``phone_client.cloud_client`` (it imports aiohttp, so it is
not imported here).
"""

from .central import PhoneKey
from .circuit_breaker import CircuitBreaker
from .command_policy import run_command
from .credential_cache import CachedCredential, CacheState, CredentialCache
from .errors import (
    AdapterUnavailable,
    BluetoothError,
    CircuitOpen,
    CloudLied,
    CloudRefused,
    CloudUnavailable,
    CommandTimeout,
    ConnectionLost,
    KeyStoreError,
    KeyUnavailable,
    NoTrustedIssuer,
    PhoneError,
    UnknownVehicle,
    VehicleNotFound,
)
from .keystore import KeyStore, default_home
from .outcome import CommandOutcome, Latency
from .scanning import SeenVehicle, find_vehicle, scan_vehicles
from .session import CommandStats, SessionTimings, VehicleSession
from .trust import VehicleTrust

__all__ = [
    "AdapterUnavailable",
    "BluetoothError",
    "CacheState",
    "CachedCredential",
    "CircuitBreaker",
    "CircuitOpen",
    "CloudLied",
    "CloudRefused",
    "CloudUnavailable",
    "CommandOutcome",
    "CommandStats",
    "CommandTimeout",
    "ConnectionLost",
    "CredentialCache",
    "KeyStore",
    "KeyStoreError",
    "KeyUnavailable",
    "Latency",
    "NoTrustedIssuer",
    "PhoneError",
    "PhoneKey",
    "SeenVehicle",
    "SessionTimings",
    "UnknownVehicle",
    "VehicleNotFound",
    "VehicleSession",
    "VehicleTrust",
    "default_home",
    "find_vehicle",
    "run_command",
    "scan_vehicles",
]
