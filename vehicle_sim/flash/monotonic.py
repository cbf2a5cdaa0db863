"""The rollback counter: the secure element's monotonic counter, as a file.

The flash image cannot prove it is the newest one: an attacker who saved an
older image, all MACs valid, can write it back. A real key module keeps a
monotonic counter in its secure element, which only goes up. The sim keeps
it in ``device.counter`` beside ``device.key`` (16 bytes, 0600)::

    magic "PKMC" | flash format u16 | 0 u16 | generation u64

It records the highest flash format and journal generation the module has
committed. It is advanced only when a compaction (or a format migration)
has durably moved the image forward, so it costs one small file write per
compaction, not per commit; a power cut between the image and the counter
leaves the counter one step behind, which is safe.

Mount refuses an image whose format or generation is below the counter: a
downgrade to the unauthenticated format 1 after the migration, or an image
older than the last compaction. It does not catch a rollback to an older
image of the *current* generation (the commits since the last compaction);
see docs/firmware.md, "What an attacker who can rewrite the flash can do".

Like ``device.key``, the file is outside the image and stands for hardware an
attacker who rewrites the flash cannot touch; a missing counter (a vehicle
from before format 2) is created at the first commit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from phonekey.durable import write_atomic

from .errors import VehicleStateError

_COUNTER = struct.Struct("<4sHHQ")
_MAGIC = b"PKMC"


@dataclass(frozen=True)
class Floor:
    """The least format and generation an image of this device may have."""

    version: int
    generation: int


class RollbackCounter:
    """``device.counter``, read when loaded (before the image is read, so a
    running vehicle's compaction in between can only make the image newer)."""

    def __init__(self, path: Path, floor: Floor | None) -> None:
        self.path = path
        self._floor = floor

    @classmethod
    def load(cls, path: Path) -> RollbackCounter:
        """Read ``path`` (absent: no floor yet); VehicleStateError if unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, None)
        except OSError as exc:
            raise VehicleStateError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(raw) != _COUNTER.size or raw[:4] != _MAGIC:
            raise VehicleStateError(
                f"{path} is corrupt: it does not hold the device's rollback counter; restore it"
            )
        _, version, _, generation = _COUNTER.unpack(raw)
        return cls(path, Floor(version, generation))

    @property
    def floor(self) -> Floor | None:
        return self._floor

    def advance(self, version: int, generation: int) -> None:
        """Durably raise the counter to ``version`` and ``generation`` (never lower
        it); OSError if it cannot be written."""
        old = self._floor
        new = Floor(
            max(version, old.version if old else 0), max(generation, old.generation if old else 0)
        )
        if new == old:
            return
        write_atomic(self.path, _COUNTER.pack(_MAGIC, new.version, 0, new.generation), mode=0o600)
        self._floor = new
