import numpy as np
import pytest
import torch

from peakknn import search
from peakknn.evaluation import exact_rank, recall_with_ties

TOL = {"fp32": 1e-3, "bf16": 1e-3}  # scores are re-computed in fp32: compare with float64 loosely


def check_exact_scores(res, q, x, metric):
    """Reported scores are the exact scores of the reported ids (fillers where id == -1)."""
    rank = exact_rank(q, x, metric)
    valid = res.ids >= 0
    got = rank.gather(1, res.ids.clamp_min(0))
    reported = -res.scores.double() if metric == "l2" else res.scores.double()
    scale = rank.abs().amax().clamp_min(1.0)
    assert torch.allclose(reported[valid], got[valid], atol=1e-4 * float(scale), rtol=1e-4)
    filler = float("inf") if metric == "l2" else float("-inf")
    assert bool((res.scores[~valid] == filler).all())
    # sorted best first
    r = torch.where(valid, reported, torch.tensor(float("-inf"), dtype=torch.float64))
    assert bool((r[:, :-1] >= r[:, 1:] - 1e-5 * float(scale)).all())


SHAPES = [  # n, d, nq, k
    (1, 1, 1, 1), (7, 3, 5, 10), (50, 1, 4, 50), (1000, 1000, 3, 5), (2049, 17, 9, 1), (20011, 64, 33, 10), (8192 * 2 + 5, 8, 4, 10),
]  # fmt: skip


@pytest.mark.parametrize("n,d,nq,k", SHAPES)
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_mode_matches_float64(n, d, nq, k, metric, precision):
    x, q = torch.randn(n, d), torch.randn(nq, d)
    res = search(q, x, k, metric=metric, precision=precision, recall_target=1.0)
    assert res.ids.shape == (nq, k) and res.scores.shape == (nq, k)
    assert res.ids.dtype == torch.int64 and res.scores.dtype == torch.float32
    check_exact_scores(res, q, x, metric)
    rank = exact_rank(q, x, metric)
    kk = min(k, n)
    assert recall_with_ties(res.ids[:, :kk], rank, kk, 1e-4 * float(rank.abs().amax().clamp_min(1))) == 1.0
    assert bool((res.ids[:, kk:] == -1).all())


@pytest.mark.parametrize("n,d,nq,k", SHAPES)
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_approximate_mode_is_consistent(n, d, nq, k, metric, precision):
    x, q = torch.randn(n, d), torch.randn(nq, d)
    res = search(q, x, k, metric=metric, precision=precision, recall_target=0.9)
    check_exact_scores(res, q, x, metric)
    kk = min(k, n)
    assert bool((res.ids[:, :kk] >= 0).all()) and bool((res.ids[:, kk:] == -1).all())
    for row in res.ids:
        valid = row[row >= 0]
        assert valid.unique().numel() == valid.numel()


def test_numpy_non_contiguous_and_dtypes():
    x = torch.randn(64, 3000).T  # [3000, 64], non-contiguous
    q = torch.randn(64, 10)[:, ::2].T  # [5, 64], non-contiguous
    ref = search(q.contiguous(), x.contiguous(), 5, recall_target=1.0)
    for xx, qq in [(x, q), (x.numpy(), q.numpy()), (x.double(), q.half()), (x.bfloat16().float(), q)]:
        res = search(qq, xx, 5, recall_target=1.0)
        assert res.ids.shape == (5, 5)
    res = search(q, x, 5, recall_target=1.0)
    assert torch.equal(res.ids, ref.ids)


def test_duplicate_scores_allowing_ties():
    x = torch.randint(-2, 3, (5000, 4)).float()  # many identical rows
    q = torch.randint(-2, 3, (20, 4)).float()
    res = search(q, x, 10, recall_target=1.0)
    rank = exact_rank(q, x, "ip")
    assert recall_with_ties(res.ids, rank, 10, 1e-6) == 1.0


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("target", [0.8, 0.95])
def test_recall_meets_target(metric, precision, target):
    x, q = torch.randn(30000, 32), torch.randn(300, 32)
    res = search(q, x, 10, metric=metric, precision=precision, recall_target=target)
    # 300 queries x 10: standard error <= 0.01; margin 0.03.
    assert recall_with_ties(res.ids, exact_rank(q, x, metric), 10, 1e-6) >= target - 0.03


@pytest.mark.parametrize("order", ["sorted", "clustered"])
def test_recall_adversarial_orderings(order):
    q = torch.randn(200, 32)
    x = torch.randn(30000, 32)
    if order == "sorted":  # database sorted by score against the mean query
        x = x[torch.argsort(x @ q.mean(0))]
        q = q.mean(0) + 0.1 * torch.randn(200, 32)
    else:  # 60 tight clusters stored one after the other; queries near cluster centres
        centres = torch.randn(60, 32) * 3
        x = (centres.repeat_interleave(500, 0) + 0.3 * torch.randn(30000, 32))
        q = centres[torch.randint(0, 60, (200,))] + 0.3 * torch.randn(200, 32)
    for target in (0.8, 0.95):
        res = search(q, x, 10, recall_target=target, precision="bf16")
        assert recall_with_ties(res.ids, exact_rank(q, x, "ip"), 10, 1e-5) >= target - 0.03


def test_bounded_memory_still_correct():
    x, q = torch.randn(5000, 16), torch.randn(50, 16)
    a = search(q, x, 7, recall_target=0.9, max_memory=1)  # one query per block
    b = search(q, x, 7, recall_target=0.9)
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("call,err", [
    (lambda: search(torch.randn(2, 3), torch.randn(10, 4), 1), ValueError),
    (lambda: search(torch.randn(2, 4), torch.randint(0, 3, (10, 4)), 1), TypeError),
    (lambda: search(torch.randn(2, 4), torch.randn(10, 4), 0), ValueError),
    (lambda: search(torch.randn(2, 4), torch.randn(10, 4), 2.5), TypeError),
    (lambda: search(torch.tensor([[float("nan")] * 4]), torch.randn(10, 4), 1), ValueError),
    (lambda: search(torch.randn(2, 4), torch.full((10, 4), float("inf")), 1), ValueError),
    (lambda: search(torch.randn(2, 4), torch.randn(10, 4), 1, metric="hamming"), ValueError),
    (lambda: search(torch.randn(2, 4), torch.randn(10, 4), 1, precision="int3"), ValueError),
    (lambda: search(torch.randn(2, 4), torch.zeros(10, 4), 1, metric="cos"), ValueError),
    (lambda: search(torch.randn(2, 4), [[1.0] * 4, [1.0] * 3], 1), ValueError),  # ragged
    (lambda: search(torch.randn(2, 4), [[True] * 4], 1), TypeError),
    (lambda: search(torch.randn(2, 4), [["a"] * 4], 1), TypeError),
    (lambda: search(torch.randn(2, 4), {1.0, 2.0}, 1), TypeError),
    (lambda: search(np.ones((2, 4), dtype=np.int32), torch.randn(10, 4), 1), TypeError),
])  # fmt: skip
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


def test_old_candidates_keyword_warns_and_gives_identical_results():
    x, q = torch.randn(5000, 16), torch.randn(20, 16)
    new = search(q, x, 10, recall_target=0.9, precision="bf16", rerank=40)
    with pytest.warns(DeprecationWarning, match="candidates= is now called rerank=") as record:
        old = search(q, x, 10, recall_target=0.9, precision="bf16", candidates=40)
    assert record[0].filename == __file__  # the warning names the caller's line
    assert torch.equal(old.ids, new.ids) and torch.equal(old.scores, new.scores)
    with pytest.raises(TypeError, match="rerank"):
        search(q, x, 10, rerank=40, candidates=40)
