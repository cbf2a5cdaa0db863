"""The log-structured journal: two banks of records, compacted in turn.

Commit protocol: a commit is one record appended after the last one in the
current bank, then the device is synced. A record is complete only when its
last byte (the end mark) and CRC are there, so a power cut leaves either the
whole record or a torn one that replay ignores.

Compaction: when a record does not fit in what is left of the bank (or the
bank ends in a torn record, which may not be programmed over), the state
*with the change applied* is written as one snapshot record into the other
bank (erased first), and only then that bank's header, with a higher
generation. The header is the commit point: until it is complete, mount
still picks the old bank, which compaction never touches. With a ``guard``
(the rollback counter, see ``monotonic``) the guard picks the generation and
is told, durably, just before the header is written.

Mount: read the superblock; take the valid bank header with the highest
generation; replay its snapshot and the commit records after it, each with
the next sequence number, up to the first invalid one. An invalid record is
accepted as the torn end of the log only if it looks like one (its end mark
never written and only erased flash after it); anything else is damage and
mounting fails rather than silently dropping later records.

Authentication (formats 2 and 3, see ``auth``): every bank header and record also
carries a MAC under a key derived from the device key. The CRC still decides
complete versus torn; a complete structure (CRC and end mark good) whose MAC
fails was not written by this key module, and mount raises
``TamperEvidence``. A format 1 bank (no MACs) is replayed once, trusted, and
rewritten authenticated by the next commit (``migrate``); a format 1 bank
newer than a format 2 one is a downgrade and refused.

Secrecy (format 3, see ``keywrap``): fast-path secrets are written wrapped
and unwrapped at replay, so the RAM state holds them in the clear and the
flash never does. A format 1 or 2 bank holds them in the clear, so the
compaction that migrates it also erases it once the new bank's header (the
commit point) is written ("scrubbing"); its header page is erased last, so a
power cut mid-scrub leaves a bank whose header still names format 1 or 2.
Mount marks any other bank that is neither a valid format 3 bank nor erased
(a scrub or a compaction cut short) for scrubbing, and the next commit
erases it before appending; a read-only mount never writes, so it leaves it.

Cost: a commit programs its record (one or two page programs). A compaction
erases at most one bank and programs one snapshot; the limits keep a snapshot
at most half a bank, so at least half a bank of commit records are written
between compactions: amortised, each byte committed costs at most one more
byte of snapshot and ``bank_pages`` / (half a bank of records) erases,
whatever the number of keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .auth import FIRST_PREV, JournalAuth
from .bank import (
    BANK_HEADER_SIZE,
    V1_BANK_HEADER_SIZE,
    check_other_bank,
    encode_bank_header,
    erased,
    read_header,
    replay,
)
from .device import PAGE_SIZE, FlashDevice
from .keywrap import FastKeyWrap
from .layout import (
    FLASH_FORMAT_VERSION,
    FlashCorrupt,
    Geometry,
    TamperEvidence,
    decode_superblock,
    encode_superblock,
)
from .migrate import upgrade_state
from .records import (
    COMMIT,
    FIRST_WRAPPED_FORMAT,
    MAC_LEN,
    SNAPSHOT,
    FlashState,
    apply_payload,
    encode_record,
    read_record,
    snapshot_payload,
)


class JournalFull(Exception):
    """The state does not fit in one bank (the limits should prevent this)."""


class CompactionGuard(Protocol):
    """What a compaction tells the rollback counter (``monotonic.RollbackCounter``)."""

    def next_generation(self, current: int) -> int:
        """The generation to write after ``current``."""
        ...

    def begin(self, generation: int) -> None:
        """Durably note that ``generation`` may commit; called before its header."""
        ...


class Journal:
    """The journal of a mounted image; ``state`` is what it holds."""

    def __init__(
        self,
        device: FlashDevice,
        geometry: Geometry,
        state: FlashState,
        auth: JournalAuth,
        keywrap: FastKeyWrap,
        *,
        bank: int,
        generation: int,
        version: int,
        tail: int,
        next_seq: int,
        last_mac: bytes,
        dirty: bool,
        scrub_pending: bool = False,
    ) -> None:
        self.device = device
        self.geometry = geometry
        self.state = state
        self._auth = auth
        self.keywrap = keywrap
        self.bank = bank
        self.generation = generation
        self.version = version  # the flash format of the current bank
        self.tail = tail  # offset in the bank of the first free byte
        self.next_seq = next_seq
        self._last_mac = last_mac  # the MAC of the bank's last record: the next one's prev
        self.dirty = dirty  # the bank ends in a torn record: compact before appending
        self.scrub_pending = scrub_pending  # erase the other bank before appending
        self.compactions = 0
        self.guard: CompactionGuard | None = None

    # --- creating and mounting ------------------------------------------------------------
    @classmethod
    def format(
        cls, device: FlashDevice, geometry: Geometry, state: FlashState, device_key: bytes
    ) -> Journal:
        """Write a superblock and ``state`` as generation 1 to a blank device."""
        if device.page_count != geometry.page_count:
            raise ValueError("the device does not match the geometry")
        device.program(0, encode_superblock(geometry))
        journal = cls(
            device,
            geometry,
            FlashState(),
            JournalAuth(device_key),
            FastKeyWrap(device_key),
            bank=1,
            generation=0,
            version=FLASH_FORMAT_VERSION,
            tail=0,
            next_seq=1,
            last_mac=FIRST_PREV,
            dirty=True,
        )
        journal._compact(state)
        return journal

    @classmethod
    def mount(cls, device: FlashDevice, device_key: bytes) -> Journal:
        """Replay the image's newest valid bank.

        FlashCorrupt if there is none or it is damaged; TamperEvidence if a
        complete header or record fails its MAC (or an older format follows a
        newer one), ``keywrap.UnwrapFailed`` (a TamperEvidence) if a wrapped
        fast-path secret fails to unwrap.
        """
        auth = JournalAuth(device_key)
        keywrap = FastKeyWrap(device_key)
        view = device.view()
        geometry = decode_superblock(view, device.size)
        headers = [
            read_header(bytes(view[a : a + BANK_HEADER_SIZE]), b, auth)
            for b, a in enumerate((geometry.bank_address(0), geometry.bank_address(1)))
        ]
        for bank, header in enumerate(headers):
            if header.status == "tampered":
                raise TamperEvidence(
                    f"the header of bank {bank} (generation {header.generation}) fails its MAC"
                )
        valid = [(h.generation, b) for b, h in enumerate(headers) if h.status == "valid"]
        if not valid:
            raise FlashCorrupt("neither journal bank has a valid header")
        _, bank = max(valid)
        header, other = headers[bank], headers[1 - bank]
        if header.version > FLASH_FORMAT_VERSION:
            raise FlashCorrupt(f"written in flash format {header.version}, newer than this one")
        if (
            header.version < FLASH_FORMAT_VERSION
            and other.status == "valid"
            and (other.version > header.version)
        ):
            raise TamperEvidence(
                f"bank {bank} is in the unauthenticated flash format {header.version} but the "
                f"older bank {1 - bank} is in format {other.version}: a downgrade"
            )
        state, tail, last_seq, last_mac, dirty = replay(view, geometry, bank, header, auth, keywrap)
        check_other_bank(view, geometry, 1 - bank, other, last_seq)
        other_base = geometry.bank_address(1 - bank)
        scrub_pending = not (other.status == "valid" and other.version >= FIRST_WRAPPED_FORMAT)
        scrub_pending = scrub_pending and not erased(
            view, other_base, other_base + geometry.bank_bytes
        )
        if header.version < FLASH_FORMAT_VERSION:
            state = upgrade_state(state, header.version)
            dirty = True  # the next commit compacts: rewrites it in the current format
        return cls(
            device,
            geometry,
            state,
            auth,
            keywrap,
            bank=bank,
            generation=header.generation,
            version=header.version,
            tail=tail,
            next_seq=last_seq + 1,
            last_mac=last_mac,
            dirty=dirty,
            scrub_pending=scrub_pending,
        )

    # --- committing ----------------------------------------------------------------------------
    def commit(self, payload: bytes, *, prune: Callable[[FlashState], None]) -> None:
        """Durably append ``payload`` as one record, compacting if needed.

        ``prune`` drops what a snapshot need not keep (expired share
        revocations). On any failure the RAM state is unchanged and the
        journal compacts before its next append, except a failure scrubbing
        a migrated bank after the compaction committed (``_compact``).
        """
        macs: list[bytes] = []
        record = encode_record(COMMIT, self.next_seq, payload, self._mac_at(self.tail, macs))
        if self.dirty or self.tail + len(record) > self.geometry.bank_bytes:
            new_state = self.state.copy()
            apply_payload(new_state, payload, self.keywrap)
            prune(new_state)
            self._compact(new_state)
            return
        assert self.version == FLASH_FORMAT_VERSION  # an older bank is dirty: it compacts
        if self.scrub_pending:
            self._scrub(1 - self.bank)
        try:
            self.device.program(self.geometry.bank_address(self.bank) + self.tail, record)
            self.device.sync()
        except BaseException:
            self.dirty = True
            raise
        apply_payload(self.state, payload, self.keywrap)
        self.tail += len(record)
        self.next_seq += 1
        self._last_mac = macs[0]

    def compact(self, prune: Callable[[FlashState], None]) -> None:
        new_state = self.state.copy()
        prune(new_state)
        self._compact(new_state)

    def _mac_at(self, offset: int, out: list[bytes]) -> Callable[[bytes], bytes]:
        """The MAC function of a record at ``offset`` of the current bank, after
        the last record; the MAC is also appended to ``out``."""
        bank, generation, prev = self.bank, self.generation, self._last_mac

        def mac_of(signed: bytes) -> bytes:
            mac = self._auth.record_mac(bank, generation, offset, prev, signed)
            out.append(mac)
            return mac

        return mac_of

    def _compact(self, new_state: FlashState) -> None:
        target = 1 - self.bank
        guard = self.guard
        generation = self.generation + 1
        if guard is not None:
            generation = guard.next_generation(self.generation)
        macs: list[bytes] = []

        def mac_of(signed: bytes) -> bytes:
            mac = self._auth.record_mac(target, generation, BANK_HEADER_SIZE, FIRST_PREV, signed)
            macs.append(mac)
            return mac

        payload = snapshot_payload(new_state, self.keywrap)
        snapshot = encode_record(SNAPSHOT, self.next_seq, payload, mac_of)
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
            if guard is not None:
                guard.begin(generation)  # before the commit point: see ``monotonic``
            device.program(address, encode_bank_header(generation, target, self._auth))
            device.sync()
        except BaseException:
            self.dirty = True
            raise
        source, source_version = self.bank, self.version
        self.bank = target
        self.generation = generation
        self.version = FLASH_FORMAT_VERSION
        self.tail = BANK_HEADER_SIZE + len(snapshot)
        self.next_seq += 1
        self._last_mac = macs[0]
        self.state = new_state
        self.dirty = False
        self.scrub_pending = False  # the target bank was erased before it was written
        self.compactions += 1
        if source_version < FIRST_WRAPPED_FORMAT:
            # The commit point is behind us; the old bank holds fast-path secrets
            # in the clear. A failure here leaves it marked (and the change made).
            self.scrub_pending = True
            self._scrub(source)

    def _scrub(self, bank: int) -> None:
        """Erase every page of ``bank`` (not the current one), its header page
        last, so that until the scrub is complete the bank still reads as the
        older format and the next mount marks it again."""
        assert bank != self.bank
        device = self.device
        first = self.geometry.bank_first_page(bank)
        for page in [*range(first + 1, first + self.geometry.bank_pages), first]:
            if not device.is_erased(page * PAGE_SIZE, PAGE_SIZE):
                device.erase(page)
        device.sync()
        self.scrub_pending = False

    @property
    def used_bytes(self) -> int:
        return self.tail

    @property
    def last_seq(self) -> int:
        """The sequence number of the bank's last record."""
        return self.next_seq - 1

    @property
    def last_mac(self) -> bytes:
        """The MAC of the bank's last record (empty in format 1)."""
        return self._last_mac

    def record_mac(self, seq: int) -> bytes | None:
        """The MAC of the current bank's record with sequence number ``seq``, None
        if the bank does not hold it (the rollback counter's mark check)."""
        if seq == self.last_seq:
            return self._last_mac
        view = self.device.view()
        base = self.geometry.bank_address(self.bank)
        at = base + (V1_BANK_HEADER_SIZE if self.version == 1 else BANK_HEADER_SIZE)
        end = base + self.tail
        mac_len = 0 if self.version == 1 else MAC_LEN
        while at < end:
            record = read_record(view, at, end, mac_len=mac_len)
            if record is None or record.seq > seq:
                return None
            if record.seq == seq:
                return record.mac
            at += record.length
        return None
