"""Migrations: older flash formats, and the JSON state directory before flash.

``upgrade_state`` is the hook for flash format versions: a bank written in an
older format is replayed and then upgraded here; the journal marks itself for
compaction, so the next commit rewrites the whole state in the current
format (atomically, like any compaction).

Format 1 -> 2 (records and bank headers gain a MAC, see ``auth``): the state
is the same; only its encoding changes, so the step is the identity and the
compaction does the work. A format 1 image carries no MACs, so it cannot be
verified: the migration trusts it once, as a firmware update trusts the flash
it finds, and everything written after it is authenticated. A format 1 bank
found next to a format 2 one, or after the device's rollback counter records
format 2 (``monotonic``), is a downgrade and refused.

Format 2 -> 3 (fast-path secrets wrapped at rest, see ``keywrap``): again the
state in RAM is the same (replay reads format 2's secrets in the clear, as
format 3's are after unwrapping), so the step is the identity; the
compaction writes them wrapped, and then erases the old bank, which held
them in the clear (``journal``, "Secrecy"). ``open_store`` commits at every
writable open (the time floor), so a format 1 or 2 image is rewritten at its
first writable open; a read-only open leaves it as it is. The compaction
advances the rollback counter to format 3, after which a format 1 or 2 image
(or bank newer than a format 3 one) is a downgrade and refused.

``state_from_json`` turns a ``vehicle.json`` (formats 1 and 2, loaded and
validated by ``vehicle_sim.state_schema``) into the flash state.
"""

from __future__ import annotations

from collections.abc import Callable

from ..state_schema import StoredState
from .layout import FLASH_FORMAT_VERSION, FlashCorrupt
from .records import FlashState


def _same_state(state: FlashState) -> FlashState:
    return state


_UPGRADES: dict[int, Callable[[FlashState], FlashState]] = {1: _same_state, 2: _same_state}
"""``version -> upgrade to version + 1``, applied in turn."""


def upgrade_state(state: FlashState, version: int) -> FlashState:
    while version < FLASH_FORMAT_VERSION:
        step = _UPGRADES.get(version)
        if step is None:
            raise FlashCorrupt(f"flash format {version} cannot be upgraded")
        state = step(state)
        version += 1
    return state


def state_from_json(old: StoredState) -> FlashState:
    return FlashState(
        vin=old.vin,
        whitelist=dict(old.whitelist),
        counters=dict(old.counters),
        spent_nonces=old.spent_nonces.copy(),
        lock_state=old.lock_state,
        issuers=dict(old.issuers),
        revocation_version=old.revocation_version,
        revoked=set(old.revoked),
        time_floor=old.time_floor,
        clock_offset=old.clock_offset,
    )
