"""scan_winners: the matrix product fused with the partial reduction (docs/ALGORITHMS.md).

For queries Q: [nq, d] and database rows X: [n, d] with rank corrections b: f32[n] (0 for
ip/cos, -|x|^2/2 for L2, -inf for a deleted row) and an optional mask m: [n], the rank score of
row j is
    s(q, j) = <q, x_j> + b_j      (-inf where m_j == 0),
computed with tl.dot (bf16/fp16 in, fp32 accumulate; fp32 inputs as tf32x3, about fp32
accuracy). The rows are cut into `splits` contiguous slices of `split_rows` rows (a multiple of
`bins`); inside a slice, row j belongs to column (j - slice_start) mod bins. Each program owns
BLOCK_M queries x BLOCK_N columns of one slice, walks the slice's database tiles and keeps the
running best score and row per (query, column) in registers, so the score matrix never reaches
memory. Output: for every query, splits * bins winners (score f32, row i32; row -1 and score
-inf where a column saw only -inf). Ties keep the lowest row.

In this file: the kernel, its launch shape (`ScanConfig`, `scan_config`), the launcher
(`scan_winners`) and the plain-torch specification the tests hold it to
(`scan_winners_reference`). Imported lazily (it imports triton): `engine.kernel_scan` loads it
when a search runs on the "triton" backend (see peakknn._backend).

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

from .._backend import interpreting
from .._checks import ceil_div, round_up


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
    """The launch shape that benchmarks/tune_gpu.py measured fastest (its results name the GPU);
    block_n always divides `bins` (a multiple of 16). d > 128 takes several depth steps per tile:
    128 x 128 tiles, 8 warps and one pipelined loop over (tile, step)."""
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
    split_rows = round_up(ceil_div(n, splits), bins)
    splits = ceil_div(n, split_rows)
    winners = splits * bins
    best = torch.empty((nq, winners), dtype=torch.float32, device=q.device)
    rows = torch.empty((nq, winners), dtype=torch.int32, device=q.device)
    bias_arg = best if bias is None else bias  # never read without HAS_BIAS
    mask_arg = best if mask is None else mask.to(torch.uint8)  # never read without HAS_MASK
    grid = (triton.cdiv(nq, config.block_m), bins // config.block_n, splits)
    _scan_winners_kernel[grid](
        q, x, bias_arg, mask_arg, best, rows,
        nq, n, d, bins, split_rows,
        q.stride(0), x.stride(0), winners,
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, UPCAST=interpreting(),
        ONE_K_STEP=d <= config.block_k, EVEN_K=d % config.block_k == 0,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else None,
        FLATTEN=config.flatten,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return best, rows


def scan_winners_reference(
    q: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None, bins: int, splits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch specification of `scan_winners` (same arguments and outputs).

    Scores s = q x^T + bias in fp32 (-inf where mask is False); the rows are cut into slices of
    split_rows = round_up(ceil(n / splits), bins) rows; in a slice starting at lo, row j is in
    column (j - lo) mod bins. Returns (best f32[nq, S * bins], row i32[nq, S * bins]) per (slice,
    column), the lowest row among equal bests, row -1 (score -inf) where every
    score of the column is -inf. S is the number of non-empty slices.
    """
    n = x.shape[0]
    s = q.float() @ x.float().T + bias
    if mask is not None:
        s = s.masked_fill(~mask.bool(), float("-inf"))
    split_rows = round_up(ceil_div(n, splits), bins)
    slices = ceil_div(n, split_rows)
    padded = s.new_full((s.shape[0], slices * split_rows), float("-inf"))
    padded[:, :n] = s
    view = padded.view(s.shape[0], slices, split_rows // bins, bins)
    best, tile = torch.sort(view, dim=2, descending=True, stable=True)
    best, tile = best[:, :, 0], tile[:, :, 0]  # [nq, slices, bins]
    row = torch.arange(slices, device=s.device).view(1, -1, 1) * split_rows + tile * bins + torch.arange(bins, device=s.device)
    row = row.masked_fill(best == float("-inf"), -1)
    return best.reshape(s.shape[0], -1), row.reshape(s.shape[0], -1).to(torch.int32)
