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


@pytest.mark.parametrize("k,bins", [(10, 96), (10, 448), (32, 300), (5, 16), (1, 7), (2, 2), (3, 3), (100, 2000)])
def test_recall_distribution_matches_a_simulation(k, bins):
    """Place the top-k in uniformly random bins (the model behind the formulas): the law of the
    surviving fraction matches recall_distribution, and its mean expected_recall."""
    from peakknn.topk.recall import recall_distribution

    rng = np.random.default_rng(k * 1000 + bins)
    trials = 100_000
    b = rng.integers(bins, size=(trials, k))
    survives = np.ones((trials, k), dtype=bool)
    for i in range(1, k):
        survives[:, i] = ~(b[:, :i] == b[:, i : i + 1]).any(1)
    kept = survives.sum(1)
    law = recall_distribution(k, bins)
    assert law.shape == (k + 1,) and abs(law.sum() - 1) < 1e-12
    assert abs((law * np.arange(k + 1)).sum() / k - expected_recall(k, bins)) < 1e-12
    seen = np.bincount(kept, minlength=k + 1) / trials
    assert np.abs(seen - law).max() < 4 * np.sqrt(law * (1 - law) / trials).max() + 1e-4


def test_bins_for_confidence_is_the_smallest_that_keeps_one_query_above_the_target():
    from peakknn.topk.recall import bins_for_confidence, recall_distribution

    for k, target, confidence in ((10, 0.99, 0.95), (10, 0.9, 0.95), (32, 0.95, 0.9), (100, 0.99, 0.95), (1, 0.99, 0.95)):
        bins = bins_for_confidence(k, target, confidence=confidence)
        assert bins >= bins_for_recall(k, target)
        need = math.ceil(k * target - 1e-9)

        def chance(b):
            return recall_distribution(k, b)[need:].sum()

        assert chance(bins) >= confidence
        assert bins == 1 or chance(bins - 1) < confidence
    # k = 10 at 0.95 or 0.99: every top-k row alone in its bin
    assert bins_for_confidence(10, 0.95) == bins_for_confidence(10, 0.99) > bins_for_confidence(10, 0.9)
    with pytest.raises(ValueError, match="confidence"):
        bins_for_confidence(10, 0.9, confidence=1.0)
