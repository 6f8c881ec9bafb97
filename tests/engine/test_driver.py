"""The query-block loop (peakknn.engine.driver.run_blocks) and the flat search on top of it
(run_search), against plain computations."""

import pytest
import torch

from peakknn.engine.driver import run_blocks, run_search
from peakknn.engine.table import DenseTable


@pytest.mark.parametrize("nq,block", [(10, 1), (10, 3), (10, 10), (10, 64), (1, 5)])
def test_run_blocks_concatenates_blocks_in_order(nq, block):
    q = torch.randn(nq, 4)
    k = 3
    calls = []

    def search_block(qb, start):
        calls.append((start, qb.shape[0]))
        assert torch.equal(qb, q[start : start + qb.shape[0]])  # the rows of this block
        rank = qb[:, :k] * 2  # something computed from the block's own rows
        slots = (start + torch.arange(qb.shape[0])).unsqueeze(1).repeat(1, k)
        return rank, slots

    rank, slots = run_blocks(q, block, search_block, k)
    assert calls == [(s, min(block, nq - s)) for s in range(0, nq, block)]
    assert torch.equal(rank, q[:, :k] * 2)
    assert torch.equal(slots, torch.arange(nq).unsqueeze(1).repeat(1, k))


def test_run_blocks_with_no_queries_gives_empty_results():
    def never(qb, start):
        raise AssertionError("no block to search")

    rank, slots = run_blocks(torch.zeros(0, 7, dtype=torch.float32), 16, never, 5)
    assert rank.shape == slots.shape == (0, 5)
    assert rank.dtype == torch.float32 and slots.dtype == torch.int64


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("memory", [1, 256 << 20])  # one query per block, or all at once
def test_run_search_exact_is_the_exact_top_k(metric, memory):
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(2000, 8, generator=g), torch.randn(13, 8, generator=g)
    rank, slots = run_search(DenseTable(x, metric, torch.float32), q, 7, metric, 1.0, None, memory, "torch")
    # rank: larger is better, the exact fp32 re-score (-|q - x|^2 for L2)
    ref = -(torch.cdist(q.double(), x.double()) ** 2) if metric == "l2" else q.double() @ x.double().T
    assert rank.shape == slots.shape == (13, 7)
    torch.testing.assert_close(rank.double(), torch.topk(ref, 7, dim=1).values, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ref.gather(1, slots), rank.double(), rtol=1e-5, atol=1e-4)


def test_run_search_of_an_empty_table_or_no_queries():
    table = DenseTable(torch.zeros(0, 4), "ip", torch.float32)
    rank, slots = run_search(table, torch.randn(3, 4), 5, "ip", 0.9, None, 1 << 20, "torch")
    assert rank.shape == slots.shape == (3, 5) and bool((rank == float("-inf")).all())
    rank, slots = run_search(DenseTable(torch.randn(10, 4), "ip", torch.float32), torch.zeros(0, 4), 5, "ip", 0.9, None, 1 << 20, "torch")
    assert rank.shape == slots.shape == (0, 5)
