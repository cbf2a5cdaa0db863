"""The vehicle's persistent state, as the protocol core needs it.

The core talks to storage only through ``VehicleStore`` so the backing store
can change (a JSON file today, emulated flash later) without touching the
handshake. ``commit`` must be atomic and durable *before it returns*: the
vehicle acknowledges a command only after everything it changed (the new
counter, the spent nonce, the new lock state, a whitelist change, a fast-path
key) is safe, so a power cut can neither replay a command nor leave a car
unlocked that the phone was told is locked. Everything one request changes is
one ``StateChange``: one commit, all of it or none of it.

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


@dataclass(frozen=True)
class StateChange:
    """Everything one accepted request changes, committed atomically.

    Applied in this order: ``wipe`` (drop every whitelist entry, fast-path key
    and share revocation: factory reset and ownership transfer), then removals,
    then additions, then the counter, nonce and lock state. Counters are never
    dropped, not even by ``wipe``: a key that comes back continues above its
    old counter.
    """

    key_id: bytes | None = None  # the authenticated requester whose counter moves
    counter: int | None = None  # its new counter (strictly above the old one)
    nonce: bytes | None = None  # the vehicle nonce the request spent
    lock_state: LockState | None = None  # new lock state, None to keep it
    wipe: bool = False
    remove_keys: tuple[bytes, ...] = ()  # key ids; also drops their fast-path keys
    add_keys: tuple[WhitelistEntry, ...] = ()  # add, or change the role of, a key
    set_fast_keys: tuple[tuple[bytes, bytes], ...] = ()  # (key id, 32-byte secret)
    drop_fast_keys: tuple[bytes, ...] = ()  # key ids
    revoke_shares: tuple[tuple[bytes, int], ...] = ()  # (share id, its not_after)


class VehicleStore(Protocol):
    def lock_state(self) -> LockState: ...

    def whitelist_entry(self, key_id: bytes) -> WhitelistEntry | None: ...

    def last_counter(self, key_id: bytes) -> int:
        """The highest counter accepted from this key, 0 if none yet."""
        ...

    def nonce_spent(self, nonce: bytes) -> bool: ...

    def fast_key(self, key_id: bytes) -> bytes | None:
        """The fast-path secret shared with this key, if one is held."""
        ...

    def share_revoked(self, share_id: bytes) -> bool:
        """True if an owner revoked the share ``share_id``."""
        ...

    def keys(self) -> list[WhitelistEntry]:
        """Every whitelisted key (at most a few hundred)."""
        ...

    def commit(self, change: StateChange) -> None:
        """Atomically and durably apply ``change``; raise on failure, leaving
        the state as it was."""
        ...


class EnrollmentWindow(Protocol):
    """The short window (opened by a keycard tap) in which a key that is not on
    the whitelist may ENROLL itself as an owner over BLE."""

    def is_open(self) -> bool: ...

    def consume(self) -> None:
        """Close the window: one enrollment per tap."""
        ...


@dataclass
class MemoryEnrollment:
    """An ``EnrollmentWindow`` in RAM, for tests: open until consumed or closed."""

    open: bool = False
    consumed: int = 0

    def is_open(self) -> bool:
        return self.open

    def consume(self) -> None:
        self.open = False
        self.consumed += 1


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
    fast_keys: dict[bytes, bytes] = field(default_factory=dict)
    revoked_shares: dict[bytes, int] = field(default_factory=dict)
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

    def fast_key(self, key_id: bytes) -> bytes | None:
        return self.fast_keys.get(key_id)

    def share_revoked(self, share_id: bytes) -> bool:
        return share_id in self.revoked_shares

    def keys(self) -> list[WhitelistEntry]:
        return list(self.whitelist.values())

    def commit(self, change: StateChange) -> None:
        apply_change(self, change)
        self.commits += 1


def apply_change(store: MemoryStore, change: StateChange) -> None:
    """``StateChange`` semantics on plain dicts (reference for other stores)."""
    if change.wipe:
        store.whitelist.clear()
        store.fast_keys.clear()
        store.revoked_shares.clear()
    for key_id in change.remove_keys:
        store.whitelist.pop(key_id, None)
        store.fast_keys.pop(key_id, None)
    for entry in change.add_keys:
        store.whitelist[entry.key_id] = entry
    for key_id in change.drop_fast_keys:
        store.fast_keys.pop(key_id, None)
    for key_id, secret in change.set_fast_keys:
        store.fast_keys[key_id] = secret
    for share_id, not_after in change.revoke_shares:
        store.revoked_shares[share_id] = not_after
    if change.key_id is not None and change.counter is not None:
        store.counters[change.key_id] = change.counter
    if change.nonce is not None:
        store.spent_nonces.append(change.nonce)
    if change.lock_state is not None:
        store.state = change.lock_state
