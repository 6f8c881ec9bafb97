"""Index and PartitionedIndex life cycles on the test device: CUDA when a GPU is present, else CPU.

On a GPU these catch tensors created on the wrong device (training, loading, filtering); on the
CPU they repeat, small, what the other modules test in depth.
"""

import pytest
import torch

import peakknn
from peakknn import PartitionedIndex, PartitionSettings

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D = 32


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3000, D, generator=g), torch.randn(40, D, generator=g)


def check_life_cycle(index, x, q, search, exact_rerank=True):
    """add, remove, upsert and allowed_ids behave on index (search(index, q, k) -> result)."""
    index.add(x)
    if isinstance(index, PartitionedIndex):
        index.train()
    res = search(index, q, 5)
    assert res.ids.shape == (len(q), 5) and bool((res.ids >= 0).all())
    index.remove(torch.arange(0, 3000, 3))
    assert not bool(torch.isin(search(index, q, 5).ids, torch.arange(0, 3000, 3)).any())
    new = torch.randn(5, D)
    index.upsert(new, torch.arange(1, 6))
    found = search(index, new, 1).ids[:, 0]  # each upserted row is its own nearest (code estimates: most)
    assert int((found == torch.arange(1, 6)).sum()) >= (5 if exact_rerank else 4)
    even = search(index, q, 5, allowed_ids=torch.arange(0, 3000, 2)).ids
    assert bool((even[even >= 0] % 2 == 0).all())


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_index_life_cycle(tmp_path, data, metric, precision):
    x, q = data
    index = peakknn.Index(D, metric=metric, precision=precision, device=DEVICE)
    index.add(x)
    exact = peakknn.search(q, x, 10, metric=metric, recall_target=1.0).ids
    assert index.search(q, 10, recall_target=0.95).mean_recall(exact) >= 0.9
    index = peakknn.Index(D, metric=metric, precision=precision, device=DEVICE)
    check_life_cycle(index, x, q, lambda i, qq, k, **kw: i.search(qq, k, **kw))
    index.save(tmp_path / "flat")
    loaded = peakknn.Index.load(tmp_path / "flat", device=DEVICE)
    assert torch.equal(loaded.search(q, 10).ids, index.search(q, 10).ids)


@pytest.mark.parametrize(
    "settings",
    [dict(codes="bf16"), dict(codes="int8"), dict(codes="pq4"), dict(codes="pq4", keep_vectors=False, threshold=0.2),
     dict(codes="bf16", scan_dims=D, anisotropic_partitions=True)],
    ids=["bf16", "int8", "pq4", "pq4-codes-only", "bf16-projected"],
)  # fmt: skip
def test_partitioned_life_cycle(tmp_path, data, settings):
    x, q = data
    s = PartitionSettings(partitions=16, train_size=None, **settings)
    index = PartitionedIndex(D, metric="l2", settings=s, device=DEVICE)
    index.add(x)
    index.train()
    if s.keep_vectors:  # all partitions with exact re-ranking
        exact = peakknn.search(q, x, 10, metric="l2", recall_target=1.0).ids
        assert index.search(q, 10, probe=16, rerank=200).mean_recall(exact) >= 0.95
    index = PartitionedIndex(D, metric="l2", settings=s, device=DEVICE)
    check_life_cycle(index, x, q, lambda i, qq, k, **kw: i.search(qq, k, probe=16, **kw), s.keep_vectors)
    index.save(tmp_path / "part")
    loaded = PartitionedIndex.load(tmp_path / "part", device=DEVICE)
    assert torch.equal(loaded.search(q, 10, probe=4).ids, index.search(q, 10, probe=4).ids)
