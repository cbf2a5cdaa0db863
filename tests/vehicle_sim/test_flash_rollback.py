"""Rollback within a generation: once the vehicle has removed authority (a key,
a role, a revocation, a share, a keycard, a reset), no rewrite of the flash
brings it back. A saved image written back, or the journal's tail cut, is
refused at mount because the rollback counter marks the removal's record.
Ordinary commits such as unlocks never write the counter."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flash_testkit import T0, Saved, boot, mount, new_image, saved

import vehicle_sim.flash.monotonic as monotonic
from phonekey.durable import write_atomic
from protocol import credentials, crypto
from protocol.store import StateChange, WhitelistEntry
from protocol.types import LockState, Role
from vehicle_sim.flash.device import FaultInjector, FlashDevice, PowerCut
from vehicle_sim.flash.monotonic import COUNTER_SIZE, FileCell, MemoryCell, RollbackCounter
from vehicle_sim.flash.store import FlashRolledBack, FlashVehicleStore
from vehicle_sim.state_store import (
    COUNTER_FILE_NAME,
    DEVICE_KEY_FILE_NAME,
    STATE_FILE_NAME,
    FlashTampered,
    VehicleStateError,
    init_vehicle,
    open_store,
)

VIN = "1HGCM82633A004352"
OWNER = crypto.private_key_from_random(random.Random(31).randbytes).public_key()
THIEF = crypto.private_key_from_random(random.Random(32).randbytes).public_key()
BUYER = crypto.private_key_from_random(random.Random(33).randbytes).public_key()
CARD = crypto.private_key_from_random(random.Random(34).randbytes).public_key()
OWNER_ID, THIEF_ID = crypto.key_id(OWNER), crypto.key_id(THIEF)
SHARE_ID = b"\x5a" * 16
FAST_SECRET = b"\x77" * 32

Removal = Callable[[FlashVehicleStore], None]


def _revoke(store: FlashVehicleStore) -> None:
    rev_id = credentials.revocation_id(store.identity.vehicle_id, THIEF_ID)
    store.apply_revocations(store.revocation_version() + 1, [rev_id])


REMOVALS: dict[str, Removal] = {
    "remove-key": lambda store: store.commit(StateChange(remove_keys=(THIEF_ID,))),
    "revocation": _revoke,
    "share-revocation": lambda store: store.commit(
        StateChange(revoke_shares=((SHARE_ID, T0 + 10**6),))
    ),
    "factory-reset": lambda store: store.factory_reset(),
    "transfer": lambda store: store.commit(
        StateChange(wipe=True, add_keys=(WhitelistEntry(crypto.public_bytes(BUYER), Role.OWNER),))
    ),
    "demote": lambda store: store.commit(
        StateChange(add_keys=(WhitelistEntry(crypto.public_bytes(THIEF), Role.GUEST),))
    ),
    "fast-key-wipe": lambda store: store.commit(StateChange(drop_fast_keys=(THIEF_ID,))),
    "keycard-removal": lambda store: store.remove_keycard(crypto.key_id(CARD)) or None,
}
"""What each removal takes away, and what a rollback would give back."""

RESTORED = {
    "remove-key": lambda store: store.whitelist_entry(THIEF_ID) is not None,
    "revocation": lambda store: not store.is_key_revoked(THIEF_ID),
    "share-revocation": lambda store: not store.share_revoked(SHARE_ID),
    "factory-reset": lambda store: store.whitelist_entry(THIEF_ID) is not None,
    "transfer": lambda store: store.whitelist_entry(OWNER_ID) is not None,
    "demote": lambda store: WhitelistEntry(crypto.public_bytes(THIEF), Role.DRIVER) in store.keys(),
    "fast-key-wipe": lambda store: store.fast_key(THIEF_ID) == FAST_SECRET,
    "keycard-removal": lambda store: len(store.keycards()) == 1,
}


@pytest.fixture
def car(tmp_path: Path) -> Path:
    """A vehicle with an owner, a driver (the thief's phone, with a fast-path
    key), a keycard and nothing revoked."""
    state_dir = tmp_path / "car"
    init_vehicle(state_dir, VIN, wall_clock=lambda: T0)
    with open_store(state_dir, wall_clock=lambda: T0) as store:
        store.add_keys([(OWNER, Role.OWNER), (THIEF, Role.DRIVER)])
        fast_key = ((THIEF_ID, FAST_SECRET),)
        store.commit(StateChange(key_id=THIEF_ID, counter=1, set_fast_keys=fast_key))
        store.add_keycard(CARD)
    return state_dir


@pytest.fixture
def counter_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every write of a rollback counter file, in order."""
    writes: list[Path] = []

    def counting(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        writes.append(path)
        write_atomic(path, data, mode=mode)

    monkeypatch.setattr(monotonic, "write_atomic", counting)
    yield writes


def _open(state_dir: Path, *, read_only: bool = False) -> FlashVehicleStore:
    return open_store(state_dir, read_only=read_only, wall_clock=lambda: T0 + 60)


def _remove(state_dir: Path, removal: Removal) -> tuple[bytes, int, int, int]:
    """Run ``removal`` in one session; (image just before it, bank, tail before,
    tail after)."""
    with _open(state_dir) as store:
        before = (state_dir / STATE_FILE_NAME).read_bytes()
        bank, tail = store.journal.bank, store.journal.tail
        removal(store)
        assert store.journal.bank == bank, "the removal must not compact in this test"
        return before, bank, tail, store.journal.tail


def _assert_rolled_back(state_dir: Path, match: str) -> None:
    """Mount refuses the state directory, for writing and for reading, with one line."""
    path = state_dir / STATE_FILE_NAME
    for read_only in (False, True):
        with pytest.raises(FlashRolledBack, match=match) as info:
            _open(state_dir, read_only=read_only)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{path} was rolled back (")
        assert message.endswith("the key module refuses to run on it")
        assert isinstance(info.value, FlashTampered)


CUT_OR_RESTORED = "its newest records were cut or an older image was restored"


@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_a_saved_image_written_back_after_a_removal_is_refused(car: Path, name: str) -> None:
    before, *_ = _remove(car, REMOVALS[name])
    image = car / STATE_FILE_NAME
    after = image.read_bytes()
    image.write_bytes(before)  # the attacker's saved copy; device.counter is out of reach
    _assert_rolled_back(car, CUT_OR_RESTORED)
    # The saved copy really did hold the authority: without the counter it comes back.
    (car / COUNTER_FILE_NAME).unlink()
    with _open(car, read_only=True) as store:
        assert RESTORED[name](store)
    image.write_bytes(after)


@pytest.mark.parametrize("torn", [False, True], ids=["erased", "torn"])
@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_a_journal_cut_before_a_removal_is_refused(car: Path, name: str, torn: bool) -> None:
    _, bank, tail, end = _remove(car, REMOVALS[name])
    path = car / STATE_FILE_NAME
    image = bytearray(path.read_bytes())
    with _open(car, read_only=True) as store:
        base = store.journal.geometry.bank_address(bank)
        bank_end = base + store.journal.geometry.bank_bytes
    # Erased: the removal's record is gone (a clean end). Torn: its end mark is
    # erased, so it looks like a power cut tore it. Either mounts without the counter.
    cut_from = base + (end - 1 if torn else tail)
    image[cut_from:bank_end] = b"\xff" * (bank_end - cut_from)
    path.write_bytes(bytes(image))
    _assert_rolled_back(car, CUT_OR_RESTORED)


def test_ordinary_commits_after_a_removal_write_no_counter(
    car: Path, counter_writes: list[Path]
) -> None:
    counter = car / COUNTER_FILE_NAME
    with _open(car) as store:
        del counter_writes[:]  # the mount marked the journal's end: one write per boot
        store.remove_key(THIEF_ID)
        assert counter_writes == [counter]
        marked = counter.read_bytes()
        just_after_removal = (car / STATE_FILE_NAME).read_bytes()
        for value in range(2, 40):  # unlocks, locks and everything a session commits
            store.commit(
                StateChange(
                    key_id=OWNER_ID,
                    counter=value,
                    nonce=value.to_bytes(16, "big"),
                    lock_state=LockState.UNLOCKED if value % 2 else LockState.LOCKED,
                    set_fast_keys=((OWNER_ID, bytes([value]) * 32),),
                )
            )
        store.save_backoff_level(3)
        store.correct_clock(T0 + 120)
        store.advance_time_floor()
        store.add_key(BUYER, Role.GUEST)  # adding authority is not a removal either
        assert store.journal.compactions == 0
        assert counter_writes == [counter] and counter.read_bytes() == marked
        last_counter = store.last_counter(OWNER_ID)
    # The bounded window that remains: the ordinary commits since the mark can be
    # rolled back (docs/firmware.md says why that is harmless or bounded), the
    # removal cannot.
    (car / STATE_FILE_NAME).write_bytes(just_after_removal)
    with _open(car) as store:
        assert store.whitelist_entry(THIEF_ID) is None
        assert store.last_counter(OWNER_ID) < last_counter


def test_a_copy_that_diverged_before_the_removal_is_refused(car: Path) -> None:
    """The attacker writes an older image back, the vehicle goes on from it and
    the owner removes the thief's key there; then the attacker writes back a copy
    from the first line of history, which holds more records than the mark but
    not the removal. A length check alone would let that copy through."""
    path = car / STATE_FILE_NAME
    with _open(car) as store:
        older = path.read_bytes()
        for value in range(2, 8):
            store.commit(StateChange(key_id=OWNER_ID, counter=value, nonce=bytes([value]) * 16))
        longer = path.read_bytes()
    path.write_bytes(older)  # accepted: ordinary commits are the bounded window
    _remove(car, REMOVALS["remove-key"])
    path.write_bytes(longer)
    _assert_rolled_back(car, "diverged from this device's history")


def test_a_failed_counter_write_fails_the_removal_and_is_retried(
    car: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal is not acknowledged until the counter marks it; if that write
    fails, the next commit (or the next boot) marks it."""
    path = car / STATE_FILE_NAME
    with _open(car) as store:
        before = path.read_bytes()

        def full_disk(_path: Path, _data: bytes, *, mode: int = 0o600) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(monotonic, "write_atomic", full_disk)
            with pytest.raises(VehicleStateError, match=f"cannot write .*{COUNTER_FILE_NAME}"):
                store.remove_key(THIEF_ID)
        store.commit(StateChange(key_id=OWNER_ID, counter=5, nonce=b"\x05" * 16))
    path.write_bytes(before)
    _assert_rolled_back(car, CUT_OR_RESTORED)


# --- compaction, and the counter's layouts -------------------------------------------------
def test_a_compaction_moves_the_mark_to_the_new_snapshot(car: Path) -> None:
    path = car / STATE_FILE_NAME
    with _open(car) as store:
        older_generation = path.read_bytes()
        generation = store.journal.generation
        value = 1
        while store.journal.generation == generation:
            value += 1
            store.commit(StateChange(key_id=OWNER_ID, counter=value, nonce=bytes(16)))
        floor = RollbackCounter.load(car / COUNTER_FILE_NAME).floor
        assert floor is not None and not floor.pending
        assert (floor.generation, floor.seq) == (generation + 1, store.journal.last_seq)
    path.write_bytes(older_generation)
    _assert_rolled_back(car, "an older image was restored")


def _first_layout(version: int, generation: int) -> bytes:
    """A counter as the firmware before marks wrote it (16 bytes)."""
    return b"PKMC" + version.to_bytes(2, "little") + bytes(2) + generation.to_bytes(8, "little")


def test_the_first_16_byte_counter_is_read_and_replaced_at_the_next_write(car: Path) -> None:
    counter = car / COUNTER_FILE_NAME
    with _open(car, read_only=True) as store:
        generation, version = store.journal.generation, store.journal.version
        end = store.journal.last_seq
    counter.write_bytes(_first_layout(version, 0))
    with _open(car, read_only=True):
        assert len(counter.read_bytes()) == 16  # a read-only open writes nothing
    with _open(car):  # the mount marks the journal's end, in the new layout
        floor = RollbackCounter.load(counter).floor
        assert len(counter.read_bytes()) == COUNTER_SIZE and floor is not None
        assert (floor.version, floor.generation, floor.seq) == (version, generation, end)
    # A 16-byte counter ahead of the image still refuses it, as it always did.
    counter.write_bytes(_first_layout(version, generation + 1))
    _assert_rolled_back(car, "an older image was restored")


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "is corrupt: it does not hold"),
        (lambda raw: raw[:20], "is corrupt: it does not hold"),
        (lambda raw: raw[:6] + (2).to_bytes(2, "little") + raw[8:], "layout 2, newer"),
    ],
    ids=["crc", "short", "newer-layout"],
)
def test_a_damaged_or_newer_counter_is_refused(
    car: Path, damage: Callable[[bytes], bytes], match: str
) -> None:
    counter = car / COUNTER_FILE_NAME
    counter.write_bytes(damage(counter.read_bytes()))
    for read_only in (False, True):
        with pytest.raises(VehicleStateError, match=match) as info:
            _open(car, read_only=read_only)
        assert not isinstance(info.value, FlashTampered) and "\n" not in str(info.value)


def test_the_cli_reports_a_rolled_back_image_in_one_line(
    car: Path, vehicle_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    before, *_ = _remove(car, REMOVALS["remove-key"])
    (car / STATE_FILE_NAME).write_bytes(before)
    for command in ("show", "log"):
        assert vehicle_cli(["vehicle", command, "--state", str(car)]) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "was rolled back" in err and "Traceback" not in err


# --- a compaction cut by the power -------------------------------------------------------------
def _unlock_with_a_fast_key(store: FlashVehicleStore) -> None:
    """A commit of about 140 bytes (more than the bank has left in these tests)."""
    value = store.last_counter(OWNER_ID) + 1
    fast_key = ((OWNER_ID, bytes([value % 256]) * 32),)
    store.commit(
        StateChange(key_id=OWNER_ID, counter=value, nonce=bytes(16), set_fast_keys=fast_key)
    )


def _cut_at_the_header(vehicle: Saved) -> tuple[Saved, bytes]:
    """Compact ``vehicle`` and cut the power while the new bank's header is being
    written: (what the cut leaves, the image the compaction would have left)."""
    dry = FaultInjector()
    store, _ = boot(vehicle, dry)
    _unlock_with_a_fast_key(store)
    completed = store.device.image()
    for cut in range(1, dry.operations + 1):
        store, cell = boot(vehicle, FaultInjector(cut_at=cut))
        with pytest.raises(PowerCut):
            _unlock_with_a_fast_key(store)
        floor = RollbackCounter.open(cell).floor
        if floor is not None and floor.pending:  # the pending landed; the header did not
            return saved(store, cell), completed
    raise AssertionError("the compaction never wrote a pending counter")


def test_an_abandoned_generation_is_never_accepted_again() -> None:
    """A power cut between the pending counter and the header leaves the old
    generation, which the vehicle goes on with; whoever kept the image of the
    new generation (had the header landed) can never bring it back."""
    store, cell = boot((new_image(), None))
    store.add_key(OWNER, Role.OWNER)
    generation = store.journal.generation
    while store.journal.tail < store.journal.geometry.bank_bytes - 100:
        store.advance_time_floor()  # 39 bytes each: the loop never compacts
    assert store.journal.generation == generation
    vehicle = saved(store, cell)

    after_cut, abandoned = _cut_at_the_header(vehicle)
    assert mount(abandoned).journal.generation == generation + 1
    store, cell = boot(after_cut)  # the old generation: this boot abandons the new one
    assert store.journal.generation == generation
    with pytest.raises(FlashRolledBack, match="a compaction this device abandoned"):
        mount(abandoned, counter=RollbackCounter.open(MemoryCell(cell.data)))
    # Even while the next compaction is itself pending, under another generation.
    after_second_cut, _ = _cut_at_the_header(saved(store, cell))
    with pytest.raises(FlashRolledBack, match="a compaction this device abandoned"):
        mount(abandoned, counter=RollbackCounter.open(MemoryCell(after_second_cut[1])))
    store, _ = boot(after_second_cut)  # and the vehicle still runs
    assert store.journal.generation == generation


def test_a_read_only_open_beside_a_compacting_vehicle_is_not_a_rollback(car: Path) -> None:
    """``show`` reads the counter, then the image; a running vehicle may compact in
    between, so the image is of a generation that counter has not seen. It is
    judged again against the counter as it is by then, and mounts."""
    path = car / COUNTER_FILE_NAME
    with _open(car) as running:
        read_first = RollbackCounter.load(path)  # the reader's counter ...
        seen_first = read_first.floor
        generation = running.journal.generation
        value = 1
        while running.journal.generation == generation:
            value += 1
            running.commit(StateChange(key_id=OWNER_ID, counter=value, nonce=bytes(16)))
        image = (car / STATE_FILE_NAME).read_bytes()  # ... then its image
        private_key = running.identity.private_key
    device_key = (car / DEVICE_KEY_FILE_NAME).read_bytes()

    def read_only(counter: RollbackCounter) -> FlashVehicleStore:
        device = FlashDevice.in_memory(image)
        return FlashVehicleStore.mount(
            device, private_key, device_key, read_only=True, counter=counter
        )

    assert read_only(read_first).journal.generation == generation + 1
    # A counter gone by the second look is no reason to accept: fail closed.
    path.unlink()
    with pytest.raises(FlashRolledBack, match="a compaction this device abandoned"):
        read_only(RollbackCounter(FileCell(path), seen_first))
