"""Shared argument types: the same bad input is refused the same way by every CLI."""

from __future__ import annotations

import argparse

import pytest

from phonekey.cli_args import number_in_range

positive = number_in_range(float, lambda v: v > 0, "must be above 0")
mtu = number_in_range(int, lambda v: 23 <= v <= 517, "ATT MTU must be within 23..517")


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "abc", "0", "-1"])
def test_bad_numbers_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive(text)


def test_good_values_parse_to_their_kind() -> None:
    assert positive("2.5") == 2.5
    assert mtu("247") == 247 and isinstance(mtu("247"), int)
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        mtu("247.0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"23\.\.517"):
        mtu("22")
