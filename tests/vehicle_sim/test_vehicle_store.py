"""FileVehicleStore: persistence, durability, the single-writer lock, and clear
errors for missing or corrupt state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VIN

from protocol import LockState, Role, crypto
from protocol.card import VehicleCard
from protocol.store import SPENT_NONCE_MEMORY, StateChange
from vehicle_sim import atomic_file
from vehicle_sim.state_store import (
    IDENTITY_FILE_NAME,
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
    saved = json.loads((state_dir / STATE_FILE_NAME).read_text())
    assert len(saved["spent_nonces"]) == SPENT_NONCE_MEMORY


# --- durability ---------------------------------------------------------------------
def test_writes_are_fsynced_and_renamed_into_place(
    store: FileVehicleStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("dir-fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file-fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_file.os, "fsync", fsync)
    monkeypatch.setattr(atomic_file.os, "replace", replace)
    store.add_key(_key(), Role.OWNER)
    expected = ["file-fsync", "replace"] + (["dir-fsync"] if os.name == "posix" else [])
    assert calls == expected


def test_a_failed_write_changes_nothing(
    store: FileVehicleStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = store.add_key(_key(), Role.OWNER).key_id
    before = (state_dir / STATE_FILE_NAME).read_bytes()

    def broken_replace(_src: str | Path, _dst: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_file.os, "replace", broken_replace)
    with pytest.raises(VehicleStateError, match="No space left on device"):
        store.commit(
            StateChange(key_id=key_id, counter=1, nonce=b"\x05" * 16, lock_state=LockState.UNLOCKED)
        )
    # Neither the file nor the store's view moved, and no temp file is left behind.
    assert (state_dir / STATE_FILE_NAME).read_bytes() == before
    assert store.lock_state() is LockState.LOCKED and store.last_counter(key_id) == 0
    assert not store.nonce_spent(b"\x05" * 16)
    assert sorted(p.name for p in state_dir.iterdir()) == [
        IDENTITY_FILE_NAME,
        STATE_FILE_NAME,
        "vehicle.lock",
    ]


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


_CORRUPTIONS = {
    "not-json": (STATE_FILE_NAME, lambda d: b"{\x00 nope"),
    "truncated": (STATE_FILE_NAME, lambda d: json.dumps(d).encode()[:40]),
    "not-an-object": (STATE_FILE_NAME, lambda d: b"[1, 2]"),
    "no-vin": (STATE_FILE_NAME, lambda d: _dump({k: v for k, v in d.items() if k != "vin"})),
    "bad-lock": (STATE_FILE_NAME, lambda d: _dump({**d, "lock_state": "ajar"})),
    "bad-format": (STATE_FILE_NAME, lambda d: _dump({**d, "format": 99})),
    "bad-key": (
        STATE_FILE_NAME,
        lambda d: _dump({**d, "whitelist": [{"public_key": "05" + "11" * 32, "role": "owner"}]}),
    ),
    "bad-role": (
        STATE_FILE_NAME,
        lambda d: _dump(
            {**d, "whitelist": [{"public_key": d["whitelist"][0]["public_key"], "role": "boss"}]}
        ),
    ),
    "bad-counter": (STATE_FILE_NAME, lambda d: _dump({**d, "counters": {"ab": 1}})),
    "bool-counter": (STATE_FILE_NAME, lambda d: _dump({**d, "counters": {"00" * 16: True}})),
    "bad-nonce": (STATE_FILE_NAME, lambda d: _dump({**d, "spent_nonces": ["xyz"]})),
    "pem-garbage": (IDENTITY_FILE_NAME, lambda d: b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
    "pem-empty": (IDENTITY_FILE_NAME, lambda d: b""),
}


def _dump(document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_corrupt_state_is_a_clear_error(
    card: VehicleCard, state_dir: Path, corruption: str
) -> None:
    with open_store(state_dir) as store:
        store.add_key(_key(), Role.OWNER)
    name, mangle = _CORRUPTIONS[corruption]
    document = json.loads((state_dir / STATE_FILE_NAME).read_text())
    (state_dir / name).write_bytes(mangle(document))

    for read_only in (False, True, False):  # the failed writer open released its lock
        with pytest.raises(VehicleStateError, match=f"{name} is corrupt") as info:
            open_store(state_dir, read_only=read_only)
        assert not isinstance(info.value, VehicleStateBusy)
        assert "\n" not in str(info.value)


def test_missing_identity_is_a_clear_error(card: VehicleCard, state_dir: Path) -> None:
    (state_dir / IDENTITY_FILE_NAME).unlink()
    with pytest.raises(VehicleStateError, match=r"identity\.pem is missing"):
        open_store(state_dir)
