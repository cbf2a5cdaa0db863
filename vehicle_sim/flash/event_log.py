"""The tamper-evident event log: a ring of fixed-size entries in its own pages.

Entry (72 bytes, little endian)::

    seq u64 | time u64 | kind u8 | 0 u8 | reason u16 | count u32 | key_id 16
    | prev 16 | mac 16

``mac = HMAC-SHA256(device key, "phonekey log v1" | the 56 bytes before it)``
truncated to 16 bytes, and ``prev`` is the previous entry's ``mac`` (for
entry 1, a MAC of the genesis label). The device key lives outside the image
(``device.key``), so whoever rewrites the flash cannot forge, alter, reorder
or insert entries: each entry verifies alone and links to the one before it.
56 entries fit a page; the last 64 bytes of each page stay erased.

Writing: entries go into the next erased slot after the head. Reaching a page
boundary, the writer erases that page first: the ring wraps by dropping its
oldest page, and the sequence numbers show how many entries went
(``lost_to_wrap``). A slot a power cut left torn is skipped (flash cannot be
programmed twice), so a torn entry never breaks the chain.

Floods are aggregated: a denial or an eviction is written at once, and
identical ones (same kind, key and reason) within 60 s of it are counted in
RAM, up to ``MAX_WINDOWS`` different ones at a time, so a stranger who
alternates reasons, or is evicted between denials, is aggregated too. The
counts are written as one entry each when any other kind of event arrives,
when an identical one comes 60 s or more after its entry, at
``MAX_AGGREGATE``, when the table is full, or on ``flush`` (the store
flushes on close): a flood costs about one write per kind of refusal a
minute, not one per request, and only the repeats of the last minute can be
lost to a power cut.
"""

from __future__ import annotations

import hmac
import itertools
import struct
from dataclasses import dataclass

from protocol import crypto

from ..firmware_store import LogEntry, LogEvent, LogKind, LogReadout
from .device import PAGE_SIZE, FlashDevice
from .layout import Geometry

_BODY = struct.Struct("<QQBBHI16s")
ENTRY_SIZE = _BODY.size + 32
ENTRIES_PER_PAGE = PAGE_SIZE // ENTRY_SIZE
MAC_LEN = 16
AGGREGATE_SECONDS = 60
MAX_AGGREGATE = 10_000
MAX_WINDOWS = 16  # different floods aggregated at once (RAM stays bounded)
AGGREGATED_KINDS = frozenset({LogKind.DENIED, LogKind.EVICTED})
_MAC_LABEL = b"phonekey log v1"


def genesis_mac(key: bytes) -> bytes:
    return crypto.hmac_sha256(key, b"phonekey log genesis")[:MAC_LEN]


@dataclass
class _Pending:
    event: LogEvent
    time: int
    count: int


@dataclass(frozen=True)
class _Slot:
    index: int
    entry: LogEntry
    prev: bytes
    mac: bytes


class EventLog:
    """The log ring of a mounted image."""

    def __init__(self, device: FlashDevice, geometry: Geometry, key: bytes) -> None:
        self.device = device
        self.geometry = geometry
        self._key = key
        self.slots = geometry.log_pages * ENTRIES_PER_PAGE
        self._pending: dict[LogEvent, _Pending] = {}  # repeats counted, not yet written
        self._windows: dict[LogEvent, int] = {}  # aggregatable event -> time of its entry
        self.head_seq = 0
        self.head_mac = genesis_mac(key)
        self._next_slot = 0
        found = self._scan()
        if found:
            head = max(found, key=lambda s: s.entry.seq)
            self.head_seq, self.head_mac = head.entry.seq, head.mac
            self._next_slot = (head.index + 1) % self.slots

    # --- writing ---------------------------------------------------------------------------
    def log(self, event: LogEvent, now: int) -> None:
        """Append ``event``; a denial or eviction repeating one written within
        ``AGGREGATE_SECONDS`` is counted in RAM instead."""
        if event.kind not in AGGREGATED_KINDS:
            self.flush()
            self._append(event, now, 1)
            return
        start = self._windows.get(event)
        if start is not None and 0 <= now - start < AGGREGATE_SECONDS:
            pending = self._pending.setdefault(event, _Pending(event, now, 0))
            pending.count += 1
            if pending.count >= MAX_AGGREGATE:
                self._write_pending(event)
            return
        self._write_pending(event)  # the repeats of its previous window come first
        if event not in self._windows and len(self._windows) >= MAX_WINDOWS:
            self.flush()
        self._append(event, now, 1)
        self._windows[event] = now

    def flush(self) -> None:
        """Write every count held in RAM; the next denial is written at once."""
        for event in list(self._pending):
            self._write_pending(event)
        self._windows.clear()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def _write_pending(self, event: LogEvent) -> None:
        pending = self._pending.pop(event, None)
        if pending is not None:
            self._append(pending.event, pending.time, pending.count)

    def _append(self, event: LogEvent, time: int, count: int) -> None:
        seq = self.head_seq + 1
        body = _BODY.pack(seq, time, event.kind, 0, event.reason, count, event.key_id)
        mac = self._mac(body + self.head_mac)
        slot = self._free_slot()
        self.device.program(self._address(slot), body + self.head_mac + mac)
        self.device.sync()
        self.head_seq, self.head_mac = seq, mac
        self._next_slot = (slot + 1) % self.slots

    def _free_slot(self) -> int:
        slot = self._next_slot
        for _ in range(self.slots + self.geometry.log_pages):
            if slot % ENTRIES_PER_PAGE == 0:
                page_address = self._address(slot)
                if not self.device.is_erased(page_address, PAGE_SIZE):
                    self.device.erase(page_address // PAGE_SIZE)  # wrap: drop the oldest page
            if self.device.is_erased(self._address(slot), ENTRY_SIZE):
                return slot
            slot = (slot + 1) % self.slots  # torn by a power cut: skip it
        raise AssertionError("a log page was erased yet has no free slot")

    # --- reading --------------------------------------------------------------------------------
    def read(self, anchor: tuple[int, bytes]) -> LogReadout:
        """Every surviving entry, oldest first, with the verdict of the chain.

        ``anchor`` is the log head (seq, MAC) the journal recorded with its
        last commit: the log must still reach it.
        """
        found = sorted(self._scan(), key=lambda s: s.entry.seq)
        entries = tuple(s.entry for s in found)
        problem = _chain_problem(found, self.slots, genesis_mac(self._key))
        lost = found[0].entry.seq - 1 if found else 0
        if problem is None and lost and len(found) < self.wrap_minimum:
            problem = f"entries 1 to {lost} are gone but the log had not filled up to wrap"
        if problem is None:
            problem = self._anchor_problem(found, anchor)
        return LogReadout(entries, problem is None, problem, lost)

    @property
    def wrap_minimum(self) -> int:
        """Fewest entries a wrapped ring holds (all pages but the one being
        rewritten, less a page of slack for slots torn by power cuts)."""
        return (self.geometry.log_pages - 2) * ENTRIES_PER_PAGE

    def _anchor_problem(self, found: list[_Slot], anchor: tuple[int, bytes]) -> str | None:
        anchor_seq, anchor_mac = anchor
        if anchor_seq == 0:
            return None
        head = found[-1].entry.seq if found else 0
        if head < anchor_seq:
            return (
                f"the log ends at entry {head} but the state journal recorded entry "
                f"{anchor_seq}: entries were removed"
            )
        first = found[0].entry.seq
        if anchor_seq >= first:
            mac = found[anchor_seq - first].mac
            if not hmac.compare_digest(mac, anchor_mac):
                return f"entry {anchor_seq} is not the one the state journal recorded"
        return None

    def _scan(self) -> list[_Slot]:
        view = self.device.view()
        base = self.geometry.log_address
        erased = b"\xff" * ENTRY_SIZE
        found = []
        for slot in range(self.slots):
            address = base + self._offset(slot)
            raw = bytes(view[address : address + ENTRY_SIZE])
            if raw == erased:
                continue
            body, prev, mac = raw[: _BODY.size], raw[_BODY.size : -MAC_LEN], raw[-MAC_LEN:]
            if not hmac.compare_digest(self._mac(body + prev), mac):
                continue  # torn, or not written with the device key
            seq, time, kind, _, reason, count, key_id = _BODY.unpack(body)
            try:
                log_kind = LogKind(kind)
            except ValueError:
                continue
            entry = LogEntry(seq, time, log_kind, key_id, reason, count)
            found.append(_Slot(slot, entry, prev, mac))
        return found

    def _mac(self, data: bytes) -> bytes:
        return crypto.hmac_sha256(self._key, _MAC_LABEL + data)[:MAC_LEN]

    def _offset(self, slot: int) -> int:
        page, index = divmod(slot, ENTRIES_PER_PAGE)
        return page * PAGE_SIZE + index * ENTRY_SIZE

    def _address(self, slot: int) -> int:
        return self.geometry.log_address + self._offset(slot)


def _chain_problem(found: list[_Slot], slots: int, genesis: bytes) -> str | None:
    """What breaks the chain of ``found`` (sorted by seq), or None."""
    if found and found[0].entry.seq == 1 and not hmac.compare_digest(found[0].prev, genesis):
        return "entry 1 does not start the chain"
    for before, after in itertools.pairwise(found):
        if after.entry.seq == before.entry.seq:
            return f"entry {after.entry.seq} appears twice"
        if after.entry.seq != before.entry.seq + 1:
            return f"entries {before.entry.seq + 1} to {after.entry.seq - 1} are missing"
        if not hmac.compare_digest(after.prev, before.mac):
            return f"entry {after.entry.seq} does not follow entry {before.entry.seq}"
    if found:
        start = found[0].index
        distances = [(s.index - start) % slots for s in found]
        if any(b <= a for a, b in itertools.pairwise(distances)):
            return "entries are out of order on flash"
    return None
