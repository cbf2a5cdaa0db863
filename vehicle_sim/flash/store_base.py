"""The write path of ``FlashVehicleStore`` (``store``): how a change becomes a commit.

``StoreBase`` holds what a mounted store is made of (device, journal, event
log, identity, lock, clock) and turns every change into one durable journal
record: it validates a ``StateChange``, checks it against the flash limits,
encodes it as journal operations, adds the new time floor and the log head,
and turns the OS's and the layout's write failures into one-line
``VehicleStateError``s. It also keeps the rollback counter (``monotonic``) up
with the journal: a commit that removes authority (``removes_authority``)
returns only once the counter marks its record, so no rollback of the image
can undo a removal the vehicle acknowledged; ordinary commits leave the
counter alone. ``FlashVehicleStore`` adds the interfaces the protocol core
and the firmware call; this split mirrors protocol's ``vehicle_base``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from protocol import crypto
from protocol.codec import NONCE_LEN
from protocol.store import StateChange
from protocol.vehicle import VehicleIdentity

from ..state_lock import StateLock
from .device import FlashDevice
from .errors import StoreFull, VehicleStateError
from .event_log import EventLog
from .journal import Journal, JournalFull
from .layout import MAX_COUNTERS, MAX_KEYS, MAX_SHARE_REVOCATIONS
from .monotonic import RollbackCounter
from .records import FlashState, Ops

WallClock = Callable[[], float]
MAX_U64 = 2**64 - 1
SHARE_PRUNE_MARGIN = 86_400
"""A share revocation is dropped once its share expired this long before the
time floor (a day of slack for a clock the issuer later pulls back)."""
FAST_KEY_LEN = 32
ID_LEN = crypto.KEY_ID_LEN


class StoreBase:
    """A mounted store's parts and its write path (see the module docstring)."""

    def __init__(
        self,
        device: FlashDevice,
        journal: Journal,
        log: EventLog,
        identity: VehicleIdentity,
        *,
        read_only: bool,
        lock: StateLock | None,
        wall_clock: WallClock,
        name: str,
        state_dir: Path | None,
        counter: RollbackCounter | None = None,
    ) -> None:
        self._device = device
        self._counter = counter
        self._journal = journal
        self._log = log
        self._identity = identity
        self._read_only = read_only
        self._lock = lock
        self._wall_clock = wall_clock
        self._name = name
        self.state_dir = state_dir
        self._mark_due = False  # a commit removed authority and the counter does not mark it yet
        if counter is not None:
            journal.guard = counter  # compactions pick their generation through it

    @property
    def _state(self) -> FlashState:
        return self._journal.state

    def _ops_for(self, change: StateChange) -> Ops:
        """The journal operations of ``change``; ``StoreFull`` (nothing written) if
        the state would not fit the flash limits, ValueError if it is malformed."""
        check_change(change)
        state = self._state
        removed = set(change.remove_keys)
        added = {entry.key_id for entry in change.add_keys}
        if change.add_keys:
            keys = (set() if change.wipe else set(state.whitelist)) - removed | added
            self._room("keys", len(keys), MAX_KEYS)
        if change.set_fast_keys:
            fast = set() if change.wipe else set(state.fast_keys)
            fast = fast - removed - set(change.drop_fast_keys) | {
                k for k, _ in change.set_fast_keys
            }
            self._room("fast-path keys", len(fast), MAX_KEYS)
        if change.revoke_shares:
            shares = set() if change.wipe else set(state.revoked_shares)
            shares |= {share_id for share_id, _ in change.revoke_shares}
            self._room("share revocations", len(shares), MAX_SHARE_REVOCATIONS)
        if change.key_id is not None and change.key_id not in state.counters:
            self._room("key counters", len(state.counters) + 1, MAX_COUNTERS)
        ops = Ops()
        if change.wipe:
            ops.wipe()
        for key_id in change.remove_keys:
            ops.remove_key(key_id)
        for entry in change.add_keys:
            ops.add_key(entry)
        for key_id in change.drop_fast_keys:
            ops.drop_fast(key_id)
        for key_id, secret in change.set_fast_keys:
            ops.set_fast(key_id, secret, self._journal.keywrap)
        for share_id, not_after in change.revoke_shares:
            ops.revoke_share(share_id, not_after)
        if change.key_id is not None and change.counter is not None:
            ops.counter(change.key_id, change.counter)
        if change.nonce is not None:
            ops.nonce(change.nonce)
        if change.lock_state is not None:
            ops.lock(change.lock_state)
        return ops

    def _commit(
        self,
        ops: Ops,
        *,
        removes_authority: bool = False,
        wall: int | None = None,
        offset: int | None = None,
        floor: int | None = None,
    ) -> None:
        """One journal record: ``ops``, the new time floor and the log head; if it
        ``removes_authority``, durable in the rollback counter too before returning."""
        self._check_writable()
        if wall is None:
            wall = int(self._wall_clock())
        ops.floor(self._clock_reading(wall, offset, floor))
        anchor = (self._log.head_seq, self._log.head_mac)
        if anchor != self._state.log_anchor:
            ops.log_anchor(*anchor)
        # Noted before writing: should the record land and the mark fail, the next
        # commit marks it (and the next writable mount would anyway).
        self._mark_due = self._mark_due or removes_authority
        with self._writing():
            self._journal.commit(ops.payload(), prune=self._prune)
            self._update_counter()

    def _update_counter(self) -> None:
        """Mark the journal's last record in the rollback counter if a commit removed
        authority since the last mark or the journal compacted. Always after the
        record is durable: a mark never names a record the image may lack."""
        counter = self._counter
        if counter is not None and (self._mark_due or counter.behind(self._journal)):
            counter.mark(self._journal)
        self._mark_due = False

    def _catch_up_counter(self) -> None:
        """At a writable mount: mark the journal's end. This settles a compaction a
        power cut left pending, and marks a removal whose record landed but whose
        mark did not (it was never acknowledged). One counter write per boot."""
        if self._counter is None or self._read_only:
            return
        self._mark_due = True
        self._update_counter()

    def _clock_reading(self, wall: int, offset: int | None = None, floor: int | None = None) -> int:
        offset = self._state.clock_offset if offset is None else offset
        floor = self._state.time_floor if floor is None else floor
        return min(max(wall + offset, floor, 0), MAX_U64)

    def _check_writable(self) -> None:
        if self._read_only or (self._lock is not None and not self._lock.held):
            raise VehicleStateError(f"vehicle state {self._where} is not open for writing")

    @property
    def _where(self) -> str:
        return str(self.state_dir) if self.state_dir is not None else self._name

    def _room(self, what: str, count: int, limit: int) -> None:
        if count > limit:
            raise StoreFull(
                f"vehicle {self._identity.vin} would hold {count} {what}; "
                f"its flash holds at most {limit}"
            )

    def _prune(self, state: FlashState) -> None:
        horizon = state.time_floor - SHARE_PRUNE_MARGIN
        for share_id in [s for s, not_after in state.revoked_shares.items() if not_after < horizon]:
            del state.revoked_shares[share_id]

    def _writing(self) -> _Writing:
        return _Writing(self._name)


class _Writing:
    """Turns the OS's and the layout's write failures into one-line VehicleStateErrors."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OSError):
            raise VehicleStateError(f"cannot write {self._name}: {os_reason(exc)}") from exc
        if isinstance(exc, JournalFull):
            raise StoreFull(f"{self._name} is full: {exc}") from exc


def removes_authority(state: FlashState, change: StateChange) -> bool:
    """Whether ``change`` takes authority away that a rollback of the image would
    give back: a wipe (factory reset, ownership transfer), a share revocation,
    a key removed or given a lesser role, or a fast-path key dropped (on a role
    change, or when its key is revoked). Unlocks, locks, counters, spent nonces
    and a handshake's new fast-path key do not (docs/firmware.md says why a
    rollback of those is harmless or bounded)."""
    if change.wipe or change.revoke_shares:
        return True
    if any(k in state.whitelist or k in state.fast_keys for k in change.remove_keys):
        return True
    if any(k in state.fast_keys for k in change.drop_fast_keys):
        return True
    for entry in change.add_keys:
        held = state.whitelist.get(entry.key_id)
        if held is not None and not held.role.at_most(entry.role):
            return True  # a demotion: the old role granted something the new one does not
    return False


def os_reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def check_change(change: StateChange) -> None:
    """ValueError if a field of ``change`` has the wrong size or range."""
    if change.key_id is not None and len(change.key_id) != ID_LEN:
        raise ValueError("the key id of a change must be 16 bytes")
    if change.counter is not None and not 0 <= change.counter <= MAX_U64:
        raise ValueError("counter out of range")
    if change.nonce is not None and len(change.nonce) != NONCE_LEN:
        raise ValueError(f"a spent nonce is {NONCE_LEN} bytes")
    ids = [*change.remove_keys, *change.drop_fast_keys, *(k for k, _ in change.set_fast_keys)]
    if any(len(key_id) != ID_LEN for key_id in ids):
        raise ValueError("key ids are 16 bytes")
    if any(len(secret) != FAST_KEY_LEN for _, secret in change.set_fast_keys):
        raise ValueError(f"a fast-path key is {FAST_KEY_LEN} bytes")
    for share_id, not_after in change.revoke_shares:
        if len(share_id) != ID_LEN or not 0 <= not_after <= MAX_U64:
            raise ValueError("a share revocation is a 16-byte id and a u64 not_after")
