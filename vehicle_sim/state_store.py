"""The vehicle's persistent state: a directory behind protocol's ``VehicleStore``.

Layout of a state directory::

    identity.pem   the vehicle's P-256 private key, PKCS#8 PEM, mode 0600
    vehicle.json   VIN, whitelist, per-key counters, recent spent nonces, lock state,
                   trusted issuer keys, revocation list (version and revocation ids),
                   time floor and clock offset (see ``state_schema``)
    vehicle.lock   lock file of the single writer; holds the writer's pid

Everything that changes lives in one JSON file so that a command's counter,
spent nonce and lock state are replaced together by one atomic rename: no
crash can persist one without the others. Every change is durable before the
method returns (see ``atomic_file``). The identity never changes after
``init_vehicle`` and sits apart so it can be 0600.

The store is also protocol's ``CredentialTrust``, for issuer-signed
credentials verified offline. Its clock is ``now() = max(wall clock + offset,
floor)``: the floor is persisted and moves up on every write (opening for
writing is one, every command is one), so setting the wall clock back, or
booting with a dead RTC, never makes an expired credential valid again. Fresh
issuer-signed time (``correct_clock``) sets both the offset and the floor: it
is authoritative, so it may also pull a fast clock back.

A later issue replaces this with emulated flash; the public surface is kept to
``init_vehicle``, ``open_store`` and ``FileVehicleStore``.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm

from protocol import credentials, crypto
from protocol.card import VehicleCard, validate_vin
from protocol.store import CredentialTrust, StateChange, VehicleStore, WhitelistEntry
from protocol.types import LockState, Role
from protocol.vehicle import VehicleIdentity

from .atomic_file import fsync_directory, write_atomic
from .state_lock import LockHeld, StateLock
from .state_schema import (
    MAX_ISSUERS,
    StateFileCorrupt,
    StoredState,
    dump_state,
    load_state,
)

STATE_FILE_NAME = "vehicle.json"
IDENTITY_FILE_NAME = "identity.pem"
_MAX_U64 = 2**64 - 1

WallClock = Callable[[], float]
"""Unix time in seconds, like ``time.time`` (injectable so tests can set it back)."""


class VehicleStateError(Exception):
    """The vehicle's state directory is missing, corrupt, unreadable or unwritable.

    ``str()`` is one line that says what is wrong and what to do.
    """


class VehicleStateBusy(VehicleStateError):
    """Another process (a running vehicle) holds the state open for writing."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"vehicle state {state_dir} is in use by a running vehicle ({holder}); stop it first"
        )
        self.pid = pid


class TooManyIssuers(VehicleStateError):
    """The vehicle already trusts as many issuer keys as it may hold."""


class StaleRevocations(ValueError):
    """A revocation version that does not move forward."""


class FileVehicleStore:
    """A ``protocol.VehicleStore`` and ``protocol.CredentialTrust`` kept in a
    state directory.

    Opened for writing it holds the directory's lock until ``close``; opened
    read-only it holds no lock and refuses every change.
    """

    def __init__(
        self,
        state_dir: Path,
        identity: VehicleIdentity,
        state: StoredState,
        lock: StateLock | None,
        *,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.state_dir = state_dir
        self._identity = identity
        self._state = state
        self._lock = lock
        self._wall_clock = wall_clock

    # --- identity ----------------------------------------------------------------
    @property
    def identity(self) -> VehicleIdentity:
        return self._identity

    @property
    def card(self) -> VehicleCard:
        """The card for phones; it names the primary issuer key, if any, so a
        phone pins the issuer from the vehicle rather than from a cloud."""
        issuer = next(iter(self._state.issuers.values()), None)
        return VehicleCard(self._identity.vin, self._identity.public_key, issuer)

    @property
    def read_only(self) -> bool:
        return self._lock is None

    # --- protocol.VehicleStore ---------------------------------------------------
    def lock_state(self) -> LockState:
        return self._state.lock_state

    def whitelist_entry(self, key_id: bytes) -> WhitelistEntry | None:
        # Revocation applies to whitelisted keys too. The protocol core checks
        # the revocation list only for credentials, so without this a phone key
        # the issuer revoked (say, a stolen phone reported through the cloud)
        # would keep opening the car for as long as it sits on the local
        # whitelist. A revoked key therefore reads as not whitelisted: the
        # vehicle answers UNKNOWN_KEY before any signature work. It stays in
        # ``keys()`` (and `phonekey vehicle show` marks it revoked) so the owner
        # can see it; revocation lists only grow, so it never comes back.
        # Entries are per-vehicle revocation ids: a key revoked for another
        # vehicle stays whitelisted here.
        if self.is_key_revoked(key_id):
            return None
        return self._state.whitelist.get(key_id)

    def last_counter(self, key_id: bytes) -> int:
        return self._state.counters.get(key_id, 0)

    def nonce_spent(self, nonce: bytes) -> bool:
        return nonce in self._state.spent_nonces

    def fast_key(self, key_id: bytes) -> bytes | None:
        return None  # format 2 holds no fast-path keys

    def share_revoked(self, share_id: bytes) -> bool:
        return False  # format 2 holds no share revocations

    def commit(self, change: StateChange) -> None:
        if change.set_fast_keys or change.revoke_shares:
            raise VehicleStateError("this state format cannot hold fast-path keys or shares")
        new = self._state.copy()
        if change.wipe:
            new.whitelist.clear()
        for key_id in change.remove_keys:
            new.whitelist.pop(key_id, None)
        for entry in change.add_keys:
            new.whitelist[entry.key_id] = entry
        if change.key_id is not None and change.counter is not None:
            new.counters[change.key_id] = change.counter
        if change.nonce is not None:
            new.spent_nonces.append(change.nonce)
        if change.lock_state is not None:
            new.lock_state = change.lock_state
        self._commit(new)  # also moves the time floor up to now

    # --- protocol.CredentialTrust --------------------------------------------------
    def issuer_keys(self) -> Mapping[bytes, crypto.PublicKey]:
        return MappingProxyType(self._state.issuers)

    def is_revoked(self, rev_id: bytes) -> bool:
        """True if the revocation id ``rev_id`` is held (see ``is_key_revoked``)."""
        return rev_id in self._state.revoked

    def is_key_revoked(self, key_id: bytes) -> bool:
        """True if phone key ``key_id`` is revoked on this vehicle: the held list
        names ``revocation_id(this vehicle's id, key_id)``."""
        return self.is_revoked(credentials.revocation_id(self._identity.vehicle_id, key_id))

    def now(self) -> int:
        return _clock_reading(self._state, int(self._wall_clock()))

    def revocation_version(self) -> int:
        return self._state.revocation_version

    def apply_revocations(self, to_version: int, rev_ids: Iterable[bytes]) -> None:
        """Durably add the revocation ids ``rev_ids`` to the list and move it to ``to_version``.

        Raises ``StaleRevocations`` unless ``to_version`` is above the version
        held: the version never goes backwards, so an old list cannot be replayed.
        """
        current = self._state.revocation_version
        if to_version <= current:
            raise StaleRevocations(
                f"revocation version {to_version} is not above the held version {current}"
            )
        if to_version > _MAX_U64:
            raise ValueError("revocation version out of range")
        added = frozenset(rev_ids)
        if any(len(rev_id) != credentials.REVOCATION_ID_LEN for rev_id in added):
            raise ValueError(f"revocation ids must be {credentials.REVOCATION_ID_LEN} bytes")
        new = self._state.copy()
        new.revocation_version = to_version
        new.revoked = self._state.revoked | added
        self._commit(new)

    def correct_clock(self, issuer_time: int) -> None:
        """Durably set the clock to fresh issuer-signed time: offset and floor.

        The floor is set to ``issuer_time`` even when that is below the old
        floor: the issuer's time is authoritative, so it also corrects a clock
        that ran fast (which would otherwise expire every credential early).
        """
        if not 0 <= issuer_time <= _MAX_U64:
            raise ValueError("issuer time out of range")
        wall = int(self._wall_clock())
        new = self._state.copy()
        new.clock_offset = issuer_time - wall
        new.time_floor = issuer_time
        self._commit(new, wall=wall)

    # --- issuers ---------------------------------------------------------------------
    def add_issuer(self, public_key: crypto.PublicKey) -> bool:
        """Trust credentials signed by ``public_key``; False if it already was trusted.

        Raises ``TooManyIssuers`` if the vehicle already holds ``MAX_ISSUERS`` keys.
        """
        key_id = crypto.key_id(public_key)
        if key_id in self._state.issuers:
            return False
        if len(self._state.issuers) >= MAX_ISSUERS:
            raise TooManyIssuers(
                f"vehicle {self._identity.vin} already trusts {MAX_ISSUERS} issuer keys, "
                "the most it holds (one, or two during an issuer key rotation)"
            )
        new = self._state.copy()
        new.issuers[key_id] = public_key
        self._commit(new)
        return True

    def rotate_issuer(self, old_key_id: bytes, new_key: crypto.PublicKey) -> None:
        """Durably trust ``new_key``, vouched for by the trusted key ``old_key_id``
        in an issuer rotation the caller verified.

        Afterwards the vehicle trusts exactly the new key and ``old_key_id``:
        the old key stays as the second slot so credentials it issued remain
        valid until they expire, and any third key (from an earlier rotation)
        is dropped to keep at most ``MAX_ISSUERS``. A no-op if ``new_key`` is
        already trusted. Raises ``KeyError`` if ``old_key_id`` is not trusted.
        """
        new_key_id = crypto.key_id(new_key)
        if new_key_id in self._state.issuers:
            return
        old_key = self._state.issuers[old_key_id]
        new = self._state.copy()
        new.issuers = {new_key_id: new_key, old_key_id: old_key}
        self._commit(new)

    def revoked_count(self) -> int:
        return len(self._state.revoked)

    @property
    def time_floor(self) -> int:
        """The persisted floor of ``now()``, in unix seconds."""
        return self._state.time_floor

    def advance_time_floor(self) -> None:
        """Durably move the time floor up to ``now()`` (done on every write)."""
        self._commit(self._state.copy())

    # --- key management ------------------------------------------------------------
    def keys(self) -> list[WhitelistEntry]:
        return list(self._state.whitelist.values())

    def add_key(self, public_key: crypto.PublicKey, role: Role) -> WhitelistEntry:
        """Whitelist a phone key, or change the role of one already there."""
        entry = WhitelistEntry(crypto.public_bytes(public_key), role)
        new = self._state.copy()
        new.whitelist[entry.key_id] = entry
        self._commit(new)
        return entry

    def remove_key(self, key_id: bytes) -> WhitelistEntry | None:
        """Take a key off the whitelist; return it, or None if it was not there.

        Its counter is kept, so a key that comes back can never reuse old counters.
        """
        if key_id not in self._state.whitelist:
            return None
        new = self._state.copy()
        entry = new.whitelist.pop(key_id)
        self._commit(new)
        return entry

    # --- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Release the writer's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> FileVehicleStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _commit(self, new: StoredState, *, wall: int | None = None) -> None:
        """Persist ``new`` durably, then adopt it; on failure memory keeps the old state.

        Every write also moves the time floor up to the clock reading of ``new``.
        """
        if self._lock is None or not self._lock.held:
            raise VehicleStateError(f"vehicle state {self.state_dir} is not open for writing")
        if wall is None:
            wall = int(self._wall_clock())
        new.time_floor = min(_clock_reading(new, wall), _MAX_U64)
        path = self.state_dir / STATE_FILE_NAME
        try:
            write_atomic(path, dump_state(new))
        except OSError as exc:
            raise VehicleStateError(f"cannot write {path}: {_os_reason(exc)}") from exc
        self._state = new


def _clock_reading(state: StoredState, wall: int) -> int:
    return max(wall + state.clock_offset, state.time_floor)


def init_vehicle(
    state_dir: Path | str,
    vin: str,
    *,
    issuers: Iterable[crypto.PublicKey] = (),
    wall_clock: WallClock = time.time,
) -> VehicleCard:
    """Create a vehicle with a fresh identity key in ``state_dir``; return its card.

    ``issuers`` are the credential issuer keys it trusts from the start (at
    most ``MAX_ISSUERS``); its time floor starts at ``wall_clock()``.

    Raises ``ValueError`` for a bad VIN or too many issuers and
    ``VehicleStateError`` if the directory already holds a vehicle (its
    identity is never overwritten).
    """
    vin = validate_vin(vin)
    trusted = {crypto.key_id(key): key for key in issuers}
    if len(trusted) > MAX_ISSUERS:
        raise ValueError(f"a vehicle trusts at most {MAX_ISSUERS} issuer keys")
    initial = StoredState(
        vin=vin, issuers=trusted, time_floor=min(max(int(wall_clock()), 0), _MAX_U64)
    )
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise VehicleStateError(f"cannot create {state_dir}: {_os_reason(exc)}") from exc
    lock = _take_lock(state_dir)
    try:
        for name in (STATE_FILE_NAME, IDENTITY_FILE_NAME):
            if (state_dir / name).exists():
                raise VehicleStateError(
                    f"{state_dir} already holds a vehicle ({name} exists); "
                    "refusing to overwrite its identity: choose another --state directory"
                )
        private_key = crypto.generate_private_key()
        try:
            # Identity first: vehicle.json is what marks a vehicle as complete.
            write_atomic(
                state_dir / IDENTITY_FILE_NAME, crypto.private_key_to_pem(private_key), mode=0o600
            )
            write_atomic(state_dir / STATE_FILE_NAME, dump_state(initial))
            fsync_directory(state_dir)
        except OSError as exc:
            raise VehicleStateError(f"cannot write to {state_dir}: {_os_reason(exc)}") from exc
    finally:
        lock.release()
    return VehicleCard(vin, private_key.public_key(), next(iter(trusted.values()), None))


def open_store(
    state_dir: Path | str, *, read_only: bool = False, wall_clock: WallClock = time.time
) -> FileVehicleStore:
    """Open a vehicle's state: for writing (takes the lock) or read-only (no lock).

    Opening for writing moves the persisted time floor up to ``now()`` (and so
    writes an older format back as the current one).

    Raises ``VehicleStateBusy`` if a writer already holds it, and
    ``VehicleStateError`` if the state is missing, corrupt or unwritable.
    """
    state_dir = Path(state_dir)
    if not (state_dir / STATE_FILE_NAME).is_file():
        raise VehicleStateError(
            f"no vehicle in {state_dir}: create one with "
            f"`phonekey vehicle init --vin VIN --state {state_dir}`"
        )
    lock = None if read_only else _take_lock(state_dir)
    try:
        state = _read_state(state_dir / STATE_FILE_NAME)
        private_key = _read_identity(state_dir / IDENTITY_FILE_NAME)
        store = FileVehicleStore(
            state_dir,
            VehicleIdentity(private_key, state.vin),
            state,
            lock,
            wall_clock=wall_clock,
        )
        if not read_only:
            store.advance_time_floor()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return store


def _take_lock(state_dir: Path) -> StateLock:
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except LockHeld as held:
        raise VehicleStateBusy(state_dir, held.pid) from None
    except OSError as exc:
        raise VehicleStateError(f"cannot lock {lock.path}: {_os_reason(exc)}") from exc
    return lock


def _read_state(path: Path) -> StoredState:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VehicleStateError(f"cannot read {path}: {_os_reason(exc)}") from exc
    try:
        return load_state(data)
    except StateFileCorrupt as exc:
        raise VehicleStateError(
            f"{path} is corrupt ({exc}); restore it from a backup or create a new vehicle"
        ) from None


def _read_identity(path: Path) -> crypto.PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VehicleStateError(
            f"{path} is missing: this vehicle has no identity key; create a new vehicle"
        ) from None
    except OSError as exc:
        raise VehicleStateError(f"cannot read {path}: {_os_reason(exc)}") from exc
    try:
        return crypto.private_key_from_pem(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Say nothing of the contents: the file is (or was meant to be) a private key.
        raise VehicleStateError(
            f"{path} is corrupt: it does not hold a P-256 private key in PEM; create a new vehicle"
        ) from None


def _os_reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


if TYPE_CHECKING:
    # mypy checks that the store is what the protocol core expects of it.
    def _conforms(store: FileVehicleStore) -> tuple[VehicleStore, CredentialTrust]:
        return store, store
