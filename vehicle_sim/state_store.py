"""The vehicle's persistent state: a directory holding an emulated flash image.

Layout of a state directory::

    identity.pem          the vehicle's P-256 private key, PKCS#8 PEM, mode 0600
    device.key            32 random bytes, mode 0600: the device key (the event log's
                          MAC key; the journal's MAC key is derived from it); it
                          stands for a secure element / OTP: never in the image
    device.counter        the rollback counter, mode 0600 (the secure element's
                          monotonic counter; see ``vehicle_sim.flash.monotonic``)
    vehicle.flash         the flash image: journal (VIN, whitelist, counters, spent
                          nonces, lock state, issuer keys, revocations, clock, fast-path
                          keys, share revocations, keycards, backoff) and event log
    vehicle.lock          lock file of the single writer; holds the writer's pid
    vehicle.json.migrated the JSON state this vehicle was migrated from, if any

``vehicle_sim.flash`` implements the store (``FlashVehicleStore``); this
module creates and opens state directories. Every change is one atomic,
durable journal commit (see ``vehicle_sim.flash.journal``). The identity and
device key never change after ``init_vehicle``; the image is written last, so
a directory with an image is a complete vehicle.

A directory from before flash (``vehicle.json``, formats 1 and 2) is migrated
on the first open for writing: the image is built from it and written
atomically, and only then is the JSON renamed to ``vehicle.json.migrated``.
A read-only open of such a directory reads the JSON without changing anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm

from phonekey.durable import fsync_directory, write_atomic
from protocol import crypto, privacy
from protocol.card import VehicleCard, validate_vin
from protocol.store import CredentialTrust, VehicleStore

from .firmware_store import FirmwareStore
from .flash.device import FlashDevice, FlashMisuse
from .flash.errors import (
    FastKeyTampered,
    FlashRolledBack,
    FlashTampered,
    StaleRevocations,
    StoreFull,
    TooManyIssuers,
    VehicleStateBusy,
    VehicleStateError,
)
from .flash.migrate import state_from_json
from .flash.monotonic import RollbackCounter
from .flash.store import FlashVehicleStore, WallClock, create_image, os_reason
from .state_lock import LockHeld, StateLock
from .state_schema import MAX_ISSUERS, StateFileCorrupt, load_state

__all__ = [
    "COUNTER_FILE_NAME",
    "DEVICE_KEY_FILE_NAME",
    "IDENTITY_FILE_NAME",
    "JSON_STATE_FILE_NAME",
    "MIGRATED_JSON_FILE_NAME",
    "STATE_FILE_NAME",
    "FastKeyTampered",
    "FileVehicleStore",
    "FlashRolledBack",
    "FlashTampered",
    "FlashVehicleStore",
    "StaleRevocations",
    "StoreFull",
    "TooManyIssuers",
    "VehicleStateBusy",
    "VehicleStateError",
    "init_vehicle",
    "open_store",
]

STATE_FILE_NAME = "vehicle.flash"
JSON_STATE_FILE_NAME = "vehicle.json"
MIGRATED_JSON_FILE_NAME = "vehicle.json.migrated"
IDENTITY_FILE_NAME = "identity.pem"
DEVICE_KEY_FILE_NAME = "device.key"
COUNTER_FILE_NAME = "device.counter"
DEVICE_KEY_LEN = 32
_MAX_U64 = 2**64 - 1

FileVehicleStore = FlashVehicleStore
"""The name the rest of the code base knows the vehicle's store by."""


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
    floor = min(max(int(wall_clock()), 0), _MAX_U64)
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise VehicleStateError(f"cannot create {state_dir}: {os_reason(exc)}") from exc
    lock = _take_lock(state_dir)
    try:
        for name in (STATE_FILE_NAME, JSON_STATE_FILE_NAME, IDENTITY_FILE_NAME):
            if (state_dir / name).exists():
                raise VehicleStateError(
                    f"{state_dir} already holds a vehicle ({name} exists); "
                    "refusing to overwrite its identity: choose another --state directory"
                )
        private_key = crypto.generate_private_key()
        device_key = os.urandom(DEVICE_KEY_LEN)
        image = create_image(vin, device_key=device_key, issuers=trusted.values(), time_floor=floor)
        try:
            # The image last: it is what marks a vehicle as complete.
            write_atomic(
                state_dir / IDENTITY_FILE_NAME, crypto.private_key_to_pem(private_key), mode=0o600
            )
            write_atomic(state_dir / DEVICE_KEY_FILE_NAME, device_key, mode=0o600)
            write_atomic(state_dir / STATE_FILE_NAME, image.image())
            fsync_directory(state_dir)
        except OSError as exc:
            raise VehicleStateError(f"cannot write to {state_dir}: {os_reason(exc)}") from exc
    finally:
        lock.release()
    return VehicleCard(
        vin,
        private_key.public_key(),
        next(iter(trusted.values()), None),
        privacy.derive_adv_secret(private_key),
    )


def open_store(
    state_dir: Path | str, *, read_only: bool = False, wall_clock: WallClock = time.time
) -> FlashVehicleStore:
    """Open a vehicle's state: for writing (takes the lock) or read-only (no lock).

    Opening for writing migrates a JSON state directory to flash and moves the
    persisted time floor up to ``now()``.

    Raises ``VehicleStateBusy`` if a writer already holds it, and
    ``VehicleStateError`` if the state is missing, corrupt or unwritable.
    """
    state_dir = Path(state_dir)
    image_path = state_dir / STATE_FILE_NAME
    json_path = state_dir / JSON_STATE_FILE_NAME
    if not image_path.is_file() and not json_path.is_file():
        raise VehicleStateError(
            f"no vehicle in {state_dir}: create one with "
            f"`phonekey vehicle init --vin VIN --state {state_dir}`"
        )
    lock = None if read_only else _take_lock(state_dir)
    device: FlashDevice | None = None
    counter: RollbackCounter | None
    try:
        private_key = _read_identity(state_dir / IDENTITY_FILE_NAME)
        if json_path.is_file() and not image_path.is_file() and read_only:
            device_key = _read_device_key(state_dir, create=False) or bytes(DEVICE_KEY_LEN)
            device = _image_from_json(json_path, device_key)
            counter = None
        else:
            if json_path.is_file() and not read_only:
                _migrate(state_dir, image_path, json_path)
            stored_key = _read_device_key(state_dir, create=False)
            if stored_key is None:
                raise VehicleStateError(
                    f"{state_dir / DEVICE_KEY_FILE_NAME} is missing: the event log's key is "
                    "gone, so its chain cannot be verified; restore it from a backup"
                )
            device_key = stored_key
            counter = RollbackCounter.load(state_dir / COUNTER_FILE_NAME)  # before the image
            device = _open_image(image_path, writable=not read_only)
        store = FlashVehicleStore.mount(
            device,
            private_key,
            device_key,
            read_only=read_only,
            lock=lock,
            wall_clock=wall_clock,
            name=str(image_path),
            state_dir=state_dir,
            counter=counter,
        )
        if not read_only:
            store.advance_time_floor()
    except BaseException:
        if device is not None:
            device.close()
        if lock is not None:
            lock.release()
        raise
    return store


def _migrate(state_dir: Path, image_path: Path, json_path: Path) -> None:
    """Build the image from ``vehicle.json`` (unless a complete one exists), then
    retire the JSON. Each step is atomic, so a crash at any point is redone."""
    if not image_path.is_file():
        device_key = _read_device_key(state_dir, create=True)
        assert device_key is not None
        device = _image_from_json(json_path, device_key)
        try:
            write_atomic(image_path, device.image())
        except OSError as exc:
            raise VehicleStateError(f"cannot write {image_path}: {os_reason(exc)}") from exc
    try:
        os.replace(json_path, state_dir / MIGRATED_JSON_FILE_NAME)
        fsync_directory(state_dir)
    except OSError as exc:
        raise VehicleStateError(f"cannot rename {json_path}: {os_reason(exc)}") from exc


def _image_from_json(json_path: Path, device_key: bytes) -> FlashDevice:
    try:
        data = json_path.read_bytes()
    except OSError as exc:
        raise VehicleStateError(f"cannot read {json_path}: {os_reason(exc)}") from exc
    try:
        old = load_state(data)
    except StateFileCorrupt as exc:
        raise VehicleStateError(
            f"{json_path} is corrupt ({exc}); restore it from a backup or create a new vehicle"
        ) from None
    return create_image(old.vin, device_key=device_key, state=state_from_json(old))


def _open_image(path: Path, *, writable: bool) -> FlashDevice:
    try:
        return FlashDevice.open_file(path, writable=writable)
    except FlashMisuse as exc:
        raise VehicleStateError(
            f"{path} is corrupt ({exc}); restore it from a backup or create a new vehicle"
        ) from None
    except OSError as exc:
        raise VehicleStateError(f"cannot read {path}: {os_reason(exc)}") from exc


def _read_device_key(state_dir: Path, *, create: bool) -> bytes | None:
    path = state_dir / DEVICE_KEY_FILE_NAME
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        key = os.urandom(DEVICE_KEY_LEN)
        try:
            write_atomic(path, key, mode=0o600)
        except OSError as exc:
            raise VehicleStateError(f"cannot write {path}: {os_reason(exc)}") from exc
        return key
    except OSError as exc:
        raise VehicleStateError(f"cannot read {path}: {os_reason(exc)}") from exc
    if len(key) != DEVICE_KEY_LEN:
        raise VehicleStateError(
            f"{path} is corrupt: it does not hold a {DEVICE_KEY_LEN}-byte key; restore it"
        )
    return key


def _take_lock(state_dir: Path) -> StateLock:
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except LockHeld as held:
        raise VehicleStateBusy(state_dir, held.pid) from None
    except OSError as exc:
        raise VehicleStateError(f"cannot lock {lock.path}: {os_reason(exc)}") from exc
    return lock


def _read_identity(path: Path) -> crypto.PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VehicleStateError(
            f"{path} is missing: this vehicle has no identity key; create a new vehicle"
        ) from None
    except OSError as exc:
        raise VehicleStateError(f"cannot read {path}: {os_reason(exc)}") from exc
    try:
        return crypto.private_key_from_pem(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Say nothing of the contents: the file is (or was meant to be) a private key.
        raise VehicleStateError(
            f"{path} is corrupt: it does not hold a P-256 private key in PEM; create a new vehicle"
        ) from None


if TYPE_CHECKING:
    # mypy checks that the store is what the protocol core and the firmware expect.
    def _conforms(
        store: FlashVehicleStore,
    ) -> tuple[VehicleStore, CredentialTrust, FirmwareStore]:
        return store, store, store
