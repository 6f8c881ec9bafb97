"""bin_winners: the partial reduction without the product, for approx_topk on CUDA.

Row r of x: [R, n]; element j -> bin j mod bins; the best value and its first index per bin
(values widened to fp32, NaN read as +inf as torch.topk ranks it, and negated when the smallest
are wanted, so larger always wins). Each
(group, bin) lane keeps its own running best, so lanes are reduced only once at the end.

In this file: the kernel, the launcher (`bin_winners`) and its plain-torch specification
(`bin_winners_reference`). Imported lazily (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import ceil_div

BIN_BLOCK = 128  # bins per program
BIN_TILE = 1024  # elements each program loads per step


@triton.jit
def _bin_winners_kernel(
    x_ptr, best_ptr, index_ptr, n, bins, stride_x, stride_out,
    LARGEST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    # Each (group, column) lane keeps its own running best (strictly better wins, so the first
    # index among equals stays): no reduction across lanes until the walk is done.
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    groups = tl.arange(0, GROUPS)
    col_ok = cols < bins
    base = x_ptr + r.to(tl.int64) * stride_x
    first = groups[:, None] * bins + cols[None, :]  # [GROUPS, BLOCK_B] element of each lane in the first tile
    best = tl.full((GROUPS, BLOCK_B), float("-inf"), tl.float32)
    index = first  # a bin whose values are all -inf answers its first element
    for start in range(0, n, GROUPS * bins):
        j = start + first
        ok = col_ok[None, :] & (j < n)
        v = tl.load(base + j, mask=ok, other=0.0).to(tl.float32)
        v = tl.where(v == v, v, float("inf"))  # NaN ranks above everything, as in torch.topk
        if not LARGEST:
            v = -v
        v = tl.where(ok, v, float("-inf"))
        better = v > best
        best = tl.where(better, v, best)
        index = tl.where(better, j, index)
    top = tl.max(best, axis=0)
    index = tl.min(tl.where(best == top[None, :], index, n + GROUPS * bins), axis=0)  # first among equals
    out = r.to(tl.int64) * stride_out + cols
    tl.store(best_ptr + out, top, mask=col_ok)
    tl.store(index_ptr + out, index.to(tl.int64), mask=col_ok)


def bin_winners(
    rows: torch.Tensor, bins: int, largest: bool, block_b: int | None = None, groups: int | None = None, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(oriented values f32[R, bins], indices i64[R, bins]): best per bin of rows: [R, n], n >= bins.

    Values are negated when largest=False, so a top-k over them is always largest-first; the
    first index wins among equal values. block_b (bins per program), groups (elements of each bin
    per step) and num_warps set the launch shape (defaults: BIN_BLOCK, BIN_TILE // block_b).
    """
    r, n = rows.shape
    block_b = block_b or min(BIN_BLOCK, triton.next_power_of_2(bins))
    groups = groups or max(1, BIN_TILE // block_b)
    if n + 2 * groups * bins >= 2**31:
        raise ValueError(f"bin_winners indexes in int32: rows of {n} elements are too long")
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    best = torch.empty((r, bins), dtype=torch.float32, device=rows.device)
    index = torch.empty((r, bins), dtype=torch.int64, device=rows.device)
    grid = (r, triton.cdiv(bins, block_b))
    _bin_winners_kernel[grid](rows, best, index, n, bins, rows.stride(0), bins, LARGEST=largest, GROUPS=groups, BLOCK_B=block_b, num_warps=num_warps)
    return best, index


def bin_winners_reference(rows: torch.Tensor, bins: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch specification of `bin_winners` (same arguments and outputs): per row and bin,
    the best oriented fp32 value and the first index reaching it."""
    r, n = rows.shape
    values = rows.to(torch.float32)
    values = torch.where(torch.isnan(values), float("inf"), values)  # NaN ranks above everything
    if not largest:
        values = -values
    groups = ceil_div(n, bins)
    padded = values.new_full((r, groups * bins), float("-inf"))
    padded[:, :n] = values
    best, group = torch.sort(padded.view(r, groups, bins), dim=1, descending=True, stable=True)
    index = group[:, 0] * bins + torch.arange(bins, device=rows.device)
    return best[:, 0].contiguous(), index
