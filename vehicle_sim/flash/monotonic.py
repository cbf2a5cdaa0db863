"""The rollback counter: the secure element's monotonic counter, as a file.

The flash image cannot prove it is the newest one: an attacker who saved an
older image, all MACs valid, can write it back, or cut the journal's newest
records, which looks like a power cut. A real key module keeps a small
rollback-protected record in its secure element, which only moves forward.
The sim keeps it in ``device.counter`` beside ``device.key`` (0600), 56 bytes,
little endian::

    magic "PKMC" | flash format u16 | layout u16 (1) | generation u64 |
    started u64 | seq u64 | mac 16 | pending u32 (0 or 1) | crc32 u32

- ``flash format``: the highest flash format the device has committed;
- ``generation``: the journal generation the device runs;
- ``seq`` and ``mac``: the *mark*, a record of that generation that the
  journal must still hold, with exactly that MAC. A record's MAC binds its
  bank, generation, offset and predecessor, so the mark pins the whole
  history up to it, not only its length;
- ``started``: the highest generation a compaction has begun to write (at
  least ``generation``). The next compaction writes ``started + 1``, so no
  generation number is ever written twice;
- ``pending``: 1 while that compaction may have reached its commit point;
- ``crc32``: of everything before it (damage, not a rollback).

The first layout (16 bytes: magic, flash format u16, 0 u16, generation u64)
is still read, as a counter without a mark that accepts any generation from
its own up; the next write replaces it with this layout.

**What writes it** (each write is wear on a real secure element):

- a commit that removes authority (``store_base.removes_authority``: a key
  removed or demoted, a fast-path key dropped, a revocation update, a share
  revocation, a keycard removed, an issuer key dropped, factory reset,
  ownership transfer). Once the record is durable, the counter marks it, and
  only then does the commit return. So the vehicle never acknowledges a
  removal that a rollback could undo;
- a compaction: ``pending`` for the new generation just before its header
  (the commit point), then a mark on the new snapshot after it. That is two
  writes per compaction;
- a writable mount: a mark on the journal's last record, unless it is the
  mark already. That is one write per boot. It settles or abandons a pending
  compaction, and it catches up a mark that a power cut stopped from being
  written.

Ordinary commits never write it: unlock and lock, key counters, spent
nonces, backoff, the clock, and fast-path keys set by a handshake
(docs/firmware.md says why rolling those back is harmless or bounded).

**Mount** refuses (``RollbackEvidence``) an image in a lower format or a
lower generation. It also refuses an image of the counter's generation whose
journal ends before the mark or holds another MAC there (a cut tail, a saved
image written back, a copy that diverged), and an image of a higher
generation unless that generation is the pending one.

**Power cuts.** The image is written before the counter, except for the
pending write, and that ordering keeps each cut safe:

- a cut after a record and before its mark leaves the counter behind. The
  removal was not acknowledged, and the next writable mount marks it;
- a cut between the pending write and the header leaves the old generation,
  which a pending counter still accepts;
- a cut between the header and the settling mark leaves the new generation,
  which it accepts too.

A mount on the old generation while a compaction is pending abandons the new
one: it is never accepted again, whoever kept a copy of it. So the counter
never bricks the vehicle.

Like ``device.key``, the file is outside the image and stands for hardware
that an attacker who rewrites the flash cannot touch. A missing counter (a
vehicle from before format 2, or one never opened for writing) is created
by the first writable mount or commit.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from phonekey.durable import write_atomic

from .device import FaultInjector, PowerCut
from .errors import VehicleStateError
from .layout import RollbackEvidence

if TYPE_CHECKING:
    from .journal import Journal

MAGIC = b"PKMC"
LAYOUT = 1
_FIRST = struct.Struct("<4sHHQ")  # layout 0: magic, flash format, 0, generation
_BODY = struct.Struct("<4sHHQQQ16sI")
COUNTER_SIZE = _BODY.size + 4
MARK_MAC_LEN = 16


@dataclass(frozen=True)
class Floor:
    """What the counter holds: the least image this device may mount."""

    version: int
    generation: int
    started: int
    pending: bool = False
    seq: int = 0  # 0: no mark (the first layout)
    mac: bytes = bytes(MARK_MAC_LEN)

    @property
    def marked(self) -> bool:
        return self.seq > 0


def encode_floor(floor: Floor) -> bytes:
    body = _BODY.pack(
        MAGIC,
        floor.version,
        LAYOUT,
        floor.generation,
        floor.started,
        floor.seq,
        floor.mac,
        int(floor.pending),
    )
    return body + struct.pack("<I", zlib.crc32(body))


def decode_floor(raw: bytes, name: str) -> Floor:
    """The counter in ``raw`` (either layout); VehicleStateError naming ``name`` if
    it is none, or one from a newer firmware."""
    if raw[:4] == MAGIC and len(raw) == _FIRST.size:
        _, version, zero, generation = _FIRST.unpack(raw)
        if zero == 0:
            return Floor(version, generation, started=generation)
    elif raw[:4] == MAGIC and len(raw) >= 8:
        (layout,) = struct.unpack_from("<H", raw, 6)
        if layout > LAYOUT:
            raise VehicleStateError(
                f"{name} holds rollback counter layout {layout}, newer than this "
                f"firmware's ({LAYOUT}); run the firmware that wrote it"
            )
        if len(raw) == COUNTER_SIZE and struct.unpack_from("<I", raw, _BODY.size)[0] == (
            zlib.crc32(raw[: _BODY.size])
        ):
            _, version, layout, generation, started, seq, mac, pending = _BODY.unpack_from(raw)
            consistent = started > generation if pending else started >= generation
            if layout == LAYOUT and pending in (0, 1) and consistent:
                return Floor(version, generation, started, bool(pending), seq, mac)
    raise VehicleStateError(
        f"{name} is corrupt: it does not hold the device's rollback counter; restore it"
    )


# --- where the counter lives --------------------------------------------------------------
class CounterCell(Protocol):
    """Storage of the counter: its bytes, replaced as a whole."""

    name: str

    def read(self) -> bytes | None:
        """The stored bytes, None if there is no counter yet."""
        ...

    def write(self, data: bytes) -> None:
        """Durably replace the stored bytes (all or nothing); VehicleStateError if not."""
        ...


class FileCell:
    """``device.counter``: replaced atomically (temp file, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VehicleStateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError as exc:
            raise VehicleStateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


class MemoryCell:
    """A counter in RAM, for power-cut sweeps: each write is one operation of
    ``injector``, which may cut the power during it (old or new bytes stay)."""

    def __init__(
        self,
        data: bytes | None = None,
        injector: FaultInjector | None = None,
        name: str = "the rollback counter",
    ) -> None:
        self.data = data
        self.injector = injector
        self.name = name

    def read(self) -> bytes | None:
        return self.data

    def write(self, data: bytes) -> None:
        injector = self.injector
        if injector is not None and injector.replace():
            if injector.replace_landed():
                self.data = data
            raise PowerCut("power cut while replacing the rollback counter")
        self.data = data


# --- the counter ------------------------------------------------------------------------------
class RollbackCounter:
    """The counter, read when loaded (before the image is read, so a running
    vehicle's commits in between can only make the image newer).

    ``writes`` counts the writes made through this object (wear, for tests)."""

    def __init__(self, cell: CounterCell, floor: Floor | None) -> None:
        self.cell = cell
        self._floor = floor
        self.writes = 0

    @classmethod
    def load(cls, path: Path) -> RollbackCounter:
        """Read ``device.counter`` at ``path`` (absent: no floor yet);
        VehicleStateError if unreadable or corrupt."""
        return cls.open(FileCell(path))

    @classmethod
    def open(cls, cell: CounterCell) -> RollbackCounter:
        raw = cell.read()
        return cls(cell, None if raw is None else decode_floor(raw, cell.name))

    @property
    def floor(self) -> Floor | None:
        return self._floor

    # --- mount ----------------------------------------------------------------------------
    def check(self, journal: Journal) -> None:
        """``RollbackEvidence`` if the mounted ``journal`` is older than the counter.

        The counter was read before the image. A vehicle running beside a
        read-only open may have compacted in between: its image is then of a
        generation this counter has not seen yet, although the counter on
        record already allowed it (``pending`` is written before the header).
        So a refusal is judged again against the counter as it is now: the
        newest counter is the strictest, and an attacker cannot write it."""
        try:
            _check(journal, self._floor)
        except RollbackEvidence:
            raw = self.cell.read()
            fresh = None if raw is None else decode_floor(raw, self.cell.name)
            if fresh is None or fresh == self._floor:
                raise  # a counter gone since is no reason to accept (fail closed)
            self._floor = fresh
            _check(journal, fresh)

    # --- writing (see the module docstring for when) ---------------------------------------
    def next_generation(self, current: int) -> int:
        """The generation the next compaction writes: above any ever begun."""
        floor = self._floor
        return max(current, floor.started if floor is not None else 0) + 1

    def begin(self, generation: int) -> None:
        """Durably record that a compaction to ``generation`` may commit (just before
        its header): until the next mark, mount accepts that generation too."""
        floor = self._floor
        if floor is None:
            return  # nothing is marked yet, so any image mounts: nothing to keep open
        self._write(replace(floor, started=generation, pending=True))

    def behind(self, journal: Journal) -> bool:
        """Whether a commit that removed no authority must still mark ``journal``:
        no counter yet, a compaction since the mark, or a newer format."""
        floor = self._floor
        return (
            floor is None
            or floor.pending
            or floor.generation != journal.generation
            or floor.version < journal.version
        )

    def mark(self, journal: Journal) -> None:
        """Durably mark ``journal``'s last record (the counter never moves back).
        A format 1 journal has no MACs to mark; its next commit migrates it."""
        if journal.version == 1:
            return
        floor = self._floor
        new = Floor(
            version=max(journal.version, floor.version if floor is not None else 0),
            generation=journal.generation,
            started=max(journal.generation, floor.started if floor is not None else 0),
            seq=journal.last_seq,
            mac=journal.last_mac,
        )
        if floor is not None and new.generation < floor.generation:
            raise ValueError("the rollback counter never moves back")  # check() refused it
        if new != floor:
            self._write(new)

    def _write(self, floor: Floor) -> None:
        self.cell.write(encode_floor(floor))
        self._floor = floor
        self.writes += 1


def _check(journal: Journal, floor: Floor | None) -> None:
    """``RollbackEvidence`` if ``journal`` is older than ``floor`` allows."""
    if floor is None:
        return
    version, generation = journal.version, journal.generation
    if version < floor.version:
        raise RollbackEvidence(
            f"the journal is in flash format {version} but this device already "
            f"wrote format {floor.version}: a downgrade"
        )
    if generation < floor.generation:
        raise RollbackEvidence(
            f"the journal is at generation {generation} but this device already "
            f"compacted to generation {floor.generation}: an older image was restored"
        )
    if not floor.marked:
        return  # the first layout knows the generation only (and lagged compactions)
    if generation > floor.generation:
        if floor.pending and generation == floor.started:
            return  # the compaction a power cut interrupted did reach its commit point
        raise RollbackEvidence(
            f"the journal is at generation {generation}, a compaction this device "
            f"abandoned (it runs generation {floor.generation}): an old copy of the "
            "image was restored"
        )
    if journal.last_seq < floor.seq:
        raise RollbackEvidence(
            f"the journal of generation {generation} ends at record sequence "
            f"{journal.last_seq}, before {floor.seq}, which the rollback counter "
            "marks as committed (a key removal, revocation, reset, compaction or boot): "
            "its newest records were cut or an older image was restored"
        )
    if journal.record_mac(floor.seq) != floor.mac:
        raise RollbackEvidence(
            f"record sequence {floor.seq} of generation {generation} is not the one "
            "this device committed: a copy of the image that diverged from this "
            "device's history was restored"
        )
