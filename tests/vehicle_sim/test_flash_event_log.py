"""The event log on flash: chain, aggregation, wrap, and what tampering shows."""

from __future__ import annotations

import pytest
from flash_testkit import SMALL, T0, Wall, mount, new_image

from protocol.store import StateChange
from vehicle_sim.firmware_store import NO_KEY, LogEvent, LogKind
from vehicle_sim.flash.event_log import ENTRIES_PER_PAGE, ENTRY_SIZE
from vehicle_sim.flash.store import FlashVehicleStore

KEY_A, KEY_B = b"\xaa" * 16, b"\xbb" * 16
LOG = SMALL.log_address


def _store(wall: Wall | None = None) -> FlashVehicleStore:
    return mount(new_image(), wall=wall)


def _slot(index: int) -> int:
    page, offset = divmod(index, ENTRIES_PER_PAGE)
    return LOG + page * 4096 + offset * ENTRY_SIZE


def _with_log(count: int) -> FlashVehicleStore:
    store = _store()
    for i in range(count):
        store.log_event(LogEvent(LogKind.UNLOCK if i % 2 else LogKind.LOCK, KEY_A))
    return store


def test_entries_read_back_in_order_and_verify() -> None:
    wall = Wall()
    store = _store(wall)
    store.log_event(LogEvent(LogKind.BOOT))
    wall.now += 5
    store.log_event(LogEvent(LogKind.UNLOCK, KEY_A))
    store.log_event(LogEvent(LogKind.DENIED, KEY_B, reason=24))
    readout = mount(store.device.image()).read_log()
    assert readout.verified and readout.problem is None and readout.lost_to_wrap == 0
    assert [(e.seq, e.time, e.kind, e.key_id, e.reason, e.count) for e in readout.entries] == [
        (1, T0, LogKind.BOOT, NO_KEY, 0, 1),
        (2, T0 + 5, LogKind.UNLOCK, KEY_A, 0, 1),
        (3, T0 + 5, LogKind.DENIED, KEY_B, 24, 1),
    ]


def test_repeated_denials_are_aggregated_in_ram() -> None:
    wall = Wall()
    store = _store(wall)
    denial = LogEvent(LogKind.DENIED, KEY_B, reason=24)
    writes = store.stats().writes
    for _ in range(1000):
        store.log_event(denial)
    assert store.stats().writes - writes == 1  # only the first went to flash
    store.log_event(LogEvent(LogKind.UNLOCK, KEY_A))  # a different event flushes the repeats
    entries = store.read_log().entries
    assert [(e.kind, e.count) for e in entries] == [
        (LogKind.DENIED, 1),
        (LogKind.DENIED, 999),
        (LogKind.UNLOCK, 1),
    ]
    # A minute later the same denial is news again; flush_log and close write the rest.
    wall.now += 61
    store.log_event(denial)
    store.log_event(denial)
    store.flush_log()
    assert [e.count for e in store.read_log().entries][-2:] == [1, 1]


def test_an_interleaved_flood_is_aggregated_too() -> None:
    """A stranger who alternates refusal reasons, and is evicted between
    attempts, must not cost a flash write per attempt either."""
    store = _store()
    flood = [
        LogEvent(LogKind.DENIED, KEY_B, reason=22),
        LogEvent(LogKind.EVICTED, NO_KEY),
        LogEvent(LogKind.DENIED, KEY_B, reason=24),
    ]
    writes = store.stats().writes
    for _ in range(500):
        for event in flood:
            store.log_event(event)
    assert store.stats().writes - writes == len(flood)  # the first of each kind only
    store.flush_log()
    counts = {(e.kind, e.reason): e.count for e in store.read_log().entries if e.count > 1}
    assert counts == {
        (LogKind.DENIED, 22): 499,
        (LogKind.EVICTED, 0): 499,
        (LogKind.DENIED, 24): 499,
    }
    assert store.read_log().verified


def test_other_denials_are_not_merged() -> None:
    store = _store()
    store.log_event(LogEvent(LogKind.DENIED, KEY_B, reason=24))
    store.log_event(LogEvent(LogKind.DENIED, KEY_B, reason=25))
    store.log_event(LogEvent(LogKind.DENIED, KEY_A, reason=25))
    assert len(store.read_log().entries) == 3


def test_the_log_wraps_by_dropping_its_oldest_page() -> None:
    capacity = SMALL.log_pages * ENTRIES_PER_PAGE
    store = _with_log(capacity + 10)
    readout = mount(store.device.image()).read_log()
    assert readout.verified, readout.problem
    assert readout.lost_to_wrap == ENTRIES_PER_PAGE
    assert readout.entries[0].seq == ENTRIES_PER_PAGE + 1
    assert readout.entries[-1].seq == capacity + 10


def test_the_journal_anchors_the_log_head() -> None:
    store = _with_log(5)
    store.commit(StateChange(nonce=b"\x01" * 16))
    assert store.snapshot().log_anchor[0] == 5


def _tampered(store: FlashVehicleStore, edit: object) -> str:
    image = bytearray(store.device.image())
    assert callable(edit)
    edit(image)
    readout = mount(bytes(image)).read_log()
    assert not readout.verified and readout.problem is not None
    return readout.problem


def test_a_flipped_byte_is_detected() -> None:
    store = _with_log(10)

    def flip(image: bytearray) -> None:
        image[_slot(4) + 9] ^= 0x01  # the time of entry 5

    assert "entries 5 to 5 are missing" in _tampered(store, flip)


def test_a_deleted_entry_is_detected() -> None:
    store = _with_log(10)

    def delete(image: bytearray) -> None:  # what erasing and rewriting the page does
        image[_slot(3) : _slot(4)] = b"\xff" * ENTRY_SIZE

    assert "entries 4 to 4 are missing" in _tampered(store, delete)


def test_reordered_entries_are_detected() -> None:
    store = _with_log(10)

    def swap(image: bytearray) -> None:
        a, b = bytes(image[_slot(2) : _slot(3)]), bytes(image[_slot(6) : _slot(7)])
        image[_slot(2) : _slot(3)], image[_slot(6) : _slot(7)] = b, a

    assert "out of order" in _tampered(store, swap)


def test_a_copied_entry_is_detected() -> None:
    store = _with_log(10)

    def copy(image: bytearray) -> None:
        image[_slot(10) : _slot(11)] = image[_slot(2) : _slot(3)]

    assert "appears twice" in _tampered(store, copy)


def test_truncating_the_tail_before_the_last_commit_is_detected() -> None:
    store = _with_log(10)
    store.advance_time_floor()  # the journal records head = entry 10

    def truncate(image: bytearray) -> None:
        image[_slot(7) : _slot(10)] = b"\xff" * (3 * ENTRY_SIZE)

    assert "state journal recorded entry 10" in _tampered(store, truncate)


def test_rewriting_the_tail_with_other_entries_is_detected() -> None:
    """Truncate before the anchor, then let the vehicle log new entries on top:
    the sequence numbers continue but the anchored entry is not the one recorded."""
    store = _with_log(10)
    store.advance_time_floor()
    image = bytearray(store.device.image())
    image[_slot(8) : _slot(10)] = b"\xff" * (2 * ENTRY_SIZE)
    rebooted = mount(bytes(image))
    rebooted.log_event(LogEvent(LogKind.UNLOCK, KEY_B))
    rebooted.log_event(LogEvent(LogKind.UNLOCK, KEY_B))
    readout = rebooted.read_log()
    assert not readout.verified
    assert readout.problem == "entry 10 is not the one the state journal recorded"


def test_erasing_old_entries_without_a_wrap_is_detected() -> None:
    store = _with_log(20)

    def erase_start(image: bytearray) -> None:
        image[_slot(0) : _slot(5)] = b"\xff" * (5 * ENTRY_SIZE)

    assert "had not filled up to wrap" in _tampered(store, erase_start)


def test_without_the_device_key_nothing_verifies() -> None:
    """The MAC key lives outside the image: a forger cannot produce entries."""
    from vehicle_sim.flash.device import FlashDevice
    from vehicle_sim.flash.event_log import EventLog
    from vehicle_sim.flash.store import FlashTampered

    store = _with_log(3)
    store.advance_time_floor()
    device = FlashDevice.in_memory(store.device.image())
    readout = EventLog(device, store.journal.geometry, b"\x00" * 32).read(
        store.snapshot().log_anchor
    )
    assert readout.entries == () and not readout.verified
    # Nor does the journal: with another key the image does not mount at all.
    with pytest.raises(FlashTampered, match="fails its MAC"):
        FlashVehicleStore.mount(device, store.identity.private_key, b"\x00" * 32, name="image")


def test_read_only_stores_read_but_do_not_log(tmp_path: object) -> None:
    store = _with_log(2)
    from vehicle_sim.flash.device import FlashDevice
    from vehicle_sim.state_store import VehicleStateError

    reader = FlashVehicleStore.mount(
        FlashDevice.in_memory(store.device.image()),
        store.identity.private_key,
        bytes(range(32)),
        read_only=True,
        name="image",
    )
    assert len(reader.read_log().entries) == 2
    with pytest.raises(VehicleStateError, match="not open for writing"):
        reader.log_event(LogEvent(LogKind.BOOT))
