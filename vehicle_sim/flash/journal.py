"""The log-structured journal: two banks of records, compacted in turn.

Commit protocol: a commit is one record appended after the last one in the
current bank, then the device is synced. A record is complete only when its
last byte (the end mark) and CRC are there, so a power cut leaves either the
whole record or a torn one that replay ignores.

Compaction: when a record does not fit in what is left of the bank (or the
bank ends in a torn record, which may not be programmed over), the state
*with the change applied* is written as one snapshot record into the other
bank (erased first), and only then that bank's header, with the generation
one higher. The header is the commit point: until it is complete, mount
still picks the old bank, which compaction never touches.

Mount: read the superblock; take the valid bank header with the highest
generation; replay its snapshot and the commit records after it, each with
the next sequence number, up to the first invalid one. An invalid record is
accepted as the torn end of the log only if it looks like one (its end mark
never written and only erased flash after it); anything else is damage and
mounting fails rather than silently dropping later records.

Cost: a commit programs its record (one or two page programs). A compaction
erases at most one bank and programs one snapshot; the limits keep a snapshot
at most half a bank, so at least half a bank of commit records are written
between compactions: amortised, each byte committed costs at most one more
byte of snapshot and ``bank_pages`` / (half a bank of records) erases,
whatever the number of keys.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from .device import PAGE_SIZE, FlashDevice
from .layout import (
    END_MARK,
    FLASH_FORMAT_VERSION,
    FlashCorrupt,
    Geometry,
    decode_superblock,
    encode_superblock,
)
from .migrate import upgrade_state
from .records import (
    COMMIT,
    RECORD_HEADER,
    SNAPSHOT,
    FlashState,
    apply_payload,
    claimed_length,
    encode_record,
    read_record,
    snapshot_payload,
)

BANK_MAGIC = b"PKJB"
_BANK_HEADER = struct.Struct("<4sHI")
BANK_HEADER_SIZE = 16  # the header (15 bytes) padded; records start here


class JournalFull(Exception):
    """The state does not fit in one bank (the limits should prevent this)."""


def encode_bank_header(generation: int, version: int = FLASH_FORMAT_VERSION) -> bytes:
    body = _BANK_HEADER.pack(BANK_MAGIC, version, generation)
    return body + struct.pack("<I", zlib.crc32(body)) + END_MARK


@dataclass(frozen=True)
class _Header:
    generation: int
    version: int


def _read_header(raw: bytes) -> _Header | str | None:
    """The header, None if absent or torn, "damaged" if complete but invalid."""
    size = _BANK_HEADER.size
    body, crc, end = raw[:size], raw[size : size + 4], raw[size + 4 : size + 5]
    magic, version, generation = _BANK_HEADER.unpack(body)
    if magic == BANK_MAGIC and struct.unpack("<I", crc)[0] == zlib.crc32(body) and end == END_MARK:
        return _Header(generation, version)
    return "damaged" if end == END_MARK else None


class Journal:
    """The journal of a mounted image; ``state`` is what it holds."""

    def __init__(
        self,
        device: FlashDevice,
        geometry: Geometry,
        state: FlashState,
        *,
        bank: int,
        generation: int,
        tail: int,
        next_seq: int,
        dirty: bool,
    ) -> None:
        self.device = device
        self.geometry = geometry
        self.state = state
        self.bank = bank
        self.generation = generation
        self.tail = tail  # offset in the bank of the first free byte
        self.next_seq = next_seq
        self.dirty = dirty  # the bank ends in a torn record: compact before appending
        self.compactions = 0

    # --- creating and mounting ------------------------------------------------------------
    @classmethod
    def format(cls, device: FlashDevice, geometry: Geometry, state: FlashState) -> Journal:
        """Write a superblock and ``state`` as generation 1 to a blank device."""
        if device.page_count != geometry.page_count:
            raise ValueError("the device does not match the geometry")
        device.program(0, encode_superblock(geometry))
        journal = cls(
            device, geometry, FlashState(), bank=1, generation=0, tail=0, next_seq=1, dirty=True
        )
        journal._compact(state)
        return journal

    @classmethod
    def mount(cls, device: FlashDevice) -> Journal:
        """Replay the image's newest valid bank (FlashCorrupt if there is none)."""
        view = device.view()
        geometry = decode_superblock(view, device.size)
        headers = [
            _read_header(bytes(view[a : a + BANK_HEADER_SIZE]))
            for a in (geometry.bank_address(0), geometry.bank_address(1))
        ]
        valid = [(h.generation, b) for b, h in enumerate(headers) if isinstance(h, _Header)]
        if not valid:
            raise FlashCorrupt("neither journal bank has a valid header")
        _, bank = max(valid)
        header = headers[bank]
        assert isinstance(header, _Header)
        if header.version > FLASH_FORMAT_VERSION:
            raise FlashCorrupt(f"written in flash format {header.version}, newer than this one")
        state, tail, last_seq, dirty = _replay(view, geometry, bank)
        _check_other_bank(view, geometry, 1 - bank, headers[1 - bank], last_seq)
        if header.version < FLASH_FORMAT_VERSION:
            state = upgrade_state(state, header.version)
            dirty = True  # the next commit compacts: rewrites it in the current format
        return cls(
            device,
            geometry,
            state,
            bank=bank,
            generation=header.generation,
            tail=tail,
            next_seq=last_seq + 1,
            dirty=dirty,
        )

    # --- committing ----------------------------------------------------------------------------
    def commit(self, payload: bytes, *, prune: Callable[[FlashState], None]) -> None:
        """Durably append ``payload`` as one record, compacting if needed.

        ``prune`` drops what a snapshot need not keep (expired share
        revocations). On any failure the RAM state is unchanged and the
        journal compacts before its next append.
        """
        record = encode_record(COMMIT, self.next_seq, payload)
        if self.dirty or self.tail + len(record) > self.geometry.bank_bytes:
            new_state = self.state.copy()
            apply_payload(new_state, payload)
            prune(new_state)
            self._compact(new_state)
            return
        try:
            self.device.program(self.geometry.bank_address(self.bank) + self.tail, record)
            self.device.sync()
        except BaseException:
            self.dirty = True
            raise
        apply_payload(self.state, payload)
        self.tail += len(record)
        self.next_seq += 1

    def compact(self, prune: Callable[[FlashState], None]) -> None:
        new_state = self.state.copy()
        prune(new_state)
        self._compact(new_state)

    def _compact(self, new_state: FlashState) -> None:
        target = 1 - self.bank
        snapshot = encode_record(SNAPSHOT, self.next_seq, snapshot_payload(new_state))
        if BANK_HEADER_SIZE + len(snapshot) > self.geometry.bank_bytes:
            raise JournalFull(f"a {len(snapshot)}-byte snapshot does not fit in a bank")
        device = self.device
        address = self.geometry.bank_address(target)
        first = self.geometry.bank_first_page(target)
        try:
            for page in range(first, first + self.geometry.bank_pages):
                if not device.is_erased(page * PAGE_SIZE, PAGE_SIZE):
                    device.erase(page)
            device.program(address + BANK_HEADER_SIZE, snapshot)
            device.sync()
            device.program(address, encode_bank_header(self.generation + 1))
            device.sync()
        except BaseException:
            self.dirty = True
            raise
        self.bank = target
        self.generation += 1
        self.tail = BANK_HEADER_SIZE + len(snapshot)
        self.next_seq += 1
        self.state = new_state
        self.dirty = False
        self.compactions += 1

    @property
    def used_bytes(self) -> int:
        return self.tail


def _erased(view: memoryview, start: int, end: int) -> bool:
    return start >= end or view[start:end] == b"\xff" * (end - start)


def _replay(view: memoryview, geometry: Geometry, bank: int) -> tuple[FlashState, int, int, bool]:
    """(state, tail offset, last seq, ends torn) of a bank whose header is valid."""
    base = geometry.bank_address(bank)
    end = base + geometry.bank_bytes
    at = base + BANK_HEADER_SIZE
    state: FlashState | None = None
    last_seq = 0
    count = 0
    while True:
        record = read_record(view, at, end)
        expected = record is not None and (
            (state is None and record.kind == SNAPSHOT)
            or (state is not None and record.kind == COMMIT and record.seq == last_seq + 1)
        )
        if record is None or not expected:
            break
        if state is None:
            state = FlashState()
        apply_payload(state, record.payload)
        last_seq = record.seq
        at += record.length
        count += 1
    where = f"bank {bank}, offset {at - base:#x}"
    if state is None:
        raise FlashCorrupt(f"{where}: the bank has a header but no valid snapshot")
    if record is not None:
        raise FlashCorrupt(f"{where}: record {count} is out of sequence")
    if _erased(view, at, end):
        return state, at - base, last_seq, False
    length = claimed_length(view, at, end)
    torn = _erased(view, at + RECORD_HEADER.size, end) or (
        length is not None and view[at + length - 1] == 0xFF and _erased(view, at + length, end)
    )
    if not torn:
        raise FlashCorrupt(f"{where}: record {count} is damaged (its CRC fails)")
    return state, at - base, last_seq, True


def _check_other_bank(
    view: memoryview,
    geometry: Geometry,
    bank: int,
    header: _Header | str | None,
    last_seq: int,
) -> None:
    """Refuse an image whose newer bank has a damaged header.

    A complete header that fails its CRC is normal on the bank being erased
    (it is older); on a bank whose snapshot is newer than everything in the
    bank we mounted, it means the newest state is damaged.
    """
    if header != "damaged":
        return
    base = geometry.bank_address(bank)
    record = read_record(view, base + BANK_HEADER_SIZE, base + geometry.bank_bytes)
    if record is not None and record.kind == SNAPSHOT and record.seq > last_seq:
        raise FlashCorrupt(f"the header of bank {bank}, which holds the newest state, is damaged")
