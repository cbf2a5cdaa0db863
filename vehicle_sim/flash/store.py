"""``FlashVehicleStore``: the vehicle's state on emulated flash.

It is protocol's ``VehicleStore`` and ``CredentialTrust`` and the firmware's
``FirmwareStore``. Every change is one journal record (see ``journal``),
durable before the method returns; reads come from the RAM copy the journal
keeps. The event log lives in its own ring (see ``event_log``).

The clock is ``now() = max(wall clock + offset, floor)``; every journal
write also moves the floor up to the clock reading, so setting the wall
clock back (or a dead RTC) never makes an expired credential valid again.
Fresh issuer-signed time (``correct_clock``) sets offset and floor.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

from protocol import credentials, crypto, privacy
from protocol.card import VehicleCard
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from protocol.vehicle import VehicleIdentity

from ..firmware_store import FlashStats, LogEvent, LogReadout
from ..state_lock import StateLock
from .device import FlashDevice
from .errors import (
    FastKeyTampered,
    FlashRolledBack,
    FlashTampered,
    StaleRevocations,
    StoreFull,
    TooManyIssuers,
    VehicleStateError,
)
from .event_log import ENTRY_SIZE, EventLog
from .journal import Journal
from .keywrap import UnwrapFailed
from .layout import (
    MAX_ISSUERS,
    MAX_KEYCARDS,
    MAX_KEYS,
    MAX_REVOCATIONS,
    FlashCorrupt,
    Geometry,
    RollbackEvidence,
    TamperEvidence,
)
from .monotonic import RollbackCounter
from .records import BYTES_PER_KEY, FlashState, Ops
from .store_base import (
    ID_LEN,
    MAX_U64,
    SHARE_PRUNE_MARGIN,
    StoreBase,
    WallClock,
    os_reason,
    removes_authority,
)

__all__ = [
    "SHARE_PRUNE_MARGIN",
    "FlashRolledBack",
    "FlashTampered",
    "FlashVehicleStore",
    "StoreFull",
    "WallClock",
    "create_image",
    "os_reason",
]


def create_image(
    vin: str,
    *,
    device_key: bytes,
    issuers: Iterable[crypto.PublicKey] = (),
    time_floor: int = 0,
    geometry: Geometry | None = None,
    state: FlashState | None = None,
) -> FlashDevice:
    """A new in-memory image holding a fresh vehicle (or ``state``, for migration),
    its journal authenticated with ``device_key``."""
    geometry = geometry or Geometry()
    if state is None:
        state = FlashState(vin=vin, time_floor=time_floor)
        state.issuers = {crypto.key_id(key): key for key in issuers}
    device = FlashDevice.blank(geometry.page_count)
    Journal.format(device, geometry, state, device_key)
    return device


class FlashVehicleStore(StoreBase):
    """A vehicle's state on a flash device.

    Opened for writing (from a state directory) it holds the directory's lock
    until ``close``; opened read-only it holds no lock and refuses every change.
    """

    @classmethod
    def mount(
        cls,
        device: FlashDevice,
        private_key: crypto.PrivateKey,
        device_key: bytes,
        *,
        read_only: bool = False,
        lock: StateLock | None = None,
        wall_clock: WallClock = time.time,
        name: str = "the flash image",
        state_dir: Path | None = None,
        counter: RollbackCounter | None = None,
    ) -> FlashVehicleStore:
        """Mount ``device``; ``FlashTampered`` naming ``name`` if it was modified
        without ``device_key`` (``FastKeyTampered`` if what fails is a wrapped
        fast-path secret; ``FlashRolledBack`` if it is older than ``counter``
        allows), VehicleStateError if it is corrupt.

        Mounting replays the journal, which unwraps every fast-path secret once:
        from then on they are in RAM only (``fast_key`` reads RAM). A writable
        mount then marks the journal's end in ``counter`` (see ``monotonic``)."""
        try:
            journal = Journal.mount(device, device_key)
            if counter is not None:
                counter.check(journal)
            log = EventLog(device, journal.geometry, device_key)
            identity = VehicleIdentity(private_key, journal.state.vin)
        except RollbackEvidence as exc:
            raise FlashRolledBack(
                f"{name} was rolled back ({exc}); the key module refuses to run on it"
            ) from None
        except UnwrapFailed as exc:
            raise FastKeyTampered(
                f"{name} was modified without the device key ({exc}); "
                "the key module refuses to run on it"
            ) from None
        except TamperEvidence as exc:
            raise FlashTampered(
                f"{name} was modified without the device key ({exc}); "
                "the key module refuses to run on it"
            ) from None
        except (FlashCorrupt, ValueError) as exc:
            raise VehicleStateError(
                f"{name} is corrupt ({exc}); restore it from a backup or create a new vehicle"
            ) from None
        store = cls(
            device,
            journal,
            log,
            identity,
            read_only=read_only,
            lock=lock,
            wall_clock=wall_clock,
            name=name,
            state_dir=state_dir,
            counter=counter,
        )
        store._catch_up_counter()
        return store

    # --- identity ---------------------------------------------------------------------------------
    @property
    def identity(self) -> VehicleIdentity:
        return self._identity

    @property
    def card(self) -> VehicleCard:
        """The card for phones: it names the primary issuer key, if any, and
        carries the advertising secret that lets a phone resolve the vehicle's
        rotating advertisements (derived from the identity: nothing stored)."""
        issuer = next(iter(self._state.issuers.values()), None)
        secret = privacy.derive_adv_secret(self._identity.private_key)
        return VehicleCard(self._identity.vin, self._identity.public_key, issuer, secret)

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def device(self) -> FlashDevice:
        return self._device

    @property
    def journal(self) -> Journal:
        """The mounted journal (for inspection: which bank, how full)."""
        return self._journal

    def snapshot(self) -> FlashState:
        """A copy of everything the journal holds (for inspection and tests)."""
        return self._state.copy()

    # --- protocol.VehicleStore -------------------------------------------------------------
    def lock_state(self) -> LockState:
        return self._state.lock_state

    def whitelist_entry(self, key_id: bytes) -> WhitelistEntry | None:
        # A key the issuer revoked for this vehicle reads as not whitelisted
        # (the core checks revocations only for credentials); it stays in
        # ``keys()`` so `vehicle show` can mark it.
        if self.is_key_revoked(key_id):
            return None
        return self._state.whitelist.get(key_id)

    def last_counter(self, key_id: bytes) -> int:
        return self._state.counters.get(key_id, 0)

    def nonce_spent(self, nonce: bytes) -> bool:
        return nonce in self._state.spent_nonces

    def fast_key(self, key_id: bytes) -> bytes | None:
        """The fast-path secret, from RAM (unwrapped once, at mount; see ``keywrap``)."""
        return self._state.fast_keys.get(key_id)

    def share_revoked(self, share_id: bytes) -> bool:
        return share_id in self._state.revoked_shares

    def keys(self) -> list[WhitelistEntry]:
        return list(self._state.whitelist.values())

    def commit(self, change: StateChange) -> None:
        ops = self._ops_for(change)
        self._commit(ops, removes_authority=removes_authority(self._state, change))

    # --- protocol.CredentialTrust ------------------------------------------------------------
    def issuer_keys(self) -> Mapping[bytes, crypto.PublicKey]:
        return MappingProxyType(self._state.issuers)

    def is_revoked(self, rev_id: bytes) -> bool:
        """True if the revocation id ``rev_id`` is held (see ``is_key_revoked``)."""
        return rev_id in self._state.revoked

    def is_key_revoked(self, key_id: bytes) -> bool:
        """True if phone key ``key_id`` is revoked on this vehicle."""
        return self.is_revoked(credentials.revocation_id(self._identity.vehicle_id, key_id))

    def now(self) -> int:
        return self._clock_reading(int(self._wall_clock()))

    def revocation_version(self) -> int:
        return self._state.revocation_version

    def apply_revocations(self, to_version: int, rev_ids: Iterable[bytes]) -> None:
        """Durably add ``rev_ids`` and move the list to ``to_version``.

        Raises ``StaleRevocations`` unless ``to_version`` is above the version
        held: the version never goes backwards, so an old list cannot be replayed.
        """
        current = self._state.revocation_version
        if to_version <= current:
            raise StaleRevocations(
                f"revocation version {to_version} is not above the held version {current}"
            )
        if to_version > MAX_U64:
            raise ValueError("revocation version out of range")
        given = frozenset(rev_ids)
        if any(len(rev_id) != credentials.REVOCATION_ID_LEN for rev_id in given):
            raise ValueError(f"revocation ids must be {credentials.REVOCATION_ID_LEN} bytes")
        added = sorted(given - self._state.revoked)
        self._room("revocation ids", len(self._state.revoked) + len(added), MAX_REVOCATIONS)
        # A revocation update always removes authority (a key, a credential), and
        # moves the version an old delta is checked against: the counter marks it.
        self._commit(Ops().revocations(to_version, added), removes_authority=True)

    def correct_clock(self, issuer_time: int) -> None:
        """Durably set the clock to fresh issuer-signed time: offset and floor
        (the floor even backwards: issuer time also corrects a fast clock)."""
        if not 0 <= issuer_time <= MAX_U64:
            raise ValueError("issuer time out of range")
        wall = int(self._wall_clock())
        offset = issuer_time - wall
        if not -(2**63) <= offset < 2**63:
            raise ValueError("issuer time out of range")
        self._commit(Ops().clock(offset), wall=wall, offset=offset, floor=issuer_time)

    # --- issuers ----------------------------------------------------------------------------------
    def add_issuer(self, public_key: crypto.PublicKey) -> bool:
        """Trust credentials signed by ``public_key``; False if it already was trusted."""
        key_id = crypto.key_id(public_key)
        issuers = self._state.issuers
        if key_id in issuers:
            return False
        if len(issuers) >= MAX_ISSUERS:
            raise TooManyIssuers(
                f"vehicle {self._identity.vin} already trusts {MAX_ISSUERS} issuer keys, "
                "the most it holds (one, or two during an issuer key rotation)"
            )
        self._commit(Ops().issuers([*issuers.values(), public_key]))
        return True

    def rotate_issuer(self, old_key_id: bytes, new_key: crypto.PublicKey) -> None:
        """Trust ``new_key``, vouched for by the trusted ``old_key_id``: afterwards
        exactly the new key and the old one (KeyError if ``old_key_id`` is not
        trusted; a no-op if ``new_key`` already is)."""
        issuers = self._state.issuers
        if crypto.key_id(new_key) in issuers:
            return
        old_key = issuers[old_key_id]
        dropped = set(issuers) - {old_key_id}  # a third key's credentials stop verifying
        self._commit(Ops().issuers([new_key, old_key]), removes_authority=bool(dropped))

    def revoked_count(self) -> int:
        return len(self._state.revoked)

    @property
    def time_floor(self) -> int:
        """The persisted floor of ``now()``, in unix seconds."""
        return self._state.time_floor

    def advance_time_floor(self) -> None:
        """Durably move the time floor up to ``now()`` (done on every write)."""
        self._commit(Ops())

    # --- key management ---------------------------------------------------------------------------
    def add_key(self, public_key: crypto.PublicKey, role: Role) -> WhitelistEntry:
        """Whitelist a phone key, or change the role of one already there."""
        return self.add_keys([(public_key, role)])[0]

    def add_keys(self, keys: Iterable[tuple[crypto.PublicKey, Role]]) -> list[WhitelistEntry]:
        """Whitelist many keys in one commit (bulk provisioning)."""
        entries = [WhitelistEntry(crypto.public_bytes(key), Role(role)) for key, role in keys]
        self.commit(StateChange(add_keys=tuple(entries)))
        return entries

    def remove_key(self, key_id: bytes) -> WhitelistEntry | None:
        """Take a key (and its fast-path key) off; return it, or None if absent.
        Its counter is kept, so a key that comes back never reuses old counters."""
        entry = self._state.whitelist.get(key_id)
        if entry is None:
            return None
        self.commit(StateChange(remove_keys=(key_id,)))
        return entry

    def factory_reset(self) -> None:
        """Wipe keys, shares and fast-path secrets in one commit."""
        self.commit(StateChange(wipe=True))

    # --- keycards ---------------------------------------------------------------------------------
    def keycards(self) -> list[crypto.PublicKey]:
        return list(self._state.keycards.values())

    def add_keycard(self, public_key: crypto.PublicKey) -> bool:
        if crypto.key_id(public_key) in self._state.keycards:
            return False
        self._room("keycards", len(self._state.keycards) + 1, MAX_KEYCARDS)
        self._commit(Ops().add_card(public_key))
        return True

    def remove_keycard(self, card_id: bytes) -> bool:
        if card_id not in self._state.keycards:
            return False
        self._commit(Ops().remove_card(card_id), removes_authority=True)
        return True

    # --- backoff ----------------------------------------------------------------------------------
    def backoff_level(self) -> int:
        return self._state.backoff_level

    def save_backoff_level(self, level: int) -> None:
        if not 0 <= level < 2**32:
            raise ValueError("backoff level out of range")
        if level != self._state.backoff_level:
            self._commit(Ops().backoff(level))

    # --- event log --------------------------------------------------------------------------------
    def log_event(self, event: LogEvent) -> None:
        if len(event.key_id) != ID_LEN or not 0 <= event.reason < 2**16:
            raise ValueError("a log event needs a 16-byte key id and a reason below 65536")
        self._check_writable()
        with self._writing():
            self._log.log(event, self.now())

    def flush_log(self) -> None:
        if self._log.pending:
            self._check_writable()
            with self._writing():
                self._log.flush()

    def read_log(self) -> LogReadout:
        return self._log.read(self._state.log_anchor)

    def stats(self) -> FlashStats:
        log_entries = len(self._log.read(self._state.log_anchor).entries)
        return FlashStats(
            image_bytes=self._device.size,
            used_bytes=self._journal.used_bytes + log_entries * ENTRY_SIZE,
            writes=self._device.programs + self._device.erases,
            bytes_per_key=BYTES_PER_KEY,
            max_keys=MAX_KEYS,
            max_revocations=MAX_REVOCATIONS,
        )

    # --- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Write any aggregated log entry, then release the device and the lock
        (idempotent)."""
        try:
            if not self._read_only and self._lock is not None and self._lock.held:
                self.flush_log()
        finally:
            self._device.close()
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> FlashVehicleStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
