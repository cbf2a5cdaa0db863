"""The single-writer lock on a vehicle's state directory.

Two processes writing the same counters and spent nonces could each accept a
command the other already consumed, so only one process may hold a state
directory open for writing. The lock is an OS advisory lock (``flock`` on
POSIX, ``msvcrt.locking`` on Windows) on a lock file; the OS drops it when
the holder dies, so a crashed vehicle never leaves a stale lock. The holder
writes its pid into the file so a refused second writer can say who holds it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

LOCK_FILE_NAME = "vehicle.lock"
# Windows locks byte ranges and refuses reads of a locked range, so lock one
# byte far past the pid text, which stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 20


class LockHeld(Exception):
    """Another process holds the lock; ``pid`` is its process id if known."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


class StateLock:
    """An exclusive lock on ``<state dir>/vehicle.lock``, held until ``release``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting; raise ``LockHeld`` if it is taken."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            raise LockHeld(read_holder_pid(self.path)) from None
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            _unlock(fd)
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Leave the file in place: deleting it would let a second process lock
        # a fresh inode while a third still waits on the old one.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            _unlock(fd)
        os.close(fd)


def read_holder_pid(path: Path) -> int | None:
    """The pid the lock holder recorded, or None (not written yet, or unreadable)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
