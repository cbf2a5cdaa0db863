"""The vehicle's store as protocol's CredentialTrust: issuer keys, the revocation
list and the vehicle's clock, persisted on the flash image like the rest of the
state, and the migration of JSON state files (formats 1 and 2) to flash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flash_testkit import flash_state, legacy_vehicle
from vehicle_testkit import VIN

from protocol import LockState, Role, crypto
from protocol.card import VehicleCard
from protocol.credentials import revocation_id
from protocol.store import StateChange, WhitelistEntry
from vehicle_sim.flash import device as flash_device
from vehicle_sim.flash.records import FlashState
from vehicle_sim.state_schema import MAX_ISSUERS, StoredState
from vehicle_sim.state_store import (
    JSON_STATE_FILE_NAME,
    MIGRATED_JSON_FILE_NAME,
    STATE_FILE_NAME,
    StaleRevocations,
    TooManyIssuers,
    VehicleStateError,
    init_vehicle,
    open_store,
)

T0 = 1_750_000_000  # a fixed "now" for the wall clock
HOUR = 3600


class WallClock:
    """A wall clock the test sets (``time.time`` stand-in)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _key() -> crypto.PublicKey:
    return crypto.generate_private_key().public_key()


def _key_id(n: int) -> bytes:
    """An opaque 16-byte list entry (the store keeps revocation ids as given)."""
    return n.to_bytes(crypto.KEY_ID_LEN, "big")


def _document(state_dir: Path) -> dict[str, object]:
    """A legacy directory's vehicle.json."""
    document = json.loads((state_dir / JSON_STATE_FILE_NAME).read_text())
    assert isinstance(document, dict)
    return document


def _saved(state_dir: Path) -> FlashState:
    """What the flash image holds (read from the file, not through the store)."""
    return flash_state(state_dir)


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def new_vehicle(state_dir: Path, wall: WallClock) -> VehicleCard:
    return init_vehicle(state_dir, VIN, wall_clock=wall)


def test_a_new_vehicle_trusts_nobody_and_starts_its_floor_now(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert dict(store.issuer_keys()) == {}
        assert store.revocation_version() == 0 and store.revoked_count() == 0
        assert store.time_floor == T0 and store.now() == T0
    saved = _saved(state_dir)
    assert saved.issuers == {}
    assert (saved.revocation_version, saved.revoked) == (0, set())
    assert (saved.time_floor, saved.clock_offset) == (T0, 0)


def test_init_with_an_issuer(state_dir: Path) -> None:
    issuer = _key()
    init_vehicle(state_dir, VIN, issuers=[issuer])
    with open_store(state_dir, read_only=True) as store:
        assert dict(store.issuer_keys()) == {crypto.key_id(issuer): issuer}


def test_init_refuses_too_many_issuers(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="at most 2 issuer keys"):
        init_vehicle(state_dir, VIN, issuers=[_key() for _ in range(MAX_ISSUERS + 1)])
    assert not (state_dir / STATE_FILE_NAME).exists()


def test_issuers_revocations_and_clock_persist_across_reopen(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    first, second = _key(), _key()
    with open_store(state_dir, wall_clock=wall) as store:
        assert store.add_issuer(first)
        assert not store.add_issuer(first)  # already trusted: nothing changes
        assert store.add_issuer(second)
        store.apply_revocations(3, (_key_id(2), _key_id(1)))
        store.apply_revocations(4, (_key_id(3),))
        store.correct_clock(T0 + 2 * HOUR)

    wall.now += 10
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert dict(store.issuer_keys()) == {
            crypto.key_id(first): first,
            crypto.key_id(second): second,
        }
        assert list(store.issuer_keys()) == [crypto.key_id(first), crypto.key_id(second)]
        assert store.revocation_version() == 4
        assert all(store.is_revoked(_key_id(n)) for n in (1, 2, 3))
        assert not store.is_revoked(_key_id(4))
        assert store.time_floor == T0 + 2 * HOUR
        assert store.now() == T0 + 2 * HOUR + 10  # the offset persisted too
    saved = _saved(state_dir)
    assert saved.revocation_version == 4
    assert saved.revoked == {_key_id(n) for n in (1, 2, 3)}


def test_a_third_issuer_is_refused(new_vehicle: VehicleCard, state_dir: Path) -> None:
    with open_store(state_dir) as store:
        for _ in range(MAX_ISSUERS):
            store.add_issuer(_key())
        before = dict(store.issuer_keys())
        with pytest.raises(TooManyIssuers, match="already trusts 2 issuer keys"):
            store.add_issuer(_key())
        assert dict(store.issuer_keys()) == before


def test_a_read_only_store_refuses_every_trust_change(
    new_vehicle: VehicleCard, state_dir: Path
) -> None:
    with open_store(state_dir, read_only=True) as store:
        with pytest.raises(VehicleStateError, match="not open for writing"):
            store.add_issuer(_key())
        with pytest.raises(VehicleStateError, match="not open for writing"):
            store.apply_revocations(1, (_key_id(1),))
        with pytest.raises(VehicleStateError, match="not open for writing"):
            store.correct_clock(T0)
        assert store.revocation_version() == 0


# --- the revocation version -------------------------------------------------------------
def test_revocation_version_never_goes_backwards(new_vehicle: VehicleCard, state_dir: Path) -> None:
    with open_store(state_dir) as store:
        store.apply_revocations(5, (_key_id(1),))
        for stale in (5, 4, 0):
            with pytest.raises(StaleRevocations, match="not above the held version 5"):
                store.apply_revocations(stale, (_key_id(2),))
        assert store.revocation_version() == 5 and not store.is_revoked(_key_id(2))
        with pytest.raises(ValueError, match="16 bytes"):
            store.apply_revocations(6, (b"short",))
        assert store.revocation_version() == 5
        store.apply_revocations(6, ())  # moving on with nothing new is fine
    with open_store(state_dir, read_only=True) as store:
        assert store.revocation_version() == 6 and not store.is_revoked(_key_id(2))


def test_ten_thousand_revocations_load_and_check(new_vehicle: VehicleCard, state_dir: Path) -> None:
    revoked = [crypto.key_id(_key()) for _ in range(10)] + [
        _key_id(n * 7919) for n in range(1, 9_991)
    ]
    with open_store(state_dir) as store:
        store.apply_revocations(1, tuple(revoked))
        # A command after that still commits, and its record does not carry the list.
        writes = store.stats().writes
        store.commit(
            StateChange(
                key_id=_key_id(1), counter=1, nonce=b"\x01" * 16, lock_state=LockState.UNLOCKED
            )
        )
        assert store.stats().writes - writes <= 2  # one record: one or two page programs

    assert _saved(state_dir).revoked == set(revoked)

    with open_store(state_dir, read_only=True) as store:
        assert store.revoked_count() == 10_000
        assert all(store.is_revoked(key_id) for key_id in revoked)
        assert not any(store.is_revoked(_key_id(n * 7919 + 1)) for n in range(10_000))


# --- the clock ----------------------------------------------------------------------------
def test_now_follows_the_wall_clock_above_the_floor(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    with open_store(state_dir, wall_clock=wall) as store:
        wall.now = T0 + 100.9
        assert store.now() == T0 + 100  # whole seconds


def test_a_clock_set_back_never_reads_below_the_floor(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    owner = _key()
    with open_store(state_dir, wall_clock=wall) as store:
        key_id = store.add_key(owner, Role.OWNER).key_id
        wall.now = T0 + 2 * HOUR
        store.commit(
            StateChange(key_id=key_id, counter=1, nonce=b"\x01" * 16, lock_state=LockState.UNLOCKED)
        )
        assert store.time_floor == T0 + 2 * HOUR  # every command moves the floor

        wall.now -= HOUR  # someone sets the clock back an hour
        assert store.now() == T0 + 2 * HOUR

    # ... and across a restart (a power cycle with a bad RTC).
    with open_store(state_dir, wall_clock=wall) as store:
        assert store.now() == T0 + 2 * HOUR
        wall.now = 0
        assert store.now() == T0 + 2 * HOUR
        wall.now = T0 + 3 * HOUR
        assert store.now() == T0 + 3 * HOUR


def test_opening_for_writing_moves_the_floor_durably(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    wall.now = T0 + 5 * HOUR
    with open_store(state_dir, read_only=True, wall_clock=wall) as reader:
        assert reader.time_floor == T0  # reading writes nothing
    with open_store(state_dir, wall_clock=wall) as store:
        assert store.time_floor == T0 + 5 * HOUR
    saved = _saved(state_dir)
    assert (saved.time_floor, saved.clock_offset) == (T0 + 5 * HOUR, 0)


def test_correct_clock_sets_offset_and_floor_even_backwards(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    with open_store(state_dir, wall_clock=wall) as store:
        wall.now = T0 + 10 * HOUR  # a clock that ran fast
        store.advance_time_floor()
        assert store.time_floor == T0 + 10 * HOUR

        store.correct_clock(T0 + HOUR)  # the issuer says it is earlier
        assert store.now() == T0 + HOUR and store.time_floor == T0 + HOUR
        wall.now += 60
        assert store.now() == T0 + HOUR + 60

        store.correct_clock(T0 + 20 * HOUR)  # or later
        assert store.now() == T0 + 20 * HOUR
        wall.now -= HOUR
        assert store.now() == T0 + 20 * HOUR  # the floor holds
        with pytest.raises(ValueError, match="out of range"):
            store.correct_clock(-1)
    saved = _saved(state_dir)
    assert (saved.time_floor, saved.clock_offset) == (T0 + 20 * HOUR, 20 * HOUR - (10 * HOUR + 60))


# --- revoked whitelisted keys ------------------------------------------------------------
def test_a_revoked_whitelisted_key_is_not_whitelisted(
    new_vehicle: VehicleCard, state_dir: Path
) -> None:
    stolen, kept = _key(), _key()
    other_vehicle = crypto.key_id(_key())
    with open_store(state_dir) as store:
        stolen_entry = store.add_key(stolen, Role.OWNER)
        kept_entry = store.add_key(kept, Role.DRIVER)
        stolen_here = revocation_id(new_vehicle.vehicle_id, stolen_entry.key_id)
        # The kept key is revoked on another vehicle only, and its raw key id
        # (the old issuer-wide form) is no entry: neither touches this vehicle.
        kept_elsewhere = revocation_id(other_vehicle, kept_entry.key_id)
        store.apply_revocations(1, (stolen_here, kept_elsewhere, kept_entry.key_id))
        assert store.is_revoked(stolen_here) and store.is_key_revoked(stolen_entry.key_id)
        assert not store.is_key_revoked(kept_entry.key_id)
        assert store.whitelist_entry(stolen_entry.key_id) is None
        assert store.whitelist_entry(kept_entry.key_id) == kept_entry
    with open_store(state_dir, read_only=True) as store:
        assert store.whitelist_entry(stolen_entry.key_id) is None
        assert store.whitelist_entry(kept_entry.key_id) == kept_entry
        # Still listed, so `show` can tell the owner about it.
        assert stolen_entry in store.keys()


# --- format migration and corruption -----------------------------------------------------
def _as_format_1(document: dict[str, object]) -> dict[str, object]:
    old = {k: v for k, v in document.items() if k not in ("issuers", "revocations", "time")}
    return {**old, "format": 1}


def test_a_format_1_json_state_is_read_and_migrated_to_flash(
    state_dir: Path, wall: WallClock
) -> None:
    owner = _key()
    entry = WhitelistEntry(crypto.public_bytes(owner), Role.OWNER)
    legacy = StoredState(
        vin=VIN,
        whitelist={entry.key_id: entry},
        counters={entry.key_id: 9},
        lock_state=LockState.UNLOCKED,
    )
    legacy.spent_nonces.append(b"\x02" * 16)
    legacy_vehicle(state_dir, legacy)
    path = state_dir / JSON_STATE_FILE_NAME
    path.write_text(json.dumps(_as_format_1(_document(state_dir)), indent=2))
    original = path.read_bytes()

    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert store.whitelist_entry(entry.key_id) == entry
        assert store.last_counter(entry.key_id) == 9 and store.nonce_spent(b"\x02" * 16)
        assert store.lock_state() is LockState.UNLOCKED
        assert dict(store.issuer_keys()) == {} and store.revocation_version() == 0
        assert store.time_floor == 0 and store.now() == T0
    assert path.read_bytes() == original  # reading changed nothing
    assert not (state_dir / STATE_FILE_NAME).exists()

    wall.now = T0 + 60
    with open_store(state_dir, wall_clock=wall) as store:
        assert store.last_counter(entry.key_id) == 9
    # Migrated: the image holds everything, the JSON is kept aside, renamed.
    assert not path.exists()
    assert (state_dir / MIGRATED_JSON_FILE_NAME).read_bytes() == original
    saved = _saved(state_dir)
    assert saved.whitelist == {entry.key_id: entry} and saved.counters == {entry.key_id: 9}
    assert list(saved.spent_nonces) == [b"\x02" * 16]
    assert saved.lock_state is LockState.UNLOCKED
    assert saved.issuers == {} and (saved.revocation_version, saved.revoked) == (0, set())
    assert (saved.time_floor, saved.clock_offset) == (T0 + 60, 0)
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert store.whitelist_entry(entry.key_id) == entry


def test_a_format_2_json_state_migrates_with_its_trust_state(
    state_dir: Path, wall: WallClock
) -> None:
    issuer = _key()
    legacy = StoredState(
        vin=VIN,
        issuers={crypto.key_id(issuer): issuer},
        revocation_version=7,
        revoked=frozenset({_key_id(1), _key_id(2)}),
        time_floor=T0 + HOUR,
        clock_offset=30,
    )
    legacy_vehicle(state_dir, legacy)
    with open_store(state_dir, wall_clock=wall) as store:
        assert dict(store.issuer_keys()) == {crypto.key_id(issuer): issuer}
        assert store.revocation_version() == 7 and store.revoked_count() == 2
        assert store.time_floor == T0 + HOUR and store.now() == T0 + HOUR
    saved = _saved(state_dir)
    assert saved.revoked == {_key_id(1), _key_id(2)} and saved.clock_offset == 30


def test_a_migration_cut_before_the_rename_finishes_on_the_next_open(
    state_dir: Path, wall: WallClock
) -> None:
    """The image is complete before the JSON is renamed; after a crash in
    between, the next open uses the image (never rebuilds over it) and
    finishes the rename."""
    legacy_vehicle(state_dir, StoredState(vin=VIN, lock_state=LockState.UNLOCKED))
    with open_store(state_dir, wall_clock=wall) as store:
        store.commit(StateChange(lock_state=LockState.LOCKED))
    # The directory as a crash right before the rename leaves it (with a later
    # change on the image that the JSON does not have).
    (state_dir / MIGRATED_JSON_FILE_NAME).rename(state_dir / JSON_STATE_FILE_NAME)
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert store.lock_state() is LockState.LOCKED
    with open_store(state_dir, wall_clock=wall) as store:
        assert store.lock_state() is LockState.LOCKED
    assert not (state_dir / JSON_STATE_FILE_NAME).exists()
    assert (state_dir / MIGRATED_JSON_FILE_NAME).is_file()


def _issuer_document(d: dict[str, object]) -> dict[str, object]:
    return {**d, "issuers": [{"public_key": crypto.public_bytes(_key()).hex()}]}


_CORRUPTIONS = {
    "format-2-without-issuers": lambda d: {k: v for k, v in d.items() if k != "issuers"},
    "issuer-not-a-point": lambda d: {**d, "issuers": [{"public_key": "05" + "11" * 32}]},
    "issuer-not-an-object": lambda d: {**d, "issuers": ["02" + "11" * 32]},
    "repeated-issuer": lambda d: {**d, "issuers": _issuer_document(d)["issuers"] * 2},
    "three-issuers": lambda d: {
        **d,
        "issuers": [{"public_key": crypto.public_bytes(_key()).hex()} for _ in range(3)],
    },
    "negative-version": lambda d: {**d, "revocations": {"version": -1, "revoked": []}},
    "bool-version": lambda d: {**d, "revocations": {"version": True, "revoked": []}},
    "short-revoked-id": lambda d: {**d, "revocations": {"version": 1, "revoked": ["abcd"]}},
    "unsorted-revoked": lambda d: {
        **d,
        "revocations": {"version": 1, "revoked": [_key_id(2).hex(), _key_id(1).hex()]},
    },
    "repeated-revoked": lambda d: {
        **d,
        "revocations": {"version": 1, "revoked": [_key_id(1).hex()] * 2},
    },
    "no-time": lambda d: {k: v for k, v in d.items() if k != "time"},
    "float-floor": lambda d: {**d, "time": {"floor": 1.5, "offset": 0}},
    "no-offset": lambda d: {**d, "time": {"floor": 1}},
    "bool-format": lambda d: {**d, "format": True},
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_corrupt_json_trust_state_is_a_clear_error(state_dir: Path, corruption: str) -> None:
    legacy_vehicle(state_dir, StoredState(vin=VIN))
    document = _document(state_dir)
    (state_dir / JSON_STATE_FILE_NAME).write_text(json.dumps(_CORRUPTIONS[corruption](document)))
    for read_only in (False, True):
        with pytest.raises(VehicleStateError, match=f"{JSON_STATE_FILE_NAME} is corrupt") as info:
            open_store(state_dir, read_only=read_only)
        assert "\n" not in str(info.value)
    assert not (state_dir / STATE_FILE_NAME).exists()  # nothing migrated


def test_a_failed_startup_write_releases_the_lock(
    new_vehicle: VehicleCard, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(_fd: int, _data: bytes, _offset: int) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(flash_device.os, "pwrite", full_disk)
        with pytest.raises(VehicleStateError, match="No space left on device"):
            open_store(state_dir)
    with open_store(state_dir):  # not left locked
        pass


def test_issuer_rotation_persists_and_keeps_the_signer(
    new_vehicle: VehicleCard, state_dir: Path, wall: WallClock
) -> None:
    old, new, newer = _key(), _key(), _key()
    old_id, new_id, newer_id = (crypto.key_id(k) for k in (old, new, newer))
    with open_store(state_dir, wall_clock=wall) as store:
        store.add_issuer(old)
        store.rotate_issuer(old_id, new)
        store.rotate_issuer(old_id, new)  # already trusted: a no-op
        assert dict(store.issuer_keys()) == {new_id: new, old_id: old}
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert dict(store.issuer_keys()) == {new_id: new, old_id: old}
        assert list(store.issuer_keys()) == [new_id, old_id]
    assert list(_saved(state_dir).issuers) == [new_id, old_id]

    with open_store(state_dir, wall_clock=wall) as store:
        # the next rotation keeps its signer and the new key; the oldest goes
        store.rotate_issuer(new_id, newer)
    with open_store(state_dir, read_only=True, wall_clock=wall) as store:
        assert dict(store.issuer_keys()) == {newer_id: newer, new_id: new}


def test_issuer_rotation_refusals(new_vehicle: VehicleCard, state_dir: Path) -> None:
    trusted, other = _key(), _key()
    with open_store(state_dir) as store:
        store.add_issuer(trusted)
        with pytest.raises(KeyError):
            store.rotate_issuer(crypto.key_id(other), _key())
        assert list(store.issuer_keys()) == [crypto.key_id(trusted)]
    with open_store(state_dir, read_only=True) as store:
        with pytest.raises(VehicleStateError, match="not open for writing"):
            store.rotate_issuer(crypto.key_id(trusted), _key())
