"""Fused Triton kernels: the partial reduction of DESIGN.md section 1 on the GPU.

Imported lazily (it imports triton); see peakknn._backend for when these run.

`scan_winners` — matrix product fused with the partial reduction. For queries Q: [nq, d] and
database rows X: [n, d] with rank corrections b: f32[n] (0 for ip/cos, -|x|^2/2 for L2, -inf for
a deleted row) and an optional mask m: [n], the rank score of row j is
    s(q, j) = <q, x_j> + b_j      (-inf where m_j == 0),
computed with tl.dot (bf16/fp16 in, fp32 accumulate; fp32 inputs as tf32x3, about fp32
accuracy). The rows are cut into `splits` contiguous slices of `split_rows` rows (a multiple of
`bins`); inside a slice, row j belongs to column (j - slice_start) mod bins. Each program owns
BLOCK_M queries x BLOCK_N columns of one slice, walks the slice's database tiles and keeps the
running best score and row per (query, column) in registers, so the score matrix never reaches
memory. Output: for every query, splits * bins winners (score f32, row i32; row -1 and score
-inf where a column saw only -inf). Ties keep the lowest row.

`bin_winners` — the same reduction without the product, for approx_topk: row r of x: [R, n],
element j -> bin j mod bins, best value and its first index per bin (values widened to fp32 and
negated when the smallest are wanted, so larger always wins).

Known limitation of Triton's interpreter (triton 3.x): tl.dot on bf16 operands multiplies the
raw uint16 storage, so under TRITON_INTERPRET=1 the operands are widened to fp32 first
(`UPCAST`). bf16 x bf16 products are exact in fp32, so the result is the one the GPU computes
(fp32 accumulation) up to summation order.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from ._backend import interpreting

BIN_BLOCK = 128  # bins per program of `bin_winners`
BIN_TILE = 1024  # elements each `bin_winners` program loads per step


@triton.jit
def _scan_winners_kernel(
    q_ptr, x_ptr, bias_ptr, mask_ptr, best_ptr, row_ptr,
    nq, n, d, bins, split_rows,
    stride_q, stride_x, stride_out,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, ONE_K_STEP: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FLATTEN: tl.constexpr,
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
    if EVEN_K:  # d is a multiple of BLOCK_K: no mask along d
        k_ok = ks < BLOCK_K
    else:
        k_ok = ks < d
    if ONE_K_STEP:  # d <= BLOCK_K: the query block stays in registers for the whole walk
        q_tile = tl.load(q_ptr + queries[:, None].to(tl.int64) * stride_q + ks[None, :], mask=q_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            q_tile = q_tile.to(tl.float32)
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    row = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    for start in tl.range(lo, hi, bins, flatten=FLATTEN):
        j = start + cols
        j_ok = j < hi
        if ONE_K_STEP:
            x_tile = tl.load(x_ptr + j[None, :].to(tl.int64) * stride_x + ks[:, None], mask=j_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST:
                x_tile = x_tile.to(tl.float32)
            acc = tl.dot(q_tile, x_tile, input_precision=DOT_PRECISION)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for k0 in range(0, d, BLOCK_K):
                kk = k0 + ks
                kk_ok = k_ok if EVEN_K else kk < d
                a = tl.load(q_ptr + queries[:, None].to(tl.int64) * stride_q + kk[None, :], mask=q_ok[:, None] & kk_ok[None, :], other=0.0)
                b = tl.load(x_ptr + j[None, :].to(tl.int64) * stride_x + kk[:, None], mask=j_ok[None, :] & kk_ok[:, None], other=0.0)
                if UPCAST:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            s = acc + tl.load(bias_ptr + j, mask=j_ok, other=float("-inf"))[None, :]
        else:
            s = tl.where(j_ok[None, :], acc, float("-inf"))
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


def _pow2_at_least(value: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(1, value))))


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Launch shape of `scan_winners`: a program's queries x columns x depth step, warps, pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    flatten: bool = False  # one software-pipelined loop over (tile, depth step) when d > block_k


def scan_config(nq: int, d: int, bins: int) -> ScanConfig:
    """Launch shape measured fastest on an H100 (benchmarks/tune_gpu.py); block_n always divides
    `bins` (a multiple of 16). d > 128 takes several depth steps per tile: 128 x 128 tiles, 8
    warps and one pipelined loop over (tile, step) ran 1.6-2.2x faster than the d <= 128 shape."""
    block_n = next(b for b in (128, 64, 32, 16) if bins % b == 0)
    if d > 128 and nq >= 128:
        return ScanConfig(128, block_n, 128, num_warps=8, num_stages=3, flatten=True)
    return ScanConfig(_pow2_at_least(nq, 16, 64), block_n, _pow2_at_least(d, 16, 128))


def scan_winners(
    q: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    bins: int,
    splits: int,
    config: ScanConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin winners of the fused scan (module docstring).

    q: [nq, d] and x: [n, d] (unit stride along d; x may be a column slice of wider rows), same
    dtype (bf16, fp16 or fp32); bias: f32[n] or None (all zero); mask: bool/uint8[n] or None;
    bins: a multiple of 16; splits >= 1; config: launch shape (default `scan_config`), its
    block_n must divide bins. Returns (scores f32[nq, splits * bins], rows i32[nq, splits * bins]).
    """
    nq, d = q.shape
    n = x.shape[0]
    if x.shape[1] != d or x.dtype != q.dtype or q.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"scan_winners: q {tuple(q.shape)} {q.dtype} and x {tuple(x.shape)} {x.dtype} must share d, dtype, unit inner stride")
    if bins % 16:
        raise ValueError(f"bins must be a multiple of 16, got {bins}")
    config = config or scan_config(nq, d, bins)
    if bins % config.block_n:
        raise ValueError(f"config.block_n={config.block_n} must divide bins={bins}")
    split_rows = -(-(-(-n // splits)) // bins) * bins
    splits = -(-n // split_rows)
    width = splits * bins
    best = torch.empty((nq, width), dtype=torch.float32, device=q.device)
    rows = torch.empty((nq, width), dtype=torch.int32, device=q.device)
    bias_arg = best if bias is None else bias  # never read without HAS_BIAS
    mask_arg = best if mask is None else mask.to(torch.uint8)  # never read without HAS_MASK
    grid = (triton.cdiv(nq, config.block_m), bins // config.block_n, splits)
    _scan_winners_kernel[grid](
        q, x, bias_arg, mask_arg, best, rows,
        nq, n, d, bins, split_rows,
        q.stride(0), x.stride(0), width,
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, UPCAST=interpreting(),
        ONE_K_STEP=d <= config.block_k, EVEN_K=d % config.block_k == 0,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else None,
        FLATTEN=config.flatten,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return best, rows


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
