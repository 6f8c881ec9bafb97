"""Expected recall of the two-stage (binned) top-k, and the number of bins for a target.

The n scores are split into L bins (element j -> bin j mod L); each bin keeps its best
`per_bin` = k' elements, and an exact top-k runs over the L * k' winners. If the true top-k fall
into bins uniformly at random, the i-th best is lost exactly when k' or more of the i-1 better
ones share its bin, so (Chern et al. 2022 for k' = 1; Samaga et al. 2025 for k' > 1)

    E[recall] = (1/k) * sum_{i=1..k} P[Binomial(i-1, 1/L) < k'],

which for k' = 1 is (L/k) * (1 - (1 - 1/L)^k) ~ 1 - (k-1)/(2L).

That is an expectation over where the top-k land. Its variance for k' = 1 is exact too
(`recall_variance`): with X_i = 1 when the i-th best keeps its bin, P[X_i] = (1 - 1/L)^(i-1) and,
for i < j, P[X_i X_j] = (1 - 1/L) (1 - 2/L)^(i-1) (1 - 1/L)^(j-1-i) (both bins must stay free of
the better ones: the expected number of ordered pairs of empty bins after m placements is
L (L - 1) (1 - 2/L)^m). For k' > 1 the variance is bounded by mu (1 - mu). `bins_for_confidence`
sizes L so that the mean recall of a batch of independent queries stays >= the target with the
given confidence (normal approximation of the batch mean).
"""

from __future__ import annotations

import math
import statistics

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


def recall_variance(k: int, bins: int, *, per_bin: int = 1) -> float:
    """Variance of one query's recall over random bin placements (module docstring): exact for
    per_bin = 1, the bound mu (1 - mu) of a [0, 1] variable with mean mu otherwise."""
    mu = expected_recall(k, bins, per_bin=per_bin)
    if per_bin != 1 or bins == 1:
        return mu * (1.0 - mu)
    i = np.arange(1, k + 1, dtype=np.float64)
    p = np.exp((i - 1) * math.log1p(-1.0 / bins))  # P[X_i]
    ii, jj = np.meshgrid(i, i, indexing="ij")
    upper = ii < jj
    log_joint = math.log1p(-1.0 / bins) + (ii - 1) * math.log1p(-2.0 / bins) + (jj - 1 - ii) * math.log1p(-1.0 / bins)
    joint = np.where(upper, np.exp(np.where(upper, log_joint, 0.0)), 0.0)
    cov = (joint - np.outer(p, p)) * upper
    return float(max(0.0, (np.sum(p * (1 - p)) + 2.0 * cov.sum()) / (k * k)))


def bins_for_confidence(k: int, recall_target: float, queries: int, *, confidence: float = 0.95, per_bin: int = 1) -> int:
    """Smallest L such that the mean recall of `queries` independent queries is >= recall_target
    with probability `confidence` over bin placements: E[R] - z sqrt(Var[R] / queries) >= target,
    z the normal quantile of `confidence` (mean recall and variance from this module)."""
    k = check_k(k)
    target = check_recall_target(recall_target)
    queries = check_int("queries", queries)
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if target >= 1.0:
        raise ValueError(f"recall_target 1.0 needs an exact top-k (k={k})")
    z = statistics.NormalDist().inv_cdf(confidence)

    def enough(bins: int) -> bool:
        mu = expected_recall(k, bins, per_bin=per_bin)
        return mu - z * math.sqrt(recall_variance(k, bins, per_bin=per_bin) / queries) >= target

    lo = bins_for_recall(k, target, per_bin=per_bin)  # the expectation alone: a lower bound
    if enough(lo):
        return lo
    hi = lo
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            raise ValueError(f"recall_target {target} is too close to 1 for k={k} at confidence {confidence}")
    while hi - lo > 1:  # invariant: not enough(lo), enough(hi)
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


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
    hi = lo
    while expected_recall(k, hi, per_bin=per_bin) < target:
        lo, hi = hi, hi * 2
        if hi > 1 << 62:
            raise ValueError(f"recall_target {target} is too close to 1 for k={k}")
    while hi - lo > 1:  # invariant: recall(lo) < target <= recall(hi)
        mid = (lo + hi) // 2
        if expected_recall(k, mid, per_bin=per_bin) >= target:
            hi = mid
        else:
            lo = mid
    return hi
