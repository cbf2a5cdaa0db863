"""The vehicle's store (flash image in a state directory): persistence,
durability, the single-writer lock, and clear errors for missing or corrupt state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flash_testkit import flash_journal, flash_state, legacy_vehicle
from vehicle_testkit import VIN

from protocol import LockState, Role, crypto
from protocol.card import VehicleCard
from protocol.store import SPENT_NONCE_MEMORY, StateChange, WhitelistEntry
from vehicle_sim.flash import device as flash_device
from vehicle_sim.state_schema import StoredState
from vehicle_sim.state_store import (
    COUNTER_FILE_NAME,
    DEVICE_KEY_FILE_NAME,
    IDENTITY_FILE_NAME,
    JSON_STATE_FILE_NAME,
    STATE_FILE_NAME,
    FileVehicleStore,
    VehicleStateBusy,
    VehicleStateError,
    init_vehicle,
    open_store,
)


def _key() -> crypto.PublicKey:
    return crypto.generate_private_key().public_key()


def test_init_creates_a_locked_vehicle_with_a_private_identity(
    card: VehicleCard, state_dir: Path
) -> None:
    assert card.vin == VIN
    identity = state_dir / IDENTITY_FILE_NAME
    if os.name == "posix":
        assert stat.S_IMODE(identity.stat().st_mode) == 0o600
        # The event log's MAC key sits beside it, outside the image, also private.
        assert stat.S_IMODE((state_dir / DEVICE_KEY_FILE_NAME).stat().st_mode) == 0o600
    assert len((state_dir / DEVICE_KEY_FILE_NAME).read_bytes()) == 32
    with open_store(state_dir, read_only=True) as store:
        assert store.card == card
        assert store.identity.vehicle_id == card.vehicle_id
        assert store.lock_state() is LockState.LOCKED
        assert store.keys() == []


def test_init_refuses_to_overwrite_a_vehicle(card: VehicleCard, state_dir: Path) -> None:
    before = (state_dir / IDENTITY_FILE_NAME).read_bytes()
    with pytest.raises(VehicleStateError, match="already holds a vehicle"):
        init_vehicle(state_dir, "2HGCM82633A004352")
    assert (state_dir / IDENTITY_FILE_NAME).read_bytes() == before


def test_init_rejects_a_bad_vin(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid VIN"):
        init_vehicle(tmp_path / "v", "NOT-A-VIN")
    assert not (tmp_path / "v" / STATE_FILE_NAME).exists()


def test_everything_persists_across_reopen(card: VehicleCard, state_dir: Path) -> None:
    owner, guest = _key(), _key()
    with open_store(state_dir) as store:
        owner_entry = store.add_key(owner, Role.OWNER)
        guest_entry = store.add_key(guest, Role.GUEST)
        store.commit(
            StateChange(
                key_id=owner_entry.key_id,
                counter=7,
                nonce=b"\x01" * 16,
                lock_state=LockState.UNLOCKED,
            )
        )
        assert store.remove_key(guest_entry.key_id) == guest_entry
        assert store.remove_key(guest_entry.key_id) is None

    with open_store(state_dir) as store:
        assert store.keys() == [owner_entry]
        assert store.whitelist_entry(owner_entry.key_id) == owner_entry
        assert store.whitelist_entry(guest_entry.key_id) is None
        assert store.last_counter(owner_entry.key_id) == 7
        assert store.last_counter(guest_entry.key_id) == 0
        assert store.nonce_spent(b"\x01" * 16) and not store.nonce_spent(b"\x02" * 16)
        assert store.lock_state() is LockState.UNLOCKED
        assert store.card == card


def test_add_key_changes_the_role_of_a_known_key(store: FileVehicleStore) -> None:
    key = _key()
    store.add_key(key, Role.GUEST)
    entry = store.add_key(key, Role.DRIVER)
    assert store.keys() == [entry] and entry.role is Role.DRIVER


def test_spent_nonces_are_bounded(store: FileVehicleStore, state_dir: Path) -> None:
    key_id = store.add_key(_key(), Role.OWNER).key_id
    nonces = [i.to_bytes(16, "big") for i in range(SPENT_NONCE_MEMORY + 5)]
    for counter, nonce in enumerate(nonces, start=1):
        store.commit(
            StateChange(key_id=key_id, counter=counter, nonce=nonce, lock_state=LockState.LOCKED)
        )
    store.close()
    with open_store(state_dir, read_only=True) as reopened:
        assert not reopened.nonce_spent(nonces[0])
        assert all(reopened.nonce_spent(n) for n in nonces[-SPENT_NONCE_MEMORY:])
    saved = flash_state(state_dir).spent_nonces
    assert list(saved) == nonces[-SPENT_NONCE_MEMORY:]


# --- durability ---------------------------------------------------------------------
def test_writes_reach_the_image_and_are_fsynced_before_a_commit_returns(
    store: FileVehicleStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_pwrite = os.fsync, os.pwrite

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append("pwrite")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(flash_device.os, "fsync", fsync)
    monkeypatch.setattr(flash_device.os, "pwrite", pwrite)
    entry = store.add_key(_key(), Role.OWNER)
    assert calls == ["pwrite", "fsync"]  # one record programmed, then synced
    # What a fresh reader of the file sees is the new state.
    assert entry.key_id in flash_state(state_dir).whitelist


def test_a_failed_write_changes_nothing(
    store: FileVehicleStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = store.add_key(_key(), Role.OWNER).key_id
    before = (state_dir / STATE_FILE_NAME).read_bytes()

    def broken_pwrite(_fd: int, _data: bytes, _offset: int) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(flash_device.os, "pwrite", broken_pwrite)
        with pytest.raises(VehicleStateError, match="No space left on device"):
            store.commit(
                StateChange(
                    key_id=key_id, counter=1, nonce=b"\x05" * 16, lock_state=LockState.UNLOCKED
                )
            )
    # Neither the image nor the store's view moved, and nothing else was created.
    assert (state_dir / STATE_FILE_NAME).read_bytes() == before
    assert store.lock_state() is LockState.LOCKED and store.last_counter(key_id) == 0
    assert not store.nonce_spent(b"\x05" * 16)
    assert sorted(p.name for p in state_dir.iterdir()) == [
        COUNTER_FILE_NAME,  # the rollback counter, created by the first open for writing
        DEVICE_KEY_FILE_NAME,
        IDENTITY_FILE_NAME,
        STATE_FILE_NAME,
        "vehicle.lock",
    ]
    # Once the disk is back, the same change commits and persists.
    store.commit(
        StateChange(key_id=key_id, counter=1, nonce=b"\x05" * 16, lock_state=LockState.UNLOCKED)
    )
    store.close()
    with open_store(state_dir, read_only=True) as reopened:
        assert reopened.last_counter(key_id) == 1 and reopened.nonce_spent(b"\x05" * 16)


# --- single writer ------------------------------------------------------------------
def test_second_writer_is_refused_until_the_first_closes(
    store: FileVehicleStore, state_dir: Path
) -> None:
    with pytest.raises(VehicleStateBusy, match=rf"running vehicle \(pid {os.getpid()}\)") as info:
        open_store(state_dir)
    assert info.value.pid == os.getpid() and "stop it first" in str(info.value)
    with pytest.raises(VehicleStateBusy):
        init_vehicle(state_dir, VIN)
    # Reading is always allowed.
    with open_store(state_dir, read_only=True) as reader:
        assert reader.card == store.card
        with pytest.raises(VehicleStateError, match="not open for writing"):
            reader.add_key(_key(), Role.OWNER)
    store.close()
    with open_store(state_dir):
        pass


_HOLDER = textwrap.dedent(
    """
    import sys
    from vehicle_sim.state_store import open_store
    store = open_store(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
    """
)


@pytest.fixture
def holder(card: VehicleCard, state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the vehicle's state open for writing."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_writer_in_another_process_blocks_and_releases(
    holder: subprocess.Popen[str], state_dir: Path
) -> None:
    with pytest.raises(VehicleStateBusy, match=rf"pid {holder.pid}\)"):
        open_store(state_dir)
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    with open_store(state_dir):  # the OS dropped the lock with the process
        pass


def test_lock_of_a_killed_writer_does_not_linger(
    holder: subprocess.Popen[str], state_dir: Path
) -> None:
    holder.kill()
    holder.wait(timeout=10)
    with open_store(state_dir):
        pass


# --- missing and corrupt state --------------------------------------------------------------
def test_missing_vehicle(tmp_path: Path) -> None:
    with pytest.raises(VehicleStateError, match=r"no vehicle in .*phonekey vehicle init"):
        open_store(tmp_path / "nothing")


def _flip(offset: int) -> Callable[[bytes, Path], bytes]:
    def mangle(data: bytes, _state_dir: Path) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]

    return mangle


def _flip_last_record(data: bytes, state_dir: Path) -> bytes:
    journal = flash_journal(state_dir)
    end = journal.geometry.bank_address(journal.bank) + journal.tail
    return _flip(end - 8)(data, state_dir)


_BANK0 = 4096  # page 1: the first journal bank, current on a new vehicle
_CORRUPTIONS: dict[str, tuple[str, Callable[[bytes, Path], bytes]]] = {
    "empty": (STATE_FILE_NAME, lambda d, _: b""),
    "not-whole-pages": (STATE_FILE_NAME, lambda d, _: d[:-100]),
    "truncated": (STATE_FILE_NAME, lambda d, _: d[:-4096]),
    "zeros": (STATE_FILE_NAME, lambda d, _: bytes(len(d))),
    "erased": (STATE_FILE_NAME, lambda d, _: b"\xff" * len(d)),
    "superblock": (STATE_FILE_NAME, _flip(12)),
    "bank-header": (STATE_FILE_NAME, _flip(_BANK0 + 6)),
    "snapshot-record": (STATE_FILE_NAME, _flip(_BANK0 + 40)),
    "last-record": (STATE_FILE_NAME, _flip_last_record),
    "pem-garbage": (IDENTITY_FILE_NAME, lambda d, _: b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
    "pem-empty": (IDENTITY_FILE_NAME, lambda d, _: b""),
    "device-key": (DEVICE_KEY_FILE_NAME, lambda d, _: d[:5]),
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_corrupt_state_is_a_clear_error(
    card: VehicleCard, state_dir: Path, corruption: str
) -> None:
    with open_store(state_dir) as store:
        store.add_key(_key(), Role.OWNER)
    name, mangle = _CORRUPTIONS[corruption]
    path = state_dir / name
    path.write_bytes(mangle(path.read_bytes(), state_dir))
    damaged = path.read_bytes()

    for read_only in (False, True, False):  # the failed writer open released its lock
        with pytest.raises(VehicleStateError, match=f"{name} is corrupt") as info:
            open_store(state_dir, read_only=read_only)
        assert not isinstance(info.value, VehicleStateBusy)
        assert "\n" not in str(info.value)
    assert path.read_bytes() == damaged  # a failed open never "repairs" by dropping state


_JSON_CORRUPTIONS = {
    "not-json": lambda d: b"{\x00 nope",
    "truncated": lambda d: json.dumps(d).encode()[:40],
    "not-an-object": lambda d: b"[1, 2]",
    "no-vin": lambda d: _dump({k: v for k, v in d.items() if k != "vin"}),
    "bad-lock": lambda d: _dump({**d, "lock_state": "ajar"}),
    "bad-format": lambda d: _dump({**d, "format": 99}),
    "bad-key": lambda d: _dump(
        {**d, "whitelist": [{"public_key": "05" + "11" * 32, "role": "owner"}]}
    ),
    "bad-role": lambda d: _dump(
        {**d, "whitelist": [{"public_key": d["whitelist"][0]["public_key"], "role": "boss"}]}
    ),
    "bad-counter": lambda d: _dump({**d, "counters": {"ab": 1}}),
    "bool-counter": lambda d: _dump({**d, "counters": {"00" * 16: True}}),
    "bad-nonce": lambda d: _dump({**d, "spent_nonces": ["xyz"]}),
}


def _dump(document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize("corruption", sorted(_JSON_CORRUPTIONS))
def test_a_corrupt_json_state_to_migrate_is_a_clear_error(state_dir: Path, corruption: str) -> None:
    legacy_vehicle(state_dir, StoredState(vin=VIN, whitelist=_one_entry()))
    path = state_dir / JSON_STATE_FILE_NAME
    path.write_bytes(_JSON_CORRUPTIONS[corruption](json.loads(path.read_text())))
    for read_only in (False, True, False):
        with pytest.raises(VehicleStateError, match=f"{JSON_STATE_FILE_NAME} is corrupt") as info:
            open_store(state_dir, read_only=read_only)
        assert "\n" not in str(info.value)
    # Nothing was migrated: the JSON stays where it was and no image appeared.
    assert path.is_file() and not (state_dir / STATE_FILE_NAME).exists()


def _one_entry() -> dict[bytes, WhitelistEntry]:
    entry = WhitelistEntry(crypto.public_bytes(_key()), Role.OWNER)
    return {entry.key_id: entry}


def test_missing_identity_is_a_clear_error(card: VehicleCard, state_dir: Path) -> None:
    (state_dir / IDENTITY_FILE_NAME).unlink()
    with pytest.raises(VehicleStateError, match=r"identity\.pem is missing"):
        open_store(state_dir)
