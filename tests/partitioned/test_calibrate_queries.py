"""PartitionedIndex.calibrate(queries): the recall target holds for queries that are not
distributed like the rows once the curves are measured on a sample of such queries."""

from __future__ import annotations

import pytest
import torch

import peakknn
from peakknn.data import mixture
from peakknn.evaluation import recall

MARGIN = 0.01


def _mixture(n: int, d: int, centres_seed: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(mixture(n, d, centres_seed=centres_seed, seed=seed))


@pytest.mark.parametrize("metric,d", [("l2", 16), ("cos", 16), ("ip", 64)])
def test_calibrating_on_queries_from_elsewhere_meets_the_target_on_such_queries(metric, d):
    x = _mixture(4000, d, centres_seed=3, seed=0)
    elsewhere = _mixture(700, d, centres_seed=4, seed=1)  # queries around other centres than the rows'
    sample, held_out = elsewhere[:400], elsewhere[400:]
    exact = peakknn.Index(d, metric=metric, precision="fp32")
    exact.add(x)
    want = exact.search(held_out, 10, recall_target=1.0).ids
    index = peakknn.PartitionedIndex(d, metric=metric)
    index.add(x)
    index.train()
    index.calibrate(sample)
    for target in (0.9, 0.95):
        got = index.search(held_out, 10, recall_target=target).ids
        assert recall(got, want) >= target - MARGIN, target


def test_the_sample_is_kept_saved_and_measured_on_again(tmp_path):
    x = _mixture(3000, 16, centres_seed=3, seed=0)
    sample = _mixture(200, 16, centres_seed=4, seed=1)
    index = peakknn.PartitionedIndex(16, metric="l2")
    index.add(x)
    index.train()
    index.calibrate(sample)
    curves = index.recall_curves
    index.save(tmp_path / "p")
    loaded = peakknn.load(tmp_path / "p")
    assert loaded.recall_curves == curves
    torch.testing.assert_close(loaded._calibration_queries, sample)
    loaded.calibrate()  # no queries: measures on the kept sample again, not on rows
    assert loaded.recall_curves == curves
    rows_only = peakknn.PartitionedIndex(16, metric="l2")
    rows_only.add(x)
    rows_only.train()
    rows_only.calibrate()
    assert rows_only.recall_curves != curves


def test_bad_samples_are_refused_and_change_nothing():
    index = peakknn.PartitionedIndex(8, metric="ip")
    with pytest.raises(ValueError, match="not trained"):
        index.calibrate(torch.randn(5, 8))
    index.add(torch.randn(2000, 8))
    index.train()
    index.calibrate()
    before = index.recall_curves
    with pytest.raises(ValueError, match="no row"):
        index.calibrate(torch.empty(0, 8))
    with pytest.raises(ValueError):
        index.calibrate(torch.randn(5, 7))
    with pytest.raises(ValueError):
        index.calibrate(torch.tensor([[float("nan")] * 8]))
    assert index.recall_curves == before and index._calibration_queries is None
