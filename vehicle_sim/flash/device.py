"""An emulated NOR flash chip, with power-loss injection.

NOR flash reads like memory but writes like flash: ``erase`` sets a whole
page to 0xFF and ``program`` can only clear bits (1 -> 0). Programming a bit
that is 0 back to 1 is a firmware bug, so it raises ``FlashMisuse`` instead of
silently producing the AND of old and new data as real chips do.

``FaultInjector`` counts program and erase operations (a program that spans
pages is one operation per page, as a chip programs page by page) and, with
``cut_at=N``, cuts the power during operation N: it applies a torn effect (a
prefix of the program lands; the first part of the page is erased) and raises
``PowerCut``. Every later operation raises ``PowerCut`` too, until the caller
"reboots" by mounting the image again. This is littlefs's emulated block
device with power-loss testing, on a Python ``bytearray``. The injector also
counts the atomic replaces of the rollback counter (``monotonic``), which sits
outside the image, so a sweep cuts the power at those writes too.

A device is either in memory (for sweeps) or backed by an image file: every
program and erase is written through to the file, and ``sync`` fsyncs it; the
journal syncs before a commit returns.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

PAGE_SIZE = 4096
ERASED = 0xFF


class PowerCut(Exception):
    """The injected power cut: the operation in progress was torn."""


class FlashMisuse(Exception):
    """A program that would set a 0 bit back to 1, or an access out of range."""


class FaultInjector:
    """Counts program and erase operations; optionally cuts the power at one.

    ``cut_at`` is 1-based: ``cut_at=1`` cuts the first operation after the
    injector is attached. With ``rng`` the torn part is random (length of the
    programmed prefix, how much of the page erased); without, it is half.
    """

    def __init__(self, cut_at: int | None = None, *, rng: random.Random | None = None) -> None:
        self.cut_at = cut_at
        self.rng = rng
        self.operations = 0
        self.programs = 0
        self.erases = 0
        self.replaces = 0
        self.tripped = False

    def _tick(self, kind: str) -> bool:
        """Count one operation; True if the power fails during it."""
        if self.tripped:
            raise PowerCut("the power is off")
        self.operations += 1
        if kind == "program":
            self.programs += 1
        elif kind == "replace":
            self.replaces += 1
        else:
            self.erases += 1
        if self.cut_at is not None and self.operations == self.cut_at:
            self.tripped = True
            return True
        return False

    def replace(self) -> bool:
        """Count one atomic file replace; True if the power fails during it."""
        return self._tick("replace")

    def replace_landed(self) -> bool:
        """Whether a replace the power cut landed: all or nothing, at random with
        ``rng``, else not (the old contents stay)."""
        return self.rng is not None and self.rng.random() < 0.5

    def _torn_length(self, length: int) -> int:
        if self.rng is not None:
            return self.rng.randrange(length) if length > 0 else 0
        return length // 2


class FlashDevice:
    """``page_count`` pages of ``PAGE_SIZE`` bytes, erased (0xFF) when new."""

    def __init__(
        self,
        data: bytearray,
        *,
        fd: int | None = None,
        injector: FaultInjector | None = None,
    ) -> None:
        if len(data) % PAGE_SIZE:
            raise ValueError("a flash image is a whole number of pages")
        self._data = data
        self._fd = fd
        self.injector = injector
        self.programs = 0
        self.erases = 0

    # --- construction ----------------------------------------------------------------
    @classmethod
    def blank(cls, page_count: int) -> FlashDevice:
        """A new, fully erased, in-memory device."""
        return cls(bytearray(b"\xff" * (page_count * PAGE_SIZE)))

    @classmethod
    def in_memory(cls, image: bytes | bytearray) -> FlashDevice:
        """An in-memory device holding a copy of ``image`` (a "reboot" in sweeps)."""
        return cls(bytearray(image))

    @classmethod
    def open_file(cls, path: Path, *, writable: bool) -> FlashDevice:
        """A device backed by the image file ``path`` (OSError if unreadable)."""
        if not writable:
            return cls._checked(bytearray(path.read_bytes()), None)
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = bytearray(handle.read())
            return cls._checked(data, fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _checked(cls, data: bytearray, fd: int | None) -> FlashDevice:
        if len(data) % PAGE_SIZE or not data:
            raise FlashMisuse(f"the image is {len(data)} bytes, not a whole number of pages")
        return cls(data, fd=fd)

    # --- geometry ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def page_count(self) -> int:
        return len(self._data) // PAGE_SIZE

    def image(self) -> bytes:
        """A copy of the whole image."""
        return bytes(self._data)

    # --- operations --------------------------------------------------------------------
    def read(self, address: int, length: int) -> bytes:
        self._check_range(address, length)
        return bytes(self._data[address : address + length])

    def view(self) -> memoryview:
        """A read-only view of the whole image (mount parses it without copies)."""
        return memoryview(self._data).toreadonly()

    def is_erased(self, address: int, length: int) -> bool:
        self._check_range(address, length)
        return self._data[address : address + length] == b"\xff" * length

    def program(self, address: int, data: bytes) -> None:
        """Clear bits so ``address`` holds ``data``; one operation per page touched."""
        self._check_range(address, len(data))
        offset = 0
        while offset < len(data):
            start = address + offset
            chunk = data[offset : offset + PAGE_SIZE - start % PAGE_SIZE]
            self._program_chunk(start, chunk)
            offset += len(chunk)

    def erase(self, page: int) -> None:
        """Set page ``page`` to 0xFF; one operation."""
        if not 0 <= page < self.page_count:
            raise FlashMisuse(f"page {page} is outside the device")
        start = page * PAGE_SIZE
        length = PAGE_SIZE
        cut = self.injector is not None and self.injector._tick("erase")
        if cut:
            assert self.injector is not None
            length = self.injector._torn_length(PAGE_SIZE)
        self.erases += 1
        self._data[start : start + length] = b"\xff" * length
        self._write_through(start, length)
        if cut:
            raise PowerCut(f"power cut while erasing page {page}")

    def sync(self) -> None:
        """Make every operation so far durable (fsync of the image file)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # --- internals ---------------------------------------------------------------------
    def _program_chunk(self, address: int, chunk: bytes) -> None:
        old = self._data[address : address + len(chunk)]
        if int.from_bytes(chunk, "big") & ~int.from_bytes(old, "big"):
            raise FlashMisuse(
                f"program of {len(chunk)} bytes at {address:#x} would set a 0 bit to 1 "
                "(erase the page first)"
            )
        length = len(chunk)
        cut = self.injector is not None and self.injector._tick("program")
        if cut:
            assert self.injector is not None
            length = self.injector._torn_length(len(chunk))
        self.programs += 1
        self._data[address : address + length] = chunk[:length]
        self._write_through(address, length)
        if cut:
            raise PowerCut(f"power cut while programming {len(chunk)} bytes at {address:#x}")

    def _write_through(self, address: int, length: int) -> None:
        if self._fd is None or length == 0:
            return
        view = memoryview(self._data)[address : address + length]
        written = 0
        while written < length:
            written += os.pwrite(self._fd, view[written:], address + written)

    def _check_range(self, address: int, length: int) -> None:
        if address < 0 or length < 0 or address + length > len(self._data):
            raise FlashMisuse(f"{length} bytes at {address:#x} are outside the device")
