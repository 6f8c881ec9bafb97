"""approx_topk's torch paths against the plain reference (peakknn.topk.reference): per_bin = 1
(strided max and revisit), per_bin > 1 (packed keys and a max / min network), and per_bin=None
(the cost model's choice, compared with the reference of the per_bin it chose). Recall is
checked in test_topk_recall.py, the choice in test_plan_costs.py."""

import pytest
import torch

from peakknn import approx_topk
from peakknn.topk import approx_topk_reference, plan_topk
from peakknn.topk.plan import topk_bins


def assert_same_topk(v, i, vr, x, dim, *, sorted=True):
    """Equal values (sorted, or as multisets); indices point at those values, distinct per row."""
    if not sorted:
        v, order = v.sort(dim, descending=True)
        i = i.gather(dim, order)
        vr = vr.sort(dim, descending=True).values
    torch.testing.assert_close(v, vr, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x.gather(dim, i), v, rtol=0, atol=0, equal_nan=True)
    assert i.dtype == torch.int64
    rows = i.movedim(dim, -1).reshape(-1, i.shape[dim])
    assert all(len(set(r.tolist())) == len(r) for r in rows)


SHAPES = [((5, 123, 123), -1), ((5, 123, 123), 1), ((3, 10007), -1), ((20000,), 0), ((2, 3, 4099), 2), ((700, 2), 0), ((1, 1), -1)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
def test_matches_reference(shape, dim, dtype, largest):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(dtype)
    n = x.shape[dim]
    for k in sorted({1, min(10, n), n}):
        for target, per_bins in ((0.5, (1, 3)), (0.95, (1, 2))):  # (recall_target 1.0: test_exact_when_target_is_one)
            for per_bin in per_bins:
                v, i = approx_topk(x, k, dim, recall_target=target, largest=largest, per_bin=per_bin)
                vr, _ = approx_topk_reference(x, k, dim, recall_target=target, largest=largest, per_bin=per_bin)
                assert v.shape == vr.shape == torch.topk(x, k, dim).values.shape
                assert_same_topk(v, i, vr, x, dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
def test_automatic_per_bin_matches_the_reference_of_its_choice(dtype, largest):
    g = torch.Generator().manual_seed(1)
    for rows, n, k in ((64, 3072, 128), (4, 20000, 10), (300, 777, 16)):
        x = torch.randn(rows, n, generator=g).to(dtype)
        plan = plan_topk(rows, n, k, 0.9, dtype=dtype)
        v, i = approx_topk(x, k, recall_target=0.9, largest=largest)
        if plan.exact:
            vr = torch.topk(x, k, largest=largest).values
        else:
            vr, _ = approx_topk_reference(x, k, recall_target=0.9, largest=largest, per_bin=plan.per_bin)
            assert plan.bins == topk_bins(n, k, 0.9, plan.per_bin)
        assert_same_topk(v, i, vr, x, 1)


@pytest.mark.parametrize("per_bin", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_per_bin_fast_path_ties_infinities_and_padding(per_bin, dtype):
    """Heavy ties (first index per bin decides the winners), -inf / +inf, a row length that is
    not a multiple of the bin count (padding in the last group), largest and smallest."""
    g = torch.Generator().manual_seed(per_bin)
    for n in (4099, 12345):
        x = torch.randint(0, 5, (5, n), generator=g).to(dtype)
        x[:, ::7] = float("-inf")
        x[0, 11] = float("inf")
        x[1] = float("-inf")  # a whole row of -inf
        for largest in (True, False):
            for k in (1, 40):
                v, i = approx_topk(x, k, recall_target=0.9, largest=largest, per_bin=per_bin)
                vr, _ = approx_topk_reference(x, k, recall_target=0.9, largest=largest, per_bin=per_bin)
                assert_same_topk(v, i, vr, x, 1)


def test_per_bin_fast_path_is_the_reference_index_for_index_without_ties():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50, 7000, generator=g)
    for per_bin in (2, 3, 6):
        _, i = approx_topk(x, 25, recall_target=0.9, per_bin=per_bin)
        _, ir = approx_topk_reference(x, 25, recall_target=0.9, per_bin=per_bin)
        assert torch.equal(i, ir)


@pytest.mark.parametrize("per_bin", [1, 2, 4])
def test_unsorted_holds_the_same_set(per_bin):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 9000, generator=g)
    v, i = approx_topk(x, 40, recall_target=0.9, per_bin=per_bin, sorted=False)
    vr, _ = approx_topk_reference(x, 40, recall_target=0.9, per_bin=per_bin)
    assert_same_topk(v, i, vr, x, 1, sorted=False)


def test_exact_when_target_is_one():
    x = torch.randn(4, 5000)
    for per_bin in (None, 1, 3):
        v, i = approx_topk(x, 17, recall_target=1.0, per_bin=per_bin)
        torch.testing.assert_close(v, torch.topk(x, 17).values)
        torch.testing.assert_close(x.gather(1, i), v)
    assert plan_topk(4, 5000, 17, 1.0).exact


@pytest.mark.parametrize("per_bin", [1, 2, 4])
def test_non_contiguous_and_duplicates(per_bin):
    base = torch.randn(6000, 8)
    x = base.T  # non-contiguous along the reduced dim
    v, i = approx_topk(x, 10, -1, recall_target=0.9, per_bin=per_bin)
    vr, _ = approx_topk_reference(x.contiguous(), 10, -1, recall_target=0.9, per_bin=per_bin)
    assert_same_topk(v, i, vr, x, -1)
    strided = torch.randn(4, 24000)[:, ::2]  # unit stride is not the row's
    v, i = approx_topk(strided, 10, recall_target=0.9, per_bin=per_bin)
    vr, _ = approx_topk_reference(strided.contiguous(), 10, recall_target=0.9, per_bin=per_bin)
    assert_same_topk(v, i, vr, strided, 1)
    ties = torch.randint(0, 5, (3, 8000)).float()  # heavy duplicate scores
    v, i = approx_topk(ties, 10, per_bin=per_bin)
    assert bool((v == 4).all()) and all(len(set(r.tolist())) == 10 for r in i)


@pytest.mark.parametrize("per_bin", [1, 2])
def test_infinite_values_never_pick_padding(per_bin):
    x = torch.full((2, 5000), float("-inf"))
    x[:, 7] = 1.0
    v, i = approx_topk(x, 20, recall_target=0.9, per_bin=per_bin)
    assert bool((i < 5000).all()) and bool((i >= 0).all())
    assert v[0, 0] == 1.0 and i[0, 0] == 7


@pytest.mark.parametrize("per_bin", [None, 1, 2, 4])
def test_gradients_flow_like_topk(per_bin):
    x = torch.randn(3, 9000, requires_grad=True)
    v, i = approx_topk(x, 5, recall_target=0.9, per_bin=per_bin)
    v.sum().backward()
    expected = torch.zeros_like(x).scatter(1, i, 1.0)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("call,err", [
    (lambda: approx_topk(torch.arange(10), 3), TypeError),
    (lambda: approx_topk([1.0, 2.0], 1), TypeError),
    (lambda: approx_topk(torch.randn(10), 0), ValueError),
    (lambda: approx_topk(torch.randn(10), 11), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, dim=3), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, recall_target=0), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, per_bin=0), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, per_bin=1.5), TypeError),
    (lambda: approx_topk(torch.randn(10), 2, sorted=None), TypeError),
    (lambda: approx_topk(torch.tensor(1.0), 1), ValueError),
])  # fmt: skip
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("per_bin", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_with_nan_follow_torch_topk(largest, per_bin, dtype):
    """A NaN ranks as torch.topk ranks it (above +inf); rows with NaN get torch.topk's answer,
    rows without keep the approximate one. Both signs of NaN (x86 makes negative ones)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 20000, generator=g)
    x[1, 123] = float("nan")
    x[4, ::1000] = float("nan")  # 20 NaN, more than k
    x[5, 77] = -float("nan")
    x = x.to(dtype)
    values, indices = approx_topk(x, 10, recall_target=0.9, largest=largest, per_bin=per_bin, backend="torch")
    exact = torch.topk(x, 10, largest=largest)
    for row in (1, 4, 5):
        assert torch.equal(indices[row].sort().values, exact.indices[row].sort().values)
        torch.testing.assert_close(values[row], exact.values[row], equal_nan=True)
    clean = [0, 2, 3]
    assert not torch.isnan(values[clean]).any()
    reference, _ = approx_topk_reference(x[clean], 10, recall_target=0.9, largest=largest, per_bin=per_bin)
    assert_same_topk(values[clean], indices[clean], reference, x[clean], 1)
