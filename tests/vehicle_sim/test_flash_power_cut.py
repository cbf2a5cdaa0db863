"""Power cuts at every flash write of every state-changing operation.

For each operation: a dry run counts its program/erase operations (N), then
for every cut point 1..N the operation runs on a fresh copy of the image
until the injected power cut, the image is "rebooted" (mounted again) and
checked: it mounts; the state is exactly the old one or the new one (so
counters never go back, acknowledged nonces, revocations and lock states
stay, the whitelist is old or new); the event log verifies and is a prefix of
the new log that still holds the old one; and the rebooted vehicle keeps
working (a commit after the cut persists across another reboot). No
fast-path secret of either state is ever in the image in the clear.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from flash_testkit import T0, Wall, log_entries, logical, mount, new_image

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.firmware_store import NO_KEY, LogEntry, LogEvent, LogKind
from vehicle_sim.flash.device import FaultInjector, PowerCut
from vehicle_sim.flash.store import FlashVehicleStore

KEYS = [
    crypto.private_key_from_random(random.Random(100 + i).randbytes).public_key() for i in range(40)
]
ENTRIES = [WhitelistEntry(crypto.public_bytes(k), Role.OWNER if i < 2 else Role.DRIVER)
           for i, k in enumerate(KEYS)]  # fmt: skip
OWNER = ENTRIES[0]
CARD = crypto.private_key_from_random(random.Random(99).randbytes).public_key()

Op = Callable[[FlashVehicleStore, random.Random], None]


def _nonce(rng: random.Random) -> bytes:
    return rng.randbytes(16)


def enroll(store: FlashVehicleStore, rng: random.Random) -> None:
    entry = ENTRIES[rng.randrange(2, len(ENTRIES))]
    store.commit(
        StateChange(
            key_id=entry.key_id,
            counter=store.last_counter(entry.key_id) + 1,
            nonce=_nonce(rng),
            add_keys=(entry,),
            set_fast_keys=((entry.key_id, rng.randbytes(32)),),
        )
    )


def remove_key(store: FlashVehicleStore, rng: random.Random) -> None:
    present = [e for e in ENTRIES[1:] if store.whitelist_entry(e.key_id) is not None]
    target = rng.choice(present) if present else ENTRIES[5]
    store.commit(
        StateChange(
            key_id=OWNER.key_id,
            counter=store.last_counter(OWNER.key_id) + 1,
            nonce=_nonce(rng),
            remove_keys=(target.key_id,),
        )
    )


def unlock(store: FlashVehicleStore, rng: random.Random) -> None:
    """A counter advance through commit, with a new fast-path key."""
    store.commit(
        StateChange(
            key_id=OWNER.key_id,
            counter=store.last_counter(OWNER.key_id) + rng.randrange(1, 5),
            nonce=_nonce(rng),
            lock_state=LockState.UNLOCKED,
            set_fast_keys=((OWNER.key_id, rng.randbytes(32)),),
        )
    )


def toggle_lock(store: FlashVehicleStore, rng: random.Random) -> None:
    new = LockState.LOCKED if store.lock_state() is LockState.UNLOCKED else LockState.UNLOCKED
    store.commit(
        StateChange(
            key_id=OWNER.key_id,
            counter=store.last_counter(OWNER.key_id) + 1,
            nonce=_nonce(rng),
            lock_state=new,
        )
    )


def revocations(store: FlashVehicleStore, rng: random.Random) -> None:
    ids = tuple(rng.randbytes(16) for _ in range(rng.randrange(1, 40)))
    store.apply_revocations(store.revocation_version() + 1, ids)


def revoke_share(store: FlashVehicleStore, rng: random.Random) -> None:
    store.commit(StateChange(revoke_shares=((rng.randbytes(16), T0 + 86_400 * 30),)))


def log_append(store: FlashVehicleStore, rng: random.Random) -> None:
    store.log_event(LogEvent(LogKind.UNLOCK, ENTRIES[rng.randrange(5)].key_id))


def log_denials(store: FlashVehicleStore, rng: random.Random) -> None:
    event = LogEvent(LogKind.DENIED, ENTRIES[rng.randrange(5)].key_id, reason=24)
    for _ in range(rng.randrange(1, 6)):
        store.log_event(event)
    store.flush_log()


def bulk_add(store: FlashVehicleStore, rng: random.Random) -> None:
    store.add_keys((KEYS[i], Role.GUEST) for i in rng.sample(range(2, len(KEYS)), 12))


def factory_reset(store: FlashVehicleStore, rng: random.Random) -> None:
    store.factory_reset()


def backoff(store: FlashVehicleStore, rng: random.Random) -> None:
    store.save_backoff_level(store.backoff_level() + rng.randrange(1, 3))


def keycard(store: FlashVehicleStore, rng: random.Random) -> None:
    if not store.add_keycard(CARD):
        store.remove_keycard(crypto.key_id(CARD))


def clock(store: FlashVehicleStore, rng: random.Random) -> None:
    store.correct_clock(T0 + rng.randrange(-3600, 3600))


OPS: dict[str, Op] = {
    "enroll": enroll,
    "remove-key": remove_key,
    "counter-advance": unlock,
    "lock-state": toggle_lock,
    "revocations": revocations,
    "share-revocation": revoke_share,
    "log-append": log_append,
    "log-denials": log_denials,
    "bulk-add": bulk_add,
    "factory-reset": factory_reset,
    "backoff": backoff,
    "keycard": keycard,
    "clock": clock,
}


def _base_image() -> bytes:
    """A vehicle with keys, counters, revocations, a keycard and some log."""
    store = mount(new_image())
    store.add_keys([(KEYS[0], Role.OWNER), (KEYS[1], Role.OWNER), (KEYS[5], Role.DRIVER)])
    rng = random.Random(5)
    for op in (unlock, revocations, keycard, revoke_share, log_append, log_denials, unlock):
        op(store, rng)
    return store.device.image()


BASE = _base_image()


def _full_bank(image: bytes) -> bytes:
    """``image`` with the journal bank so full that the next commit compacts
    (into the bank used before, which has to be erased first)."""
    store = mount(image)
    generation = store.journal.generation
    while store.journal.generation == generation:
        store.advance_time_floor()
    while store.journal.tail < store.journal.geometry.bank_bytes - 120:
        store.advance_time_floor()
    return store.device.image()


def _full_log(image: bytes) -> bytes:
    """``image`` with the log ring full: the next entry wraps (erases a page)."""
    store = mount(image)
    while (store.read_log().entries[-1].seq) % (3 * 56) != 0:
        store.log_event(LogEvent(LogKind.LOCK, NO_KEY))
    return store.device.image()


def _log_between(entries: list[LogEntry], old: list[LogEntry], new: list[LogEntry]) -> bool:
    """The log after a cut is a valid prefix: it holds every entry of the old log
    (except what wrapping dropped), then some of the new ones, each exactly as
    written. (``log_entries`` already checked the chain verifies.)"""
    written = {e.seq: e for e in [*old, *new]}
    head = entries[-1].seq if entries else 0
    old_head = old[-1].seq if old else 0
    new_head = new[-1].seq if new else 0
    return old_head <= head <= new_head and all(written.get(e.seq) == e for e in entries)


def _secrets(*states: dict[str, object]) -> set[bytes]:
    found: set[bytes] = set()
    for state in states:
        fast_keys = state["fast_keys"]
        assert isinstance(fast_keys, dict)
        found.update(fast_keys.values())
    return found


def _no_secret_in(image: bytes, *states: dict[str, object]) -> bool:
    return not any(secret in image for secret in _secrets(*states))


def _check_reboot(
    image: bytes,
    old: dict[str, object],
    new: dict[str, object],
    old_log: list[LogEntry],
    new_log: list[LogEntry],
    what: str,
) -> bytes:
    """Mount the image after the cut and check it; return the image after a probe commit."""
    store = mount(image)  # mounts, whatever the cut left
    state = logical(store)
    assert state in (old, new), what
    assert _no_secret_in(image, old, new), what
    assert _log_between(log_entries(store), old_log, new_log), what
    # The rebooted vehicle works: a further commit lands and survives a reboot.
    store.commit(StateChange(key_id=OWNER.key_id, counter=10**9, nonce=b"\xee" * 16))
    again = mount(store.device.image())
    assert again.last_counter(OWNER.key_id) == 10**9 and again.nonce_spent(b"\xee" * 16), what
    assert {k: v for k, v in logical(again).items() if k not in ("counters", "nonces")} == {
        k: v for k, v in state.items() if k not in ("counters", "nonces")
    }, what
    assert _no_secret_in(store.device.image(), old, new), what
    return store.device.image()


def _sweep(image: bytes, name: str, op: Op, torn_rng: int | None) -> int:
    dry = FaultInjector()
    store = mount(image, dry)
    old, old_log = logical(store), log_entries(store)
    op(store, random.Random(name))
    new, new_log = logical(store), log_entries(store)
    writes = dry.operations
    assert writes > 0
    for cut in range(1, writes + 1):
        rng = random.Random(torn_rng + cut) if torn_rng is not None else None
        store = mount(image, FaultInjector(cut_at=cut, rng=rng))
        with pytest.raises(PowerCut):
            op(store, random.Random(name))
        _check_reboot(store.device.image(), old, new, old_log, new_log, f"{name} cut {cut}")
    return writes


CASES = {
    **{name: (BASE, op) for name, op in OPS.items()},
    "compaction": (_full_bank(BASE), unlock),
    "compaction-bulk": (_full_bank(BASE), bulk_add),
    "log-wrap": (_full_log(BASE), log_append),
}


@pytest.mark.parametrize("torn", [None, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_cut_point_of_every_operation(name: str, torn: int | None) -> None:
    image, op = CASES[name]
    writes = _sweep(image, name, op, torn)
    if name.startswith("compaction"):
        assert writes > 4  # erases and the snapshot, not just one record
    if name == "log-wrap":
        assert writes == 2  # erase the oldest page, program the entry


def test_compaction_case_really_compacts() -> None:
    store = mount(_full_bank(BASE))
    generation = store.journal.generation
    unlock(store, random.Random(1))
    assert store.journal.generation == generation + 1


def test_seeded_random_sequences_with_random_cuts() -> None:
    """Random operations, some cut at a random write (with random tearing),
    including cuts during the recovery compaction after an earlier cut."""
    rng = random.Random(20240601)
    image = BASE
    wall = Wall()
    cuts = 0
    secrets: set[bytes] = set()  # every fast-path secret the sequence ever set
    for step in range(300):
        name = rng.choice(sorted(OPS))
        op = OPS[name]
        seed = rng.randrange(2**32)
        wall.now += rng.randrange(0, 120)
        dry = FaultInjector()
        store = mount(image, dry, wall)
        old, old_log = logical(store), log_entries(store)
        op(store, random.Random(seed))
        new, new_log = logical(store), log_entries(store)
        if dry.operations and rng.random() < 0.6:
            cut = rng.randrange(1, dry.operations + 1)
            torn = FaultInjector(cut_at=cut, rng=random.Random(seed))
            store = mount(image, torn, wall)
            with pytest.raises(PowerCut):
                op(store, random.Random(seed))
            image = store.device.image()
            rebooted = mount(image, None, wall)
            assert logical(rebooted) in (old, new), f"step {step} {name} cut {cut}"
            assert _no_secret_in(image, old, new), f"step {step} {name} cut {cut}"
            assert _log_between(log_entries(rebooted), old_log, new_log), f"step {step}"
            cuts += 1
        else:
            image = store.device.image()
            assert _no_secret_in(image, old, new), f"step {step} {name}"
        secrets |= _secrets(old, new)
    assert secrets and not any(secret in image for secret in secrets)
    assert cuts > 150
