"""FlashVehicleStore as the firmware's store: fast keys, shares, keycards,
backoff, factory reset, bulk add and stats, persisted across reboots."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from flash_testkit import T0, Wall, logical, mount, new_image
from vehicle_testkit import VIN

from protocol import crypto
from protocol.store import MemoryStore, StateChange, WhitelistEntry, apply_change
from protocol.types import LockState, Role
from vehicle_sim.firmware_store import FirmwareStore, LogEvent, LogKind
from vehicle_sim.flash.layout import DEFAULT_GEOMETRY, MAX_KEYS, MAX_REVOCATIONS
from vehicle_sim.flash.store import SHARE_PRUNE_MARGIN
from vehicle_sim.state_store import StoreFull, VehicleStateError, init_vehicle, open_store

KEYS = [crypto.private_key_from_random(random.Random(i).randbytes).public_key() for i in range(8)]
ENTRIES = [WhitelistEntry(crypto.public_bytes(k), Role.DRIVER) for k in KEYS]
KID = [entry.key_id for entry in ENTRIES]


def test_commits_follow_the_reference_semantics() -> None:
    """Every StateChange field, applied like protocol.store.apply_change."""
    store = mount(new_image())
    reference = MemoryStore()
    changes = [
        StateChange(add_keys=tuple(ENTRIES[:4])),
        StateChange(
            key_id=ENTRIES[0].key_id,
            counter=3,
            nonce=b"\x01" * 16,
            lock_state=LockState.UNLOCKED,
            set_fast_keys=((ENTRIES[0].key_id, b"\x11" * 32), (ENTRIES[1].key_id, b"\x22" * 32)),
            revoke_shares=((b"\x55" * 16, T0 + 100),),
        ),
        StateChange(remove_keys=(ENTRIES[1].key_id,), drop_fast_keys=(ENTRIES[0].key_id,)),
        StateChange(key_id=KID[2], counter=1, set_fast_keys=((KID[2], b"\x33" * 32),)),
        StateChange(wipe=True, add_keys=(ENTRIES[5],), key_id=ENTRIES[5].key_id, counter=9),
    ]  # fmt: skip
    for change in changes:
        store.commit(change)
        apply_change(reference, change)
        for rebooted in (store, mount(store.device.image())):
            assert {e.key_id: e for e in rebooted.keys()} == reference.whitelist
            assert rebooted.snapshot().counters == reference.counters
            assert rebooted.snapshot().fast_keys == reference.fast_keys
            assert rebooted.snapshot().revoked_shares == reference.revoked_shares
            assert rebooted.lock_state() is reference.state
            assert list(rebooted.snapshot().spent_nonces) == list(reference.spent_nonces)
    assert store.fast_key(ENTRIES[2].key_id) is None  # wiped
    assert store.last_counter(ENTRIES[0].key_id) == 3  # counters survive a wipe


def test_share_revocations_are_pruned_a_day_after_they_expire() -> None:
    wall = Wall()
    store = mount(new_image(), wall=wall)
    store.commit(StateChange(revoke_shares=((b"\x01" * 16, T0 + 10), (b"\x02" * 16, T0 + 10**6))))
    wall.now = T0 + 10 + SHARE_PRUNE_MARGIN + 1
    generation = store.journal.generation
    while store.journal.generation == generation:  # prunes at the next compaction
        store.advance_time_floor()
    assert not store.share_revoked(b"\x01" * 16) and store.share_revoked(b"\x02" * 16)
    assert not mount(store.device.image()).share_revoked(b"\x01" * 16)


def test_keycards_backoff_and_factory_reset() -> None:
    store = mount(new_image())
    assert store.add_keycard(KEYS[7]) and not store.add_keycard(KEYS[7])
    store.add_keys([(KEYS[0], Role.OWNER), (KEYS[1], Role.GUEST)])
    store.commit(StateChange(key_id=KID[0], counter=4, set_fast_keys=((KID[0], b"\x01" * 32),)))
    store.commit(StateChange(revoke_shares=((b"\x03" * 16, T0 + 10**6),)))
    writes = store.stats().writes
    store.save_backoff_level(3)
    store.save_backoff_level(3)  # unchanged: no write
    assert store.stats().writes - writes == 1
    store.apply_revocations(1, [b"\x09" * 16])
    store.factory_reset()
    rebooted = mount(store.device.image())
    assert rebooted.keys() == [] and rebooted.fast_key(ENTRIES[0].key_id) is None
    assert not rebooted.share_revoked(b"\x03" * 16)
    # kept: keycards, counters, revocations, backoff level
    assert [crypto.key_id(k) for k in rebooted.keycards()] == [crypto.key_id(KEYS[7])]
    assert rebooted.last_counter(ENTRIES[0].key_id) == 4
    assert rebooted.is_revoked(b"\x09" * 16) and rebooted.backoff_level() == 3
    assert rebooted.remove_keycard(crypto.key_id(KEYS[7])) and rebooted.keycards() == []
    assert not rebooted.remove_keycard(crypto.key_id(KEYS[7]))


def test_limits_are_refused_with_a_clear_error() -> None:
    store = mount(new_image(DEFAULT_GEOMETRY))
    rng = random.Random(1)
    store.apply_revocations(1, [rng.randbytes(16) for _ in range(MAX_REVOCATIONS)])
    with pytest.raises(StoreFull, match="at most 10000"):
        store.apply_revocations(2, [b"\x00" * 16])
    assert store.revocation_version() == 1
    with pytest.raises(ValueError, match="16 bytes"):
        store.commit(StateChange(key_id=b"short", counter=1))


def test_stats_describe_the_image(tmp_path: Path) -> None:
    init_vehicle(tmp_path / "v", VIN)
    with open_store(tmp_path / "v") as store:
        store.add_key(KEYS[0], Role.OWNER)
        store.log_event(LogEvent(LogKind.BOOT))
        stats = store.stats()
    assert stats.image_bytes == (tmp_path / "v" / "vehicle.flash").stat().st_size
    assert 0 < stats.used_bytes < stats.image_bytes
    assert stats.writes >= 3 and stats.bytes_per_key == 60
    assert (stats.max_keys, stats.max_revocations) == (MAX_KEYS, MAX_REVOCATIONS)


def test_the_log_survives_close_and_reopen(tmp_path: Path) -> None:
    init_vehicle(tmp_path / "v", VIN)
    denial = LogEvent(LogKind.DENIED, b"\x01" * 16, reason=24)
    with open_store(tmp_path / "v") as store:
        for _ in range(3):
            store.log_event(denial)
    with open_store(tmp_path / "v", read_only=True) as store:  # close flushed the repeats
        readout = store.read_log()
        assert readout.verified and [e.count for e in readout.entries] == [1, 2]
        with pytest.raises(VehicleStateError, match="not open for writing"):
            store.save_backoff_level(1)


def test_the_store_is_a_firmware_store() -> None:
    store: FirmwareStore = mount(new_image())
    assert logical(mount(store.device.image())) == logical(store)  # type: ignore[attr-defined]
