"""How many bins a two-stage top-k uses; shared by the reference and the fast paths."""

from __future__ import annotations

import functools

from .._checks import round_up
from .recall import bins_for_confidence, bins_for_recall

BIN_ALIGN = 16  # bins are rounded up to a multiple of this (vector width); recall only rises
EXACT_RATIO = 4  # below n = EXACT_RATIO * bins * per_bin the reduction saves too little: go exact


def plan_bins(n: int, k: int, recall_target: float, per_bin: int = 1, *, confidence: float | None = None) -> int | None:
    """Number of bins L for a top-k of n elements, or None for an exact top-k.

    confidence None: L is `bins_for_recall(k, recall_target, per_bin=per_bin)`, so the expected
    recall is >= recall_target. confidence c (per_bin = 1): L is `bins_for_confidence(k,
    recall_target, confidence=c)`, so each query's recall is >= recall_target with probability
    c, and at least the expectation's L, so the mean recall is >= recall_target too. Either is
    rounded up to a multiple of BIN_ALIGN.
    """
    if recall_target >= 1.0 or k >= n:
        return None
    if confidence is None:
        bins = bins_for_recall(k, recall_target, per_bin=per_bin)
    else:
        if per_bin != 1:
            raise ValueError(f"a recall confidence needs per_bin=1, got {per_bin}")
        # both: a per-query statement alone lets small k (few recall values) fall below the mean
        bins = max(bins_for_recall(k, recall_target), _bins_for_confidence(k, recall_target, confidence))
    bins = round_up(bins, BIN_ALIGN)
    if n < EXACT_RATIO * bins * per_bin:
        return None
    return bins


@functools.lru_cache(maxsize=256)
def _bins_for_confidence(k: int, recall_target: float, confidence: float) -> int:
    return bins_for_confidence(k, recall_target, confidence=confidence)
