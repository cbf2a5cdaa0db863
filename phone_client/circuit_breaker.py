"""Stop calling a cloud that keeps failing, and try it again later.

After ``threshold`` consecutive failures the breaker opens: calls are refused
locally (no network, no wait) for ``base_backoff`` seconds. When that time is
up one trial call goes through (half-open); if it fails too the breaker opens
again for twice as long, up to ``max_backoff``. Any success closes it.

A failure is an outage or a lie (``CloudUnavailable``); a definite answer
such as "this key is not enrolled" is a success here: the cloud is up.

The clock is injected. With a ``path`` the state survives the process, which
matters for a command line where every unlock is a new process: the state
file holds wall-clock times, so the default clock is ``time.time``. A state
file that cannot be read starts the breaker closed; one that cannot be
written only costs the memory of past failures.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from phonekey.durable import write_atomic

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD: Final = 3
DEFAULT_BASE_BACKOFF: Final = 5.0
DEFAULT_MAX_BACKOFF: Final = 300.0
STATE_FORMAT: Final = 1


@dataclass
class BreakerState:
    failures: int = 0  # consecutive
    backoff: float = 0.0  # seconds of the current open period; 0 while closed
    open_until: float = 0.0  # clock reading when the next trial may go through
    last_reason: str = ""


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        base_backoff: float = DEFAULT_BASE_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        clock: Callable[[], float] = time.time,
        path: Path | None = None,
        key: str = "default",
    ) -> None:
        if threshold < 1 or not 0 < base_backoff <= max_backoff:
            raise ValueError("need threshold >= 1 and 0 < base_backoff <= max_backoff")
        self.threshold = threshold
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._path = path
        self._key = key
        self.state = self._load()

    # --- queries ---------------------------------------------------------------------
    @property
    def tripped(self) -> bool:
        """Threshold reached: open, or half-open once the backoff is over."""
        return self.state.failures >= self.threshold

    def allow(self) -> bool:
        """Whether a call may go out now (closed, or half-open for a trial)."""
        return not self.tripped or self.retry_in() == 0.0

    def retry_in(self) -> float:
        """Seconds until the next call may go out; 0 if it may now."""
        if not self.tripped:
            return 0.0
        # Never more than one backoff away, even if the wall clock jumped back.
        wait = min(self.state.open_until - self._clock(), self.state.backoff)
        return max(0.0, wait)

    @property
    def mode(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if not self.tripped:
            return "closed"
        return "open" if self.retry_in() > 0 else "half-open"

    def describe(self) -> str:
        """``3 failures in a row, last: HTTP 500; next try in 5 s``."""
        text = f"{self.state.failures} failures in a row"
        if self.state.last_reason:
            text += f", last: {self.state.last_reason}"
        wait = self.retry_in()
        if wait > 0:
            text += f"; next try in {wait:.0f} s" if wait >= 1 else f"; next try in {wait:.1f} s"
        return text

    # --- outcomes ----------------------------------------------------------------------
    def record_success(self) -> None:
        if self.state != BreakerState():
            self.state = BreakerState()
            self._save()

    def record_failure(self, reason: str = "") -> None:
        state = self.state
        state.failures += 1
        state.last_reason = reason
        if state.failures >= self.threshold:
            # The first opening waits base_backoff; each failed trial doubles it.
            state.backoff = (
                self.base_backoff
                if state.failures == self.threshold
                else min(max(state.backoff, self.base_backoff) * 2, self.max_backoff)
            )
            state.open_until = self._clock() + state.backoff
            logger.info("cloud circuit open for %g s (%s)", state.backoff, self.describe())
        self._save()

    # --- persistence --------------------------------------------------------------------
    def _load(self) -> BreakerState:
        if self._path is None:
            return BreakerState()
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            entry = data["breakers"][self._key] if data.get("format") == STATE_FORMAT else None
            if entry is None:
                return BreakerState()
            state = BreakerState(
                failures=int(entry["failures"]),
                backoff=float(entry["backoff"]),
                open_until=float(entry["open_until"]),
                last_reason=str(entry.get("last_reason", ""))[:200],
            )
        except FileNotFoundError:
            return BreakerState()
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("ignoring unreadable circuit breaker state %s: %s", self._path, exc)
            return BreakerState()
        if state.failures < 0 or not 0 <= state.backoff <= self.max_backoff:
            return BreakerState()
        return state

    def _save(self) -> None:
        if self._path is None:
            return
        path = self._path
        try:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                breakers = data["breakers"] if data.get("format") == STATE_FORMAT else {}
                if not isinstance(breakers, dict):
                    breakers = {}
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                breakers = {}
            if self.state == BreakerState():
                breakers.pop(self._key, None)
            else:
                breakers[self._key] = asdict(self.state)
            text = json.dumps({"format": STATE_FORMAT, "breakers": breakers}, indent=2)
            write_atomic(path, text.encode("utf-8") + b"\n")
        except OSError as exc:
            logger.warning("cannot save circuit breaker state to %s: %s", path, exc)
