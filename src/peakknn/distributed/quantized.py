"""Block-quantized all-reduce (EQuARX: Ahmed et al. 2025) over torch.distributed.

    all_reduce_quantized(t, op="sum")   # in place, like dist.all_reduce; also returns t

Steps, for world size W and n elements (flattened):
  1. pad to W chunks of c elements (c = ceil(n / W) rounded up to a multiple of `block`);
  2. quantize every block of `block` elements symmetrically: scale = absmax / qmax (fp32, qmax =
     2**(bits-1) - 1 = 127 for 8 bits), q = round(x / scale) in int8;
  3. all_to_all_single: rank j receives every rank's chunk j (int8 codes, fp32 scales);
  4. dequantize and accumulate in fp32 (divide by W for "avg"): rank j's reduced chunk;
  5. re-quantize the reduced chunk the same way; all-gather the codes and scales
     (`dist.all_gather_single`, formerly all_gather_into_tensor);
  6. dequantize into the tensor (its own dtype).
Two roundings whatever W is. Bytes sent per rank: about 2 (W-1)/W * n * (bits/8 rounded up to
1 byte) + scales (8 (W-1)/W * n / block), against 2 (W-1)/W * 4n for a ring fp32 all_reduce.

Error bound, per element i of block b (`quantized_error_bound` computes it):
    |result_i - exact_i| <= sum_r scale_r,b / 2 * a  +  scale_red,b / 2
where scale_r,b = absmax of block b on rank r / qmax, a = 1 (sum) or 1/W (avg), and scale_red,b =
absmax of the reduced (dequantized, accumulated) block / qmax; plus fp32 rounding of the
accumulation (relative ~W * 2**-24). Zero blocks are exact (scale 0).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ._comm import agree, all_gather_tensor, world

OPS = ("sum", "avg")


def _quantize(x: torch.Tensor, block: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x f32[m * block] -> (int8[m * block], f32[m] scales = block absmax / qmax); a block holding
    NaN or inf gets a non-finite scale (the caller checks)."""
    b = x.view(-1, block)
    lo, hi = b.aminmax(dim=1)
    absmax = torch.maximum(hi, -lo)
    scale = absmax / qmax
    inv = torch.where(absmax > 0, qmax / absmax, torch.zeros_like(absmax))  # zero blocks: codes 0
    y = b * inv[:, None]
    q = y.round_().clamp_(-qmax, qmax).to(torch.int8)
    return q.view(-1), scale


def _dequantize(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    return (q.view(-1, block).to(torch.float32) * scale[:, None]).view(-1)


def _layout(n: int, size: int, block: int) -> int:
    """Elements per chunk: ceil(n / size) rounded up to a multiple of block (at least one block)."""
    per = -(-n // size)
    return max(block, -(-per // block) * block)


def all_reduce_quantized(tensor: torch.Tensor, *, op: str = "sum", bits: int = 8, block: int = 256, group=None) -> torch.Tensor:
    """Reduce `tensor` (any shape, floating dtype, CPU) across the ranks of `group` through int8
    blocks with fp32 scales; the result overwrites `tensor` on every rank (as
    `dist.all_reduce` does) and is also returned. Collective: every rank calls it with the same
    shape, op, bits and block (checked in two small collectives before any data moves: a
    mismatch or a non-finite value on any rank raises ValueError on every rank).

    op: "sum" or "avg"; bits: 2..8 (codes in [-(2**(bits-1)-1), 2**(bits-1)-1], sent as int8);
    block: elements sharing one fp32 scale. Error bound: module docstring. World size 1:
    `tensor` is left as it is (exact).
    """
    rank, size = world(group)
    ok = isinstance(tensor, torch.Tensor)
    shapes = torch.zeros((size, 4), dtype=torch.int64)
    code = OPS.index(op) if op in OPS else -1
    shapes[rank] = torch.tensor([tensor.numel() if ok else -1, bits if isinstance(bits, int) else -1, block if isinstance(block, int) else -1, code])
    dist.all_reduce(shapes, group=group)

    def check():
        if not ok or not tensor.is_floating_point():
            raise TypeError(f"tensor must be a floating-point torch.Tensor, got {type(tensor).__name__}")
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        if tensor.device.type != "cpu":
            raise ValueError(f"all_reduce_quantized runs on CPU tensors (gloo), got {tensor.device}")
        _same(shapes)
        n = tensor.numel()
        if size == 1 or n == 0:
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError("tensor holds NaN or inf")
            return None
        c = _layout(n, size, block)
        x = torch.zeros(size * c, dtype=torch.float32)
        x[:n] = tensor.detach().reshape(-1)
        q, scale = _quantize(x, block, (1 << (bits - 1)) - 1)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("tensor holds NaN or inf")
        return q, scale

    # one small all_reduce above (sizes), one here (every rank's verdict); then the data moves
    quantized = agree(group, check)
    if quantized is None:  # world size 1 or no elements: nothing to reduce
        return tensor
    q, scale = quantized
    n = tensor.numel()
    qmax = (1 << (bits - 1)) - 1
    c = _layout(n, size, block)
    nb = c // block
    q_in, s_in = torch.empty_like(q), torch.empty_like(scale)
    dist.all_to_all_single(q_in, q, group=group)  # equal splits: chunk j goes to rank j
    dist.all_to_all_single(s_in, scale, group=group)
    acc = _dequantize(q_in, s_in, block).view(size, c).sum(dim=0)
    if op == "avg":
        acc /= size
    q_red, s_red = _quantize(acc, block, qmax)
    q_all = torch.empty(size * c, dtype=torch.int8)
    s_all = torch.empty(size * nb, dtype=torch.float32)
    all_gather_tensor(q_all, q_red, group)
    all_gather_tensor(s_all, s_red, group)
    out = _dequantize(q_all, s_all, block)[:n]
    with torch.no_grad():
        tensor.copy_(out.view(tensor.shape))
    return tensor


def _same(shapes: torch.Tensor) -> None:
    if not bool((shapes == shapes[0]).all()):
        rows = ", ".join(f"rank {r}: numel={int(s[0])} bits={int(s[1])} block={int(s[2])} op={OPS[int(s[3])]}" for r, s in enumerate(shapes))
        raise ValueError(f"all_reduce_quantized needs the same numel, bits, block and op on every rank ({rows})")


def quantized_error_bound(inputs: list[torch.Tensor], *, op: str = "sum", bits: int = 8, block: int = 256) -> torch.Tensor:
    """f64[n]: the per-element error bound of `all_reduce_quantized` for these per-rank inputs
    (same shape each), with scale_red bounded by (absmax of the exact reduced block + the first
    rounding's bound) / qmax. A local function (no collective), for tests and error reports."""
    size = len(inputs)
    n = inputs[0].numel()
    qmax = (1 << (bits - 1)) - 1
    c = _layout(n, size, block)
    xs = torch.zeros((size, size * c), dtype=torch.float64)
    for r, t in enumerate(inputs):
        xs[r, :n] = t.reshape(-1).to(torch.float64)
    a = 1.0 if op == "sum" else 1.0 / size
    scales = xs.view(size, -1, block).abs().amax(dim=2) / qmax  # [ranks, blocks]
    first = scales.sum(dim=0) / 2 * a  # [blocks]
    exact = xs.sum(dim=0) * a
    red = (exact.view(-1, block).abs().amax(dim=1) + first) / qmax
    bound = (first + red / 2)[:, None].expand(-1, block).reshape(-1)
    return bound[:n]
