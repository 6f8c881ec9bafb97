"""Plain-torch approximate top-k: the specification the fast paths are tested against.

approx_topk_reference(x, k) with L = topk_bins(n, k, recall_target, per_bin) bins (a prime):
element j of the reduced dimension goes to bin j mod L; each bin keeps its best `per_bin`
elements, the earlier element first among equal values (a stable sort); the result is the
exact top-k (sorted) over those L * per_bin winners. When topk_bins returns None the result is
torch.topk's. `reference_rows` is the same for rows [R, n] and an explicit bin count.
"""

from __future__ import annotations

import torch

from .._checks import ceil_div
from .plan import topk_bins


def approx_topk_reference(
    x: torch.Tensor,
    k: int,
    dim: int = -1,
    *,
    recall_target: float = 0.95,
    largest: bool = True,
    per_bin: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference two-stage top-k of x along dim. Returns (values, indices) like torch.topk."""
    n = x.shape[dim]
    bins = topk_bins(n, k, recall_target, per_bin)
    if bins is None:
        return torch.topk(x, k, dim=dim, largest=largest, sorted=True)
    moved = x.movedim(dim, -1)
    batch = moved.shape[:-1]
    rows = moved.reshape(-1, n)
    values, indices = reference_rows(rows, k, bins, per_bin, largest)
    return values.reshape(*batch, k).movedim(-1, dim), indices.reshape(*batch, k).movedim(-1, dim)


def reference_rows(rows: torch.Tensor, k: int, bins: int, per_bin: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, i64 indices) [R, k], sorted best first, of the two-stage top-k of rows: [R, n]
    with an explicit bin count (n >= bins * per_bin)."""
    n = rows.shape[1]
    groups = ceil_div(n, bins)
    fill = float("-inf") if largest else float("inf")
    padded = torch.full((rows.shape[0], groups * bins), fill, dtype=rows.dtype, device=rows.device)
    padded[:, :n] = rows
    # [rows, groups, bins]: column b holds elements b, b + L, b + 2L, ... (bin b).
    # A stable sort ranks real elements ahead of the padding (always last) even when they tie with it.
    sorted_vals, order = torch.sort(padded.view(-1, groups, bins), dim=1, descending=largest, stable=True)
    win_vals, win_group = sorted_vals[:, :per_bin], order[:, :per_bin]
    win_index = win_group * bins + torch.arange(bins, device=rows.device)
    win_vals = win_vals.reshape(rows.shape[0], -1)
    win_index = win_index.reshape(rows.shape[0], -1)
    _, pos = torch.topk(win_vals, k, dim=1, largest=largest, sorted=True)
    indices = win_index.gather(1, pos)
    return rows.gather(1, indices), indices
