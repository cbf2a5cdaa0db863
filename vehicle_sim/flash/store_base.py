"""The write path of ``FlashVehicleStore`` (``store``): how a change becomes a commit.

``StoreBase`` holds what a mounted store is made of (device, journal, event
log, identity, lock, clock) and turns every change into one durable journal
record: it validates a ``StateChange``, checks it against the flash limits,
encodes it as journal operations, adds the new time floor and the log head,
and turns the OS's and the layout's write failures into one-line
``VehicleStateError``s. ``FlashVehicleStore`` adds the interfaces the
protocol core and the firmware call; this split mirrors protocol's
``vehicle_base``.
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
        wall: int | None = None,
        offset: int | None = None,
        floor: int | None = None,
    ) -> None:
        """One journal record: ``ops``, the new time floor and the log head."""
        self._check_writable()
        if wall is None:
            wall = int(self._wall_clock())
        ops.floor(self._clock_reading(wall, offset, floor))
        anchor = (self._log.head_seq, self._log.head_mac)
        if anchor != self._state.log_anchor:
            ops.log_anchor(*anchor)
        with self._writing():
            self._journal.commit(ops.payload(), prune=self._prune)
            if self._counter is not None:
                # After the image is durable: the counter may lag, never lead.
                self._counter.advance(self._journal.version, self._journal.generation)

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
