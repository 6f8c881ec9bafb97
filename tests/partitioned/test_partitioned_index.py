"""PartitionedIndex life cycle (peakknn.partitioned.index): updates after training show in the
next search, compressed-only memory, and the names' former home peakknn.quant."""

import warnings

import pytest
import torch
from partitioned_helpers import build, data

import peakknn
import peakknn.quant


def test_updates_after_training_show_immediately():
    x, q = data(seed=3)
    index = build(x, "l2", partitions=16)
    # add: a new row equal to a query is that query's nearest row
    new = index.add(q[:5])
    got = index.search(q[:5], 1, probe=16).ids[:, 0]
    assert torch.equal(got, new)
    # remove: it disappears from results
    index.remove(new[:2])
    got = index.search(q[:5], 1, probe=16).ids[:, 0]
    assert not set(new[:2].tolist()) & set(got.tolist())
    assert torch.equal(got[2:], new[2:])
    # upsert: an existing id gets a new vector (possibly in another partition)
    index.upsert(q[7:8], ids=[int(new[2])])
    assert int(index.search(q[7:8], 1, probe=16).ids[0, 0]) == int(new[2])
    assert int(index.search(q[2:3], 1, probe=16).ids[0, 0]) != int(new[2])
    torch.testing.assert_close(index.get([int(new[2])]), q[7:8])
    assert len(index) == x.shape[0] + 3
    # bookkeeping stays consistent: each live id is in exactly one partition slot
    assert int(index.partition_sizes.sum()) == len(index) * (2 if index.settings.spill else 1)
    with pytest.raises(ValueError, match="already"):
        index.add(q[:1], ids=[int(new[3])])
    assert len(index) == x.shape[0] + 3
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([10**9])


def test_compressed_only_memory_is_under_an_eighth_of_fp32():
    x, q = data(n=8000, d=384, nq=20, seed=8)
    index = build(x, "cos", partitions=16, codes="pq4", block_dims=2, keep_vectors=False)
    fp32 = x.numel() * 4
    assert index.memory_bytes <= fp32 / 8, (index.memory_bytes, fp32)
    with pytest.raises(ValueError, match="keeps no vectors"):
        index.get([0])
    with pytest.raises(ValueError, match="cannot be retrained"):
        index.train()


def test_import_from_quant_is_deprecated_but_gives_the_same_classes(monkeypatch):
    """peakknn.quant.PartitionedIndex (and the settings) still import for one version: the first
    access warns, later ones do not (the name is then cached in peakknn.quant)."""
    for name in ("PartitionedIndex", "PartitionSettings", "SearchSettings"):
        monkeypatch.delitem(vars(peakknn.quant), name, raising=False)  # as if never imported from there
    with pytest.warns(DeprecationWarning, match="peakknn.quant.PartitionedIndex is now peakknn.PartitionedIndex"):
        from peakknn.quant import PartitionedIndex
    assert PartitionedIndex is peakknn.PartitionedIndex is peakknn.partitioned.PartitionedIndex
    for name in ("PartitionSettings", "SearchSettings"):
        with pytest.warns(DeprecationWarning, match=f"peakknn.quant.{name} is now peakknn.{name}"):
            assert getattr(peakknn.quant, name) is getattr(peakknn, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert peakknn.quant.PartitionedIndex is peakknn.PartitionedIndex  # warned once already
    with pytest.raises(AttributeError):
        peakknn.quant.no_such_name  # noqa: B018
