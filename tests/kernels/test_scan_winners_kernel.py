"""The fused scan kernel (peakknn.kernels.scan_winners) against its plain-torch specification,
and the flat searches that run through it (backend="triton").

Without a GPU it runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1);
with one, the same tests run on CUDA. The module is skipped when triton is not installed.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import peakknn  # noqa: E402
from peakknn import _backend  # noqa: E402
from peakknn.kernels import scan_winners as kernel  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def check_winners(best, rows, ref_best, ref_rows, scores, tol):
    """Same winner scores (within tol); each kernel row is in its column and scores its best."""
    assert best.shape == ref_best.shape and rows.dtype == torch.int32
    torch.testing.assert_close(best, ref_best, rtol=0, atol=tol)
    empty = ref_rows < 0
    assert torch.equal(rows < 0, empty)
    got = scores.gather(1, rows.clamp_min(0).long())
    torch.testing.assert_close(got[~empty], ref_best[~empty], rtol=0, atol=tol)


SCAN_CASES = [  # nq, n, d, bins, splits
    (1, 17, 1, 16, 1),
    (5, 1000, 33, 48, 1),
    (70, 3001, 64, 128, 3),
    (3, 2500, 200, 32, 2),
    (130, 777, 16, 16, 4),
    (17, 10, 8, 16, 1),  # fewer rows than bins: empty columns
]


@pytest.mark.parametrize("nq,n,d,bins,splits", SCAN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_scan_winners_matches_reference(nq, n, d, bins, splits, dtype, masked):
    q = torch.randn(nq, d).to(dtype).to(DEVICE)
    wide = torch.randn(n, d + 7).to(dtype).to(DEVICE)
    x = wide[:, :d]  # rows with a stride wider than d, as in an index's scan rows
    bias = -0.5 * (x.float() ** 2).sum(1)
    bias[torch.randperm(n, device=DEVICE)[: n // 5]] = float("-inf")  # deleted rows
    mask = (torch.rand(n, device=DEVICE) < 0.7) if masked else None
    best, rows = kernel.scan_winners(q, x, bias, mask, bins, splits)
    ref_best, ref_rows = kernel.scan_winners_reference(q, x, bias, mask, bins, splits)
    scores = q.float() @ x.float().T + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    check_winners(best, rows, ref_best, ref_rows, scores, TOL[dtype] * d**0.5)


@pytest.mark.parametrize("d", [16, 64, 100, 256])  # multiples of block_k (no mask along d) and not
def test_scan_winners_without_bias_and_other_launch_shapes(d):
    """bias=None scores like an all-zero bias; every launch shape gives the reference's winners."""
    nq, n, bins = 37, 1500, 64
    q = torch.randn(nq, d).bfloat16().to(DEVICE)
    x = torch.randn(n, d).bfloat16().to(DEVICE)
    zero = torch.zeros(n, device=DEVICE)
    ref_best, ref_rows = kernel.scan_winners_reference(q, x, zero, None, bins, 2)
    scores = q.float() @ x.float().T
    shapes = [None, kernel.ScanConfig(16, 64, 16, 4, 2), kernel.ScanConfig(64, 32, 64, 8, 4), kernel.ScanConfig(32, 16, 128)]
    for config in shapes:
        best, rows = kernel.scan_winners(q, x, None, None, bins, 2, config)
        check_winners(best, rows, ref_best, ref_rows, scores, 1e-2 * d**0.5)
    with pytest.raises(ValueError, match="must divide bins"):
        kernel.scan_winners(q, x, None, None, 48, 1, kernel.ScanConfig(16, 32, 16))


def test_scan_winners_rejects_mismatched_inputs():
    q = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="share d"):
        kernel.scan_winners(q, torch.randn(20, 9, device=DEVICE), torch.zeros(20, device=DEVICE), None, 16, 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        kernel.scan_winners(q, torch.randn(20, 8, device=DEVICE), torch.zeros(20, device=DEVICE), None, 24, 1)


@pytest.mark.parametrize("nq,n,bins,splits", [(3, 100, 16, 1), (4, 1000, 32, 3), (2, 33, 16, 5), (5, 64, 16, 4)])
def test_scan_winners_reference_is_the_best_row_of_each_slice_column(nq, n, bins, splits):
    """The specification itself, against a loop over (query, slice, column): slices of
    round_up(ceil(n / splits), bins) rows, column (j - slice start) mod bins, the lowest row
    among equal bests, row -1 where a column has no finite score."""
    g = torch.Generator().manual_seed(n + splits)
    q = torch.randint(-2, 3, (nq, 4), generator=g).float()
    x = torch.randint(-2, 3, (n, 4), generator=g).float()  # small integers: exact scores, many ties
    bias = torch.zeros(n)
    bias[torch.randperm(n, generator=g)[: n // 3]] = float("-inf")
    mask = torch.rand(n, generator=g) < 0.8
    best, rows = kernel.scan_winners_reference(q, x, bias, mask, bins, splits)
    scores = (q.double() @ x.double().T + bias.double()).masked_fill(~mask, float("-inf")).numpy()
    split_rows = math.ceil(math.ceil(n / splits) / bins) * bins  # round_up(ceil(n / splits), bins)
    slices = math.ceil(n / split_rows)
    assert best.shape == rows.shape == (nq, slices * bins) and rows.dtype == torch.int32
    want_best = np.full((nq, slices * bins), -np.inf)
    want_rows = np.full((nq, slices * bins), -1)
    for i in range(nq):
        for s in range(slices):
            for c in range(bins):
                members = range(s * split_rows + c, min(n, (s + 1) * split_rows), bins)
                for j in members:  # strictly better wins: the lowest row among equals stays
                    if scores[i, j] > want_best[i, s * bins + c]:
                        want_best[i, s * bins + c], want_rows[i, s * bins + c] = scores[i, j], j
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(best.double().numpy(), want_best, rtol=0, atol=1e-5)


# ----------------------------------------------------------------- flat search through the kernel


def exact_ids(q, x, k, metric):
    return peakknn.search(q, x, k, metric=metric, recall_target=1.0, backend="torch").ids


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("target", [0.9, 0.99])
def test_search_kernel_recall(metric, precision, target):
    q = torch.randn(60, 48, device=DEVICE)
    x = torch.randn(6000, 48, device=DEVICE)
    res = peakknn.search(q, x, 10, metric=metric, precision=precision, recall_target=target, backend="triton")
    truth = exact_ids(q, x, 10, metric)
    recall = peakknn.SearchResult(res.scores, res.ids).mean_recall(truth.cpu())
    assert recall >= target - 0.02  # 600 neighbours: the mean sits within ~2 sd of its expectation
    ref = peakknn.search(q, x, 10, metric=metric, recall_target=1.0, backend="torch")
    hit = res.ids >= 0
    rank_of = {"ip": 1, "cos": 1, "l2": -1}[metric]
    assert bool(hit.all())
    # reported scores are exact fp32 scores of the returned ids
    xs = x if metric != "cos" else torch.nn.functional.normalize(x, dim=1)
    qs = q if metric != "cos" else torch.nn.functional.normalize(q, dim=1)
    exact = ((xs[res.ids] - qs[:, None]) ** 2).sum(-1) if metric == "l2" else (xs[res.ids] * qs[:, None]).sum(-1)
    torch.testing.assert_close(res.scores, exact, rtol=1e-4, atol=1e-4)
    assert bool((rank_of * res.scores[:, 0] <= rank_of * ref.scores[:, 0] + 1e-4).all())


@pytest.mark.parametrize("k", [1, 64, 300, 999])
def test_search_kernel_large_k_falls_back_exactly(k):
    q, x = torch.randn(7, 20, device=DEVICE), torch.randn(1000, 20, device=DEVICE)
    res = peakknn.search(q, x, k, recall_target=0.95, backend="triton")
    assert res.ids.shape == (7, k) and bool((res.ids >= 0).all())
    assert all(len(set(row.tolist())) == k for row in res.ids)
    if k >= 300:  # n < 4 * bins: the plan is exact
        assert torch.equal(res.ids, exact_ids(q, x, k, "ip"))


def test_index_kernel_adversarial_order_filters_and_deletes():
    """Periodic insert order (the adversary of test_index), deletions and allowed_ids, fused path."""
    d, n, k = 16, 8192, 10
    centre = torch.randn(d)
    x = torch.randn(n, d) * 0.05
    x[::128] += centre * 3  # the best rows all share j mod 128 in arrival order
    index = peakknn.Index(d, metric="ip", device=DEVICE, precision="bf16")
    index.add(x)
    q = centre.repeat(20, 1) + 0.01 * torch.randn(20, d)
    truth = index.search(q, k, recall_target=1.0, backend="torch").ids
    res = index.search(q, k, recall_target=0.95, backend="triton")
    assert res.mean_recall(truth) >= 0.95
    removed = torch.arange(0, n, 256)
    index.remove(removed)
    allowed = torch.arange(0, n, 2)
    res = index.search(q, k, recall_target=0.95, allowed_ids=allowed, backend="triton")
    ok = res.ids[res.ids >= 0]
    assert bool((ok % 2 == 0).all()) and not bool(torch.isin(ok, removed).any())
    truth = index.search(q, k, recall_target=1.0, allowed_ids=allowed, backend="torch").ids
    assert res.mean_recall(truth) >= 0.9


def test_backend_choice(monkeypatch):
    x = torch.randn(100, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        peakknn.search(x, x, 3, backend="cuda")
    assert _backend.resolve("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        peakknn.search(x, x, 3, backend="triton")


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("offset", [10.0, 1000.0])
def test_kernel_search_on_offset_data(metric, offset):
    """The fused path scans the same frame rows as the torch engine: a large common offset
    costs it no recall, through search and through Index (filtered too)."""
    from peakknn.evaluation import exact_rank, recall_with_ties

    g = torch.Generator().manual_seed(int(offset))
    x = (torch.randn(3000, 16, generator=g) + offset).to(DEVICE)
    q = (torch.randn(40, 16, generator=g) + offset).to(DEVICE)
    rank = exact_rank(q.cpu(), x.cpu(), metric)
    tol = 1e-5 * float(rank.abs().max())
    for precision in ("fp32", "bf16"):
        res = peakknn.search(q, x, 10, metric=metric, precision=precision, recall_target=0.95, backend="triton")
        assert recall_with_ties(res.ids.cpu(), rank, 10, tol) >= 0.9
    index = peakknn.Index(16, metric=metric, precision="bf16", device=DEVICE)
    index.add(x)
    res = index.search(q, 10, recall_target=0.95, backend="triton")
    assert recall_with_ties(res.ids, rank, 10, tol) >= 0.9
    allowed = torch.arange(0, 3000, 2)
    res = index.search(q, 5, recall_target=1.0, allowed_ids=allowed, backend="triton")
    assert bool((res.ids % 2 == 0).all())  # only allowed ids, and exactly the best of them
    assert recall_with_ties(res.ids // 2, rank[:, ::2].contiguous(), 5, tol) == 1.0
