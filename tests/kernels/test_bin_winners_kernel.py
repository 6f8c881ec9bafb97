"""The partial-reduction kernel (peakknn.kernels.bin_winners) against its plain-torch
specification and a brute-force loop per bin, and approx_topk through it (backend="triton").

Without a GPU it runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1);
with one, the same tests run on CUDA. The module is skipped when triton is not installed.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import peakknn  # noqa: E402
from peakknn.kernels.bin_winners import bin_winners, bin_winners_reference  # noqa: E402
from peakknn.topk import approx_topk_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def brute_force(rows: torch.Tensor, bins: int, largest: bool):
    """(f32 best, i64 first index) per (row, bin) by a plain loop over each bin's elements
    j = b, b + bins, ...: values widened to fp32 (negated when the smallest are wanted), strictly
    better wins, and a bin of only -inf answers its first element."""
    values = rows.float().cpu().numpy()
    if not largest:
        values = -values
    r, n = values.shape
    best = np.full((r, bins), -np.inf, dtype=np.float32)
    index = np.tile(np.arange(bins, dtype=np.int64), (r, 1))
    for i in range(r):
        for b in range(bins):
            for j in range(b, n, bins):
                if values[i, j] > best[i, b]:
                    best[i, b], index[i, b] = values[i, j], j
    return torch.from_numpy(best), torch.from_numpy(index)


def make_rows(r, n, dtype, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        x = torch.randint(0, 4, (r, n), generator=g).float()  # many equal values per bin
    else:
        x = torch.randn(r, n, generator=g)
    x[:, ::5] = float("-inf")
    if kind == "inf":
        x[0] = float("-inf")  # a row of -inf: every bin answers its first element
        x[-1, 3] = float("inf")
    return x.to(dtype)


BIN_CASES = [(1, 16, 16), (3, 1000, 48), (2, 4099, 128), (4, 3000, 200), (5, 300, 7), (2, 50, 50)]  # rows, n, bins


@pytest.mark.parametrize("r,n,bins", BIN_CASES)
@pytest.mark.parametrize("kind", ["random", "ties", "inf"])
@pytest.mark.parametrize("largest", [True, False])
def test_bin_winners_reference_is_the_best_of_each_bin(r, n, bins, kind, largest):
    x = make_rows(r, n, torch.float32, kind, seed=n + bins)
    best, index = bin_winners_reference(x, bins, largest)
    want_best, want_index = brute_force(x, bins, largest)
    assert best.dtype == torch.float32 and index.dtype == torch.int64 and best.shape == index.shape == (r, bins)
    assert torch.equal(best, want_best) and torch.equal(index, want_index)


@pytest.mark.parametrize("r,n,bins", BIN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("largest", [True, False])
def test_bin_winners_kernel_matches_reference(r, n, bins, dtype, largest):
    for kind in ("random", "ties", "inf"):
        x = make_rows(r, n, dtype, kind, seed=n + bins + 1).to(DEVICE)
        best, index = bin_winners(x, bins, largest)
        ref_best, ref_index = bin_winners_reference(x, bins, largest)
        assert best.dtype == torch.float32 and index.dtype == torch.int64
        torch.testing.assert_close(best, ref_best, rtol=0, atol=0)
        assert torch.equal(index, ref_index)


def test_bin_winners_launch_shapes_and_strides_give_the_same_winners():
    x = make_rows(3, 5000, torch.float32, "ties", seed=7).to(DEVICE)
    for bins in (16, 96, 256):
        ref = bin_winners_reference(x, bins, True)
        want = brute_force(x, bins, True)
        assert torch.equal(ref[0].cpu(), want[0]) and torch.equal(ref[1].cpu(), want[1])
        for block_b, groups, warps in ((None, None, 4), (16, 4, 1), (64, 2, 2), (128, 16, 8)):
            best, index = bin_winners(x, bins, True, block_b=block_b, groups=groups, num_warps=warps)
            assert torch.equal(best, ref[0]) and torch.equal(index, ref[1])
    strided = x.T.contiguous().T  # not unit stride along the reduced dim
    assert torch.equal(bin_winners(strided, 64, False)[1], bin_winners_reference(x, 64, False)[1])


# ----------------------------------------------------------------- approx_topk through the kernel


TOPK_SHAPES = [((3, 10007), -1), ((2, 3, 4099), 2), ((700, 2), 0), ((4, 500), 1), ((1, 65), -1)]


@pytest.mark.parametrize("shape,dim", TOPK_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("largest", [True, False])
def test_approx_topk_kernel_matches_reference(shape, dim, dtype, largest):
    x = torch.randn(shape).to(dtype).to(DEVICE)
    n = x.shape[dim]
    for k in sorted({1, min(10, n)}):
        v, i = peakknn.approx_topk(x, k, dim, recall_target=0.9, largest=largest, backend="triton")
        vr, _ = approx_topk_reference(x, k, dim, recall_target=0.9, largest=largest)
        torch.testing.assert_close(v, vr, rtol=0, atol=0)
        torch.testing.assert_close(x.gather(dim, i), v, rtol=0, atol=0)


def test_approx_topk_kernel_infinities_ties_and_strides():
    x = torch.randn(6, 3000, device=DEVICE)
    x[:, ::7] = float("-inf")
    x[:, 5::11] = 2.5  # many ties
    x[0, 100] = float("inf")
    x_t = x.T.contiguous().T  # non-contiguous along dim
    for data in (x, x_t, x.to(torch.bfloat16)):
        for largest in (True, False):
            v, i = peakknn.approx_topk(data, 12, recall_target=0.8, largest=largest, backend="triton")
            vr, _ = approx_topk_reference(data, 12, recall_target=0.8, largest=largest)
            torch.testing.assert_close(v, vr, rtol=0, atol=0)
            torch.testing.assert_close(data.gather(1, i), v, rtol=0, atol=0)


def test_approx_topk_kernel_gradients():
    x = torch.randn(4, 4000, device=DEVICE, requires_grad=True)
    v, i = peakknn.approx_topk(x, 5, recall_target=0.9, backend="triton")
    v.sum().backward()
    expected = torch.zeros_like(x).scatter_(1, i, 1.0)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("largest", [True, False])
def test_kernel_ranks_nan_as_torch_topk_does(largest):
    """NaN counts as larger than everything: with the largest wanted, every NaN of a row is
    selected first (fewer than k of them); with the smallest wanted, none is."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5000, generator=g)
    x[0, [7, 8, 4001]] = float("nan")  # in distinct bins (bins are strided)
    x = x.to(DEVICE)
    values, indices = peakknn.approx_topk(x, 10, recall_target=0.9, largest=largest, backend="triton")
    nan_at = {7, 8, 4001}
    if largest:
        assert set(indices[0, :3].tolist()) == nan_at and bool(torch.isnan(values[0, :3]).all())
    else:
        assert not (set(indices[0].tolist()) & nan_at)
    assert not torch.isnan(values[1:]).any()
    best, index = bin_winners(x, 64, largest)
    ref_best, ref_index = bin_winners_reference(x, 64, largest)
    torch.testing.assert_close(best, ref_best)
    assert torch.equal(index, ref_index)
