"""peakknn.nn: TopK / topk_mask / topk_sparse against torch.topk-based masking (values, the kept
set, gradients), activations, dims and dtypes, autocast, torch.compile, and the lazy import."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import peakknn
from peakknn import approx_topk
from peakknn.nn import TopK
from peakknn.nn import functional as F


def torch_mask(x, k, dim=-1, activation=None, indices=None):
    """The PyTorch user's top-k activation: zeros with act(top-k values) scattered back."""
    if indices is None:
        indices = torch.topk(x, k, dim=dim).indices
    values = x.gather(dim, indices)
    if activation is not None:
        values = activation(values)
    return torch.zeros_like(x).scatter(dim, indices, values)


@pytest.mark.parametrize("per_bin", [None, 1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_mask_keeps_approx_topk_set_and_zeroes_the_rest(per_bin, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6000, generator=g).to(dtype)
    out = F.topk_mask(x, 20, recall_target=0.9, per_bin=per_bin)
    assert out.shape == x.shape and out.dtype == dtype
    kept = out != 0
    assert bool((kept.sum(1) == 20).all())
    assert torch.equal(out[kept], x[kept])
    values, indices = F.topk_sparse(x, 20, recall_target=0.9, per_bin=per_bin)
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, indices, True))
    want = approx_topk(x, 20, recall_target=0.9, per_bin=per_bin).values  # the same approximation, sorted
    torch.testing.assert_close(values.sort(1, descending=True).values, want, rtol=0, atol=0)


def test_exact_target_is_torch_topk_masking():
    x = torch.randn(8, 3000)
    torch.testing.assert_close(F.topk_mask(x, 50, recall_target=1.0, activation=torch.relu), torch_mask(x, 50, activation=torch.relu))
    approx = F.topk_mask(x, 50, recall_target=0.95)
    truth = torch_mask(x, 50) != 0
    assert ((approx != 0) & truth).sum().item() / truth.sum().item() >= 0.9  # recall itself: tests/topk


@pytest.mark.parametrize("shape,dim", [((4, 5000), -1), ((3, 4100, 5), 1), ((2, 3, 4099), 2), ((7000, 3), 0)])
def test_any_dim_and_non_contiguous_input(shape, dim):
    x = torch.randn(shape)
    out = TopK(10, dim=dim, recall_target=0.9)(x)
    assert bool(((out != 0).sum(dim) == 10).all())
    xt = x.transpose(0, -1)  # non-contiguous
    d = {0: xt.ndim - 1, xt.ndim - 1: 0}.get(dim % x.ndim, dim % x.ndim)
    out_t = TopK(10, dim=d, recall_target=0.9)(xt)
    assert bool(((out_t != 0).sum(d) == 10).all())


@pytest.mark.parametrize("per_bin", [None, 2])
@pytest.mark.parametrize("activation", [None, torch.relu, nn.GELU()])
def test_gradients_are_those_of_torch_topk_masking(per_bin, activation):
    """d out / d x equals that of torch.topk-based masking on the same kept set, and is zero off
    it; at recall_target 1.0 the kept set is torch.topk's."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 4000, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4000, generator=g, dtype=torch.float64)
    for target in (0.9, 1.0):
        x = base.clone().requires_grad_(True)
        out = F.topk_mask(x, 25, recall_target=target, per_bin=per_bin, activation=activation)
        (out * weight).sum().backward()
        indices = F.topk_sparse(base, 25, recall_target=target, per_bin=per_bin).indices
        if target == 1.0:
            assert torch.equal(indices.sort(1).values, torch.topk(base, 25).indices.sort(1).values)
        y = base.clone().requires_grad_(True)
        (torch_mask(y, 25, activation=activation, indices=indices) * weight).sum().backward()
        torch.testing.assert_close(x.grad, y.grad)
        off = torch.ones_like(base, dtype=torch.bool).scatter(1, indices, False)
        assert bool((x.grad[off] == 0).all())


def test_activation_applies_to_kept_values_only():
    x = -torch.rand(3, 5000) - 0.1  # all negative: relu zeroes the kept values too
    assert bool((TopK(5, activation=nn.ReLU())(x) == 0).all())
    values, indices = TopK(5, activation=lambda v: v * 2).sparse(x)
    torch.testing.assert_close(values, 2 * x.gather(1, indices))
    shifted = x + 10
    out = TopK(5, activation=torch.relu)(shifted)
    assert bool(((out != 0).sum(1) == 5).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_block(dtype):
    block = nn.Sequential(nn.Linear(32, 4096), TopK(64, activation=nn.ReLU()), nn.Linear(4096, 32))
    x = torch.randn(16, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        hidden = block[:2](x)
        y = block(x)
    assert hidden.dtype == dtype and y.dtype == dtype
    assert bool(((hidden != 0).sum(1) <= 64).all()) and bool(((hidden != 0).sum(1) >= 32).all())  # relu may zero kept ones
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_torch_compile_matches_eager(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 3000), TopK(24, activation=nn.ReLU()), nn.Linear(3000, 16))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(8, 16, requires_grad=True)
    eager = model(x)
    eager.square().sum().backward()
    grad_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = compiled(x)
    got.square().sum().backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    for p, want in zip(model.parameters(), grad_eager):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5)


def test_custom_op_has_a_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        rows = torch.empty(5, 3000)
        out = torch.ops.peakknn.topk_indices(rows, 7, 467, 1)
    assert out.shape == (5, 7) and out.dtype == torch.int64


@pytest.mark.parametrize("make,err", [
    (lambda: TopK(0), ValueError),
    (lambda: TopK(2.5), TypeError),
    (lambda: TopK(3, recall_target=1.5), ValueError),
    (lambda: TopK(3, per_bin=0), ValueError),
    (lambda: TopK(3, dim=None), TypeError),
    (lambda: TopK(3, activation="relu"), TypeError),
    (lambda: TopK(30)(torch.randn(4, 10)), ValueError),
    (lambda: TopK(3)(torch.arange(10)), TypeError),
])  # fmt: skip
def test_bad_settings_and_input(make, err):
    with pytest.raises(err):
        make()


def test_repr_and_state_dict():
    layer = TopK(8, recall_target=0.9, per_bin=2, activation=nn.ReLU())
    assert "k=8" in repr(layer) and "ReLU" in repr(layer)
    assert nn.Sequential(layer).state_dict() == {}  # no parameters


def test_importing_peakknn_leaves_nn_unloaded():
    code = "import sys, peakknn; assert 'peakknn.nn' not in sys.modules; peakknn.nn.TopK(3); assert 'peakknn.nn' in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert peakknn.nn.TopK is TopK
