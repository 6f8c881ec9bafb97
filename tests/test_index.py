import numpy as np
import pytest
import torch

import peakknn

from peakknn import Index
from peakknn.engine.plan import plan_scan
from peakknn.evaluation import exact_rank, recall_with_ties


def make(n=2000, d=16, metric="ip", precision="bf16"):
    index = Index(d, metric=metric, precision=precision)
    x = torch.randn(n, d)
    ids = index.add(x)
    return index, x, ids


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_search_matches_reference(metric, precision):
    index, x, ids = make(3000, 24, metric, precision)
    assert torch.equal(ids, torch.arange(3000))
    q = torch.randn(20, 24)
    res = index.search(q, 10, recall_target=1.0)
    assert recall_with_ties(res.ids, exact_rank(q, x, metric), 10, 1e-4) == 1.0


def test_user_ids_get_and_len():
    index = Index(4)
    x = torch.randn(5, 4)
    index.add(x, ids=[10, 3, 99, 7, 42])
    assert len(index) == 5 and 99 in index and 5 not in index
    assert torch.equal(index.ids, torch.tensor([3, 7, 10, 42, 99]))
    torch.testing.assert_close(index.get([99, 10]), x[[2, 0]])
    assert int(index.add(torch.randn(1, 4))[0]) == 100  # next id follows the largest


def test_remove_never_comes_back_and_slots_are_reused():
    index, x, _ = make(3000)
    q = x[:50] * 10  # each query's best match is its own row
    index.remove(torch.arange(50))
    for target in (1.0, 0.9):
        res = index.search(q, 20, recall_target=target)
        assert not bool(torch.isin(res.ids, torch.arange(50)).any())
    cap = index._slots.capacity
    index.add(torch.randn(50, 16), ids=np.arange(5000, 5050))
    assert index._slots.capacity == cap and len(index) == 3000


def test_remove_everything_gives_fillers():
    index, x, ids = make(30, 4)
    index.remove(ids[:25])
    res = index.search(torch.randn(3, 4), 10)
    assert bool((res.ids[:, 5:] == -1).all()) and bool((res.scores[:, 5:] == float("-inf")).all())
    assert set(res.ids[:, :5].flatten().tolist()) <= set(ids[25:].tolist())


def test_upsert_replaces_and_inserts():
    index, x, _ = make(1000, 8, "l2")
    new = torch.randn(2, 8) + 100
    index.upsert(new, ids=[5, 5000])
    assert len(index) == 1001
    torch.testing.assert_close(index.get([5, 5000]), new)
    res = index.search(new, 2, recall_target=1.0)
    assert res.ids[0, 0] == 5 and res.ids[1, 0] == 5000
    assert float(res.scores[0, 0]) == pytest.approx(0.0, abs=1e-3)


def test_allowed_ids_filter():
    index, x, _ = make(5000)
    q = torch.randn(30, 16)
    allowed = torch.arange(0, 5000, 7)
    for target in (1.0, 0.9):
        res = index.search(q, 10, allowed_ids=allowed, recall_target=target)
        assert bool(torch.isin(res.ids, allowed).all())
    exact = index.search(q, 10, allowed_ids=allowed, recall_target=1.0)
    sub = exact_rank(q, x[allowed], "ip")
    assert recall_with_ties(torch.searchsorted(allowed, exact.ids), sub, 10, 1e-4) == 1.0
    few = index.search(q, 10, allowed_ids=[3, 4, 123456])  # unknown ids are ignored
    assert set(few.ids[:, :2].flatten().tolist()) == {3, 4} and bool((few.ids[:, 2:] == -1).all())


def test_growth_by_doubling():
    index = Index(8)
    caps = []
    for _ in range(40):
        index.add(torch.randn(100, 8))
        caps.append(index._slots.capacity)
    assert sorted(set(caps)) == [1024, 2048, 4096]


def _periodic_adversary(n, d, k, bins):
    """A database whose insertion order puts every query's top k at positions = 0 mod bins:
    with slots in arrival order, they would all share one bin and recall would be ~1/k."""
    q = torch.randn(1, d)
    x = torch.randn(n, d)
    order = torch.argsort(x @ q[0], descending=True)
    arranged = torch.empty_like(x)
    best_pos = torch.arange(0, n, bins)[: n // bins]
    rest = torch.ones(n, dtype=torch.bool)
    rest[best_pos] = False
    arranged[best_pos] = x[order[: best_pos.numel()]]
    arranged[rest] = x[order[best_pos.numel() :]]
    return arranged, q


@pytest.mark.parametrize("insert", ["one_batch", "row_by_row_sorted", "clustered"])
def test_storage_order_cannot_break_recall(insert):
    d, n, k, target = 16, 20000, 10, 0.9
    index = Index(d, precision="fp32", recall_target=target)
    if insert == "one_batch":
        bins = plan_scan(n, k, target, None, torch.float32).bins
        x, q = _periodic_adversary(n, d, k, bins)
        qs = q + 0.01 * torch.randn(100, d)
        index.add(x)
    elif insert == "row_by_row_sorted":
        x = torch.randn(n, d)
        qs = torch.randn(100, d) * 0.1 + x.mean(0)
        x = x[torch.argsort(x @ qs.mean(0))]
        for i in range(0, n, 1000):
            index.add(x[i : i + 1000])
    else:
        centres = torch.randn(40, d) * 3
        x = centres.repeat_interleave(n // 40, 0) + 0.3 * torch.randn(n, d)
        qs = centres[torch.randint(0, 40, (100,))] + 0.3 * torch.randn(100, d)
        for c in range(40):
            index.add(x[c * (n // 40) : (c + 1) * (n // 40)])
    res = index.search(qs, k)
    assert recall_with_ties(res.ids, exact_rank(qs, x, "ip"), k, 1e-5) >= target - 0.03


def _snapshot(index, q):
    res = index.search(q, 5, recall_target=1.0)
    return len(index), res.ids.clone(), res.scores.clone()


@pytest.mark.parametrize("call,err", [
    (lambda ix: ix.add(torch.randn(3, 5)), ValueError),                      # wrong dim
    (lambda ix: ix.add(torch.randint(0, 5, (3, 8))), TypeError),             # wrong dtype
    (lambda ix: ix.add(torch.tensor([[float("nan")] * 8])), ValueError),     # NaN
    (lambda ix: ix.add(torch.full((2, 8), float("inf"))), ValueError),       # inf
    (lambda ix: ix.add(torch.randn(2, 8), ids=[1, 1]), ValueError),          # duplicate ids in one call
    (lambda ix: ix.add(torch.randn(2, 8), ids=[5000, 3]), ValueError),       # id already present
    (lambda ix: ix.add(torch.randn(2, 8), ids=[1]), ValueError),             # count mismatch
    (lambda ix: ix.add(torch.randn(1, 8), ids=[-4]), ValueError),            # negative id
    (lambda ix: ix.add(torch.randn(1, 8), ids=[1.5]), TypeError),            # float id
    (lambda ix: ix.upsert(torch.randn(2, 8), ids=[3, 3]), ValueError),
    (lambda ix: ix.upsert(torch.randn(2, 8), ids=[3, 4.0]), TypeError),
    (lambda ix: ix.remove([3, 123456]), ValueError),                         # unknown id: nothing removed
    (lambda ix: ix.remove([3, 3]), ValueError),
    (lambda ix: ix.get([123456]), ValueError),
    (lambda ix: ix.search(torch.randn(2, 8), 0), ValueError),
    (lambda ix: ix.search(torch.randn(2, 7), 3), ValueError),
    (lambda ix: ix.search(torch.randn(2, 8), 3, recall_target=2.0), ValueError),
])  # fmt: skip
def test_bad_input_leaves_index_unchanged(call, err):
    index = Index(8)
    index.add(torch.randn(100, 8))
    q = torch.randn(4, 8)
    before = _snapshot(index, q)
    with pytest.raises(err):
        call(index)
    after = _snapshot(index, q)
    assert before[0] == after[0] and torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])


def test_empty_index_and_bad_settings():
    for metric, filler in (("ip", float("-inf")), ("l2", float("inf"))):  # as search() on 0 rows
        got = Index(4, metric=metric).search(torch.randn(2, 4), 3)
        want = peakknn.search(torch.randn(2, 4), torch.zeros(0, 4), 3, metric=metric)
        assert torch.equal(got.ids, want.ids) and (got.ids == -1).all() and (got.scores == filler).all()
    with pytest.raises(ValueError, match="queries"):  # queries are still checked
        Index(4).search(torch.randn(1, 5), 1)
    for kwargs in ({"metric": "manhattan"}, {"precision": "int4"}, {"recall_target": 0.0}):
        with pytest.raises(ValueError):
            Index(4, **kwargs)
    with pytest.raises(ValueError):
        Index(0)
    with pytest.raises(ValueError, match="zero vector"):
        Index(3, metric="cos").add(torch.zeros(1, 3))


def test_old_dtype_keyword_warns_and_gives_identical_results():
    x, q = torch.randn(3000, 16), torch.randn(20, 16)
    new = Index(16, precision="fp32")
    with pytest.warns(DeprecationWarning, match="dtype= is now called precision=") as record:
        old = Index(16, dtype="fp32")
    assert record[0].filename == __file__  # the warning names the caller's line
    assert old.precision == new.precision == "fp32" and old.scan_dtype == torch.float32
    assert repr(old) == repr(new) and "precision='fp32'" in repr(old) and "dtype" not in repr(old)
    new.add(x)
    old.add(x)
    a, b = new.search(q, 10, recall_target=0.9), old.search(q, 10, recall_target=0.9)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    with pytest.raises(TypeError, match="precision"):
        Index(16, dtype="fp32", precision="fp32")


def test_old_candidates_keyword_warns_and_gives_identical_results():
    index, x, _ = make(5000, 16)
    q = torch.randn(20, 16)
    new = index.search(q, 10, recall_target=0.9, rerank=40)
    with pytest.warns(DeprecationWarning, match="candidates= is now called rerank=") as record:
        old = index.search(q, 10, recall_target=0.9, candidates=40)
    assert record[0].filename == __file__
    assert torch.equal(old.ids, new.ids) and torch.equal(old.scores, new.scores)
    with pytest.raises(TypeError, match="rerank"):
        index.search(q, 10, rerank=40, candidates=40)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("layout", ["few_live_in_many_slots", "almost_all_removed"])
def test_sparse_slots_still_return_min_k_live_results(precision, layout):
    """However few live rows sit among dead slots, every query gets min(k, live) results, and
    they are the exact nearest among the live rows."""
    d = 16
    index = Index(d, metric="l2", precision=precision, recall_target=0.95)
    if layout == "few_live_in_many_slots":  # 7 live rows spread over ~1,000 slots
        x = torch.randn(1000, d)
        index.add(x)
        keep = np.random.default_rng(1).choice(1000, 7, replace=False)
        index.remove(np.setdiff1d(np.arange(1000), keep))
        k = 7
    else:  # 10 rows left of 20,000
        x = torch.randn(20000, d)
        index.add(x)
        keep = np.arange(19990, 20000)
        index.remove(np.arange(19990))
        k = 10
    q = torch.randn(200, d)
    res = index.search(q, k)
    assert (res.ids >= 0).all(), "a query got fewer than min(k, live) results"
    truth = torch.from_numpy(keep)[torch.cdist(q, x[keep]).topk(k, largest=False).indices]
    assert torch.equal(res.ids.sort(1).values, truth.sort(1).values)
    more = index.search(q, k + 5)  # more than there are: exactly the live rows, then fillers
    assert ((more.ids >= 0).sum(1) == len(keep)).all() and (more.scores[:, len(keep):] == float("inf")).all()


def test_ids_at_the_int64_limit():
    index = Index(4)
    index.add(torch.randn(1, 4), ids=[2**63 - 2])  # the largest id: next_id still fits in int64
    with pytest.raises(ValueError, match="automatic ids"):
        index.add(torch.randn(2, 4))  # none left: nothing stored
    assert len(index) == 1 and index.ids.tolist() == [2**63 - 2]
    with pytest.raises(ValueError, match="2\\*\\*63 - 2"):
        index.add(torch.randn(1, 4), ids=[2**63 - 1])
    assert len(index) == 1


def test_float64_beyond_the_float32_range_is_refused():
    index = Index(3)
    with pytest.raises(ValueError, match="float32 range"):
        index.add(torch.tensor([[1e39, 0.0, 0.0]], dtype=torch.float64))
    assert len(index) == 0
    with pytest.raises(ValueError, match="float32 range"):
        peakknn_search = __import__("peakknn").search
        peakknn_search(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[-1e40, 0.0, 0.0]], dtype=torch.float64), 1)


def test_a_filter_of_only_unknown_ids_gives_fillers():
    index, _, _ = make(500, 8)
    for allowed in ([10**6], [2**63 - 1], []):  # none stored (the last: beyond what an id can be)
        res = index.search(torch.randn(3, 8), 4, allowed_ids=allowed)
        assert (res.ids == -1).all() and (res.scores == float("-inf")).all()
