"""Where things live on the flash image, and how much of each fits.

Image layout (pages of ``PAGE_SIZE`` bytes)::

    page 0                      superblock: magic, image format, geometry (written once)
    pages 1 .. B                journal bank 0
    pages B+1 .. 2B             journal bank 1
    pages 2B+1 .. 2B+L          event-log ring

Each bank starts with a bank header (magic, flash format version,
generation, CRC) followed by records; see ``records`` and ``journal``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .device import PAGE_SIZE

SUPERBLOCK_MAGIC = b"PKEYFLSH"
IMAGE_FORMAT = 1
"""The geometry/superblock format (page 0); it never changes after init."""
FLASH_FORMAT_VERSION = 3
"""The format of the journal's records (in every bank header); ``migrate`` upgrades older ones.

1: records and bank headers protected by CRC-32 only.
2: records and bank headers also carry an HMAC-SHA256 (see ``auth``).
3: fast-path secrets are AES-key-wrapped, never in the clear (see ``keywrap``)."""

_SUPERBLOCK = struct.Struct("<8sHIII")
END_MARK = b"\x00"
"""The last byte of every header and record: a torn program never wrote it (it
stays 0xFF), so a complete structure with a bad CRC is damage, not a power cut."""

# --- capacity ------------------------------------------------------------------------------
MAX_KEYS = 512
MAX_COUNTERS = 2048  # whitelisted keys plus removed keys whose counters are kept
MAX_REVOCATIONS = 10_000
MAX_SHARE_REVOCATIONS = 1024
MAX_KEYCARDS = 8
MAX_ISSUERS = 2


@dataclass(frozen=True)
class Geometry:
    bank_pages: int = 140  # two of the largest snapshots (records.SNAPSHOT_MAX_BYTES)
    log_pages: int = 16

    @property
    def page_count(self) -> int:
        return 1 + 2 * self.bank_pages + self.log_pages

    @property
    def bank_bytes(self) -> int:
        return self.bank_pages * PAGE_SIZE

    def bank_address(self, bank: int) -> int:
        return (1 + bank * self.bank_pages) * PAGE_SIZE

    def bank_first_page(self, bank: int) -> int:
        return 1 + bank * self.bank_pages

    @property
    def log_first_page(self) -> int:
        return 1 + 2 * self.bank_pages

    @property
    def log_address(self) -> int:
        return self.log_first_page * PAGE_SIZE


DEFAULT_GEOMETRY = Geometry()


class FlashCorrupt(Exception):
    """The image does not hold a valid vehicle state; the message says where."""


class TamperEvidence(FlashCorrupt):
    """A complete structure (its CRC holds) fails its MAC, or the image went
    back to an older format or generation than the device has seen: it was
    written by someone without the device key, not torn by a power cut."""


class RollbackEvidence(TamperEvidence):
    """Every MAC holds but the image is older than the rollback counter allows
    (see ``monotonic``): a saved image written back, or the journal's tail cut."""


def encode_superblock(geometry: Geometry) -> bytes:
    body = _SUPERBLOCK.pack(
        SUPERBLOCK_MAGIC, IMAGE_FORMAT, PAGE_SIZE, geometry.bank_pages, geometry.log_pages
    )
    return body + struct.pack("<I", zlib.crc32(body)) + END_MARK


SUPERBLOCK_SIZE = _SUPERBLOCK.size + 5


def decode_superblock(data: bytes | memoryview, image_size: int) -> Geometry:
    raw = bytes(data[:SUPERBLOCK_SIZE])
    body, crc = raw[: _SUPERBLOCK.size], raw[_SUPERBLOCK.size : _SUPERBLOCK.size + 4]
    magic, image_format, page_size, bank_pages, log_pages = _SUPERBLOCK.unpack(body)
    if magic != SUPERBLOCK_MAGIC:
        raise FlashCorrupt("the superblock is missing (not a phonekey flash image)")
    if struct.unpack("<I", crc)[0] != zlib.crc32(body) or raw[-1:] != END_MARK:
        raise FlashCorrupt("the superblock fails its CRC")
    if image_format != IMAGE_FORMAT:
        raise FlashCorrupt(f"unknown image format {image_format}")
    if page_size != PAGE_SIZE or bank_pages < 2 or log_pages < 2:
        raise FlashCorrupt("the superblock's geometry is invalid")
    geometry = Geometry(bank_pages, log_pages)
    if geometry.page_count * PAGE_SIZE != image_size:
        raise FlashCorrupt(
            f"the image is {image_size} bytes but its superblock describes "
            f"{geometry.page_count * PAGE_SIZE}"
        )
    return geometry
