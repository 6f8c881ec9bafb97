"""PartitionedIndex on awkward data (a large common offset, SIFT-like integers, tiny and huge
norms): probing every partition and re-ranking, bf16 and int8 codes find the exact neighbours;
4-bit PQ codes do where the residuals leave room (offsets on unnormalised data, scales)."""

import zlib

import pytest
import torch

from peakknn import PartitionedIndex, PartitionSettings
from peakknn.evaluation import exact_rank, recall_with_ties

N, NQ, D, K = 5000, 100, 32, 10


def make(kind: str):
    g = torch.Generator().manual_seed(zlib.crc32(kind.encode()))
    x, q = torch.randn(N, D, generator=g), torch.randn(NQ, D, generator=g)
    if kind.startswith("offset"):
        off = float(kind.split("-")[1])
        return x + off, q + off
    if kind == "sift":
        both = torch.clamp(torch.cat([x, q]) * 40 + 20, min=0).round()
        return both[:N], both[N:]
    scale = {"tiny": 1e-20, "huge": 1e17}[kind]
    return x * scale, q * scale


def recall_of(index, x, q, metric):
    res = index.search(q, K, probe=index.settings.partitions, adaptive=False)
    rank = exact_rank(q, x, metric)
    tol = 1e-5 * float(rank.abs().max()) + 1e-30
    reported = -res.scores.double() if metric == "l2" else res.scores.double()
    torch.testing.assert_close(reported, rank.gather(1, res.ids.clamp_min(0)), rtol=1e-4, atol=tol)  # exact scores
    return recall_with_ties(res.ids, rank, K, tol)


@pytest.mark.parametrize("kind", ["offset-10", "offset-1000", "sift", "tiny", "huge"])
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("codes", ["bf16", "int8"])
def test_every_partition_with_rerank_is_exact_on_awkward_data(kind, metric, codes):
    x, q = make(kind)
    index = PartitionedIndex(D, metric=metric, settings=PartitionSettings(partitions=16, codes=codes, train_size=None))
    index.add(x)
    index.train()
    assert recall_of(index, x, q, metric) >= 0.99


@pytest.mark.parametrize("kind", ["offset-10", "offset-1000", "tiny", "huge"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_pq4_codes_keep_working_under_offsets_and_scales(kind, metric):
    x, q = make(kind)
    index = PartitionedIndex(D, metric=metric, settings=PartitionSettings(partitions=16, codes="pq4", train_size=None))
    index.add(x)
    index.train()
    assert recall_of(index, x, q, metric) >= 0.95
