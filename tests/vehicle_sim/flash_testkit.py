"""Shared helpers for the flash store tests (imported by name; not conftest)."""

from __future__ import annotations

import random
from pathlib import Path

from phonekey.durable import write_atomic
from protocol import crypto
from vehicle_sim.firmware_store import LogEntry
from vehicle_sim.flash.auth import FIRST_PREV, JournalAuth
from vehicle_sim.flash.bank import BANK_HEADER_SIZE, encode_bank_header
from vehicle_sim.flash.device import FaultInjector, FlashDevice
from vehicle_sim.flash.journal import Journal
from vehicle_sim.flash.layout import Geometry, encode_superblock
from vehicle_sim.flash.monotonic import MemoryCell, RollbackCounter
from vehicle_sim.flash.records import (
    COMMIT,
    MAC_LEN,
    SNAPSHOT,
    FlashState,
    encode_record,
    snapshot_payload,
)
from vehicle_sim.flash.store import FlashVehicleStore, create_image
from vehicle_sim.state_schema import StoredState, dump_state
from vehicle_sim.state_store import (
    DEVICE_KEY_FILE_NAME,
    IDENTITY_FILE_NAME,
    JSON_STATE_FILE_NAME,
    STATE_FILE_NAME,
)


def flash_state(state_dir: Path) -> FlashState:
    """What the image on disk holds, read straight from the flash (no store)."""
    return flash_journal(state_dir).state


def flash_journal(state_dir: Path) -> Journal:
    device = FlashDevice.open_file(state_dir / STATE_FILE_NAME, writable=False)
    return Journal.mount(device, (state_dir / DEVICE_KEY_FILE_NAME).read_bytes())


def legacy_vehicle(state_dir: Path, state: StoredState) -> crypto.PrivateKey:
    """A state directory as the JSON store wrote it (before flash)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = crypto.generate_private_key()
    write_atomic(state_dir / IDENTITY_FILE_NAME, crypto.private_key_to_pem(key), mode=0o600)
    write_atomic(state_dir / JSON_STATE_FILE_NAME, dump_state(state))
    return key


# --- in-memory vehicles for sweeps ------------------------------------------------------------
SMALL = Geometry(bank_pages=4, log_pages=3)
"""A tiny image: compaction every few dozen commits, the log wraps after 168 entries."""
IDENTITY_KEY = crypto.private_key_from_random(random.Random(1).randbytes)
DEVICE_KEY = bytes(range(32))
VIN = "1HGCM82633A004352"
T0 = 1_750_000_000


class Wall:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_image(geometry: Geometry = SMALL) -> bytes:
    return create_image(VIN, device_key=DEVICE_KEY, time_floor=T0, geometry=geometry).image()


def mount(
    image: bytes,
    injector: FaultInjector | None = None,
    wall: Wall | None = None,
    counter: RollbackCounter | None = None,
) -> FlashVehicleStore:
    device = FlashDevice.in_memory(image)
    device.injector = injector
    return FlashVehicleStore.mount(
        device, IDENTITY_KEY, DEVICE_KEY, wall_clock=wall or Wall(), name="image", counter=counter
    )


Saved = tuple[bytes, bytes | None]
"""A powered-off vehicle: its flash image and its rollback counter's bytes."""


def boot(
    saved: Saved, injector: FaultInjector | None = None, wall: Wall | None = None
) -> tuple[FlashVehicleStore, MemoryCell]:
    """Mount ``saved`` for writing with its counter in RAM (the mount marks the
    journal's end), then attach ``injector`` to the flash and the counter, so
    that it counts (and cuts) the writes of what runs next."""
    image, counter = saved
    cell = MemoryCell(counter)
    store = mount(image, wall=wall, counter=RollbackCounter.open(cell))
    store.device.injector = injector
    cell.injector = injector
    return store, cell


def saved(store: FlashVehicleStore, cell: MemoryCell) -> Saved:
    return store.device.image(), cell.data


def logical(store: FlashVehicleStore) -> dict[str, object]:
    """Everything a power cut must keep whole (the time floor and log anchor aside)."""
    state = store.snapshot()
    return {
        "whitelist": state.whitelist,
        "counters": state.counters,
        "nonces": list(state.spent_nonces),
        "lock": state.lock_state,
        "revocations": (state.revocation_version, frozenset(state.revoked)),
        "issuers": list(state.issuers),
        "clock_offset": state.clock_offset,
        "fast_keys": state.fast_keys,
        "shares": state.revoked_shares,
        "keycards": list(state.keycards),
        "backoff": state.backoff_level,
    }


def log_entries(store: FlashVehicleStore) -> list[LogEntry]:
    readout = store.read_log()
    assert readout.verified, readout.problem
    return list(readout.entries)


def format2_bank(
    device: FlashDevice,
    bank: int,
    generation: int,
    first_seq: int,
    state: FlashState,
    commits: list[bytes],
    geometry: Geometry = SMALL,
    device_key: bytes = DEVICE_KEY,
) -> None:
    """Write ``bank`` as the format 2 firmware did: MAC'd, fast-path secrets in
    the clear (``commits`` use ``Ops.set_fast(..., None)``)."""
    auth = JournalAuth(device_key)
    base = geometry.bank_address(bank)
    at, prev = BANK_HEADER_SIZE, FIRST_PREV
    payloads = [(SNAPSHOT, snapshot_payload(state, None)), *((COMMIT, c) for c in commits)]
    for seq, (kind, payload) in enumerate(payloads, start=first_seq):

        def mac_of(signed: bytes, at: int = at, prev: bytes = prev) -> bytes:
            return auth.record_mac(bank, generation, at, prev, signed)

        record = encode_record(kind, seq, payload, mac_of)
        device.program(base + at, record)
        at, prev = at + len(record), record[-5 - MAC_LEN : -5]
    device.program(base, encode_bank_header(generation, bank, auth, version=2))


def format2_image(
    state: FlashState,
    commits: list[bytes],
    geometry: Geometry = SMALL,
    device_key: bytes = DEVICE_KEY,
) -> bytes:
    """An image as the format 2 firmware wrote it, one bank (bank 0, generation 1)."""
    device = FlashDevice.blank(geometry.page_count)
    device.program(0, encode_superblock(geometry))
    format2_bank(device, 0, 1, 1, state, commits, geometry, device_key)
    return device.image()
