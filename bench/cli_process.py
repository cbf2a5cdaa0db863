"""phonekey's command line run as separate processes, as a user would run it in
several terminals: for the benchmarks that measure real processes
(``bench.vehicle_rss``) and the cross-process tests (tests/e2e/cli_rig.py).

- ``run_cli``: one ``phonekey`` command to completion.
- ``CliProcess``: a long-running one (``phonekey radio``, ``vehicle run``)
  whose output is read line by line on a thread, so a caller can wait for
  the line that says it is ready without blocking on a pipe.
- ``radio``: ``phonekey radio`` with its host slots' ``--transport`` specs.

Standard library only, and nothing under tests/: the benchmarks run from an
installed tree, and the tests import it from here.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

PHONEKEY: Final = [sys.executable, "-m", "phonekey.cli"]
SPEC_RE: Final = re.compile(r"(tcp-client:\S+|unix:\S+)")
HANG_GUARD: Final = 60.0  # seconds: only there so that a broken build fails instead of hanging
WAIT_FOR_LINE: Final = 30.0  # seconds for a process to print what is waited for


def run_cli(*args: str, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess[str]:
    """Run ``phonekey ARGS...`` to completion, its output captured as text."""
    return subprocess.run(
        [*PHONEKEY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class CliProcess:
    """A long-running ``phonekey ARGS...``; its output (stdout and stderr) read line by line."""

    def __init__(self, *args: str) -> None:
        self.name = " ".join(args[:2])
        self.proc = subprocess.Popen(
            [*PHONEKEY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Unbuffered, or a line the caller waits for could sit in the child's buffer.
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = WAIT_FOR_LINE) -> str:
        """The next output line matching ``pattern`` (earlier lines are kept in
        ``lines``); ``RuntimeError`` if none comes within ``timeout`` or the
        process ends first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # stays at the end for later calls
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise RuntimeError(f"no line matching {pattern!r} from {self.name}: {self.lines}")

    def drain(self) -> None:
        """Consume the lines printed so far (kept in ``lines``), so that the next
        ``wait_for`` only matches what happens from now on."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._queue.put(None)
                return
            self.lines.append(line)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = HANG_GUARD) -> int:
        """Wait for the process to exit on its own; its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        self.drain()
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it lingers); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()


@dataclass
class Radio:
    """A running ``phonekey radio``: its process and one --transport spec per slot."""

    process: CliProcess
    specs: list[str]
    supervision_timeout: float


@contextmanager
def radio(slots: int, supervision_timeout: float | None = None) -> Iterator[Radio]:
    """``phonekey radio`` with ``slots`` host slots (a slot serves one host at a
    time), on ephemeral loopback ports; stopped on leaving."""
    listen = [arg for _ in range(slots) for arg in ("--listen", "tcp-server:127.0.0.1:0")]
    extra = (
        [] if supervision_timeout is None else ["--supervision-timeout", str(supervision_timeout)]
    )
    proc = CliProcess("radio", *listen, *extra)
    try:
        specs: list[str] = []
        while len(specs) < slots:
            match = SPEC_RE.search(proc.wait_for(SPEC_RE.pattern))
            assert match is not None  # wait_for returned a line this pattern matched
            specs.append(match.group(1))
        timeout_line = proc.wait_for(r"supervision timeout")
        seconds = float(re.findall(r"after ([\d.]+) s", timeout_line)[0])
        proc.wait_for("^radio ready$")
        yield Radio(proc, specs, seconds)
    finally:
        proc.stop()
