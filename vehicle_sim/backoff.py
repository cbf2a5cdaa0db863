"""Failed-authentication backoff: pure logic, with the clock passed in.

Two mechanisms slow down whoever sends requests that fail, and neither ever
touches a request whose signature verifies (its answer goes out at once):

- Per connection: the n-th failure reply on one connection waits
  ``conn_base * 2**(n-1)`` seconds (capped at ``conn_max``); after
  ``drop_after`` failures the connection is dropped. Most refusals already end
  their session (the protocol's ERROR state is final), so this matters for the
  failures that do not, such as a refused fast-path attempt.
- Overall: a failure *score* rises by one per failure anywhere and halves every
  ``half_life`` seconds. Its *level* is ``floor(log2(score + 1))`` and every
  failure reply, on every connection, also waits ``global_unit * (2**level - 1)``
  seconds (capped at ``global_max``). Someone reconnecting for each attempt
  therefore still slows down.

The level, not the score, is what survives a power cut: ``Backoff`` calls its
``save_level`` callback only when the level changes, so n failures in a burst
cost about log2(n) durable writes on the way up (and as many on the way
down). After a reboot the score restarts at the lowest score of the saved
level, ``2**level - 1``: at most a factor of two below what it was, never zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from protocol.types import ResultCode

MAX_LEVEL: Final = 32
"""Levels above this add nothing (the delay is capped long before)."""

NOT_FAILURES: Final = frozenset({ResultCode.OK, ResultCode.INTERNAL, ResultCode.BUSY})
"""Refusal codes that are not the requester's failure: the vehicle's own fault
(INTERNAL) or load (BUSY). Every other refusal code counts."""


@dataclass(frozen=True)
class BackoffPolicy:
    conn_base: float = 0.5  # seconds: the first failure reply on a connection
    conn_max: float = 8.0
    drop_after: int = 5  # failures on one connection before it is dropped
    global_unit: float = 0.1  # seconds per unit of 2**level - 1
    global_max: float = 8.0
    half_life: float = 60.0  # seconds for the global score to halve

    def __post_init__(self) -> None:
        if self.drop_after < 1:
            raise ValueError("drop_after must be at least 1")
        if min(self.conn_base, self.conn_max, self.global_unit, self.global_max) < 0:
            raise ValueError("backoff delays must not be negative")
        if not self.half_life > 0:
            raise ValueError("half_life must be positive")


@dataclass(frozen=True)
class Verdict:
    """What to do with one failure reply."""

    delay: float  # seconds to hold the reply back
    drop: bool  # drop the connection after the reply


def counts_as_failure(code: ResultCode) -> bool:
    return code not in NOT_FAILURES


def level_of(score: float) -> int:
    """``floor(log2(score + 1))``, 0 for a score below 1."""
    if score < 1:
        return 0
    return min(MAX_LEVEL, math.floor(math.log2(score + 1.0)))


class ConnectionBackoff:
    """One connection's failure count (freed with the connection)."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0


class Backoff:
    """The vehicle-wide backoff state. ``clock`` is monotonic seconds.

    ``save_level(level)`` is called (rarely) to checkpoint the level durably.
    If it raises, the vehicle keeps backing off from RAM, ``checkpoint_error``
    says why (for the firmware's log), and the next call retries.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        policy: BackoffPolicy | None = None,
        level: int = 0,
        save_level: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy if policy is not None else BackoffPolicy()
        self._clock = clock
        self._save = save_level
        restored = max(0, min(MAX_LEVEL, level))
        self._score = float(2**restored - 1)
        self._at = clock()
        self._saved_level = restored
        self.failures = 0  # total since start, for `show`
        self.checkpoints = 0  # level writes since start
        self.checkpoint_error: str | None = None

    def connection(self) -> ConnectionBackoff:
        return ConnectionBackoff()

    @property
    def score(self) -> float:
        self._decay()
        return self._score

    def level(self) -> int:
        """The current global level; checkpoints it if decay changed it."""
        self._decay()
        current = level_of(self._score)
        self._checkpoint(current)
        return current

    def global_delay(self) -> float:
        return _global_delay(self.policy, self.level())

    def record_failure(self, conn: ConnectionBackoff) -> Verdict:
        """Count one failure on ``conn``; return how long to hold its reply."""
        policy = self.policy
        self._decay()
        self._score += 1.0
        self.failures += 1
        conn.failures += 1
        current = level_of(self._score)
        local = min(policy.conn_max, policy.conn_base * 2.0 ** min(conn.failures - 1, 64))
        verdict = Verdict(
            delay=local + _global_delay(policy, current),
            drop=conn.failures >= policy.drop_after,
        )
        self._checkpoint(current)
        return verdict

    def _decay(self) -> None:
        now = self._clock()
        elapsed = now - self._at
        if elapsed > 0:
            self._score *= 0.5 ** (elapsed / self.policy.half_life)
            if self._score < 1e-9:
                self._score = 0.0
            self._at = now

    def _checkpoint(self, current: int) -> None:
        if current == self._saved_level:
            return
        if self._save is not None:
            try:
                self._save(current)
            except Exception as exc:
                self.checkpoint_error = f"{type(exc).__name__}: {exc}"
                return  # retried on the next call
            self.checkpoint_error = None
            self.checkpoints += 1
        self._saved_level = current


def _global_delay(policy: BackoffPolicy, level: int) -> float:
    return min(policy.global_max, policy.global_unit * float(2**level - 1))
