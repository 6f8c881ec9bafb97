"""The partial-reduction kernels (peakknn.kernels.bin_winners: per_bin = 1 and per_bin > 1)
against their plain-torch specifications and a brute-force loop per bin, and approx_topk through
them (backend="triton").

Without a GPU it runs in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1);
with one, the same tests run on CUDA. The module is skipped when triton is not installed.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import peakknn  # noqa: E402
from peakknn.kernels.bin_winners import bin_top, bin_top_reference, bin_winners, bin_winners_reference  # noqa: E402
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


def brute_force_top(rows: torch.Tensor, bins: int, per_bin: int, largest: bool):
    """(f32[r, per_bin * bins], i64) slot-major: each bin's elements ranked by (oriented fp32
    value desc, index asc) in a plain loop, NaN read as +inf."""
    values = rows.float().cpu()
    values = torch.where(torch.isnan(values), float("inf"), values).numpy()
    if not largest:
        values = -values
    r, n = values.shape
    best = np.zeros((r, per_bin * bins), dtype=np.float32)
    index = np.zeros((r, per_bin * bins), dtype=np.int64)
    for i in range(r):
        for b in range(bins):
            members = sorted(range(b, n, bins), key=lambda j: (-values[i, j], j))[:per_bin]
            for s, j in enumerate(members):
                best[i, s * bins + b], index[i, s * bins + b] = values[i, j], j
    return torch.from_numpy(best), torch.from_numpy(index)


TOP_CASES = [(2, 300, 16, 2), (3, 700, 48, 3), (2, 1500, 128, 4), (1, 500, 7, 5), (2, 200, 20, 8), (2, 64, 8, 8)]  # rows, n, bins, per_bin


@pytest.mark.parametrize("r,n,bins,per_bin", TOP_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("largest", [True, False])
def test_bin_top_kernel_matches_reference_and_brute_force(r, n, bins, per_bin, dtype, largest):
    for kind in ("random", "ties", "inf"):
        x = make_rows(r, n, dtype, kind, seed=n + bins + per_bin)
        if kind == "inf":
            x[-1, 9] = float("nan")
        ref_best, ref_index = bin_top_reference(x, bins, per_bin, largest)
        if dtype == torch.float32:
            want_best, want_index = brute_force_top(x, bins, per_bin, largest)
            assert torch.equal(ref_best, want_best) and torch.equal(ref_index, want_index)
        best, index = bin_top(x.to(DEVICE), bins, per_bin, largest)
        assert best.dtype == torch.float32 and index.dtype == torch.int64 and best.shape == (r, per_bin * bins)
        assert torch.equal(best.cpu(), ref_best) and torch.equal(index.cpu(), ref_index)


def test_bin_top_launch_shapes_strides_and_bad_sizes():
    x = make_rows(3, 1000, torch.float32, "ties", seed=8).to(DEVICE)
    ref = bin_top_reference(x, 40, 3, True)
    for block_b, groups, warps in ((None, None, 4), (16, 2, 1), (64, 8, 2)):
        best, index = bin_top(x, 40, 3, True, block_b=block_b, groups=groups, num_warps=warps)
        assert torch.equal(best, ref[0]) and torch.equal(index, ref[1])
    strided = x.T.contiguous().T
    assert torch.equal(bin_top(strided, 40, 3, False)[1], bin_top_reference(x, 40, 3, False)[1])
    assert torch.equal(bin_top(x, 40, 1, True)[1], bin_winners(x, 40, True)[1])  # per_bin = 1 is bin_winners
    with pytest.raises(ValueError, match="n >= bins"):
        bin_top(x[:, :100], 40, 3, True)


# ----------------------------------------------------------------- approx_topk through the kernel


TOPK_SHAPES = [((3, 10007), -1), ((2, 3, 4099), 2), ((700, 2), 0), ((4, 500), 1), ((1, 65), -1)]


@pytest.mark.parametrize("shape,dim", TOPK_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("largest", [True, False])
def test_approx_topk_kernel_matches_reference(shape, dim, dtype, largest):
    x = torch.randn(shape).to(dtype).to(DEVICE)
    n = x.shape[dim]
    for k in sorted({1, min(10, n)}):
        v, i = peakknn.approx_topk(x, k, dim, recall_target=0.9, largest=largest, per_bin=1, backend="triton")
        vr, _ = approx_topk_reference(x, k, dim, recall_target=0.9, largest=largest, per_bin=1)
        torch.testing.assert_close(v, vr, rtol=0, atol=0)
        torch.testing.assert_close(x.gather(dim, i), v, rtol=0, atol=0)


@pytest.mark.parametrize("shape,dim,per_bin", [((2, 3, 4099), 2, 3), ((4, 2000), 1, 2), ((1500, 2), 0, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("largest", [True, False])
def test_approx_topk_per_bin_kernel_matches_reference(shape, dim, per_bin, dtype, largest):
    x = torch.randn(shape).to(dtype).to(DEVICE)
    v, i = peakknn.approx_topk(x, 10, dim, recall_target=0.9, largest=largest, per_bin=per_bin, backend="triton")
    vr, _ = approx_topk_reference(x, 10, dim, recall_target=0.9, largest=largest, per_bin=per_bin)
    torch.testing.assert_close(v, vr, rtol=0, atol=0)
    torch.testing.assert_close(x.gather(dim, i), v, rtol=0, atol=0)


def test_approx_topk_kernel_infinities_ties_and_strides():
    x = torch.randn(6, 3000, device=DEVICE)
    x[:, ::7] = float("-inf")
    x[:, 5::11] = 2.5  # many ties
    x[0, 100] = float("inf")
    x_t = x.T.contiguous().T  # non-contiguous along dim
    for data, per_bin in ((x, 1), (x_t, 1), (x.to(torch.bfloat16), 1), (x_t, 2)):
        for largest in (True, False):
            v, i = peakknn.approx_topk(data, 12, recall_target=0.8, largest=largest, per_bin=per_bin, backend="triton")
            vr, _ = approx_topk_reference(data, 12, recall_target=0.8, largest=largest, per_bin=per_bin)
            torch.testing.assert_close(v, vr, rtol=0, atol=0)
            torch.testing.assert_close(data.gather(1, i), v, rtol=0, atol=0)


@pytest.mark.parametrize("per_bin", [1, 2])
def test_approx_topk_kernel_gradients(per_bin):
    x = torch.randn(4, 4000, device=DEVICE, requires_grad=True)
    v, i = peakknn.approx_topk(x, 5, recall_target=0.9, per_bin=per_bin, backend="triton")
    v.sum().backward()
    expected = torch.zeros_like(x).scatter_(1, i, 1.0)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("per_bin", [1, 2])
def test_kernel_ranks_nan_as_torch_topk_does(largest, per_bin):
    """NaN counts as larger than everything: with the largest wanted, every NaN of a row is
    selected first (fewer than k of them); with the smallest wanted, none is."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5000, generator=g)
    x[0, [7, 8, 4001]] = float("nan")  # in distinct bins (bins are strided)
    x = x.to(DEVICE)
    values, indices = peakknn.approx_topk(x, 10, recall_target=0.9, largest=largest, per_bin=per_bin, backend="triton")
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
