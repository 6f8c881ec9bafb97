"""How a flat search is cut up (peakknn.engine.plan): bins, cells and re-scoring depth for the
torch scan and the fused kernel, and query blocks within a memory budget."""

import itertools

import torch

from peakknn import bins_for_recall, expected_recall
from peakknn._types import default_rerank
from peakknn.engine.plan import MAX_GROUPS, MIN_BIN_FILL, SEARCH_CONFIDENCE, ScanPlan, extra_bins_cap, plan_kernel, plan_scan, query_block
from peakknn.topk.recall import bins_for_confidence


def needed_bins(k, target):
    """The fewest bins that keep each query's recall >= target with SEARCH_CONFIDENCE, rounded up
    to a multiple of 16 (the plans' vector width); never fewer than the expectation needs."""
    bins = bins_for_confidence(k, target, confidence=SEARCH_CONFIDENCE)
    assert bins >= bins_for_recall(k, target)
    return -(-bins // 16) * 16


def test_exact_plans():
    for plan in (plan_scan, plan_kernel):
        assert plan(10**6, 10, 1.0, None, torch.float32) is None  # recall 1: an exact scan
        assert plan(100, 100, 0.9, None, torch.float32) is None  # k >= n
        bins = needed_bins(10, 0.95)
        assert plan(4 * bins - 1, 10, 0.95, None, torch.bfloat16) is None  # too few rows to save work
        assert plan(4 * bins, 10, 0.95, None, torch.bfloat16) is not None


CASES = list(itertools.product((5000, 100_000, 3_000_000), (1, 10, 100), (0.8, 0.95, 0.99), (None, 7, 300), (torch.float32, torch.bfloat16)))


def test_scan_plan_invariants():
    for case in CASES:
        n, k, target, rerank, dtype = case
        plan = plan_scan(n, k, target, rerank, dtype, chunk_columns=4096)
        if n < 4 * needed_bins(k, target):
            assert plan is None, case
            continue
        assert plan.bins % 16 == 0 and plan.bins >= needed_bins(k, target), case
        assert expected_recall(k, plan.bins) >= target, case  # the bins keep the recall target
        assert 1 <= plan.groups <= MAX_GROUPS and plan.chunk == plan.bins * plan.groups, case
        assert plan.chunk <= max(4096, plan.bins), case  # a chunk's scores fit the chunk width
        wanted = max(k, default_rerank(k, dtype) if rerank is None else rerank)
        assert plan.rerank == min(wanted, plan.bins), case  # never fewer than k cells, never more than bins


def test_kernel_plan_invariants():
    for case in CASES:
        n, k, target, rerank, dtype = case
        plan = plan_kernel(n, k, target, rerank, dtype)
        if n < 4 * needed_bins(k, target):
            assert plan is None, case
            continue
        assert plan.groups == 1 and plan.chunk == plan.bins, case  # the kernel's cells are single rows
        assert plan.bins % 16 == 0 and plan.bins >= needed_bins(k, target), case  # scan_winners needs bins % 16 == 0
        assert plan.rerank == max(k, default_rerank(k, dtype) if rerank is None else rerank), case


def test_extra_bins_keep_enough_rows_each():
    for n in (1, 100, 1024, 5000, 65536, 10**6 + 3):
        cap = extra_bins_cap(n)
        assert cap % 16 == 0 and cap >= 16
        assert cap == 16 or n // cap >= MIN_BIN_FILL


def test_query_block_fits_the_memory_budget():
    for chunk, esize, memory, most in itertools.product((16, 4096, 65536), (2, 4), (1, 10**5, 256 << 20), (1, 64, 4096)):
        block = query_block(chunk, esize, memory, most)
        per_query = chunk * (esize + 4) + 64  # one chunk's scores and the bin state
        assert 1 <= block <= most
        assert block == 1 or block * per_query <= memory
        assert block == most or (block + 1) * per_query > memory  # as many as fit


def test_scan_plan_chunk():
    assert ScanPlan(bins=32, groups=4, rerank=8).chunk == 128


def test_small_k_keeps_the_expectation_too():
    """k = 2 or 3 has few recall values: the per-query statement alone would allow fewer bins
    than the mean needs; the plans keep both."""
    from peakknn.topk.plan import plan_bins

    for k, target in ((2, 0.99), (2, 0.999), (3, 0.999), (10, 0.9)):
        bins = plan_bins(10**7, k, target, confidence=SEARCH_CONFIDENCE)
        assert bins >= bins_for_recall(k, target) and bins >= bins_for_confidence(k, target, confidence=SEARCH_CONFIDENCE)
