"""The journal: mount and replay, torn tails, compaction, damage, capacity and write cost."""

from __future__ import annotations

import random

import pytest
from flash_testkit import DEVICE_KEY, SMALL, T0, VIN, logical, mount, new_image

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.flash.device import FaultInjector, FlashDevice, PowerCut
from vehicle_sim.flash.journal import BANK_HEADER_SIZE, Journal
from vehicle_sim.flash.layout import (
    DEFAULT_GEOMETRY,
    MAX_COUNTERS,
    MAX_KEYCARDS,
    MAX_KEYS,
    MAX_REVOCATIONS,
    MAX_SHARE_REVOCATIONS,
    FlashCorrupt,
)
from vehicle_sim.flash.records import SNAPSHOT_MAX_BYTES, FlashState
from vehicle_sim.flash.store import StoreFull, create_image
from vehicle_sim.state_store import VehicleStateError

_KEYS = [
    crypto.private_key_from_random(random.Random(i).randbytes).public_key() for i in range(600)
]


def _commit_unlock(store: object, counter: int) -> None:
    assert hasattr(store, "commit")
    store.commit(
        StateChange(
            key_id=b"\x01" * 16,
            counter=counter,
            nonce=counter.to_bytes(16, "big"),
            lock_state=LockState.UNLOCKED if counter % 2 else LockState.LOCKED,
        )
    )


def test_a_new_image_mounts_with_its_initial_state() -> None:
    journal = Journal.mount(FlashDevice.in_memory(new_image()), DEVICE_KEY)
    assert journal.state.vin == VIN and journal.state.time_floor == T0
    assert (journal.bank, journal.generation, journal.dirty) == (0, 1, False)


def test_replay_applies_every_commit_in_order() -> None:
    store = mount(new_image())
    for counter in range(1, 30):
        _commit_unlock(store, counter)
    replayed = mount(store.device.image())
    assert logical(replayed) == logical(store)
    assert replayed.last_counter(b"\x01" * 16) == 29


def test_compaction_alternates_banks_and_keeps_everything() -> None:
    store = mount(new_image())
    store.add_key(_KEYS[0], Role.OWNER)
    generations = set()
    for counter in range(1, 600):
        _commit_unlock(store, counter)
        generations.add((store.journal.generation, store.journal.bank))
    assert len(generations) >= 3  # several compactions, into both banks
    assert {bank for _, bank in generations} == {0, 1}
    assert logical(mount(store.device.image())) == logical(store)


def test_a_torn_last_record_is_dropped_and_the_next_commit_compacts() -> None:
    store = mount(new_image())
    _commit_unlock(store, 1)
    store.device.injector = FaultInjector(cut_at=1)
    with pytest.raises(PowerCut):
        _commit_unlock(store, 2)
    rebooted = mount(store.device.image())
    assert rebooted.last_counter(b"\x01" * 16) == 1
    assert rebooted.journal.dirty  # flash cannot be programmed over the torn bytes
    generation = rebooted.journal.generation
    _commit_unlock(rebooted, 2)
    assert rebooted.journal.generation == generation + 1 and not rebooted.journal.dirty
    assert mount(rebooted.device.image()).last_counter(b"\x01" * 16) == 2


def test_a_damaged_record_before_others_is_corruption_not_a_torn_tail() -> None:
    store = mount(new_image())
    for counter in range(1, 4):
        _commit_unlock(store, counter)
    image = bytearray(store.device.image())
    bank = SMALL.bank_address(store.journal.bank)
    image[bank + store.journal.tail - 120] ^= 0x01  # inside an earlier record
    with pytest.raises(FlashCorrupt, match="damaged"):
        Journal.mount(FlashDevice.in_memory(image), DEVICE_KEY)
    with pytest.raises(VehicleStateError, match=r"image is corrupt \(.*damaged"):
        mount(bytes(image))


def test_a_damaged_header_of_the_newer_bank_is_refused() -> None:
    store = mount(new_image())
    while store.journal.generation == 1:
        _commit_unlock(store, store.last_counter(b"\x01" * 16) + 1)
    image = bytearray(store.device.image())
    image[SMALL.bank_address(store.journal.bank) + 7] ^= 0x01  # the generation field
    with pytest.raises(FlashCorrupt, match="newest state, is damaged"):
        Journal.mount(FlashDevice.in_memory(image), DEVICE_KEY)


def test_an_image_from_a_newer_firmware_is_refused() -> None:
    from vehicle_sim.flash.auth import JournalAuth
    from vehicle_sim.flash.bank import encode_bank_header

    image = bytearray(new_image())
    header = encode_bank_header(1, 0, JournalAuth(DEVICE_KEY), version=99)
    image[SMALL.bank_address(0) : SMALL.bank_address(0) + len(header)] = header
    assert BANK_HEADER_SIZE >= len(header)
    with pytest.raises(FlashCorrupt, match="flash format 99"):
        Journal.mount(FlashDevice.in_memory(image), DEVICE_KEY)


# --- capacity and cost ----------------------------------------------------------------------
def test_the_largest_state_fits_half_a_bank() -> None:
    assert 2 * SNAPSHOT_MAX_BYTES + BANK_HEADER_SIZE <= DEFAULT_GEOMETRY.bank_bytes
    rng = random.Random(3)
    entries = [WhitelistEntry(crypto.public_bytes(k), Role.DRIVER) for k in _KEYS[:MAX_KEYS]]
    state = FlashState(
        vin=VIN,
        whitelist={e.key_id: e for e in entries},
        counters={rng.randbytes(16): 2**64 - 1 for _ in range(MAX_COUNTERS)},
        revoked={rng.randbytes(16) for _ in range(MAX_REVOCATIONS)},
        fast_keys={e.key_id: rng.randbytes(32) for e in entries},
        revoked_shares={rng.randbytes(16): T0 for _ in range(MAX_SHARE_REVOCATIONS)},
        keycards={crypto.key_id(k): k for k in _KEYS[-MAX_KEYCARDS:]},
        issuers={crypto.key_id(k): k for k in _KEYS[-2:]},
    )
    device = create_image(VIN, device_key=DEVICE_KEY, state=state)
    mounted = Journal.mount(FlashDevice.in_memory(device.image()), DEVICE_KEY).state
    assert mounted.whitelist == state.whitelist and mounted.revoked == state.revoked
    assert mounted.counters == state.counters and mounted.fast_keys == state.fast_keys
    assert mounted.revoked_shares == state.revoked_shares
    assert list(mounted.keycards) == list(state.keycards)


def test_512_keys_cost_the_same_flash_writes_each() -> None:
    store = mount(create_image(VIN, device_key=DEVICE_KEY, time_floor=T0).image())
    injector = store.device.injector = FaultInjector()
    costs = []
    for key in _KEYS[:MAX_KEYS]:
        before = injector.operations
        store.add_key(key, Role.DRIVER)
        costs.append(injector.operations - before)
    assert set(costs) <= {1, 2}  # one record: one page program, two if it spans a page
    assert sum(costs[:50]) <= 60 and sum(costs[-50:]) <= 60
    with pytest.raises(StoreFull, match="at most 512"):
        store.add_key(_KEYS[MAX_KEYS], Role.DRIVER)
    assert len(mount(store.device.image()).keys()) == MAX_KEYS


def test_commits_stay_cheap_with_a_full_vehicle_including_compactions() -> None:
    """512 keys and 10,000 revocations: a commit still programs one record, and
    compaction, amortised, adds a small constant (it does not grow per key)."""
    store = mount(create_image(VIN, device_key=DEVICE_KEY, time_floor=T0).image())
    store.add_keys((key, Role.DRIVER) for key in _KEYS[:MAX_KEYS])
    rng = random.Random(9)
    store.apply_revocations(1, [rng.randbytes(16) for _ in range(MAX_REVOCATIONS)])
    injector = store.device.injector = FaultInjector()
    generation = store.journal.generation
    commits = 0
    while store.journal.generation < generation + 2:
        commits += 1
        before, compactions = injector.operations, store.journal.compactions
        _commit_unlock(store, commits)
        if store.journal.compactions == compactions:
            assert injector.operations - before <= 2  # one record
    amortised = injector.operations / commits
    assert amortised < 1.3, amortised
    assert commits > 1000  # half a bank of records between compactions
    assert logical(mount(store.device.image())) == logical(store)
