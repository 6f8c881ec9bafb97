import pytest
import torch

from peakknn import approx_topk, expected_recall
from peakknn.evaluation import recall
from peakknn.topk import approx_topk_reference
from peakknn.topk.plan import plan_bins


def assert_same_topk(v, i, vr, ir, x, dim):
    """Equal values (sorted); indices may differ only between equal values."""
    torch.testing.assert_close(v, vr, rtol=0, atol=0)
    torch.testing.assert_close(x.gather(dim, i), v, rtol=0, atol=0)
    assert i.dtype == torch.int64


SHAPES = [((5, 123, 123), -1), ((5, 123, 123), 1), ((3, 10007), -1), ((20000,), 0), ((2, 3, 4099), 2), ((700, 2), 0), ((1, 1), -1)]


@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("largest", [True, False])
def test_matches_reference(shape, dim, dtype, largest):
    x = torch.randn(shape).to(dtype)
    n = x.shape[dim]
    for k in sorted({1, min(10, n), n}):
        for target in (0.5, 0.95, 1.0):
            v, i = approx_topk(x, k, dim, recall_target=target, largest=largest)
            vr, ir = approx_topk_reference(x, k, dim, recall_target=target, largest=largest)
            assert v.shape == vr.shape == torch.topk(x, k, dim).values.shape
            assert_same_topk(v, i, vr, ir, x, dim)


def test_exact_when_target_is_one():
    x = torch.randn(4, 5000)
    v, i = approx_topk(x, 17, recall_target=1.0)
    vt, _ = torch.topk(x, 17)
    torch.testing.assert_close(v, vt)


def test_non_contiguous_and_duplicates():
    base = torch.randn(6000, 8)
    x = base.T  # non-contiguous along the reduced dim
    v, i = approx_topk(x, 10, -1, recall_target=0.9)
    vr, ir = approx_topk_reference(x.contiguous(), 10, -1, recall_target=0.9)
    assert_same_topk(v, i, vr, ir, x, -1)
    ties = torch.randint(0, 5, (3, 8000)).float()  # heavy duplicate scores
    v, i = approx_topk(ties, 10)
    assert bool((v == 4).all()) and i.unique(dim=1).shape[1] == 10


def test_infinite_values_never_pick_padding():
    x = torch.full((2, 5000), float("-inf"))
    x[:, 7] = 1.0
    v, i = approx_topk(x, 20, recall_target=0.9)
    assert bool((i < 5000).all()) and bool((i >= 0).all())
    assert v[0, 0] == 1.0 and i[0, 0] == 7


def test_gradients_flow_like_topk():
    x = torch.randn(3, 9000, requires_grad=True)
    v, i = approx_topk(x, 5, recall_target=0.9)
    v.sum().backward()
    expected = torch.zeros_like(x).scatter(1, i, 1.0)
    torch.testing.assert_close(x.grad, expected)


def _recall(i, x, k):
    return recall(i, torch.topk(x, k).indices)


@pytest.mark.parametrize("k,target,per_bin", [(10, 0.95, 1), (10, 0.8, 1), (32, 0.9, 1), (10, 0.95, 2)])
def test_recall_meets_target_random(k, target, per_bin):
    x = torch.randn(400, 30000)
    _, i = approx_topk(x, k, recall_target=target, per_bin=per_bin)
    measured = _recall(i, x, k)
    bins = plan_bins(30000, k, target, per_bin)
    # 400 rows x k results: standard error of the mean recall < 0.01; allow 3 sigma below target.
    assert measured >= target - 0.03
    assert measured == pytest.approx(expected_recall(k, bins, per_bin=per_bin), abs=0.03)


def test_recall_adversarial_sorted_and_clustered():
    k, target = 10, 0.95
    x = torch.randn(200, 30000)
    sorted_x = torch.sort(x, dim=1).values  # best values contiguous at the end
    _, i = approx_topk(sorted_x, k, recall_target=target)
    assert _recall(i, sorted_x, k) >= target - 0.03
    clustered = x.clone()  # a block of large values at a random place in each row
    for r in range(200):
        s = int(torch.randint(0, 29000, ()))
        clustered[r, s : s + 500] += 4
    _, i = approx_topk(clustered, k, recall_target=target)
    assert _recall(i, clustered, k) >= target - 0.03


@pytest.mark.parametrize("call,err", [
    (lambda: approx_topk(torch.arange(10), 3), TypeError),
    (lambda: approx_topk([1.0, 2.0], 1), TypeError),
    (lambda: approx_topk(torch.randn(10), 0), ValueError),
    (lambda: approx_topk(torch.randn(10), 11), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, dim=3), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, recall_target=0), ValueError),
    (lambda: approx_topk(torch.randn(10), 2, per_bin=0), ValueError),
    (lambda: approx_topk(torch.tensor(1.0), 1), ValueError),
])  # fmt: skip
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


@pytest.mark.parametrize("largest", [True, False])
def test_rows_with_nan_follow_torch_topk(largest):
    """A NaN ranks as torch.topk ranks it (above +inf); rows with NaN get torch.topk's answer,
    rows without keep the approximate one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 20000, generator=g)
    x[1, 123] = float("nan")
    x[4, ::1000] = float("nan")  # 20 NaN, more than k
    values, indices = approx_topk(x, 10, recall_target=0.9, largest=largest, backend="torch")
    exact = torch.topk(x, 10, largest=largest)
    for row in (1, 4):
        assert torch.equal(indices[row].sort().values, exact.indices[row].sort().values)
        torch.testing.assert_close(values[row], exact.values[row], equal_nan=True)
    clean = [0, 2, 3, 5]
    assert not torch.isnan(values[clean]).any()
    _, reference = approx_topk_reference(x[clean], 10, recall_target=0.9, largest=largest)
    assert torch.equal(indices[clean], reference)
