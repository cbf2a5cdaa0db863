"""A wall clock that drifts, as a key module's RTC crystal does.

``DriftingClock(ppm)`` runs ``ppm`` parts per million fast (negative: slow)
from the moment it is made: after a day at +50 ppm it is 4.3 s ahead. The
vehicle's store reads it as its wall clock, so drift shows in credential
validity and share windows; only issuer-signed time corrects it (the
store's ``correct_clock`` stores an offset from this clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

MAX_DRIFT_PPM: Final = 1_000_000.0  # +-100 %: beyond any crystal, but keeps time moving forward


class DriftingClock:
    def __init__(self, ppm: float, *, base: Callable[[], float] = time.time) -> None:
        if not -MAX_DRIFT_PPM < ppm < MAX_DRIFT_PPM:
            raise ValueError(f"clock drift must be within +-{MAX_DRIFT_PPM:g} ppm")
        self.ppm = ppm
        self._base = base
        self._origin = base()

    def __call__(self) -> float:
        now = self._base()
        return self._origin + (now - self._origin) * (1.0 + self.ppm / 1e6)
