"""A journal bank on flash: its header, and reading it back at mount.

A bank is a header (``encode_bank_header``: magic, flash format, generation,
MAC, CRC-32, end mark) followed by records (``records``). ``read_header`` and
``replay`` are the mount side of ``journal``: which bank holds the newest
state, what that state is, and whether what ends the bank is the torn record
of a power cut (accepted), damage (``FlashCorrupt``) or a record not written
with the device key (``TamperEvidence``).
"""

from __future__ import annotations

import hmac
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from .auth import FIRST_PREV, JournalAuth
from .keywrap import FastKeyWrap
from .layout import END_MARK, FLASH_FORMAT_VERSION, FlashCorrupt, Geometry, TamperEvidence
from .records import (
    COMMIT,
    MAC_LEN,
    RECORD_HEADER,
    SNAPSHOT,
    FlashState,
    apply_payload,
    claimed_length,
    read_record,
)

BANK_MAGIC = b"PKJB"
_BANK_HEADER = struct.Struct("<4sHI")
BANK_HEADER_SIZE = 32  # the header (31 bytes) padded; records start here
"""Format 2: magic, version, generation (10 bytes), MAC 16, CRC-32, end mark."""
V1_BANK_HEADER_SIZE = 16  # format 1: magic, version, generation, CRC-32, end mark, padding


def encode_bank_header(
    generation: int, bank: int, auth: JournalAuth, version: int = FLASH_FORMAT_VERSION
) -> bytes:
    body = _BANK_HEADER.pack(BANK_MAGIC, version, generation)
    body += auth.header_mac(bank, body)
    return body + struct.pack("<I", zlib.crc32(body)) + END_MARK


def encode_v1_bank_header(generation: int) -> bytes:
    """A format 1 header (no MAC): for migration tests."""
    body = _BANK_HEADER.pack(BANK_MAGIC, 1, generation)
    return body + struct.pack("<I", zlib.crc32(body)) + END_MARK


@dataclass(frozen=True)
class BankHeader:
    status: Literal["valid", "absent", "damaged", "tampered"]
    version: int = 0
    generation: int = 0

    @property
    def records_at(self) -> int:
        return V1_BANK_HEADER_SIZE if self.version == 1 else BANK_HEADER_SIZE

    @property
    def mac_len(self) -> int:
        return 0 if self.version == 1 else MAC_LEN


def read_header(raw: bytes, bank: int, auth: JournalAuth) -> BankHeader:
    """The bank header: "absent" if erased or torn, "damaged" if complete with a
    bad CRC, "tampered" if its CRC holds and its MAC does not."""
    magic, version, generation = _BANK_HEADER.unpack_from(raw)
    if version == 1:  # the layout follows the version; a torn one reads 0xFFFF
        size = _BANK_HEADER.size
    else:
        size = _BANK_HEADER.size + MAC_LEN
    body, crc, end = raw[:size], raw[size : size + 4], raw[size + 4 : size + 5]
    if end != END_MARK:
        return BankHeader("absent")
    if magic != BANK_MAGIC or struct.unpack("<I", crc)[0] != zlib.crc32(body):
        return BankHeader("damaged", version)
    if 1 < version <= FLASH_FORMAT_VERSION:
        mac = auth.header_mac(bank, body[: _BANK_HEADER.size])
        if not hmac.compare_digest(mac, body[_BANK_HEADER.size :]):
            return BankHeader("tampered", version, generation)
    return BankHeader("valid", version, generation)


def erased(view: memoryview, start: int, end: int) -> bool:
    return start >= end or view[start:end] == b"\xff" * (end - start)


def replay(
    view: memoryview,
    geometry: Geometry,
    bank: int,
    header: BankHeader,
    auth: JournalAuth,
    keywrap: FastKeyWrap,
) -> tuple[FlashState, int, int, bytes, bool]:
    """(state, tail offset, last seq, last MAC, ends torn) of a bank whose header is valid."""
    base = geometry.bank_address(bank)
    end = base + geometry.bank_bytes
    at = base + header.records_at
    mac_len = header.mac_len
    state: FlashState | None = None
    last_seq = 0
    prev = FIRST_PREV
    count = 0
    while True:
        record = read_record(view, at, end, mac_len=mac_len)
        if record is None:
            break
        if mac_len:
            mac = auth.record_mac(bank, header.generation, at - base, prev, record.signed)
            if not hmac.compare_digest(mac, record.mac):
                what = "its snapshot" if count == 0 else f"record {count}"
                raise TamperEvidence(
                    f"bank {bank}, offset {at - base:#x}: {what} fails its MAC "
                    "(moved, reordered, spliced or altered)"
                )
        expected = (state is None and record.kind == SNAPSHOT) or (
            state is not None and record.kind == COMMIT and record.seq == last_seq + 1
        )
        if not expected:
            break
        if state is None:
            state = FlashState()
        apply_payload(state, record.payload, keywrap, version=header.version)
        last_seq = record.seq
        prev = record.mac
        at += record.length
        count += 1
    where = f"bank {bank}, offset {at - base:#x}"
    if state is None:
        raise FlashCorrupt(f"{where}: the bank has a header but no valid snapshot")
    if record is not None:
        raise FlashCorrupt(f"{where}: record {count} is out of sequence")
    if erased(view, at, end):
        return state, at - base, last_seq, prev, False
    length = claimed_length(view, at, end, mac_len=mac_len)
    torn = erased(view, at + RECORD_HEADER.size, end) or (
        length is not None and view[at + length - 1] == 0xFF and erased(view, at + length, end)
    )
    if not torn:
        raise FlashCorrupt(f"{where}: record {count} is damaged (its CRC fails)")
    return state, at - base, last_seq, prev, True


def check_other_bank(
    view: memoryview,
    geometry: Geometry,
    bank: int,
    header: BankHeader,
    last_seq: int,
) -> None:
    """Refuse an image whose newer bank has a damaged header.

    A complete header that fails its CRC is normal on the bank being erased
    (it is older); on a bank whose snapshot is newer than everything in the
    bank we mounted, it means the newest state is damaged.
    """
    if header.status != "damaged":
        return
    base = geometry.bank_address(bank)
    end = base + geometry.bank_bytes
    for records_at, mac_len in ((BANK_HEADER_SIZE, MAC_LEN), (V1_BANK_HEADER_SIZE, 0)):
        record = read_record(view, base + records_at, end, mac_len=mac_len)
        if record is not None and record.kind == SNAPSHOT and record.seq > last_seq:
            raise FlashCorrupt(
                f"the header of bank {bank}, which holds the newest state, is damaged"
            )
