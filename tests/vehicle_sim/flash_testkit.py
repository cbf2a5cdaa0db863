"""Shared helpers for the flash store tests (imported by name; not conftest)."""

from __future__ import annotations

from pathlib import Path

from protocol import crypto
from vehicle_sim.atomic_file import write_atomic
from vehicle_sim.flash.device import FlashDevice
from vehicle_sim.flash.journal import Journal
from vehicle_sim.flash.records import FlashState
from vehicle_sim.state_schema import StoredState, dump_state
from vehicle_sim.state_store import IDENTITY_FILE_NAME, JSON_STATE_FILE_NAME, STATE_FILE_NAME


def flash_state(state_dir: Path) -> FlashState:
    """What the image on disk holds, read straight from the flash (no store)."""
    device = FlashDevice.open_file(state_dir / STATE_FILE_NAME, writable=False)
    return Journal.mount(device).state


def flash_journal(state_dir: Path) -> Journal:
    return Journal.mount(FlashDevice.open_file(state_dir / STATE_FILE_NAME, writable=False))


def legacy_vehicle(state_dir: Path, state: StoredState) -> crypto.PrivateKey:
    """A state directory as the JSON store wrote it (before flash)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    key = crypto.generate_private_key()
    write_atomic(state_dir / IDENTITY_FILE_NAME, crypto.private_key_to_pem(key), mode=0o600)
    write_atomic(state_dir / JSON_STATE_FILE_NAME, dump_state(state))
    return key
