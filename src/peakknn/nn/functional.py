"""Functional forms of peakknn.nn: `topk_mask` (dense, the rest zeroed) and `topk_sparse`
((values, indices), for sparse decoders). Both keep approx_topk's k largest of each row along
dim (module docstring of peakknn.nn) and apply `activation` to the kept values only.

    topk_mask(x: f[..., n, ...], k) -> f[..., n, ...]          exactly k nonzero-able entries per row
    topk_sparse(x: f[..., n, ...], k) -> (values f[..., k, ...], indices i64[..., k, ...])

Gradients: d out / d x is the activation's derivative at the kept entries and 0 elsewhere, as
with `torch.zeros_like(x).scatter(dim, i, act(x.gather(dim, i)))` for i from torch.topk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..topk.approx import check_topk_args, choose_plan
from ._ops import topk_indices

Activation = Callable[[torch.Tensor], torch.Tensor]


@torch.compiler.assume_constant_result
def _plan(rows: int, n: int, k: int, recall_target: float, per_bin, dtype: torch.dtype, device: str, use_triton: bool) -> tuple[int, int]:
    """(bins, per_bin) of the call, bins 0 for exact: a constant to torch.compile (the cost model
    runs once, at tracing, outside the graph)."""
    plan = choose_plan(int(rows), int(n), k, recall_target, per_bin, dtype, device, use_triton, False)
    return (plan.bins or 0, plan.per_bin or 1)


def topk_indices_along(x: torch.Tensor, k: int, dim: int = -1, *, recall_target: float = 0.95, per_bin: int | None = None) -> torch.Tensor:
    """i64[..., k, ...]: the indices along dim of approx_topk's k largest (unspecified order)."""
    dim, k, recall_target, per_bin, use_triton = check_topk_args(x, k, dim, recall_target, per_bin, "auto")
    n = x.shape[dim]
    moved = x.detach().movedim(dim, -1)
    rows = moved.reshape(-1, n)
    bins, per_bin = _plan(rows.shape[0], n, k, recall_target, per_bin, x.dtype, str(x.device), use_triton)
    indices = topk_indices(rows, k, bins, per_bin)
    return indices.reshape(*moved.shape[:-1], k).movedim(-1, dim)


def topk_sparse(
    x: torch.Tensor, k: int, dim: int = -1, *, recall_target: float = 0.95, per_bin: int | None = None, activation: Activation | None = None
) -> torch.return_types.topk:
    """(activation(values), indices) of approx_topk's k largest of x along dim, in an unspecified
    order; gradients flow to x at the indices."""
    indices = topk_indices_along(x, k, dim, recall_target=recall_target, per_bin=per_bin)
    values = x.gather(dim, indices)
    if activation is not None:
        values = activation(values)
    return torch.return_types.topk((values, indices))


def topk_mask(
    x: torch.Tensor, k: int, dim: int = -1, *, recall_target: float = 0.95, per_bin: int | None = None, activation: Activation | None = None
) -> torch.Tensor:
    """x with all but approx_topk's k largest of each row along dim set to 0 (the kept ones
    passed through activation); same shape and dtype as x."""
    values, indices = topk_sparse(x, k, dim, recall_target=recall_target, per_bin=per_bin, activation=activation)
    return torch.zeros_like(x, dtype=values.dtype).scatter(dim, indices, values)
