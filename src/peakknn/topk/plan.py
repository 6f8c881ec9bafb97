"""How many bins a two-stage top-k uses: `plan_bins` (the search engine's, a multiple of 16),
`topk_bins` (approx_topk's and its reference's: the next prime), and which per_bin approx_topk
uses (`plan_topk`, through the cost model in costs.py)."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

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


def topk_bins(n: int, k: int, recall_target: float, per_bin: int = 1) -> int | None:
    """approx_topk's bin count L, or None for an exact top-k: `plan_bins`'s, raised to the next
    prime. Bins are strided (element j -> bin j mod L), so a row periodic with period P puts its
    peaks into L / gcd(P, L) bins; a prime L spreads every period shorter than L over all L bins
    (a multiple of 16 would gather period-32 peaks into L / 32 bins). Recall only rises."""
    bins = plan_bins(n, k, recall_target, per_bin)
    if bins is None:
        return None
    bins = _next_prime(bins)
    return bins if n >= EXACT_RATIO * bins * per_bin else None


@functools.lru_cache(maxsize=1024)
def _next_prime(m: int) -> int:
    """The smallest prime >= m (m >= 2)."""
    m = max(m, 2)
    while any(m % d == 0 for d in range(2, math.isqrt(m) + 1)):
        m += 1
    return m


@functools.lru_cache(maxsize=256)
def _bins_for_confidence(k: int, recall_target: float, confidence: float) -> int:
    return bins_for_confidence(k, recall_target, confidence=confidence)


@dataclasses.dataclass(frozen=True)
class TopkPlan:
    """How approx_topk answers one call: per_bin winners of each of `bins` bins, or the exact
    torch.topk when bins is None. predicted: the cost model's seconds (None when per_bin was given)."""

    per_bin: int | None
    bins: int | None
    predicted: float | None = None

    @property
    def exact(self) -> bool:
        return self.bins is None


def plan_topk(
    rows: int, n: int, k: int, recall_target: float, per_bin: int | None = None, *, dtype: torch.dtype = torch.float32, device="cpu", sorted: bool = True
) -> TopkPlan:
    """The plan of approx_topk for `rows` rows of n elements of dtype on device: per_bin given,
    its bins (`topk_bins`); per_bin None, the per_bin and bins (or exact) that the cost model
    (peakknn.topk.costs) predicts fastest, among those whose expected recall is >= recall_target."""
    if per_bin is not None:
        bins = topk_bins(n, k, recall_target, per_bin)
        return TopkPlan(per_bin if bins is not None else None, bins)
    if recall_target >= 1.0 or k >= n:
        return TopkPlan(None, None)
    from .costs import choose

    best = choose(rows, n, k, recall_target, dtype, device, sorted=sorted)
    return TopkPlan(best.per_bin, best.bins, best.seconds)
