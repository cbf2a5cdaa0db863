"""Connection slots: who may hold one of the vehicle's few connections.

A key module has a handful of link slots (``max_connections``, default 3),
and strangers must not be able to hold them all. The rules, as pure
functions of the slots and the time (the GATT server applies them):

- A new connection when every slot is taken evicts, in order: the oldest
  connection that never authenticated, then the authenticated connection
  idle the longest. If neither exists (every slot is an authenticated
  session in use) the newcomer is dropped.
- ``grace``: a connection is never evicted in its first ``grace`` seconds, and
  an authenticated one not within ``grace`` of its last request. Without it,
  strangers connecting back to back would evict the owner's connection
  before its handshake finishes (oldest first means the owner's turn comes
  after ``max_connections - 1`` newer strangers). With it, every connection
  gets ``grace`` seconds to authenticate; a newcomer finding nothing
  evictable is dropped and retries, and within ``grace`` a slot is evictable.
- A connection that has not authenticated ``handshake_timeout`` seconds after
  connecting is dropped; an authenticated one idle for ``idle_timeout`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

DEFAULT_MAX_CONNECTIONS: Final = 3
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 60.0
DEFAULT_GRACE: Final = 2.0

Expiry = Literal["handshake-timeout", "idle-timeout"]


@dataclass(frozen=True)
class SlotPolicy:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    grace: float = DEFAULT_GRACE

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not (self.handshake_timeout > 0 and self.idle_timeout > 0):
            raise ValueError("timeouts must be positive")
        if not 0 <= self.grace < self.handshake_timeout:
            raise ValueError("grace must be below the handshake timeout")


@dataclass
class Slot:
    """What the slot rules know of one connection."""

    opened_at: float
    last_request: float
    authenticated: bool = False
    leaving: bool = False  # being disconnected: no longer counts, never chosen again

    def touch(self, now: float) -> None:
        self.last_request = now


def choose_victim(slots: Iterable[Slot], now: float, policy: SlotPolicy) -> Slot | None:
    """The slot a newcomer may take over when all are used, or None (drop the newcomer)."""
    live = [s for s in slots if not s.leaving]
    strangers = [s for s in live if not s.authenticated and now - s.opened_at >= policy.grace]
    if strangers:
        return min(strangers, key=lambda s: s.opened_at)
    idle = [s for s in live if s.authenticated and now - s.last_request >= policy.grace]
    if idle:
        return min(idle, key=lambda s: s.last_request)
    return None


def is_full(slots: Iterable[Slot], policy: SlotPolicy) -> bool:
    return sum(1 for s in slots if not s.leaving) >= policy.max_connections


def expiry(slot: Slot, now: float, policy: SlotPolicy) -> Expiry | None:
    """Why ``slot`` must be dropped now, or None."""
    if not slot.authenticated:
        if now - slot.opened_at >= policy.handshake_timeout:
            return "handshake-timeout"
    elif now - slot.last_request >= policy.idle_timeout:
        return "idle-timeout"
    return None
