"""How many bins a two-stage top-k uses; shared by the reference and the fast paths."""

from __future__ import annotations

from .._checks import round_up
from .recall import bins_for_recall

BIN_ALIGN = 16  # bins are rounded up to a multiple of this (vector width); recall only rises
EXACT_RATIO = 4  # below n = EXACT_RATIO * bins * per_bin the reduction saves too little: go exact


def plan_bins(n: int, k: int, recall_target: float, per_bin: int = 1) -> int | None:
    """Number of bins L for a top-k of n elements, or None for an exact top-k.

    L is `bins_for_recall(k, recall_target, per_bin=per_bin)` rounded up to a multiple of
    BIN_ALIGN, so the expected recall is at least `recall_target`.
    """
    if recall_target >= 1.0 or k >= n:
        return None
    bins = bins_for_recall(k, recall_target, per_bin=per_bin)
    bins = round_up(bins, BIN_ALIGN)
    if n < EXACT_RATIO * bins * per_bin:
        return None
    return bins
