"""What the vehicle firmware needs from its persistent store, beyond the protocol's.

``protocol.store`` defines what the sans-IO handshake reads and commits
(``VehicleStore``) and what issuer-signed credentials need (``CredentialTrust``).
The firmware around it (runtime, console, keycard, defences, event log) needs
more: keycards, bulk provisioning, factory reset, the failed-authentication
backoff checkpoint and the tamper-evident event log. ``FirmwareStore`` names
all of it so the runtime can be written, and tested, against the interface;
``vehicle_sim.flash`` implements it on emulated flash.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from protocol import crypto
from protocol.card import VehicleCard
from protocol.store import CredentialTrust, VehicleStore, WhitelistEntry
from protocol.types import Role
from protocol.vehicle import VehicleIdentity

NO_KEY = bytes(16)
"""The key id logged for events no key caused (boot, a revocation update)."""


class LogKind(enum.IntEnum):
    """What an event-log entry records (one byte on flash; see docs/firmware.md)."""

    BOOT = 1
    UNLOCK = 2  # key_id: the phone key, or the keycard id for a card tap
    LOCK = 3
    STATUS = 4
    DENIED = 5  # reason: the protocol ResultCode sent (or a firmware reason, see below)
    ENROLLED = 6  # key_id: the key added
    REMOVED = 7  # key_id: the key removed
    REVOCATIONS = 8  # a revocation update was applied
    SHARE_USED = 9  # key_id: the friend's key that a share authorised
    SHARE_REVOKED = 10  # key_id: the first 16 bytes of the share id
    CARD_TAP = 11  # key_id: the keycard id; opened the pairing window
    FACTORY_RESET = 12
    OWNERSHIP_TRANSFER = 13  # key_id: the new owner's key
    CLOCK_CORRECTED = 14
    ISSUER_ROTATED = 15
    EVICTED = 16  # a connection was dropped to free a slot (key_id: NO_KEY)


@dataclass(frozen=True)
class LogEvent:
    """One event as the firmware reports it; the store adds sequence, time and MAC."""

    kind: LogKind
    key_id: bytes = NO_KEY  # 16 bytes
    reason: int = 0  # for DENIED: the ResultCode value; otherwise 0


@dataclass(frozen=True)
class LogEntry:
    """One entry as read back from flash."""

    seq: int  # 1, 2, 3, ... never reused, survives wrap
    time: int  # vehicle time (unix seconds) of the first occurrence
    kind: LogKind
    key_id: bytes
    reason: int
    count: int  # >1 when repeated identical denials were aggregated


@dataclass(frozen=True)
class LogReadout:
    entries: tuple[LogEntry, ...]
    verified: bool  # the MAC chain verifies from the first surviving entry to the head
    problem: str | None  # one line on what does not verify, when ``verified`` is False
    lost_to_wrap: int  # entries dropped by wrapping (the sequence numbers before the first)


@dataclass(frozen=True)
class FlashStats:
    image_bytes: int
    used_bytes: int
    writes: int  # program and erase operations since mount
    bytes_per_key: int  # flash bytes one whitelist entry costs in the layout
    max_keys: int
    max_revocations: int


class FirmwareStore(VehicleStore, CredentialTrust, Protocol):
    @property
    def identity(self) -> VehicleIdentity: ...

    @property
    def card(self) -> VehicleCard: ...

    @property
    def read_only(self) -> bool: ...

    def close(self) -> None: ...

    def is_key_revoked(self, key_id: bytes) -> bool:
        """True if this vehicle's revocation list names phone key ``key_id``."""
        ...

    def revoked_count(self) -> int: ...

    @property
    def time_floor(self) -> int: ...

    # --- whitelist, provisioned from the console ---------------------------------
    def add_key(self, public_key: crypto.PublicKey, role: Role) -> WhitelistEntry: ...

    def add_keys(self, keys: Iterable[tuple[crypto.PublicKey, Role]]) -> list[WhitelistEntry]:
        """Bulk provisioning: all of them in one commit."""
        ...

    def remove_key(self, key_id: bytes) -> WhitelistEntry | None: ...

    def factory_reset(self) -> None:
        """Wipe keys, shares and fast-path secrets in one commit; keep identity,
        keycards, issuer trust, revocations, counters and the event log."""
        ...

    # --- keycards ------------------------------------------------------------------
    def keycards(self) -> list[crypto.PublicKey]: ...

    def add_keycard(self, public_key: crypto.PublicKey) -> bool:
        """Register a keycard; False if it already was."""
        ...

    def remove_keycard(self, card_id: bytes) -> bool: ...

    # --- failed-authentication backoff -------------------------------------------
    def backoff_level(self) -> int:
        """The last checkpointed global backoff level (0 when none)."""
        ...

    def save_backoff_level(self, level: int) -> None:
        """Durably checkpoint the backoff level (called rarely: on level changes)."""
        ...

    # --- event log -------------------------------------------------------------------
    def log_event(self, event: LogEvent) -> None:
        """Append ``event`` (repeated identical denials are aggregated in RAM and
        written as one entry with a count)."""
        ...

    def flush_log(self) -> None:
        """Write any aggregated entry still held in RAM (call on shutdown)."""
        ...

    def read_log(self) -> LogReadout: ...

    def stats(self) -> FlashStats: ...
