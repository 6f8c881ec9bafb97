"""approx_topk: a drop-in for torch.topk built on the two-stage (binned) top-k.

    values, indices = approx_topk(x, k, dim=-1, recall_target=0.95)

x: float[..., n, ...] (fp32/fp16/bf16/fp64, any rank, any dim, any strides).
Semantics (exactly those of `reference.approx_topk_reference`): with L bins from
`plan_bins(n, k, recall_target, per_bin)`, element j of `dim` goes to bin j mod L, each bin keeps
its best `per_bin`, and the result is the exact, sorted top-k over the winners. The expected
recall against torch.topk is >= recall_target when the true top-k fall into bins at random
(strided bins keep contiguous runs of large values apart). recall_target=1.0 is torch.topk.
Values are gathered from x, so gradients flow to the selected entries as with torch.topk.
A row holding NaN is answered by torch.topk itself (NaN ranks above +inf, as there) on the torch
path; the Triton kernel ranks NaN as +inf (first when largest, last when smallest).

Fast path (per_bin == 1): one pass over x computes the best of each bin inside tiles of
TILE_GROUPS * L consecutive elements (a strided max over a [tiles, TILE_GROUPS, L] view, no
index bookkeeping), then an exact top-k picks the winning bins, and only the winning tiles are
revisited to recover the index. per_bin > 1 runs the plain reference.
"""

from __future__ import annotations

import torch

from .. import _backend
from .._checks import check_k, check_per_bin, check_recall_target
from .plan import plan_bins
from .reference import approx_topk_reference

TILE_GROUPS = 16  # rows of bins per tile: index recovery revisits TILE_GROUPS elements per winner
_BLOCK_ELEMENTS = 1 << 26  # rows are processed in blocks of about this many elements (bounded memory)


def approx_topk(
    x: torch.Tensor,
    k: int,
    dim: int = -1,
    largest: bool = True,
    sorted: bool = True,
    *,
    recall_target: float = 0.95,
    per_bin: int = 1,
    backend: str = "auto",
) -> torch.return_types.topk:
    """Approximate top-k of x along dim: `torch.return_types.topk(values, indices)`, shaped as
    torch.topk's, with the same positional arguments (x, k, dim, largest, sorted).

    The results are always sorted (best first), so sorted=False changes nothing; gradients flow
    to the selected entries of x. backend: "auto" (Triton kernel for CUDA tensors when triton is
    installed), "torch" or "triton" (CUDA, or CPU under TRITON_INTERPRET=1); see peakknn._backend.
    """
    if not isinstance(largest, bool) or not isinstance(sorted, bool):
        raise TypeError(f"largest and sorted must be bools, got largest={largest!r}, sorted={sorted!r}")
    values, indices = _approx_topk(x, k, dim, largest, recall_target, per_bin, backend)
    return torch.return_types.topk((values, indices))


def _approx_topk(x, k, dim, largest, recall_target, per_bin, backend) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}], got {dim}")
    n = x.shape[dim]
    k = check_k(k, limit=n)
    recall_target = check_recall_target(recall_target)
    per_bin = check_per_bin(per_bin)
    use_triton = _backend.resolve(backend, x.device) == "triton"
    bins = plan_bins(n, k, recall_target, per_bin)
    if bins is None or x.numel() == 0:  # exact, or no rows at all (an empty batch dimension)
        return torch.topk(x, k, dim=dim, largest=largest, sorted=True)
    if per_bin != 1:
        return approx_topk_reference(x, k, dim, recall_target=recall_target, largest=largest, per_bin=per_bin)
    moved = x.movedim(dim, -1)
    batch = moved.shape[:-1]
    rows = moved.reshape(-1, n)  # a view when x is contiguous along dim; a copy otherwise
    with torch.no_grad():
        if use_triton and x.dtype != torch.float64:
            from ..kernels.bin_winners import bin_winners

            win_values, win_index = bin_winners(rows.detach(), bins, largest)
            indices = win_index.gather(1, torch.topk(win_values, k, dim=1).indices)
        else:
            indices = _binned_topk_indices(rows.detach(), k, bins, largest)
    values = rows.gather(1, indices)
    return values.reshape(*batch, k).movedim(-1, dim), indices.reshape(*batch, k).movedim(-1, dim)


def _binned_topk_indices(rows: torch.Tensor, k: int, bins: int, largest: bool) -> torch.Tensor:
    """i64[R, k] indices of the sorted top-k bin winners of each row of rows: [R, n]."""
    n = rows.shape[1]
    block = max(1, _BLOCK_ELEMENTS // n)
    out = []
    for i in range(0, rows.shape[0], block):
        part = rows[i : i + block]
        indices, has_nan = _binned_block(part, k, bins, largest)
        if bool(has_nan.any()):  # NaN propagates into its bin's best: such rows take torch.topk's NaN order
            indices[has_nan] = torch.topk(part[has_nan], k, dim=1, largest=largest, sorted=True).indices
        out.append(indices)
    return torch.cat(out) if len(out) > 1 else out[0]


def _binned_block(rows: torch.Tensor, k: int, bins: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(i64[r, k] indices of the sorted top-k bin winners, bool[r] rows holding a NaN)."""
    r, n = rows.shape
    reduce = torch.amax if largest else torch.amin
    pick = torch.argmax if largest else torch.argmin
    tile = TILE_GROUPS * bins
    full = n // tile
    worst = float("-inf") if largest else float("inf")
    tile_best = None
    if full:
        tile_best = reduce(rows[:, : full * tile].view(r, full, TILE_GROUPS, bins), dim=2)  # [r, full, bins]
    if n > full * tile:  # last partial tile, padded with the worst value (positions >= n)
        last = torch.full((r, 1, tile), worst, dtype=rows.dtype, device=rows.device)
        last[:, 0, : n - full * tile] = rows[:, full * tile :]
        last_best = reduce(last.view(r, 1, TILE_GROUPS, bins), dim=2)  # [r, 1, bins]
        tile_best = last_best if tile_best is None else (tile_best, last_best)
    if isinstance(tile_best, tuple):  # no concatenation of the large part: reduce both and combine
        main, last_best = tile_best
        bin_best = _pairwise(reduce(main, dim=1), last_best[:, 0], largest)
    else:
        bin_best = reduce(tile_best, dim=1)  # [r, bins]
    has_nan = torch.isnan(bin_best).any(1)  # max / min propagate NaN: one pass over [r, bins] tells
    _, top_bins = torch.topk(bin_best, k, dim=1, largest=largest, sorted=True)  # [r, k]
    # Winning tile of each chosen bin: the first tile reaching the bin's best (argmax takes the first).
    if isinstance(tile_best, tuple):
        main_per_tile = main.gather(2, top_bins.unsqueeze(1).expand(r, main.shape[1], k))  # [r, full, k]
        last_per_tile = last_best[:, 0].gather(1, top_bins)  # [r, k]
        win_tile = pick(main_per_tile, dim=1)
        main_val = main_per_tile.gather(1, win_tile.unsqueeze(1)).squeeze(1)
        beats = last_per_tile > main_val if largest else last_per_tile < main_val
        win_tile = torch.where(beats, torch.full_like(win_tile, full), win_tile)
    else:
        per_tile = tile_best.gather(2, top_bins.unsqueeze(1).expand(r, tile_best.shape[1], k))  # [r, tiles, k]
        win_tile = pick(per_tile, dim=1)  # [r, k]
    # Revisit the TILE_GROUPS elements of (win_tile, bin): positions t*tile + g*bins + b.
    offsets = torch.arange(TILE_GROUPS, device=rows.device) * bins
    pos = (win_tile * tile + top_bins).unsqueeze(2) + offsets  # [r, k, TILE_GROUPS]
    in_range = pos < n
    cand = rows.gather(1, pos.clamp_max(n - 1).view(r, -1)).view(r, k, TILE_GROUPS)
    if not bool(in_range.all()):
        cand = cand.masked_fill(~in_range, worst)
    best_in_tile = pick(cand, dim=2, keepdim=True)  # first maximum, so real elements beat padding
    return pos.gather(2, best_in_tile).squeeze(2), has_nan


def _pairwise(a: torch.Tensor, b: torch.Tensor, largest: bool) -> torch.Tensor:
    return torch.maximum(a, b) if largest else torch.minimum(a, b)
