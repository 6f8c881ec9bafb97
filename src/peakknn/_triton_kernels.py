"""Fused Triton kernels: the partial reduction of DESIGN.md section 1 on the GPU.

Imported lazily (it imports triton); see peakknn._backend for when these run.

`scan_winners` — matrix product fused with the partial reduction. For queries Q: [nq, d] and
database rows X: [n, d] with rank corrections b: f32[n] (0 for ip/cos, -|x|^2/2 for L2, -inf for
a deleted row) and an optional mask m: [n], the rank score of row j is
    s(q, j) = <q, x_j> + b_j      (-inf where m_j == 0),
computed with tl.dot (bf16/fp16 in, fp32 accumulate; fp32 inputs use IEEE fp32). The rows are
cut into `splits` contiguous slices of `split_rows` rows (a multiple of `bins`); inside a slice,
row j belongs to column (j - slice_start) mod bins. Each program owns BLOCK_M queries x BLOCK_N
columns of one slice, walks the slice's database tiles and keeps the running best score and row
per (query, column) in registers, so the score matrix never reaches memory. Output: for every
query, splits * bins winners (score f32, row i32; row -1 and score -inf where a column saw only
-inf). Ties keep the lowest row.

`bin_winners` — the same reduction without the product, for approx_topk: row r of x: [R, n],
element j -> bin j mod bins, best value and its first index per bin (values widened to fp32 and
negated when the smallest are wanted, so larger always wins).

Known limitation of Triton's interpreter (triton 3.x): tl.dot on bf16 operands multiplies the
raw uint16 storage, so under TRITON_INTERPRET=1 the operands are widened to fp32 first
(`UPCAST`). bf16 x bf16 products are exact in fp32, so the result is the one the GPU computes
(fp32 accumulation) up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import interpreting

@triton.jit
def _scan_winners_kernel(
    q_ptr, x_ptr, bias_ptr, mask_ptr, best_ptr, row_ptr,
    nq, n, d, bins, split_rows,
    stride_q, stride_x, stride_out,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, ONE_K_STEP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    queries = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    q_ok = queries < nq
    lo = pid_s * split_rows
    hi = tl.minimum(lo + split_rows, n)
    if ONE_K_STEP:  # d <= BLOCK_K: the query block stays in registers for the whole walk
        q_tile = tl.load(q_ptr + queries[:, None].to(tl.int64) * stride_q + ks[None, :], mask=q_ok[:, None] & (ks[None, :] < d), other=0.0)
        if UPCAST:
            q_tile = q_tile.to(tl.float32)
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    row = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    for start in range(lo, hi, bins):
        j = start + cols
        j_ok = j < hi
        if ONE_K_STEP:
            x_tile = tl.load(x_ptr + j[None, :].to(tl.int64) * stride_x + ks[:, None], mask=j_ok[None, :] & (ks[:, None] < d), other=0.0)
            if UPCAST:
                x_tile = x_tile.to(tl.float32)
            acc = tl.dot(q_tile, x_tile)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for k0 in range(0, d, BLOCK_K):
                kk = k0 + ks
                a = tl.load(q_ptr + queries[:, None].to(tl.int64) * stride_q + kk[None, :], mask=q_ok[:, None] & (kk[None, :] < d), other=0.0)
                b = tl.load(x_ptr + j[None, :].to(tl.int64) * stride_x + kk[:, None], mask=j_ok[None, :] & (kk[:, None] < d), other=0.0)
                if UPCAST:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc)
        s = acc + tl.load(bias_ptr + j, mask=j_ok, other=float("-inf"))[None, :]
        if HAS_MASK:
            keep = tl.load(mask_ptr + j, mask=j_ok, other=0)
            s = tl.where(keep[None, :] != 0, s, float("-inf"))
        better = s > best
        best = tl.where(better, s, best)
        row = tl.where(better, j[None, :], row)
    out = queries[:, None].to(tl.int64) * stride_out + (pid_s * bins + cols)[None, :]
    tl.store(best_ptr + out, best, mask=q_ok[:, None])
    tl.store(row_ptr + out, row, mask=q_ok[:, None])


@triton.jit
def _bin_winners_kernel(
    x_ptr, best_ptr, index_ptr, n, bins, stride_x, stride_out,
    LARGEST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    groups = tl.arange(0, GROUPS)
    col_ok = cols < bins
    base = x_ptr + r.to(tl.int64) * stride_x
    best = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    index = cols.to(tl.int64)  # every bin has an element (n >= bins): its first is the default
    for start in range(0, n, GROUPS * bins):
        j = start + groups[:, None] * bins + cols[None, :]  # [GROUPS, BLOCK_B] elements of the bins
        ok = col_ok[None, :] & (j < n)
        v = tl.load(base + j, mask=ok, other=0.0).to(tl.float32)
        if not LARGEST:
            v = -v
        v = tl.where(ok, v, float("-inf"))
        tile_best = tl.max(v, axis=0)
        tile_arg = tl.argmax(v, axis=0, tie_break_left=True)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        index = tl.where(better, start + tile_arg.to(tl.int64) * bins + cols, index)
    out = r.to(tl.int64) * stride_out + cols
    tl.store(best_ptr + out, best, mask=col_ok)
    tl.store(index_ptr + out, index, mask=col_ok)


def _pow2_at_least(value: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(1, value))))


def scan_block_sizes(nq: int, d: int, bins: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for `scan_winners`; BLOCK_N always divides `bins` (a multiple of 16)."""
    block_m = _pow2_at_least(nq, 16, 64)
    block_n = next(b for b in (128, 64, 32, 16) if bins % b == 0)
    block_k = _pow2_at_least(d, 16, 128)
    return block_m, block_n, block_k


def scan_winners(
    q: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    bins: int,
    splits: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin winners of the fused scan (module docstring).

    q: [nq, d] and x: [n, d] (unit stride along d; x may be a column slice of wider rows), same
    dtype (bf16, fp16 or fp32); bias: f32[n]; mask: bool/uint8[n] or None; bins: a multiple of
    16; splits >= 1. Returns (scores f32[nq, splits * bins], rows i32[nq, splits * bins]).
    """
    nq, d = q.shape
    n = x.shape[0]
    if x.shape[1] != d or x.dtype != q.dtype or q.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"scan_winners: q {tuple(q.shape)} {q.dtype} and x {tuple(x.shape)} {x.dtype} must share d, dtype, unit inner stride")
    if bins % 16:
        raise ValueError(f"bins must be a multiple of 16, got {bins}")
    split_rows = -(-(-(-n // splits)) // bins) * bins
    splits = -(-n // split_rows)
    width = splits * bins
    best = torch.empty((nq, width), dtype=torch.float32, device=q.device)
    rows = torch.empty((nq, width), dtype=torch.int32, device=q.device)
    block_m, block_n, block_k = scan_block_sizes(nq, d, bins)
    mask_arg = bias if mask is None else mask.to(torch.uint8)
    grid = (triton.cdiv(nq, block_m), bins // block_n, splits)
    _scan_winners_kernel[grid](
        q, x, bias, mask_arg, best, rows,
        nq, n, d, bins, split_rows,
        q.stride(0), x.stride(0), width,
        HAS_MASK=mask is not None, UPCAST=interpreting(), ONE_K_STEP=d <= block_k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return best, rows


def bin_winners(rows: torch.Tensor, bins: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(oriented values f32[R, bins], indices i64[R, bins]): best per bin of rows: [R, n], n >= bins.

    Values are negated when largest=False, so a top-k over them is always largest-first.
    """
    r, n = rows.shape
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    best = torch.empty((r, bins), dtype=torch.float32, device=rows.device)
    index = torch.empty((r, bins), dtype=torch.int64, device=rows.device)
    block_b = min(128, triton.next_power_of_2(bins))
    grid = (r, triton.cdiv(bins, block_b))
    _bin_winners_kernel[grid](rows, best, index, n, bins, rows.stride(0), bins, LARGEST=largest, GROUPS=8, BLOCK_B=block_b)
    return best, index
