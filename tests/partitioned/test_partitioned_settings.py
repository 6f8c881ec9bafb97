"""PartitionSettings and SearchSettings (peakknn.partitioned.settings): validation, defaults
that depend on the other settings, and per-search overrides of the index's settings."""

import pytest
import torch
from partitioned_helpers import build, data, truth

from peakknn import PartitionedIndex, PartitionSettings, SearchSettings
from peakknn.evaluation import recall


def test_bad_scan_dims_are_rejected():
    for bad in (0, -3, 1.5, "some", True):
        with pytest.raises(ValueError, match="scan_dims"):
            PartitionSettings(scan_dims=bad)
    for bad in (dict(codes="pq4"), dict(keep_vectors=False)):
        with pytest.raises(ValueError, match="scan_dims"):
            PartitionSettings(scan_dims=8, **bad)
        assert PartitionSettings(**bad).scan_dims is None  # "auto" without re-ranking: no projection
    with pytest.raises(ValueError, match="more than dim"):
        PartitionedIndex(16, settings=PartitionSettings(scan_dims=32))


def test_bad_settings_and_inputs_are_rejected():
    for bad in (dict(partitions=0), dict(codes="pq8"), dict(block_dims=0), dict(threshold=1.5), dict(train_size=0), dict(iters=0)):
        with pytest.raises(ValueError):
            PartitionSettings(**bad)
    with pytest.raises(ValueError, match="divisible"):
        PartitionedIndex(30, settings=PartitionSettings(codes="pq4", block_dims=4))
    with pytest.raises(ValueError):
        SearchSettings(probe=0)
    with pytest.raises(TypeError):
        PartitionedIndex(8, settings={"partitions": 4})
    x, q = data(n=100, seed=11)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=200, train_size=None))
    index.add(x)
    with pytest.raises(ValueError, match="more than the 100"):
        index.train()
    assert not index.is_trained and len(index) == 100  # nothing changed
    index = build(x, partitions=4, train_size=50)
    with pytest.raises(ValueError, match="probe"):
        index.search(q, 5, probe=0)
    with pytest.raises(ValueError, match="dim"):
        index.search(torch.randn(3, 7), 5)
    with pytest.raises(ValueError, match="NaN"):
        index.add(torch.full((1, 32), float("nan")))
    with pytest.raises(ValueError):
        index.search(q, 0)
    assert len(index) == 100


def test_searches_override_the_index_settings():
    x, q = data(seed=9, spread=1.0)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=32), search_settings=SearchSettings(probe=1))
    index.add(x)
    expected = truth(x, q, 10, "ip")
    low = recall(index.search(q, 10).ids, expected)
    high = recall(index.search(q, 10, probe=32).ids, expected)
    assert low < high
    assert recall(index.search(q, 10, probe=1).ids, expected) == low
    assert index.search(q, 10, probe=10**6).ids.shape == (q.shape[0], 10)  # capped at partitions


def test_defaults_that_follow_the_other_settings():
    """spill=None: spill for bf16/int8 codes with keep_vectors; train_size default 40 * partitions;
    ints given for int settings are kept as given."""
    for codes, keep, spill in (("bf16", True, True), ("int8", True, True), ("pq4", True, False), ("bf16", False, False)):
        assert PartitionSettings(codes=codes, keep_vectors=keep).spill is spill
    assert PartitionSettings(codes="bf16", spill=False).spill is False
    assert PartitionSettings(partitions=7).train_size == 280
    assert PartitionSettings(train_size=None).train_size is None
    assert PartitionSettings(scan_dims=12).scan_dims == 12
    assert PartitionSettings().scan_dims == "auto"
    with pytest.raises(ValueError, match="spill"):
        PartitionSettings(spill="yes")
    for bad in (dict(probe=1.5), dict(rerank=0), dict(probe=True)):
        with pytest.raises(ValueError):
            SearchSettings(**bad)
