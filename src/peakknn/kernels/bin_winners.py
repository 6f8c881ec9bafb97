"""bin_winners / bin_top: the partial reduction without the product, for approx_topk on CUDA.

Row r of x: [R, n]; element j -> bin j mod bins; per bin, the best value and its first index
(`bin_winners`, per_bin = 1) or the best `per_bin` values and their indices (`bin_top`), ranked
by (value, then the earlier index among equal values). Values are widened to fp32, NaN is read as
+inf as torch.topk ranks it, and values are negated when the smallest are wanted, so larger
always wins. Each (group, bin) lane keeps its own running best (per_bin = 1) or its own best
per_bin in registers (per_bin > 1: the lane replaces its worst entry when a better element
arrives), so lanes are merged only once at the end of the walk.

In this file: the kernels, the launchers (`bin_winners`, `bin_top`) and their plain-torch
specifications (`bin_winners_reference`, `bin_top_reference`). Imported lazily (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import ceil_div

BIN_BLOCK = 128  # bins per program
BIN_TILE = 1024  # elements each program loads per step


@triton.jit
def _oriented(base, j, ok, LARGEST: tl.constexpr):
    """The elements j of a row (where ok; else 0) as fp32, NaN read as +inf (it ranks above
    everything, as in torch.topk), negated when the smallest are wanted: larger always wins."""
    v = tl.load(base + j, mask=ok, other=0.0).to(tl.float32)
    v = tl.where(v == v, v, float("inf"))
    if not LARGEST:
        v = -v
    return v


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
        v = _oriented(base, j, ok, LARGEST)
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


@triton.jit
def _bin_top_kernel(
    x_ptr, best_ptr, index_ptr, n, bins, stride_x, stride_out,
    LARGEST: tl.constexpr, PER_BIN: tl.constexpr, SLOTS: tl.constexpr, GROUPS: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    # Each (group, column) lane keeps its best PER_BIN (value, index) entries in SLOTS >= PER_BIN
    # slots (a power of two; slots past PER_BIN stay unused), unsorted. An element replaces the
    # lane's worst entry when it ranks above it: a larger value, or an equal value and a smaller
    # index (empty slots hold -inf with indices past every element, so any element fills them).
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    groups = tl.arange(0, GROUPS)
    slot = tl.arange(0, SLOTS)[None, None, :]
    used = slot < PER_BIN
    col_ok = cols < bins
    base = x_ptr + r.to(tl.int64) * stride_x
    first = groups[:, None] * bins + cols[None, :]  # [GROUPS, BLOCK_B] element of each lane in the first tile
    empty = n + GROUPS * bins  # an index past every element (empty slots), + slot keeps them distinct
    best = tl.full((GROUPS, BLOCK_B, SLOTS), float("-inf"), tl.float32)
    index = tl.zeros((GROUPS, BLOCK_B, SLOTS), tl.int32) + empty + slot
    for start in range(0, n, GROUPS * bins):
        j = start + first
        ok = col_ok[None, :] & (j < n)
        v = _oriented(base, j, ok, LARGEST)
        # the lane's worst entry: the smallest value, and among equal ones the largest index
        ranked = tl.where(used, best, float("inf"))
        worst = tl.min(ranked, axis=2)
        tied = ranked == worst[:, :, None]
        worst_index = tl.max(tl.where(tied, index, -1), axis=2)
        better = ok & ((v > worst) | ((v == worst) & (j < worst_index)))
        replace = tied & (index == worst_index[:, :, None]) & better[:, :, None]
        best = tl.where(replace, v[:, :, None], best)
        index = tl.where(replace, j[:, :, None], index)
    # merge the lanes of each column: PER_BIN rounds of (largest value, then smallest index)
    best = tl.where(used, best, float("-inf"))
    index = tl.where(used, index, 2 * empty + SLOTS)
    out = r.to(tl.int64) * stride_out + cols
    for s in tl.static_range(PER_BIN):
        top = tl.max(tl.max(best, axis=2), axis=0)
        at_top = best == top[None, :, None]
        top_index = tl.min(tl.min(tl.where(at_top, index, 2 * empty + SLOTS), axis=2), axis=0)
        tl.store(best_ptr + out + s * bins, top, mask=col_ok)
        tl.store(index_ptr + out + s * bins, top_index.to(tl.int64), mask=col_ok)
        taken = at_top & (index == top_index[None, :, None])
        best = tl.where(taken, float("-inf"), best)
        index = tl.where(taken, 2 * empty + SLOTS, index)  # ranks after every entry left


def bin_top(
    rows: torch.Tensor, bins: int, per_bin: int, largest: bool, block_b: int | None = None, groups: int | None = None, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(oriented values f32[R, per_bin * bins], indices i64[R, per_bin * bins]): the best per_bin
    of each bin of rows: [R, n], n >= bins * per_bin, slot-major (entry s * bins + b is the
    (s+1)-th best of bin b), ranked by value and then by the smaller index.

    Values are negated when largest=False, so a top-k over them is always largest-first.
    block_b (bins per program), groups (elements of each bin per step) and num_warps set the
    launch shape (defaults: BIN_BLOCK, and BIN_TILE // (block_b * slots) groups).
    """
    r, n = rows.shape
    if per_bin == 1:
        return bin_winners(rows, bins, largest, block_b, groups, num_warps)
    if n < bins * per_bin:
        raise ValueError(f"bin_top needs n >= bins * per_bin, got n={n} < {bins} * {per_bin}")
    slots = triton.next_power_of_2(per_bin)
    block_b = block_b or min(BIN_BLOCK, triton.next_power_of_2(bins))
    groups = groups or max(1, BIN_TILE // (block_b * slots))
    if 2 * (n + groups * bins + slots) >= 2**31:
        raise ValueError(f"bin_top indexes in int32: rows of {n} elements are too long")
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    best = torch.empty((r, per_bin * bins), dtype=torch.float32, device=rows.device)
    index = torch.empty((r, per_bin * bins), dtype=torch.int64, device=rows.device)
    grid = (r, triton.cdiv(bins, block_b))
    _bin_top_kernel[grid](
        rows, best, index, n, bins, rows.stride(0), per_bin * bins,
        LARGEST=largest, PER_BIN=per_bin, SLOTS=slots, GROUPS=groups, BLOCK_B=block_b, num_warps=num_warps,
    )  # fmt: skip
    return best, index


def bin_top_reference(rows: torch.Tensor, bins: int, per_bin: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch specification of `bin_top` (same arguments and outputs): per row and bin, the
    best per_bin oriented fp32 values and their indices, the earlier index first among equals."""
    r, n = rows.shape
    values = rows.to(torch.float32)
    values = torch.where(torch.isnan(values), float("inf"), values)  # NaN ranks above everything
    if not largest:
        values = -values
    groups = ceil_div(n, bins)
    padded = values.new_full((r, groups * bins), float("-inf"))
    padded[:, :n] = values
    best, group = torch.sort(padded.view(r, groups, bins), dim=1, descending=True, stable=True)
    index = group[:, :per_bin] * bins + torch.arange(bins, device=rows.device)
    return best[:, :per_bin].reshape(r, per_bin * bins), index.reshape(r, per_bin * bins)


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
