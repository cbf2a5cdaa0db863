"""The vehicle's persistent state, as the protocol core needs it.

The core talks to storage only through ``VehicleStore`` so the backing store
can change (a JSON file today, emulated flash later) without touching the
handshake. ``commit_command`` must be atomic and durable *before it returns*:
the vehicle acknowledges a command only after the new counter, the spent
nonce and the new lock state are safe, so a power cut can neither replay a
command nor leave a car unlocked that the phone was told is locked.

``MemoryStore`` is the in-memory implementation used by tests and the
in-memory connection pair.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from . import crypto
from .types import LockState, Role

SPENT_NONCE_MEMORY = 64
"""How many recently spent nonces a store remembers (defence in depth: a
nonce is also single use in the session that issued it)."""


@dataclass(frozen=True)
class WhitelistEntry:
    public_key: bytes  # compressed SEC1 point
    role: Role

    @property
    def key_id(self) -> bytes:
        return crypto.key_id(crypto.public_key_from_bytes(self.public_key))


class VehicleStore(Protocol):
    def lock_state(self) -> LockState: ...

    def whitelist_entry(self, key_id: bytes) -> WhitelistEntry | None: ...

    def last_counter(self, key_id: bytes) -> int:
        """The highest counter accepted from this key, 0 if none yet."""
        ...

    def nonce_spent(self, nonce: bytes) -> bool: ...

    def commit_command(
        self, *, key_id: bytes, counter: int, nonce: bytes, lock_state: LockState
    ) -> None:
        """Atomically and durably record an accepted command; raise on failure."""
        ...


class CredentialTrust(Protocol):
    """What a vehicle needs to verify issuer-signed credentials offline."""

    def issuer_keys(self) -> Mapping[bytes, crypto.PublicKey]:
        """Trusted issuer public keys by key id; empty if none is provisioned."""
        ...

    def is_revoked(self, rev_id: bytes) -> bool:
        """True if the revocation id ``rev_id`` is on the held list.

        Callers pass ``credentials.revocation_id(vehicle_id, key_id)`` with
        this vehicle's own id, never a raw key id: entries are per vehicle,
        so a key revoked for another vehicle is not revoked here."""
        ...

    def now(self) -> int:
        """The vehicle's wall-clock time in unix seconds, never below its
        persisted time floor."""
        ...

    def revocation_version(self) -> int: ...

    def apply_revocations(self, to_version: int, rev_ids: tuple[bytes, ...]) -> None:
        """Durably add the revocation ids ``rev_ids`` and move the version to ``to_version``."""
        ...

    def correct_clock(self, issuer_time: int) -> None:
        """Set the clock (and its floor) to fresh issuer-signed time, durably."""
        ...

    def rotate_issuer(self, old_key_id: bytes, new_key: crypto.PublicKey) -> None:
        """Durably trust ``new_key``, which the trusted issuer key ``old_key_id``
        vouched for (the caller verified the rotation). Afterwards exactly the
        new key and the old one are trusted: the old key stays as the second
        slot, so credentials it issued stay valid until they expire; any other
        key is dropped. Nothing changes if ``new_key`` is already trusted."""
        ...


@dataclass
class MemoryTrust:
    """A ``CredentialTrust`` in RAM, for tests; ``clock`` gives unix seconds."""

    issuers: dict[bytes, crypto.PublicKey] = field(default_factory=dict)
    revoked: set[bytes] = field(default_factory=set)  # revocation ids
    clock: Callable[[], float] = field(default=lambda: 0.0)
    version: int = 0
    offset: int = 0
    floor: int = 0

    def add_issuer(self, public_key: crypto.PublicKey) -> None:
        self.issuers[crypto.key_id(public_key)] = public_key

    def issuer_keys(self) -> Mapping[bytes, crypto.PublicKey]:
        return self.issuers

    def is_revoked(self, rev_id: bytes) -> bool:
        return rev_id in self.revoked

    def now(self) -> int:
        return max(int(self.clock()) + self.offset, self.floor)

    def revocation_version(self) -> int:
        return self.version

    def apply_revocations(self, to_version: int, rev_ids: tuple[bytes, ...]) -> None:
        self.revoked.update(rev_ids)
        self.version = to_version

    def correct_clock(self, issuer_time: int) -> None:
        self.offset = issuer_time - int(self.clock())
        self.floor = issuer_time

    def rotate_issuer(self, old_key_id: bytes, new_key: crypto.PublicKey) -> None:
        new_key_id = crypto.key_id(new_key)
        if new_key_id in self.issuers:
            return
        old_key = self.issuers[old_key_id]
        self.issuers = {new_key_id: new_key, old_key_id: old_key}


@dataclass
class MemoryStore:
    """A ``VehicleStore`` in RAM, for tests and in-memory runs."""

    whitelist: dict[bytes, WhitelistEntry] = field(default_factory=dict)
    counters: dict[bytes, int] = field(default_factory=dict)
    spent_nonces: deque[bytes] = field(default_factory=lambda: deque(maxlen=SPENT_NONCE_MEMORY))
    state: LockState = LockState.LOCKED
    commits: int = 0

    def add_key(self, public_key: crypto.PublicKey, role: Role) -> WhitelistEntry:
        entry = WhitelistEntry(crypto.public_bytes(public_key), role)
        self.whitelist[entry.key_id] = entry
        return entry

    def lock_state(self) -> LockState:
        return self.state

    def whitelist_entry(self, key_id: bytes) -> WhitelistEntry | None:
        return self.whitelist.get(key_id)

    def last_counter(self, key_id: bytes) -> int:
        return self.counters.get(key_id, 0)

    def nonce_spent(self, nonce: bytes) -> bool:
        return nonce in self.spent_nonces

    def commit_command(
        self, *, key_id: bytes, counter: int, nonce: bytes, lock_state: LockState
    ) -> None:
        self.counters[key_id] = counter
        self.spent_nonces.append(nonce)
        self.state = lock_state
        self.commits += 1
