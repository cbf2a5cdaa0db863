"""The journal is tamper-evident (flash formats 2 and 3): whoever rewrites the image
without the device key cannot change the state without mount refusing it,
while a power cut still only ever looks like a power cut."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from flash_testkit import DEVICE_KEY, IDENTITY_KEY, SMALL, T0, VIN, Wall, logical, mount, new_image

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.flash.auth import JOURNAL_KEY_INFO, JournalAuth, journal_key
from vehicle_sim.flash.bank import BANK_HEADER_SIZE, V1_BANK_HEADER_SIZE, encode_v1_bank_header
from vehicle_sim.flash.device import FaultInjector, FlashDevice, PowerCut
from vehicle_sim.flash.journal import Journal
from vehicle_sim.flash.layout import FLASH_FORMAT_VERSION, TamperEvidence, encode_superblock
from vehicle_sim.flash.monotonic import RollbackCounter
from vehicle_sim.flash.records import (
    COMMIT,
    MAC_LEN,
    SNAPSHOT,
    FlashState,
    Ops,
    encode_record,
    read_record,
    snapshot_payload,
)
from vehicle_sim.flash.store import FlashTampered, FlashVehicleStore, create_image
from vehicle_sim.state_store import (
    COUNTER_FILE_NAME,
    STATE_FILE_NAME,
    VehicleStateError,
    init_vehicle,
    open_store,
)

OWNER = crypto.private_key_from_random(random.Random(7).randbytes).public_key()
THIEF = crypto.private_key_from_random(random.Random(8).randbytes).public_key()
KEY_ID = crypto.key_id(OWNER)


def _unlock(store: FlashVehicleStore, counter: int) -> None:
    store.commit(
        StateChange(
            key_id=KEY_ID,
            counter=counter,
            nonce=counter.to_bytes(16, "big"),
            lock_state=LockState.UNLOCKED if counter % 2 else LockState.LOCKED,
        )
    )


def _vehicle(commits: int = 4, device_key: bytes = DEVICE_KEY) -> FlashVehicleStore:
    image = create_image(VIN, device_key=device_key, time_floor=T0, geometry=SMALL).image()
    store = FlashVehicleStore.mount(
        FlashDevice.in_memory(image), IDENTITY_KEY, device_key, wall_clock=Wall(), name="image"
    )
    store.add_key(OWNER, Role.OWNER)
    for counter in range(1, commits + 1):
        _unlock(store, counter)
    return store


def _records(image: bytes | bytearray, bank: int) -> list[tuple[int, int]]:
    """(address, length) of every complete record of ``bank``, in order."""
    view = memoryview(bytes(image))
    at, end = SMALL.bank_address(bank) + BANK_HEADER_SIZE, SMALL.bank_address(bank + 1)
    found = []
    while (record := read_record(view, at, end, mac_len=MAC_LEN)) is not None:
        found.append((at, record.length))
        at += record.length
    return found


def _fix_crc(image: bytearray, address: int, length: int) -> None:
    crc_at = address + length - 5
    image[crc_at : crc_at + 4] = struct.pack("<I", zlib.crc32(image[address:crc_at]))


def _refused(image: bytes | bytearray, match: str = "fails its MAC") -> str:
    with pytest.raises(TamperEvidence, match=match):
        Journal.mount(FlashDevice.in_memory(bytes(image)), DEVICE_KEY)
    with pytest.raises(FlashTampered) as info:
        mount(bytes(image))
    message = str(info.value)
    assert "\n" not in message and message.startswith("image was modified without the device key")
    assert "refuses to run" in message
    return message


# --- what the attacker writes ----------------------------------------------------------------
def test_a_flipped_payload_byte_with_its_crc_fixed_is_tampering() -> None:
    store = _vehicle()
    image = bytearray(store.device.image())
    address, length = _records(image, store.journal.bank)[2]
    image[address + 12] ^= 0x01  # the payload of a committed record
    _fix_crc(image, address, length)
    assert "record 2 fails its MAC" in _refused(image)


def test_a_forged_record_adding_a_key_is_tampering() -> None:
    """The attack the MAC is for: append "whitelist my key as owner"."""
    store = _vehicle()
    image = bytearray(store.device.image())
    entry = WhitelistEntry(crypto.public_bytes(THIEF), Role.OWNER)
    payload = Ops().add_key(entry).counter(KEY_ID, 0).payload()  # and roll a counter back
    bad_key = JournalAuth(bytes(32))
    journal = store.journal

    def forged_mac(signed: bytes) -> bytes:
        return bad_key.record_mac(journal.bank, journal.generation, journal.tail, bytes(16), signed)

    record = encode_record(COMMIT, journal.next_seq, payload, forged_mac)
    at = SMALL.bank_address(journal.bank) + journal.tail
    image[at : at + len(record)] = record
    _refused(image)


def test_reordered_records_are_tampering() -> None:
    store = _vehicle(commits=6)
    image = bytearray(store.device.image())
    records = _records(image, store.journal.bank)
    (a, length_a), (b, length_b) = records[3], records[4]
    assert length_a == length_b
    first, second = bytes(image[a : a + length_a]), bytes(image[b : b + length_b])
    image[a : a + length_a], image[b : b + length_b] = second, first
    _refused(image)


def test_a_duplicated_record_is_tampering() -> None:
    store = _vehicle()
    image = bytearray(store.device.image())
    address, length = _records(image, store.journal.bank)[-1]
    tail = address + length
    image[tail : tail + length] = image[address : address + length]  # replayed at the tail
    _refused(image)


def test_a_dropped_record_in_the_middle_is_tampering() -> None:
    store = _vehicle(commits=6)
    image = bytearray(store.device.image())
    records = _records(image, store.journal.bank)
    (a, length), (b, _) = records[2], records[3]
    end = records[-1][0] + records[-1][1]
    rest = bytes(image[b:end])
    image[a:end] = rest + b"\xff" * length  # shift the later records down over it
    _refused(image)


def test_a_bank_copied_to_the_other_bank_is_tampering() -> None:
    store = _vehicle()
    image = bytearray(store.device.image())
    bank = store.journal.bank
    src, dst = SMALL.bank_address(bank), SMALL.bank_address(1 - bank)
    image[dst : dst + SMALL.bank_bytes] = image[src : src + SMALL.bank_bytes]
    assert "header of bank" in _refused(image)


def test_records_moved_under_a_newer_generation_are_tampering() -> None:
    """A header with a higher generation (forged, CRC fixed) over the same records."""
    store = _vehicle()
    image = bytearray(store.device.image())
    at = SMALL.bank_address(store.journal.bank)
    image[at + 6 : at + 10] = struct.pack("<I", store.journal.generation + 2)
    _fix_crc(image, at, BANK_HEADER_SIZE - 1)
    assert "header of bank" in _refused(image)


def test_a_record_spliced_from_another_vehicle_is_tampering() -> None:
    """Same VIN, same history, same lengths, another device key: not one record
    of the other image passes here."""
    ours, theirs = _vehicle(), _vehicle(device_key=bytes(range(1, 33)))
    ours_image, their_image = bytearray(ours.device.image()), theirs.device.image()
    bank = ours.journal.bank
    ours_records, their_records = _records(ours_image, bank), _records(their_image, bank)
    assert [length for _, length in ours_records] == [length for _, length in their_records]
    address, length = their_records[-1]
    ours_image[address : address + length] = their_image[address : address + length]
    _refused(ours_image)


def test_a_record_spliced_from_a_fork_of_the_same_vehicle_is_tampering() -> None:
    """Two images of this vehicle that diverged: each record is valid in its own
    image, but the MAC chain binds it to what came before it."""
    base = _vehicle(commits=2)
    fork_a = mount(base.device.image())
    fork_b = mount(base.device.image())
    for store, counter in ((fork_a, 10), (fork_b, 20)):
        _unlock(store, counter)
        _unlock(store, counter + 1)
    image_a, image_b = bytearray(fork_a.device.image()), fork_b.device.image()
    records = _records(image_a, fork_a.journal.bank)
    address, length = records[-1]
    assert _records(image_b, fork_a.journal.bank)[-1] == (address, length)
    image_a[address : address + length] = image_b[address : address + length]
    _refused(image_a)


def test_a_modified_snapshot_is_tampering() -> None:
    store = _vehicle()
    store.journal.compact(lambda state: None)  # the snapshot holds the key now
    image = bytearray(store.device.image())
    address, length = _records(image, store.journal.bank)[0]
    payload = snapshot_payload(store.snapshot(), store.journal.keywrap)
    owner = crypto.public_bytes(OWNER) + bytes([Role.OWNER])
    at = address + 9 + payload.index(owner)
    image[at : at + 33] = crypto.public_bytes(THIEF)  # swap the owner key for the thief's
    _fix_crc(image, address, length)
    assert "its snapshot fails its MAC" in _refused(image)


# --- what a power cut leaves ----------------------------------------------------------------
def test_every_torn_prefix_of_a_record_is_a_power_cut_not_tampering() -> None:
    store = _vehicle()
    before = logical(store)
    image = store.device.image()
    journal = store.journal
    payload = Ops().lock(LockState.UNLOCKED).payload()
    record = encode_record(COMMIT, journal.next_seq, payload, lambda signed: bytes(MAC_LEN))
    at = SMALL.bank_address(journal.bank) + journal.tail
    for length in range(len(record)):  # every prefix short of the end mark
        torn = bytearray(image)
        torn[at : at + length] = record[:length]
        rebooted = mount(bytes(torn))
        assert logical(rebooted) == before, length
        assert rebooted.journal.dirty == (length > 0)


def test_a_power_cut_in_a_compaction_is_not_tampering() -> None:
    store = _vehicle()
    image = store.device.image()
    dry = FaultInjector()
    probe = mount(image, dry)
    probe.journal.compact(lambda state: None)
    for cut in range(1, dry.operations + 1):
        cut_store = mount(image, FaultInjector(cut_at=cut, rng=random.Random(cut)))
        with pytest.raises(PowerCut):
            cut_store.journal.compact(lambda state: None)
        assert logical(mount(cut_store.device.image())) == logical(store), cut


# --- migration from format 1 -----------------------------------------------------------------
def _format1_image(state: FlashState, commits: list[bytes]) -> bytes:
    """An image as the format 1 firmware wrote it: no MACs, records from offset 16."""
    device = FlashDevice.blank(SMALL.page_count)
    device.program(0, encode_superblock(SMALL))
    at = SMALL.bank_address(0) + V1_BANK_HEADER_SIZE
    for seq, (kind, payload) in enumerate(
        [(SNAPSHOT, snapshot_payload(state, None)), *((COMMIT, c) for c in commits)], start=1
    ):
        record = encode_record(kind, seq, payload, None)
        device.program(at, record)
        at += len(record)
    device.program(SMALL.bank_address(0), encode_v1_bank_header(1))
    return device.image()


def _format1_vehicle() -> bytes:
    state = FlashState(vin=VIN, time_floor=T0)
    entry = WhitelistEntry(crypto.public_bytes(OWNER), Role.OWNER)
    return _format1_image(
        state, [Ops().add_key(entry).payload(), Ops().counter(KEY_ID, 5).lock(2).payload()]
    )


def test_a_format1_image_is_trusted_once_and_rewritten_authenticated() -> None:
    image = _format1_vehicle()
    store = mount(image)
    assert (store.journal.version, store.journal.generation, store.journal.dirty) == (1, 1, True)
    assert store.keys()[0].public_key == crypto.public_bytes(OWNER)
    assert store.last_counter(KEY_ID) == 5 and store.lock_state() is LockState.UNLOCKED
    before = logical(store)

    store.advance_time_floor()  # the first commit compacts into the current format
    assert (store.journal.version, store.journal.generation) == (FLASH_FORMAT_VERSION, 2)
    migrated = mount(store.device.image())
    assert logical(migrated) == before and migrated.journal.version == FLASH_FORMAT_VERSION
    _unlock(migrated, 6)
    assert mount(migrated.device.image()).last_counter(KEY_ID) == 6

    # The migration erased the format 1 bank (it held fast-path secrets in the
    # clear). A format 1 header written there, newer, is a downgrade, not a
    # second migration.
    downgraded = bytearray(migrated.device.image())
    header = SMALL.bank_address(0)
    assert downgraded[header : header + SMALL.bank_bytes] == b"\xff" * SMALL.bank_bytes
    downgraded[header : header + V1_BANK_HEADER_SIZE - 1] = encode_v1_bank_header(9)
    _refused(downgraded, match="a downgrade")


def test_read_only_mount_of_a_format1_image_changes_nothing() -> None:
    image = _format1_vehicle()
    device = FlashDevice.in_memory(image)
    store = FlashVehicleStore.mount(device, IDENTITY_KEY, DEVICE_KEY, read_only=True)
    assert store.last_counter(KEY_ID) == 5
    assert device.image() == image


# --- the rollback counter ----------------------------------------------------------------------
def test_the_counter_refuses_an_older_generation_and_a_format1_image(tmp_path: Path) -> None:
    counter_path = tmp_path / COUNTER_FILE_NAME
    old_image = _format1_vehicle()

    def mount_counted(image: bytes) -> FlashVehicleStore:
        return FlashVehicleStore.mount(
            FlashDevice.in_memory(image),
            IDENTITY_KEY,
            DEVICE_KEY,
            wall_clock=Wall(),
            name="image",
            counter=RollbackCounter.load(counter_path),
        )

    store = mount_counted(old_image)  # no counter yet: a vehicle from before it
    store.advance_time_floor()  # migrates; the counter records the current format
    assert RollbackCounter.load(counter_path).floor is not None
    migrated = store.device.image()
    with pytest.raises(FlashTampered, match="a downgrade"):
        mount_counted(old_image)

    store = mount_counted(migrated)
    while store.journal.generation == 2:
        _unlock(store, store.last_counter(KEY_ID) + 1)
    floor = RollbackCounter.load(counter_path).floor
    assert floor is not None and floor.generation == 3
    with pytest.raises(FlashTampered, match="an older image was restored"):
        mount_counted(migrated)

    # What remains open: ordinary commits (an unlock) since the counter's last mark
    # (here the compaction) can be rolled back; removals cannot (test_flash_rollback).
    same_generation = store.device.image()
    _unlock(store, store.last_counter(KEY_ID) + 1)
    assert mount_counted(same_generation).last_counter(KEY_ID) < store.last_counter(KEY_ID)


# --- the state directory and the CLI --------------------------------------------------------------
def test_a_tampered_state_directory_is_refused_and_reported(
    tmp_path: Path, vehicle_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "car"
    init_vehicle(state_dir, VIN, wall_clock=lambda: T0)
    with open_store(state_dir, wall_clock=lambda: T0) as store:
        store.add_key(OWNER, Role.OWNER)
        bank, tail = store.journal.bank, store.journal.tail
        geometry = store.journal.geometry
    path = state_dir / STATE_FILE_NAME
    image = bytearray(path.read_bytes())
    records = []
    at = geometry.bank_address(bank) + BANK_HEADER_SIZE
    while at < geometry.bank_address(bank) + tail:
        record = read_record(memoryview(bytes(image)), at, len(image), mac_len=MAC_LEN)
        assert record is not None
        records.append((at, record.length))
        at += record.length
    address, length = records[-1]
    role_at = bytes(image[address:]).index(crypto.public_bytes(OWNER)) + address + 33
    image[role_at] = Role.GUEST  # demote the owner
    _fix_crc(image, address, length)
    path.write_bytes(bytes(image))

    for read_only in (False, True):
        with pytest.raises(FlashTampered, match=f"{path} was modified without the device key"):
            open_store(state_dir, read_only=read_only)
    for command in ("show", "log"):
        assert vehicle_cli(["vehicle", command, "--state", str(state_dir)]) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refuses to run" in err and "Traceback" not in err
    assert isinstance(FlashTampered("x"), VehicleStateError)


def test_the_journal_key_is_derived_not_the_device_key() -> None:
    key = journal_key(DEVICE_KEY)
    assert key != DEVICE_KEY and len(key) == 32
    assert key == crypto.hkdf_sha256(DEVICE_KEY, salt=b"phonekey flash", info=JOURNAL_KEY_INFO)
    assert JOURNAL_KEY_INFO != b"phonekey log v1"
    assert new_image() == new_image()  # deterministic: same key, same image
