"""Argument types shared by every package's subcommands.

One definition of "a number in a range", so each CLI refuses the same bad
input the same way (including ``nan`` and ``inf``, which ``float()`` accepts
and which would make a timeout wait forever).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number_in_range(
    kind: type[int] | type[float], accept: Callable[[float], bool], rule: str
) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` and refuses values failing ``accept``
    with ``rule`` as the message."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if not accept(value):
            raise argparse.ArgumentTypeError(rule)
        return value

    return parse
