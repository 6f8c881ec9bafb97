"""The PartitionedIndex search (peakknn.partitioned.scan): recall against exact search, monotone
probe curves, filters, adaptive probing, batched page products, scratch reuse and fillers."""

import concurrent.futures
import itertools

import numpy as np
import pytest
import torch
from partitioned_helpers import CODES, METRICS, build, check_recall_and_exact_scores, data, low_rank, taken_partitions, truth

from peakknn import Index
from peakknn.data import clustered
from peakknn.evaluation import recall
from peakknn.partitioned import scan


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", CODES)
def test_all_partitions_with_rerank_reach_high_recall(metric, codes):
    x, q = data()
    index = build(x, metric, codes=codes)
    assert index.is_trained and len(index) == x.shape[0]
    check_recall_and_exact_scores(index, x, q, metric, probe=32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", ("bf16", "pq4"))
@pytest.mark.parametrize("spill", (False, True))
def test_recall_is_monotone_in_partitions_searched(metric, codes, spill):
    x, q = data(seed=1, spread=1.0)  # wide clusters: one partition does not hold all neighbours
    index = build(x, metric, codes=codes, block_dims=4, spill=spill)
    expected = truth(x, q, 10, metric)
    curve = [recall(index.search(q, 10, probe=p).ids, expected) for p in (1, 2, 4, 8, 16, 32)]
    assert all(b >= a - 0.005 for a, b in zip(curve, curve[1:])), curve
    assert curve[0] < curve[-1]


def test_recall_compares_with_the_flat_index():
    x, q = data(n=6000, d=48, seed=2)
    expected = truth(x, q, 10, "cos")
    part = build(x, "cos", partitions=48)
    flat = Index(48, metric="cos")
    flat.add(x)
    assert recall(part.search(q, 10, probe=48).ids, expected) >= recall(flat.search(q, 10).ids, expected) - 0.01


def test_compressed_only_search_ranks_by_codes():
    ds = clustered(4000, 64, 60, clusters=40, spread=1.0, seed=8)
    x, q = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    expected = truth(x, q, 10, "cos")
    index = build(x, "cos", partitions=16, codes="pq4", keep_vectors=False)
    result = index.search(q, 10, probe=16)
    assert recall(result.ids, expected) >= 0.6  # measured 0.70; random ids would give 0.0025
    # reported scores are the codes' estimates, close to the exact cosines
    exact = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(x, dim=1).T).gather(1, result.ids)
    assert float((result.scores - exact).abs().mean()) < 0.05


@pytest.mark.parametrize("codes", CODES)
def test_allowed_ids_filter(codes):
    x, q = data(seed=16, spread=1.0)
    index = build(x, "l2", partitions=16, codes=codes, block_dims=4)
    allowed = torch.arange(0, x.shape[0], 5)
    before = index.search(q, 10, probe=16)
    result = index.search(q, 10, probe=16, allowed_ids=allowed.flip(0).tolist() + [10**9])  # unknown id ignored
    assert bool(torch.isin(result.ids, allowed).all())
    expected = allowed[truth(x[allowed], q, 10, "l2")]
    assert recall(result.ids, expected) >= 0.99
    nothing = index.search(q, 3, probe=16, allowed_ids=[])
    assert bool((nothing.ids == -1).all())
    one = index.search(q, 3, probe=16, allowed_ids=torch.tensor([7]))
    assert bool((one.ids[:, 0] == 7).all()) and bool((one.ids[:, 1:] == -1).all())
    with pytest.raises(TypeError, match="allowed_ids"):
        index.search(q, 3, allowed_ids=[1.5])
    after = index.search(q, 10, probe=16)  # filters leave the index untouched
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)


@pytest.mark.parametrize("codes", CODES)
def test_group_size_does_not_change_results(monkeypatch, codes):
    x, q = data(seed=12)
    index = build(x, "cos", codes=codes, spill=True)
    expected = index.search(q, 10, probe=5)
    # one page per product, and products capped at a few padded queries (runs split by the cap)
    settings = ((1, 1, 0), (1 << 30, 3 * index._entries.lists.page_rows, 0), (1 << 30, 1 << 30, 0), (1 << 30, 1 << 30, 10**6))
    for group_bytes, group_scores, gap in settings:
        monkeypatch.setattr(scan, "GROUP_BYTES", group_bytes)
        monkeypatch.setattr(scan, "GROUP_SCORES", group_scores)
        monkeypatch.setattr(scan, "GROUP_GAP", gap)
        got = index.search(q, 10, probe=5)
        assert torch.equal(got.ids, expected.ids)
        torch.testing.assert_close(got.scores, expected.scores)


def test_page_groups_cover_every_pair_once_within_bounds():
    x, q = data(seed=13)
    index = build(x, "ip", codes="bf16", spill=True)
    lists = index._entries.lists
    limits = ((1, 1), (4, 10), (7, 1000), (10**6, 10**9))
    for queries, (most_pages, most_cells), gap in itertools.product((q[:2], q), limits, (0, 3, 10**6)):
        pids = torch.topk(queries @ index._centres.T, 6, dim=1).indices
        pairs = scan.PagePairs(lists, pids)
        counts = torch.bincount(pairs.page, minlength=lists.page_count).numpy()
        assert queries.shape[0] > 2 or (counts == 0).any()  # two queries leave gaps between probed pages
        seen = 0
        for g0, g1, lo, hi, most in pairs.groups(most_pages, most_cells, gap):
            assert lo == seen and hi > lo and 1 <= g1 - g0 <= most_pages
            assert (g1 - g0) * most <= most_cells or g1 - g0 == 1
            assert most == counts[g0:g1].max() and counts[g0] > 0 and counts[g1 - 1] > 0
            assert bool((pairs.page[lo:hi] >= g0).all() and (pairs.page[lo:hi] < g1).all())
            gaps = np.diff(np.flatnonzero(counts[g0:g1])) - 1
            assert gaps.size == 0 or gaps.max() <= gap
            seen = hi
        assert seen == pairs.page.numel()


def test_reused_scratch_gives_the_same_results_across_sizes_and_threads(monkeypatch):
    x, q = data(seed=14)
    index = build(x, "ip", codes="bf16", spill=True)
    monkeypatch.setattr(scan, "REUSE_SCRATCH", False)
    fresh = {probe: index.search(q, 10, probe=probe) for probe in (1, 8, 3)}
    monkeypatch.setattr(scan, "REUSE_SCRATCH", True)
    for probe in (1, 8, 3, 8):  # the buffer grows, then smaller searches reuse it
        got = index.search(q, 10, probe=probe)
        assert torch.equal(got.ids, fresh[probe].ids) and torch.equal(got.scores, fresh[probe].scores)
    held = index._scratch.tensors["scores"]
    index.search(q[:5], 10, probe=1)
    assert index._scratch.tensors["scores"] is held  # no new allocation for a smaller search
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # each thread has its own scratch
        results = list(pool.map(lambda p: index.search(q, 10, probe=p), [1, 8, 3, 8, 1, 3] * 3))
    for probe, got in zip([1, 8, 3, 8, 1, 3] * 3, results):
        assert torch.equal(got.ids, fresh[probe].ids)


def test_fewer_rows_than_k_gives_fillers():
    x, q = data(n=200, seed=10)
    index = build(x, "l2", partitions=4, codes="bf16")
    result = index.search(q, 300, probe=1)
    assert (result.ids == -1).any()
    assert torch.isinf(result.scores[result.ids == -1]).all()
    assert (result.scores[result.ids == -1] > 0).all()  # +inf for distances
    empty = index.search(torch.zeros(0, x.shape[1]), 5)
    assert empty.ids.shape == (0, 5) and empty.scores.shape == (0, 5)


@pytest.mark.parametrize("codes", ("bf16", "pq4"))
def test_small_memory_budget_gives_the_same_results(codes):
    """max_memory only bounds the query blocks (down to one query per block): the results stay
    those of the default budget (as for the flat search, test_search.test_bounded_memory_still_correct)."""
    x, q = data(n=2000, d=16, nq=7, seed=17)
    index = build(x, "ip", partitions=8, codes=codes)
    expected = index.search(q, 5, probe=8)
    for budget in (1, 1000, 10**5):
        got = index.search(q, 5, probe=8, max_memory=budget)
        assert torch.equal(got.ids, expected.ids)
        torch.testing.assert_close(got.scores, expected.scores)


# ----------------------------------------------------------------- adaptive probe


@pytest.mark.parametrize("metric", METRICS)
def test_adaptive_search_is_a_fixed_search_with_each_querys_own_probe(metric):
    """Query by query, adaptive search = a fixed search with probe = the partitions it takes."""
    x, q = data(n=3000, d=16, nq=40, seed=22, spread=1.0)
    index = build(x, metric, partitions=48, codes="int8")
    probe = 3
    taken = taken_partitions(index, q, probe)
    assert taken.min() >= 1 and taken.max() <= 2 * probe and len(set(taken.tolist())) > 1  # it does adapt
    got = index.search(q, 10, probe=probe, adaptive=True)
    for i in range(len(q)):
        one = index.search(q[i : i + 1], 10, probe=int(taken[i]), adaptive=False)
        assert torch.equal(got.ids[i], one.ids[0])
        torch.testing.assert_close(got.scores[i], one.scores[0])
    fixed = index.search(q, 10, probe=probe, adaptive=False)
    assert not torch.equal(got.ids, fixed.ids)  # the setting reaches the search


def test_adaptive_gives_more_recall_at_the_same_mean_probe():
    x, q = data(n=8000, d=32, nq=300, seed=23, spread=1.5)
    index = build(x, "cos", partitions=128, spill=False)
    expected = truth(x, q, 10, "cos")
    for probe in (2, 4):
        mean = float(taken_partitions(index, q, probe).double().mean())
        below, above = int(mean), int(mean) + 1  # fixed probes around the adaptive mean
        fixed = [recall(index.search(q, 10, probe=p, adaptive=False).ids, expected) for p in (below, above)]
        interpolated = fixed[0] + (mean - below) * (fixed[1] - fixed[0])
        assert recall(index.search(q, 10, probe=probe).ids, expected) > interpolated


# ----------------------------------------------------------------- projected first pass (scan_dims)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", ("bf16", "int8"))
@pytest.mark.parametrize("scan_dims", (16, "auto"))
def test_projected_first_pass_keeps_recall_and_exact_scores(metric, codes, scan_dims):
    x, q = low_rank(seed=1)
    index = build(x, metric, partitions=16, codes=codes, scan_dims=scan_dims)
    assert index.scan_dims < x.shape[1]  # rows are stored narrower than they are
    assert index._entries.lists.codes.shape[2] == index.scan_dims
    expected = check_recall_and_exact_scores(index, x, q, metric, probe=16)
    # a narrower first pass is still re-ranked exactly, but it does find fewer true neighbours
    narrow = build(x, metric, partitions=16, codes=codes, scan_dims=2).search(q, 10, probe=16, rerank=10)
    assert recall(narrow.ids, expected) < 0.9


# ----------------------------------------------------------------- scan helpers


def test_repeats_marks_later_copies_of_a_slot():
    """repeats: True where a non-negative slot already appeared earlier in its row (a row found
    through both of its partitions), checked against a plain Python scan of each row."""
    g = torch.Generator().manual_seed(3)
    slot = torch.randint(-1, 6, (50, 9), generator=g)
    got = scan.repeats(slot)
    for row, flags in zip(slot.tolist(), got.tolist()):
        seen, want = set(), []
        for s in row:
            want.append(s >= 0 and s in seen)
            seen.add(s)
        assert flags == want


def test_scratch_take_reuses_its_memory():
    scratch = scan.Scratch()
    a = scratch.take("x", (4, 5), torch.float32, torch.device("cpu"))
    b = scratch.take("x", (2, 3), torch.float32, torch.device("cpu"))  # smaller: the same memory
    assert b.shape == (2, 3) and b.data_ptr() == a.data_ptr()
    c = scratch.take("x", (10, 10), torch.float32, torch.device("cpu"))  # larger: a new tensor
    assert c.shape == (10, 10) and c.numel() == 100
    d = scratch.take("x", (2, 3), torch.bfloat16, torch.device("cpu"))  # another dtype: a new tensor
    assert d.dtype == torch.bfloat16 and d.shape == (2, 3)
