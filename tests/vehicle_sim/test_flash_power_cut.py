"""Power cuts at every flash write of every state-changing operation.

For each operation: a dry run counts its program/erase operations and the
writes of the rollback counter (N), then for every cut point 1..N the
operation runs on a fresh copy of the image and counter until the injected
power cut, the vehicle is "rebooted" (mounted again, with the counter as the
cut left it) and checked: it mounts (the counter never bricks it); the state
is exactly the old one or the new one (so counters never go back,
acknowledged nonces, revocations and lock states stay, the whitelist is old
or new); the event log verifies and is a prefix of the new log that still
holds the old one; and the rebooted vehicle keeps working (a commit after
the cut persists across another reboot). No fast-path secret of either state
is ever in the image in the clear.

Rollback: an operation that removes authority (a key removed or demoted, a
fast-path key dropped, a revocation, a share revocation, a keycard removed,
a wipe) is covered by the counter as soon as it returns, and after any cut
that kept it: the image from before it is then refused. Ordinary operations
write no counter at all; a compaction writes it twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from flash_testkit import (
    T0,
    Saved,
    Wall,
    boot,
    log_entries,
    logical,
    mount,
    new_image,
    saved,
)

from protocol import crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.firmware_store import NO_KEY, LogEntry, LogEvent, LogKind
from vehicle_sim.flash.device import FaultInjector, PowerCut
from vehicle_sim.flash.monotonic import MemoryCell, RollbackCounter
from vehicle_sim.flash.store import FlashRolledBack, FlashVehicleStore

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


def demote(store: FlashVehicleStore, rng: random.Random) -> None:
    """A role change to a lesser role (the console's add-key on a known key)."""
    store.add_key(KEYS[5], Role.GUEST if rng.random() < 0.8 else Role.DRIVER)


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
    "demote": demote,
    "factory-reset": factory_reset,
    "backoff": backoff,
    "keycard": keycard,
    "clock": clock,
}


def _booted(vehicle: Saved) -> Saved:
    """``vehicle`` after a reboot: the counter marks the journal's end, so a sweep's
    mount writes nothing before the operation."""
    return saved(*boot(vehicle))


def _base_image() -> Saved:
    """A vehicle with keys, counters, revocations, a keycard and some log."""
    store, cell = boot((new_image(), None))
    store.add_keys([(KEYS[0], Role.OWNER), (KEYS[1], Role.OWNER), (KEYS[5], Role.DRIVER)])
    rng = random.Random(5)
    for op in (unlock, revocations, keycard, revoke_share, log_append, log_denials, unlock):
        op(store, rng)
    return _booted(saved(store, cell))


BASE = _base_image()


def _full_bank(vehicle: Saved, room: int = 120) -> Saved:
    """``vehicle`` with the journal bank so full (at most ``room`` bytes left) that
    the next commit compacts (into the bank used before, which has to be erased
    first). A time-floor record is 39 bytes, so the loop never compacts."""
    store, cell = boot(vehicle)
    generation = store.journal.generation
    while store.journal.generation == generation:
        store.advance_time_floor()
    while store.journal.tail < store.journal.geometry.bank_bytes - room:
        store.advance_time_floor()
    return _booted(saved(store, cell))


def _full_log(vehicle: Saved) -> Saved:
    """``vehicle`` with the log ring full: the next entry wraps (erases a page)."""
    store, cell = boot(vehicle)
    while (store.read_log().entries[-1].seq) % (3 * 56) != 0:
        store.log_event(LogEvent(LogKind.LOCK, NO_KEY))
    return _booted(saved(store, cell))


def _lost_authority(old: dict[str, object], new: dict[str, object]) -> bool:
    """Whether going from ``old`` to ``new`` took authority away (judged on the
    states, independently of how the store classifies the change)."""

    def mapping(state: dict[str, object], key: str) -> dict[bytes, object]:
        value = state[key]
        assert isinstance(value, dict)
        return value

    old_keys, new_keys = mapping(old, "whitelist"), mapping(new, "whitelist")
    for key_id, entry in old_keys.items():
        kept = new_keys.get(key_id)
        assert isinstance(entry, WhitelistEntry)
        if kept is None or (isinstance(kept, WhitelistEntry) and kept.role > entry.role):
            return True  # removed, or a role further from OWNER

    def ids(state: dict[str, object], key: str) -> set[bytes]:
        value = state[key]
        assert isinstance(value, list)
        return set(value)

    old_shares, new_shares = mapping(old, "shares"), mapping(new, "shares")
    return (
        any(k not in mapping(new, "fast_keys") for k in mapping(old, "fast_keys"))
        or old["revocations"] != new["revocations"]
        or any(old_shares.get(k) != v for k, v in new_shares.items())
        or not ids(old, "keycards") <= ids(new, "keycards")
        or not ids(old, "issuers") <= ids(new, "issuers")
    )


def _refused(image: bytes, counter: bytes | None, what: str) -> None:
    """``image`` does not mount under ``counter``: it is a rollback."""
    with pytest.raises(FlashRolledBack):
        mount(image, counter=RollbackCounter.open(MemoryCell(counter)))
    assert counter is not None, what


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
    after_cut: Saved,
    before: Saved,
    old: dict[str, object],
    new: dict[str, object],
    old_log: list[LogEntry],
    new_log: list[LogEntry],
    what: str,
) -> tuple[dict[str, object], MemoryCell]:
    """Reboot what the cut left and check it; return the state and the counter
    after a probe commit."""
    store, cell = boot(after_cut)  # mounts, whatever the cut left of image and counter
    state = logical(store)
    assert state in (old, new), what
    assert _no_secret_in(after_cut[0], old, new), what
    assert _log_between(log_entries(store), old_log, new_log), what
    if state == new and _lost_authority(old, new):
        # The removal survived the cut, so no rollback may undo it: the reboot
        # marked it even if the cut came before the commit's own mark.
        _refused(before[0], cell.data, what)
    # The rebooted vehicle works: a further commit lands and survives a reboot.
    store.commit(StateChange(key_id=OWNER.key_id, counter=10**9, nonce=b"\xee" * 16))
    again, _ = boot(saved(store, cell))
    assert again.last_counter(OWNER.key_id) == 10**9 and again.nonce_spent(b"\xee" * 16), what
    assert {k: v for k, v in logical(again).items() if k not in ("counters", "nonces")} == {
        k: v for k, v in state.items() if k not in ("counters", "nonces")
    }, what
    assert _no_secret_in(store.device.image(), old, new), what
    return state, cell


def _sweep(vehicle: Saved, name: str, op: Op, torn_rng: int | None) -> tuple[FaultInjector, bool]:
    dry = FaultInjector()
    store, cell = boot(vehicle, dry)
    generation = store.journal.generation
    old, old_log = logical(store), log_entries(store)
    op(store, random.Random(name))
    new, new_log = logical(store), log_entries(store)
    completed = saved(store, cell)
    compacted = store.journal.generation != generation
    lost = _lost_authority(old, new)
    assert dry.operations > 0
    # Wear: ordinary operations never write the counter; a removal writes it
    # once, a compaction twice (pending, then the mark on the new snapshot).
    assert dry.replaces == (2 if compacted else 1 if lost else 0), name
    if lost:
        # Acknowledged (the operation returned): the counter already covers it.
        _refused(vehicle[0], completed[1], name)
    for cut in range(1, dry.operations + 1):
        rng = random.Random(torn_rng + cut) if torn_rng is not None else None
        store, cell = boot(vehicle, FaultInjector(cut_at=cut, rng=rng))
        with pytest.raises(PowerCut):
            op(store, random.Random(name))
        what = f"{name} cut {cut}"
        state, rebooted = _check_reboot(
            saved(store, cell), vehicle, old, new, old_log, new_log, what
        )
        if compacted and state == old:
            # The vehicle went on with the old generation, so the generation the
            # cut compaction was writing is abandoned: a copy of it is refused.
            _refused(completed[0], rebooted.data, what)
    return dry, lost


FULL_BANK = _full_bank(BASE)
CASES = {
    **{name: (BASE, op) for name, op in OPS.items()},
    "compaction": (FULL_BANK, unlock),
    "compaction-bulk": (FULL_BANK, bulk_add),
    "compaction-remove-key": (_full_bank(BASE, room=60), remove_key),
    "log-wrap": (_full_log(BASE), log_append),
}
REMOVING = {
    "remove-key",
    "revocations",
    "share-revocation",
    "factory-reset",
    "keycard",  # BASE holds the card: the operation removes it
    "demote",  # the driver KEYS[5] to a guest
    "compaction-remove-key",
}


@pytest.mark.parametrize("torn", [None, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_cut_point_of_every_operation(name: str, torn: int | None) -> None:
    vehicle, op = CASES[name]
    dry, lost = _sweep(vehicle, name, op, torn)
    assert lost == (name in REMOVING)  # the cases cover what they claim to
    if name.startswith("compaction"):
        assert dry.operations > 4  # erases and the snapshot, not just one record
        assert dry.replaces == 2
    elif name in REMOVING:
        assert dry.replaces == 1  # the counter's mark is one of the cut points
    else:
        assert dry.replaces == 0
    if name == "log-wrap":
        assert dry.operations == 2  # erase the oldest page, program the entry


def test_compaction_case_really_compacts() -> None:
    store, _ = boot(FULL_BANK)
    generation = store.journal.generation
    unlock(store, random.Random(1))
    assert store.journal.generation == generation + 1


def test_seeded_random_sequences_with_random_cuts() -> None:
    """Random operations, some cut at a random write (with random tearing),
    including cuts during the recovery compaction after an earlier cut."""
    rng = random.Random(20240601)
    vehicle = BASE
    wall = Wall()
    cuts = removals = 0
    secrets: set[bytes] = set()  # every fast-path secret the sequence ever set
    for step in range(300):
        name = rng.choice(sorted(OPS))
        op = OPS[name]
        seed = rng.randrange(2**32)
        wall.now += rng.randrange(0, 120)
        dry = FaultInjector()
        store, cell = boot(vehicle, dry, wall)
        old, old_log = logical(store), log_entries(store)
        op(store, random.Random(seed))
        new, new_log = logical(store), log_entries(store)
        what = f"step {step} {name}"
        if dry.operations and rng.random() < 0.6:
            cut = rng.randrange(1, dry.operations + 1)
            torn = FaultInjector(cut_at=cut, rng=random.Random(seed))
            store, cell = boot(vehicle, torn, wall)
            with pytest.raises(PowerCut):
                op(store, random.Random(seed))
            vehicle = saved(store, cell)
            rebooted, _ = boot(vehicle, None, wall)  # the counter never bricks it
            assert logical(rebooted) in (old, new), f"{what} cut {cut}"
            assert _no_secret_in(vehicle[0], old, new), f"{what} cut {cut}"
            assert _log_between(log_entries(rebooted), old_log, new_log), what
            cuts += 1
        else:
            before, vehicle = vehicle, saved(store, cell)
            assert _no_secret_in(vehicle[0], old, new), what
            if _lost_authority(old, new):
                _refused(before[0], vehicle[1], what)
                removals += 1
        secrets |= _secrets(old, new)
    assert secrets and not any(secret in vehicle[0] for secret in secrets)
    assert cuts > 150 and removals > 10
