"""SearchSettings.learn_queries: searches with a recall target feed a uniform sample of their
queries, and the recall curves are measured on it once it is full, so the target comes to hold
for queries not distributed like the rows without the caller doing anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import peakknn
from peakknn.data import mixture
from peakknn.evaluation import recall
from peakknn.partitioned import calibration
from peakknn.partitioned.settings import SearchSettings

MARGIN = 0.01


def _mixture(n: int, d: int, centres_seed: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(mixture(n, d, centres_seed=centres_seed, seed=seed))


def _trained(x: torch.Tensor, metric: str, **search) -> peakknn.PartitionedIndex:
    index = peakknn.PartitionedIndex(x.shape[1], metric=metric, search_settings=SearchSettings(**search))
    index.add(x)
    index.train()
    return index


@pytest.mark.parametrize("metric,d", [("l2", 16), ("cos", 16), ("ip", 64)])
def test_searches_from_elsewhere_come_to_meet_the_target(metric, d):
    x = _mixture(4000, d, centres_seed=3, seed=0)
    elsewhere = _mixture(calibration.QUERIES + 300, d, centres_seed=4, seed=1)  # queries around other centres
    stream, held_out = elsewhere[: calibration.QUERIES], elsewhere[calibration.QUERIES :]
    exact = peakknn.Index(d, metric=metric, precision="fp32")
    exact.add(x)
    want = exact.search(held_out, 10, recall_target=1.0).ids
    index = _trained(x, metric)
    for block in stream.split(64):  # what a caller's searches send
        index.search(block, 10, recall_target=0.95)
    assert index.calibration_source == "rows"  # the sample is full, measured at the next search
    for target in (0.9, 0.95):
        got = index.search(held_out, 10, recall_target=target).ids
        assert index.calibration_source == "searches"
        assert recall(got, want) >= target - MARGIN, target


def test_rows_like_queries_keep_meeting_the_target():
    x = _mixture(4000, 16, centres_seed=3, seed=0)
    queries = _mixture(calibration.QUERIES + 300, 16, centres_seed=3, seed=5)  # the rows' own distribution
    exact = peakknn.Index(16, metric="l2", precision="fp32")
    exact.add(x)
    want = exact.search(queries[-300:], 10, recall_target=1.0).ids
    index = _trained(x, "l2")
    index.search(queries[: calibration.QUERIES], 10, recall_target=0.95)
    got = index.search(queries[-300:], 10, recall_target=0.95).ids
    assert index.calibration_source == "searches"
    assert recall(got, want) >= 0.95 - MARGIN


def test_off_probe_searches_and_a_callers_sample_learn_nothing():
    x = _mixture(3000, 16, centres_seed=3, seed=0)
    q = _mixture(2 * calibration.QUERIES, 16, centres_seed=4, seed=1)
    off = _trained(x, "l2", learn_queries=False)
    off.search(q, 10, recall_target=0.9)
    off.search(q[:5], 10, recall_target=0.9)
    assert off.calibration_source == "rows" and off._calibration_queries is None
    by_probe = _trained(x, "l2")
    by_probe.search(q, 10, probe=4)  # no recall target: nothing to calibrate for
    assert by_probe._query_sample.seen == 0
    caller = _trained(x, "l2")
    sample = q[:100]
    caller.calibrate(sample)
    caller.search(q, 10, recall_target=0.9)
    caller.search(q[:5], 10, recall_target=0.9)
    assert caller.calibration_source == "caller"
    torch.testing.assert_close(caller._calibration_queries, sample)


def test_a_learned_sample_is_saved_and_learning_goes_on(tmp_path):
    x = _mixture(3000, 16, centres_seed=3, seed=0)
    q = _mixture(calibration.QUERIES, 16, centres_seed=4, seed=1)
    index = _trained(x, "l2")
    index.search(q, 10, recall_target=0.9)
    index.search(q[:1], 10, recall_target=0.9)
    assert index.calibration_source == "searches"
    index.save(tmp_path / "p")
    loaded = peakknn.load(tmp_path / "p")
    assert loaded.calibration_source == "searches" and loaded.recall_curves == index.recall_curves
    torch.testing.assert_close(loaded._calibration_queries, index._calibration_queries)
    assert loaded._learning()  # a learned sample is replaced by later searches' (a caller's is not)


def test_the_sample_is_uniform_over_the_stream_whatever_the_calls():
    size, stream, trials = 50, 400, 300
    counts = {1: np.zeros(stream), 37: np.zeros(stream)}
    for per_call, c in counts.items():
        for seed in range(trials):
            sample = calibration.QuerySample(1, size=size, seed=seed)
            rows = torch.arange(stream, dtype=torch.float32).unsqueeze(1)
            for block in rows.split(per_call):
                sample.add(block)
            kept = sample.take().squeeze(1).long().numpy()
            assert np.unique(kept).size == size  # distinct stream positions
            c[kept] += 1
        share = c / trials  # each position's chance to be kept: size / stream
        assert abs(share.mean() - size / stream) < 1e-9
        first, last = share[: stream // 4].mean(), share[-stream // 4 :].mean()  # early and late queries alike
        assert abs(first - last) < 0.02, (per_call, first, last)


def test_the_schedule_grows_geometrically():
    sample = calibration.QuerySample(2, size=10)
    assert not sample.due()
    sample.add(torch.zeros(9, 2))
    assert not sample.due()
    sample.add(torch.zeros(1, 2))
    assert sample.due()
    assert sample.take().shape == (10, 2) and not sample.due()
    sample.add(torch.zeros(10 * calibration.CALIBRATE_GROWTH - 11, 2))
    assert not sample.due()
    sample.add(torch.zeros(1, 2))
    assert sample.due()


def test_learn_queries_must_be_a_bool():
    with pytest.raises(TypeError, match="learn_queries"):
        SearchSettings(learn_queries=1)
