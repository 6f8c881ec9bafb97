"""The torch scan (peakknn.engine.torch_scan): the exact scan against torch.topk, and the bin scan's
candidate cells against bin winners recomputed from all scores."""

import pytest
import torch

from peakknn.engine.plan import CHUNK_COLUMNS, ScanPlan
from peakknn.engine.table import DenseTable, scan_queries, scan_side
from peakknn.engine.torch_scan import scan_cells, scan_exact


@pytest.mark.parametrize("n", [1, 100, CHUNK_COLUMNS + 37])
@pytest.mark.parametrize("k", [1, 10, 150])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_scan_exact_is_the_exact_top_k(n, k, metric):
    g = torch.Generator().manual_seed(n + k)
    x, q = torch.randn(n, 12, generator=g), torch.randn(6, 12, generator=g)
    table = DenseTable(x, metric, torch.float32)
    slots, valid = scan_exact(table, scan_side(q, table.frame, metric), k)  # queries as the scan sees them
    kk = min(k, n)
    assert slots.shape == valid.shape == (6, kk) and bool(valid.all())
    rank = q.double() @ x.double().T - (0.5 * (x.double() ** 2).sum(1) if metric == "l2" else 0.0)
    want = torch.topk(rank, kk, dim=1).values
    torch.testing.assert_close(rank.gather(1, slots), want, rtol=1e-5, atol=1e-4)  # the best kk, best first
    assert all(len(set(row)) == kk for row in slots.tolist())


@pytest.mark.parametrize("n", [1000, 999, 31])  # whole chunks, a partial last chunk, less than a chunk
@pytest.mark.parametrize("bins,groups,rerank", [(32, 4, 5), (16, 1, 3), (16, 2, 40)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_scan_cells_hold_the_best_bins_winners(n, bins, groups, rerank, metric):
    """Row j is in bin j mod bins; the rerank bins with the best winners name cells of `groups`
    rows (one per group of the winning chunk), each holding that winner."""
    g = torch.Generator().manual_seed(n + bins + rerank)
    x, q = torch.randn(n, 8, generator=g), torch.randn(9, 8, generator=g)
    table = DenseTable(x, metric, torch.float32)
    plan = ScanPlan(bins=bins, groups=groups, rerank=rerank)
    slots, valid, unresolved = scan_cells(table, scan_queries(scan_side(q, table.frame, metric), torch.float32), plan)
    cells = min(rerank, bins)
    assert slots.shape == valid.shape == (9, cells * groups)
    assert bool((slots >= 0).all() and (slots < n).all())
    rank = q.double() @ x.double().T - (0.5 * (x.double() ** 2).sum(1) if metric == "l2" else 0.0)
    for i in range(9):
        winners = {}  # bin -> (best score, row)
        for j in range(n):
            b = j % bins
            if b not in winners or rank[i, j] > winners[b][0]:
                winners[b] = (float(rank[i, j]), j)
        best_bins = sorted(winners, key=lambda b: -winners[b][0])[:cells]
        got = set(slots[i][valid[i]].tolist())
        assert {winners[b][1] for b in best_bins} <= got  # every chosen bin's winner is a candidate
        for cell, ok in zip(slots[i].view(cells, groups).tolist(), valid[i].view(cells, groups).tolist()):
            assert len({s % bins for s, good in zip(cell, ok) if good}) == 1  # a cell is one bin's rows
        # ... all rows of that bin in the winner's chunk (rows past the end are marked invalid)
        chunk = bins * groups
        mates = [j for b in best_bins for j in range(b, n, bins) if j // chunk == winners[b][1] // chunk]
        assert sorted(slots[i][valid[i]].tolist()) == sorted(mates)


def test_deep_planned_rerank_is_not_taken_for_unresolved_rounding():
    """Winners spread far apart (Gaussian scores): nothing is within the rounding of the k-th
    beyond the planned rerank, so no query goes to the fp32 fallback, however large rerank is
    against the bins."""
    from peakknn.engine.torch_scan import winners_within_rounding

    best = (torch.randn(50, 128) * 10).to(torch.bfloat16)
    for k, rerank in ((10, 20), (50, 100), (100, 120)):
        top, at, unresolved = winners_within_rounding(best, rerank, k)
        assert not bool(unresolved.any()) and top.shape[1] >= rerank
    tied = torch.full((4, 128), 3.0, dtype=torch.bfloat16)  # every winner equal: unresolvable
    assert bool(winners_within_rounding(tied, 20, 10)[2].all())
