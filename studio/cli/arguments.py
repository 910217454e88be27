"""Argument types that check numbers at the boundary: finite, in range, and bounded so memory stays bounded.

A bad value is an argparse error, so the user sees one line: ``studio: error: argument --seed: must be ...``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed and numpy both take seeds up to here


def whole(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """A whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}{what}, got {value}")
        return value

    return parse


def number(low: float, high: float, what: str = "") -> Callable[[str], float]:
    """A finite number in [low, high] (NaN and infinities refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a finite number from {low:g} to {high:g}{what}, got {text}")
        return value

    return parse


seed = whole(0, MAX_SEED)


def history_variant(group) -> None:
    """`--history-projection` and `--history-interval` of `studio generate` and `studio batch`. The values are checked
    where the settings are (`GenerationSettings.check`, one error line before any model loads), so the CLI need not
    import the imaging code to list them."""
    group.add_argument("--history-projection", default="none", metavar="none|perpendicular",
                       help="perpendicular: the history's guidance is made orthogonal to the text's (the history adds "
                            "to the prompt but cannot cancel it: the prompt's colour survives higher history scales)")
    group.add_argument("--history-interval", type=float, default=1.0, metavar="SHARE",
                       help="the history guides only the denoising steps at noise levels up to this share of the "
                            "schedule (0 < SHARE <= 1; 1: every step; 0.4: after the prompt has set the colour)")
