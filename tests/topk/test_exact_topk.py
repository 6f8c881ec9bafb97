"""exact_topk_rows against torch.topk: shapes, dtypes, ties, -inf, the narrow-row fallback, bad k."""

import pytest
import torch

from peakknn.topk import exact_topk_rows


def check(x, k, width=16):
    values, cols = exact_topk_rows(x, k, width)
    ref, _ = torch.topk(x, k, dim=1)
    assert torch.equal(values, ref)  # the same values, sorted (any tied column is a valid answer)
    assert torch.equal(x.gather(1, cols), values)
    assert all(len(set(row)) == k for row in cols.tolist())  # no column twice


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("rows,n,k", [(1, 16, 1), (3, 64, 2), (5, 1024, 10), (7, 4096, 30), (2, 4096, 128), (4, 160, 3)])
def test_matches_torch_topk(dtype, rows, n, k):
    g = torch.Generator().manual_seed(n + k)
    check(torch.randn(rows, n, generator=g).to(dtype), k)


def test_ties_inf_and_clustered_maxima():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (6, 2048), generator=g).float()  # massive ties
    check(x, 20)
    x = torch.full((3, 2048), float("-inf"))
    x[:, 5] = 1.0  # one finite value, the rest -inf
    check(x, 7)
    x = torch.randn(4, 4096, generator=g)
    x[:, 16:48] += 100  # the whole top-k in a few adjacent columns (the same bins' neighbours)
    check(x, 32)


def test_narrow_rows_and_odd_widths_fall_back():
    g = torch.Generator().manual_seed(1)
    check(torch.randn(3, 100, generator=g), 10)  # n % width != 0
    check(torch.randn(3, 64, generator=g), 64)  # k = n
    check(torch.randn(3, 4096, generator=g), 5, width=8)


def test_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        exact_topk_rows(torch.zeros(2, 32), 33)
    with pytest.raises(ValueError, match="k must be"):
        exact_topk_rows(torch.zeros(2, 32), 0)
