"""Fast-path secrets are wrapped at rest (flash format 3): whoever can read the
flash image learns none of them, whatever the image went through (commits,
compactions, the migration from format 2, power cuts), while the vehicle
reads them back from RAM after every mount."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from flash_testkit import (
    DEVICE_KEY,
    IDENTITY_KEY,
    SMALL,
    T0,
    VIN,
    Wall,
    format2_bank,
    format2_image,
    logical,
    mount,
    new_image,
)

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.flash.auth import JOURNAL_KEY_INFO, JournalAuth, journal_key
from vehicle_sim.flash.device import FaultInjector, FlashDevice, PowerCut
from vehicle_sim.flash.journal import BANK_HEADER_SIZE, Journal
from vehicle_sim.flash.keywrap import (
    FAST_KEY_WRAP_INFO,
    WRAPPED_LEN,
    FastKeyWrap,
    UnwrapFailed,
    fast_key_kek,
)
from vehicle_sim.flash.layout import FLASH_FORMAT_VERSION, encode_superblock
from vehicle_sim.flash.monotonic import RollbackCounter
from vehicle_sim.flash.records import (
    COMMIT,
    MAC_LEN,
    OP_SET_FAST_WRAPPED,
    FlashState,
    Ops,
    encode_record,
    read_record,
)
from vehicle_sim.flash.store import FlashVehicleStore
from vehicle_sim.state_store import (
    COUNTER_FILE_NAME,
    DEVICE_KEY_FILE_NAME,
    STATE_FILE_NAME,
    FastKeyTampered,
    FlashTampered,
    VehicleStateError,
    init_vehicle,
    open_store,
)

KEYS = [crypto.private_key_from_random(random.Random(300 + i).randbytes).public_key()
        for i in range(12)]  # fmt: skip
ENTRIES = [WhitelistEntry(crypto.public_bytes(k), Role.DRIVER) for k in KEYS]
KID = [e.key_id for e in ENTRIES]


def _leaks(image: bytes, secrets: set[bytes]) -> list[bytes]:
    """The secrets that appear anywhere in the raw image."""
    return [s for s in secrets if s in image]


def _set_fast(store: FlashVehicleStore, rng: random.Random, seen: set[bytes]) -> None:
    index = rng.randrange(len(ENTRIES))
    secret = rng.randbytes(32)
    seen.add(secret)
    store.commit(
        StateChange(
            key_id=KID[index],
            counter=store.last_counter(KID[index]) + 1,
            nonce=rng.randbytes(16),
            add_keys=(ENTRIES[index],),
            set_fast_keys=((KID[index], secret),),
        )
    )


# --- at rest -------------------------------------------------------------------------------------
def test_no_fast_key_is_ever_on_the_image_across_commits_and_compactions() -> None:
    store = mount(new_image())
    rng = random.Random(1)
    seen: set[bytes] = set()
    start = store.journal.generation
    while store.journal.generation < start + 4:  # several compactions, both banks reused
        _set_fast(store, rng, seen)
        assert not _leaks(store.device.image(), seen)
        if rng.random() < 0.1:
            store.commit(StateChange(drop_fast_keys=(KID[rng.randrange(len(KID))],)))
    assert len(seen) > 50
    # Nor the key id and secret together, nor any 16-byte half of a secret.
    image = store.device.image()
    halves = {s[:16] for s in seen} | {s[16:] for s in seen}
    assert not _leaks(image, halves)


def test_fast_key_round_trips_across_remounts() -> None:
    store = mount(new_image())
    rng = random.Random(2)
    seen: set[bytes] = set()
    for _ in range(30):
        _set_fast(store, rng, seen)
    expected = store.snapshot().fast_keys
    assert expected and set(expected.values()) <= seen
    rebooted = mount(store.device.image())
    for key_id, secret in expected.items():
        assert rebooted.fast_key(key_id) == secret
    assert rebooted.fast_key(b"\x99" * 16) is None
    rebooted.journal.compact(lambda state: None)  # and through a compaction
    assert mount(rebooted.device.image()).snapshot().fast_keys == expected


def test_fast_key_round_trips_through_the_state_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "car"
    init_vehicle(state_dir, VIN, wall_clock=lambda: T0)
    secret = bytes(range(100, 132))
    with open_store(state_dir, wall_clock=lambda: T0) as store:
        store.commit(StateChange(add_keys=(ENTRIES[0],), set_fast_keys=((KID[0], secret),)))
    assert secret not in (state_dir / STATE_FILE_NAME).read_bytes()
    for read_only in (True, False):
        with open_store(state_dir, read_only=read_only, wall_clock=lambda: T0) as store:
            assert store.fast_key(KID[0]) == secret


def test_the_kek_is_derived_with_its_own_label() -> None:
    kek = fast_key_kek(DEVICE_KEY)
    assert len(kek) == 32 and kek not in (DEVICE_KEY, journal_key(DEVICE_KEY))
    assert kek == crypto.hkdf_sha256(DEVICE_KEY, salt=b"phonekey flash", info=FAST_KEY_WRAP_INFO)
    assert FAST_KEY_WRAP_INFO not in (JOURNAL_KEY_INFO, b"phonekey log v1")
    # RFC 3394 over key id | secret: 56 bytes, the key id inside.
    wrap = FastKeyWrap(DEVICE_KEY)
    blob = wrap.wrap(KID[0], b"\x42" * 32)
    assert len(blob) == WRAPPED_LEN == 56 and blob == aes_key_wrap(kek, KID[0] + b"\x42" * 32)
    assert wrap.unwrap(blob) == (KID[0], b"\x42" * 32)
    with pytest.raises(UnwrapFailed):
        FastKeyWrap(bytes(32)).unwrap(blob)


# --- tampering -----------------------------------------------------------------------------------
def _vehicle_with_fast_key() -> tuple[FlashVehicleStore, bytes]:
    store = mount(new_image())
    secret = b"\x5a" * 32
    store.commit(StateChange(add_keys=(ENTRIES[0],), set_fast_keys=((KID[0], secret),)))
    return store, secret


def _last_record(store: FlashVehicleStore) -> tuple[int, int]:
    """(address, length) of the bank's last record."""
    image = store.device.image()
    view = memoryview(image)
    base = SMALL.bank_address(store.journal.bank)
    at, found = base + BANK_HEADER_SIZE, (0, 0)
    while (record := read_record(view, at, base + SMALL.bank_bytes, mac_len=MAC_LEN)) is not None:
        found = (at, record.length)
        at += record.length
    return found


def _with_record(store: FlashVehicleStore, payload: bytes) -> bytes:
    """The image with ``payload`` appended as a record the key module would
    accept (right MAC, chain and place): what a holder of the journal key
    could write, to reach the unwrap check behind the MAC."""
    journal = store.journal
    address, length = _last_record(store)
    prev = store.device.image()[address + length - 5 - MAC_LEN : address + length - 5]
    auth = JournalAuth(DEVICE_KEY)

    def mac_of(signed: bytes) -> bytes:
        return auth.record_mac(journal.bank, journal.generation, journal.tail, prev, signed)

    record = encode_record(COMMIT, journal.next_seq, payload, mac_of)
    image = bytearray(store.device.image())
    at = SMALL.bank_address(journal.bank) + journal.tail
    image[at : at + len(record)] = record
    return bytes(image)


def test_a_flipped_byte_of_a_wrapped_key_is_tampering() -> None:
    store, _ = _vehicle_with_fast_key()
    address, length = _last_record(store)
    image = bytearray(store.device.image())
    payload = bytes(image[address + 9 : address + length - 5 - MAC_LEN])
    blob_at = address + 9 + payload.index(bytes([OP_SET_FAST_WRAPPED])) + 1
    image[blob_at + 20] ^= 0x01
    crc_at = address + length - 5
    image[crc_at : crc_at + 4] = struct.pack("<I", zlib.crc32(image[address:crc_at]))
    with pytest.raises(FlashTampered, match="fails its MAC"):
        mount(bytes(image))


@pytest.mark.parametrize("how", ["flipped", "other-kek", "other-key-id"])
def test_a_wrapped_key_that_fails_to_unwrap_is_refused_even_with_a_valid_mac(how: str) -> None:
    store, _ = _vehicle_with_fast_key()
    if how == "flipped":
        blob = bytearray(store.journal.keywrap.wrap(KID[1], b"\x01" * 32))
        blob[30] ^= 0x80
        body = bytes(blob)
    elif how == "other-kek":
        body = FastKeyWrap(bytes(32)).wrap(KID[1], b"\x01" * 32)
    else:  # a blob for key 1 with its id field swapped: the RFC 3394 check catches it
        blob = bytearray(store.journal.keywrap.wrap(KID[1], b"\x01" * 32))
        blob[8:24] = KID[2]
        body = bytes(blob)
    image = _with_record(store, bytes([OP_SET_FAST_WRAPPED]) + body)
    with pytest.raises(UnwrapFailed):
        Journal.mount(FlashDevice.in_memory(image), DEVICE_KEY)
    for read_only in (False, True):
        with pytest.raises(FastKeyTampered) as info:
            FlashVehicleStore.mount(
                FlashDevice.in_memory(image), IDENTITY_KEY, DEVICE_KEY, read_only=read_only
            )
        message = str(info.value)
        assert "\n" not in message and "wrapped fast-path key" in message
        assert "refuses to run" in message and isinstance(info.value, FlashTampered)
    # The same record, wrapped right, is accepted: the refusal was the unwrap.
    wrapped_right = Ops().set_fast(KID[1], b"\x01" * 32, store.journal.keywrap)
    good = _with_record(store, wrapped_right.payload())
    assert mount(good).fast_key(KID[1]) == b"\x01" * 32


def test_a_fast_key_in_the_clear_in_a_format3_record_is_refused() -> None:
    store, _ = _vehicle_with_fast_key()
    image = _with_record(store, Ops().set_fast(KID[1], b"\x01" * 32, None).payload())
    with pytest.raises(VehicleStateError, match="in the clear in flash format 3"):
        mount(image)


# --- migration from format 2 -------------------------------------------------------------------
SECRETS = {KID[0]: b"\xa0" * 32, KID[1]: b"\xa1" * 32, KID[2]: b"\xa2" * 32}


def _format2_state() -> FlashState:
    state = FlashState(vin=VIN, time_floor=T0)
    for entry in ENTRIES[:3]:
        state.whitelist[entry.key_id] = entry
    state.fast_keys = {KID[0]: SECRETS[KID[0]], KID[1]: b"\xb1" * 32}  # KID[1] replaced below
    state.revocation_version = 1
    state.revoked = {i.to_bytes(16, "big") for i in range(400)}  # a snapshot over two pages
    return state


def _format2_commits() -> list[bytes]:
    return [
        Ops().set_fast(KID[1], SECRETS[KID[1]], None).counter(KID[1], 3).payload(),
        Ops().set_fast(KID[2], SECRETS[KID[2]], None).lock(LockState.UNLOCKED).payload(),
    ]


def _format2_vehicle(device_key: bytes = DEVICE_KEY) -> bytes:
    """A format 2 image with both banks in use: the older one (generation 1)
    and the current one (generation 2), fast-path secrets in the clear in both."""
    device = FlashDevice.blank(SMALL.page_count)
    device.program(0, encode_superblock(SMALL))
    older = _format2_state()
    format2_bank(device, 1, 1, 1, older, [], SMALL, device_key)
    format2_bank(device, 0, 2, 2, _format2_state(), _format2_commits(), SMALL, device_key)
    return device.image()


ALL_SECRETS = {*SECRETS.values(), b"\xb1" * 32}


def test_a_format2_image_mounts_with_its_fast_keys() -> None:
    image = _format2_vehicle()
    assert _leaks(image, ALL_SECRETS)  # the test's detector finds them in format 2
    store = mount(image)
    assert (store.journal.version, store.journal.generation, store.journal.dirty) == (2, 2, True)
    assert store.snapshot().fast_keys == SECRETS and store.last_counter(KID[1]) == 3
    one_bank = format2_image(_format2_state(), _format2_commits())
    assert mount(one_bank).snapshot().fast_keys == SECRETS


def test_the_first_commit_rewrites_a_format2_image_wrapped_and_erases_the_old_banks() -> None:
    store = mount(_format2_vehicle())
    before = logical(store)
    store.advance_time_floor()
    assert (store.journal.version, store.journal.generation) == (FLASH_FORMAT_VERSION, 3)
    assert not store.journal.scrub_pending
    image = store.device.image()
    assert not _leaks(image, ALL_SECRETS)
    old_bank = SMALL.bank_address(1 - store.journal.bank)
    assert image[old_bank : old_bank + SMALL.bank_bytes] == b"\xff" * SMALL.bank_bytes
    migrated = mount(image)
    assert logical(migrated) == before and migrated.snapshot().fast_keys == SECRETS
    assert migrated.journal.version == FLASH_FORMAT_VERSION and not migrated.journal.dirty


def test_a_read_only_mount_of_a_format2_image_changes_nothing() -> None:
    image = _format2_vehicle()
    device = FlashDevice.in_memory(image)
    store = FlashVehicleStore.mount(device, IDENTITY_KEY, DEVICE_KEY, read_only=True)
    assert store.fast_key(KID[2]) == SECRETS[KID[2]]
    assert device.image() == image


def test_a_format2_state_directory_is_migrated_at_its_first_writable_open(tmp_path: Path) -> None:
    state_dir = tmp_path / "car"
    init_vehicle(state_dir, VIN, wall_clock=lambda: T0)
    device_key = (state_dir / DEVICE_KEY_FILE_NAME).read_bytes()
    old_image = _format2_vehicle(device_key)
    path = state_dir / STATE_FILE_NAME
    path.write_bytes(old_image)

    with open_store(state_dir, read_only=True) as store:  # reading does not migrate
        assert store.journal.version == 2
    assert path.read_bytes() == old_image

    with open_store(state_dir, wall_clock=lambda: T0) as store:
        assert store.journal.version == FLASH_FORMAT_VERSION
        assert store.snapshot().fast_keys == SECRETS
    assert not _leaks(path.read_bytes(), ALL_SECRETS)
    floor = RollbackCounter.load(state_dir / COUNTER_FILE_NAME).floor
    assert floor is not None and floor.version == FLASH_FORMAT_VERSION

    migrated = path.read_bytes()
    path.write_bytes(old_image)  # put the format 2 image back: a downgrade
    for read_only in (False, True):
        with pytest.raises(FlashTampered, match="a downgrade"):
            open_store(state_dir, read_only=read_only)
    path.write_bytes(migrated)
    with open_store(state_dir, read_only=True) as store:
        assert store.fast_key(KID[0]) == SECRETS[KID[0]]


def test_a_format2_bank_dressed_up_as_newer_is_a_downgrade() -> None:
    store = mount(_format2_vehicle())
    store.advance_time_floor()
    device = FlashDevice.in_memory(store.device.image())
    state = _format2_state()
    format2_bank(device, 1 - store.journal.bank, 9, 50, state, [])  # erased: fresh to program
    with pytest.raises(FlashTampered, match="a downgrade"):
        mount(device.image())


def test_every_cut_point_of_the_migration() -> None:
    """A power cut anywhere in the migrating commit (the compaction, then the
    scrub of the old bank) leaves the old or the new state, and the next
    commit leaves no secret in the clear."""
    image = _format2_vehicle()
    secret = b"\xc3" * 32
    change = StateChange(key_id=KID[0], counter=9, set_fast_keys=((KID[0], secret),))
    dry = FaultInjector()
    store = mount(image, dry)
    old = logical(store)
    store.commit(change)
    new = logical(store)
    writes = dry.operations
    # Erase the target (2 pages), program snapshot and header, erase the old bank (2 pages).
    assert writes >= 6
    scrub_cuts = 0
    for torn in (None, 1):
        for cut in range(1, writes + 1):
            rng = random.Random(torn + cut) if torn is not None else None
            store = mount(image, FaultInjector(cut_at=cut, rng=rng))
            with pytest.raises(PowerCut):
                store.commit(change)
            rebooted = mount(store.device.image())
            assert logical(rebooted) in (old, new), cut
            if rebooted.journal.version == FLASH_FORMAT_VERSION:
                scrub_cuts += 1
                assert logical(rebooted) == new and rebooted.journal.scrub_pending, cut
            # A read-only mount leaves the image alone; the next commit cleans it.
            cut_image = store.device.image()
            FlashVehicleStore.mount(
                FlashDevice.in_memory(cut_image), IDENTITY_KEY, DEVICE_KEY, read_only=True
            )
            rebooted.commit(StateChange(key_id=KID[2], counter=10**6, nonce=b"\xee" * 16))
            cleaned = rebooted.device.image()
            assert not _leaks(cleaned, ALL_SECRETS | {secret}), cut
            again = mount(cleaned, wall=Wall())
            assert again.last_counter(KID[2]) == 10**6 and not again.journal.scrub_pending
            assert again.fast_key(KID[0]) in (SECRETS[KID[0]], secret)
    assert scrub_cuts == 2 * 2  # the cuts in the scrub (the migration itself is done)
