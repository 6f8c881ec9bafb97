"""Exact fp32 re-scoring of candidates and the reported scores (peakknn.engine.rescore)."""

import pytest
import torch

from peakknn.engine import rescore as rescore_module
from peakknn.engine.rescore import finish, pad_results, rescore


class _RowsTable:
    """A plain table for rescore: rows x, with some slots dead."""

    def __init__(self, x, dead=()):
        self.x, self.live = x, torch.ones(x.shape[0], dtype=torch.bool)
        self.live[list(dead)] = False

    def exact_rows(self, slots):
        return self.x[slots]

    def alive(self, slots):
        return self.live[slots]


@pytest.mark.parametrize("rows", [1, 7, 1024, 1 << 20])  # candidate rows gathered per chunk
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("nq,m,k", [(1, 1, 1), (5, 3, 10), (37, 20, 10), (300, 40, 40)])
def test_rescore_matches_float64_reference(monkeypatch, rows, metric, nq, m, k):
    monkeypatch.setattr(rescore_module, "RESCORE_ROWS", rows)
    monkeypatch.setattr(rescore_module, "RESCORE_MIN_QUERIES", 1)
    g = torch.Generator().manual_seed(nq * 100 + m)
    x, q = torch.randn(500, 24, generator=g), torch.randn(nq, 24, generator=g)
    slots = torch.randint(0, 500, (nq, m), generator=g)
    valid = torch.rand(nq, m, generator=g) > 0.2
    table = _RowsTable(x, dead=range(0, 500, 7))
    rank, top = rescore(table, q, slots, valid, k, metric, 1 << 30)
    assert rank.shape == top.shape == (nq, k)
    ref = -torch.cdist(q.double(), x.double()).square() if metric == "l2" else q.double() @ x.double().T
    cand = ref.gather(1, slots).masked_fill(~(valid & table.live[slots]), float("-inf"))
    want = torch.topk(cand, min(k, m), dim=1).values
    assert torch.allclose(rank[:, : min(k, m)].double(), want, atol=1e-4, rtol=1e-5)
    assert bool((rank[:, min(k, m) :] == float("-inf")).all())
    found = rank > float("-inf")  # each reported slot is a live, valid candidate with that score
    assert bool(table.live[top[found]].all())
    assert torch.allclose(ref.gather(1, top)[found], rank[found].double(), atol=1e-4, rtol=1e-5)


def test_pad_results_and_finish_fillers():
    rank = torch.tensor([[3.0, 1.0], [2.0, float("-inf")]])
    slots = torch.tensor([[7, 4], [5, 9]])
    wide_rank, wide_slots = pad_results(rank, slots, 4)
    assert torch.equal(wide_rank[:, :2], rank) and bool((wide_rank[:, 2:] == float("-inf")).all())
    assert torch.equal(wide_slots, torch.tensor([[7, 4, 0, 0], [5, 9, 0, 0]]))
    same = pad_results(rank, slots, 2)
    assert torch.equal(same[0], rank) and torch.equal(same[1], slots)
    # reported scores: ranks for ip / cos (-inf filler), -rank = squared distance for L2 (+inf
    # filler); a -inf rank is a missing result with id -1
    for metric, sign in (("ip", 1.0), ("cos", 1.0), ("l2", -1.0)):
        result = finish(wide_rank, wide_slots, metric)
        missing = wide_rank == float("-inf")
        assert torch.equal(result.ids, wide_slots.masked_fill(missing, -1))
        assert torch.equal(result.scores, sign * wide_rank)
        assert bool((result.scores[missing] == sign * float("-inf")).all())
