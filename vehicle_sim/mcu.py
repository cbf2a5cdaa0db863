"""MCU profile: charge the crypto time of a slow key-module microcontroller.

The simulator's crypto runs on a PC in well under a millisecond; a key module
computes the same P-256 operations on a Cortex-M in tens of milliseconds. With
a profile, the GATT server charges each session's public-key operations
(``VehicleConnection.crypto_ops``, counted by the protocol core) after every
pump, before the answer leaves, on one shared ``Cpu``: a single-core MCU does
one operation at a time, so concurrent sessions queue behind each other.

Default figures for ``cortex-m4-168`` (see docs/firmware.md for the
sources): ECDSA P-256 verify 83 ms and sign 89 ms, the Cortex-M4 at 168 MHz
figures the project was given; ECDH 86 ms, p256-m's 144 ms on a Cortex-M4 at
100 MHz (Mbed TLS 3rdparty/p256-m README, "Runtime performance") scaled to
168 MHz. Symmetric work (SHA-256, HMAC, HKDF) is not charged: microseconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final


@dataclass(frozen=True)
class McuProfile:
    name: str
    seconds_per_op: Mapping[str, float] = field(default_factory=dict)

    def cost(self, ops: Mapping[str, int]) -> float:
        return sum(self.seconds_per_op.get(op, 0.0) * count for op, count in ops.items())


PROFILES: Final[dict[str, McuProfile]] = {
    "none": McuProfile("none"),
    "cortex-m4-168": McuProfile(
        "cortex-m4-168",
        {"ecdsa_verify": 0.083, "ecdsa_sign": 0.089, "ecdh": 0.086},
    ),
}
DEFAULT_PROFILE: Final = "none"


class Cpu:
    """The key module's one core: ``charge`` holds it for the ops' cost.

    ``charged`` counts every op charged and ``busy_seconds`` their total cost,
    so tests can check what was charged without measuring time.
    """

    def __init__(
        self,
        profile: McuProfile,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.profile = profile
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self.charged: Counter[str] = Counter()
        self.busy_seconds = 0.0

    async def charge(self, ops: Mapping[str, int]) -> float:
        """Occupy the core for ``ops``; return the seconds charged."""
        ops = {op: count for op, count in ops.items() if count > 0}
        if not ops:
            return 0.0
        cost = self.profile.cost(ops)
        self.charged.update(ops)
        self.busy_seconds += cost
        if cost > 0:
            async with self._lock:
                await self._sleep(cost)
        return cost


def crypto_ops_delta(current: Mapping[str, int], seen: Counter[str]) -> Counter[str]:
    """The ops in ``current`` not yet in ``seen``; updates ``seen``."""
    delta: Counter[str] = Counter()
    for op, count in current.items():
        new = count - seen[op]
        if new > 0:
            delta[op] = new
            seen[op] = count
    return delta
