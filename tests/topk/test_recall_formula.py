import math

import numpy as np
import pytest

from peakknn import bins_for_recall, expected_recall


@pytest.mark.parametrize("k,bins", [(1, 1), (10, 90), (10, 448), (100, 1000), (7, 13)])
def test_closed_form_per_bin_1(k, bins):
    closed = (bins / k) * (1 - (1 - 1 / bins) ** k)
    assert expected_recall(k, bins) == pytest.approx(closed, rel=1e-12)


def test_per_bin_matches_simulation():
    rng = np.random.default_rng(0)
    k, bins, per_bin, trials = 20, 12, 3, 20000
    place = rng.integers(0, bins, size=(trials, k))
    kept = np.zeros(trials)
    for i in range(k):  # the i-th best is kept when fewer than per_bin better ones share its bin
        kept += (place[:, :i] == place[:, i : i + 1]).sum(1) < per_bin
    simulated = kept.mean() / k
    assert expected_recall(k, bins, per_bin=per_bin) == pytest.approx(simulated, abs=4 / math.sqrt(trials))


@pytest.mark.parametrize("k,target,per_bin", [(10, 0.95, 1), (10, 0.99, 1), (100, 0.9, 1), (10, 0.95, 2), (64, 0.99, 4), (1, 0.5, 1)])
def test_bins_for_recall_is_smallest(k, target, per_bin):
    bins = bins_for_recall(k, target, per_bin=per_bin)
    assert expected_recall(k, bins, per_bin=per_bin) >= target
    if bins > -(-k // per_bin):
        assert expected_recall(k, bins - 1, per_bin=per_bin) < target


def test_known_values():
    assert bins_for_recall(10, 0.95) in range(85, 95)  # DESIGN.md: "k=10, r=0.95 needs L ~ 90"
    assert bins_for_recall(10, 0.95, per_bin=2) < bins_for_recall(10, 0.95) / 4
    assert bins_for_recall(3, 1.0, per_bin=3) == 1


@pytest.mark.parametrize("call", [
    lambda: bins_for_recall(10, 1.0), lambda: bins_for_recall(0, 0.9), lambda: bins_for_recall(10, 0.0),
    lambda: bins_for_recall(10, 1.5), lambda: expected_recall(10, 5), lambda: expected_recall(10, 0),
    lambda: bins_for_recall(10, 0.9, per_bin=0),
])  # fmt: skip
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("k,bins", [(10, 96), (10, 448), (32, 300), (5, 16), (1, 7)])
def test_recall_variance_matches_a_simulation(k, bins):
    """Place the top-k in uniformly random bins (the model behind the formulas): the mean and
    variance of the surviving fraction match expected_recall and recall_variance."""
    from peakknn.topk.recall import recall_variance

    rng = np.random.default_rng(k * 1000 + bins)
    trials = 100_000
    b = rng.integers(bins, size=(trials, k))
    survives = np.ones((trials, k), dtype=bool)
    for i in range(1, k):
        survives[:, i] = ~(b[:, :i] == b[:, i : i + 1]).any(1)
    r = survives.mean(1)
    assert abs(r.mean() - expected_recall(k, bins)) < 4 * r.std() / trials**0.5 + 1e-12
    var = recall_variance(k, bins)
    assert abs(r.var() - var) <= 0.03 * var + 1e-12  # the variance's own sampling error is ~1% here


def test_bins_for_confidence_is_the_smallest_that_keeps_the_batch_above_the_target():
    import statistics

    from peakknn.topk.recall import bins_for_confidence, recall_variance

    z = statistics.NormalDist().inv_cdf(0.95)
    for k, target, queries in ((10, 0.99, 1000), (10, 0.9, 1), (32, 0.95, 100)):
        bins = bins_for_confidence(k, target, queries)
        assert bins >= bins_for_recall(k, target)

        def lower(b):
            return expected_recall(k, b) - z * math.sqrt(recall_variance(k, b) / queries)
        assert lower(bins) >= target > lower(bins - 1)
    # more queries average out more: fewer bins; one query needs every top-k alone in its bin
    assert bins_for_confidence(10, 0.99, 10_000) <= bins_for_confidence(10, 0.99, 1000) <= bins_for_confidence(10, 0.99, 1)
    with pytest.raises(ValueError, match="confidence"):
        bins_for_confidence(10, 0.9, 10, confidence=1.0)
