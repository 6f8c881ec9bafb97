"""Expected recall of the two-stage (binned) top-k, and the number of bins for a target.

The n scores are split into L bins (element j -> bin j mod L); each bin keeps its best
`per_bin` = k' elements, and an exact top-k runs over the L * k' winners. If the true top-k fall
into bins uniformly at random, the i-th best is lost exactly when k' or more of the i-1 better
ones share its bin, so (Chern et al. 2022 for k' = 1; Samaga et al. 2025 for k' > 1)

    E[recall] = (1/k) * sum_{i=1..k} P[Binomial(i-1, 1/L) < k'],

which for k' = 1 is (L/k) * (1 - (1 - 1/L)^k) ~ 1 - (k-1)/(2L).

That is an expectation over where the top-k land. For k' = 1 one query's recall is the number of
bins its top-k occupy, over k, whose whole law is known (`recall_distribution`);
`bins_for_confidence` sizes L so that each query's recall is >= the target with a given
probability. Searches use that (engine.plan.SEARCH_CONFIDENCE): queries often share neighbours
(data with an offset, large-norm rows under inner product), and then share one placement, so a
batch does not average its collisions out and only a per-query statement holds for the batch.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import ceil_div, check_int, check_k, check_per_bin, check_recall_target


def expected_recall(k: int, bins: int, *, per_bin: int = 1) -> float:
    """Exact expected recall of the top-k when `bins` bins each keep their best `per_bin`."""
    k = check_k(k)
    per_bin = check_per_bin(per_bin)
    bins = check_int("bins", bins, type_error=ValueError)
    if bins * per_bin < k:
        raise ValueError(f"bins * per_bin must be >= k to hold k winners, got {bins} * {per_bin} < {k}")
    if bins == 1:  # one bin keeps its best per_bin: the first min(k, per_bin) are kept
        return min(k, per_bin) / k
    p = 1.0 / bins
    m = np.arange(k, dtype=np.float64)  # m = i - 1 better elements, i = 1..k
    if per_bin == 1:
        kept = np.exp(m * math.log1p(-p))
    else:
        # P[Binomial(m, p) < per_bin] = sum_{j < per_bin} C(m, j) p^j (1-p)^(m-j), in log space.
        kept = np.zeros(k)
        lgm = np.array([math.lgamma(v + 1.0) for v in m])
        for j in range(per_bin):
            valid = m >= j
            mj = m[valid]
            log_c = lgm[valid] - math.lgamma(j + 1.0) - np.array([math.lgamma(v - j + 1.0) for v in mj])
            kept[valid] += np.exp(log_c + j * math.log(p) + (mj - j) * math.log1p(-p))
        kept = np.minimum(kept, 1.0)
    return float(kept.mean())


def recall_distribution(k: int, bins: int) -> np.ndarray:
    """P[recall = j / k] for j = 0..k, f64[k + 1], of one query whose top-k fall into `bins`
    bins uniformly at random and each bin keeps its best one (per_bin = 1): the recall is the
    number of occupied bins over k, whose law follows the occupancy recursion
    P_{m+1}(j) = P_m(j) j / L + P_m(j - 1) (L - j + 1) / L."""
    k = check_k(k)
    bins = check_int("bins", bins, type_error=ValueError)
    p = np.zeros(k + 1)
    p[0] = 1.0
    j = np.arange(k + 1, dtype=np.float64)
    for _ in range(k):
        p[1:] = p[1:] * j[1:] / bins + p[:-1] * np.maximum(bins - j[1:] + 1, 0) / bins
        p[0] = 0.0
    return p


def bins_for_confidence(k: int, recall_target: float, *, confidence: float = 0.95) -> int:
    """Smallest L such that one query's recall is >= recall_target with probability >=
    `confidence` over random bin placements (per_bin = 1, `recall_distribution`). The statement
    is per query, so it holds for the mean of any batch, also one whose queries share their
    neighbours (and so share one placement)."""
    k = check_k(k)
    target = check_recall_target(recall_target)
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    need = math.ceil(k * target - 1e-9)  # bins that must be occupied
    if need <= 1:
        return 1

    def enough(bins: int) -> bool:
        return float(recall_distribution(k, bins)[need:].sum()) >= confidence

    # fewer bins than `need` cannot hold `need` rows: need - 1 is not enough
    return _first_enough(enough, need - 1, need, 1 << 40, f"recall_target {target} is out of reach for k={k} at confidence {confidence}")


def bins_for_recall(k: int, recall_target: float, *, per_bin: int = 1) -> int:
    """Smallest number of bins L whose expected recall (see module doc) is >= recall_target.

    Raises ValueError for recall_target == 1.0 when k > per_bin: no finite L guarantees it
    (callers treat 1.0 as "exact").
    """
    k = check_k(k)
    per_bin = check_per_bin(per_bin)
    target = check_recall_target(recall_target)
    lo = max(1, ceil_div(k, per_bin))
    if expected_recall(k, lo, per_bin=per_bin) >= target:
        return lo
    if target >= 1.0:
        raise ValueError(f"recall_target 1.0 needs an exact top-k (k={k} > per_bin={per_bin})")
    return _first_enough(
        lambda bins: expected_recall(k, bins, per_bin=per_bin) >= target, lo, lo, 1 << 62, f"recall_target {target} is too close to 1 for k={k}"
    )


def _first_enough(enough, lo: int, hi: int, limit: int, message: str) -> int:
    """Smallest L > lo with enough(L), for a predicate that stays true once true and is false at
    lo: doubles hi until enough(hi) (ValueError(message) past `limit`), then bisects."""
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            raise ValueError(message)
    while hi - lo > 1:  # invariant: not enough(lo), enough(hi)
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
