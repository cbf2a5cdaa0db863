"""Durable, atomic replacement of small files, for the phone and the vehicle.

A reader (or the program after a crash or power cut) sees either the old
contents or the new ones, never a mix: the data goes to a temporary file in
the same directory, is fsynced, renamed over the target with ``os.replace``
(atomic on POSIX and Windows), and then the directory is fsynced so the
rename itself survives a crash. Files are created readable by their owner
only unless asked otherwise, in a directory created 0700 if missing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename or file creation in ``directory`` durable."""
    if sys.platform == "win32":
        # Windows cannot open a directory as a file; NTFS journals the
        # rename's metadata itself.
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``; durable once this returns. Raises ``OSError``."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates the file 0600; set the final mode before any data
            # lands, so a secret is never readable by others even briefly.
            if sys.platform != "win32":
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(directory)
