"""The TopK module: a thin shell over peakknn.nn.functional.topk_mask / topk_sparse."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_k, check_per_bin, check_recall_target
from . import functional as F


class TopK(nn.Module):
    """Keep the (approximate) top k of each row along dim, zero the rest.

    TopK(k, dim=-1, recall_target=0.95, per_bin=None, activation=None): recall_target is the
    expected recall against torch.topk (1.0: torch.topk itself); per_bin None lets the cost model
    choose (peakknn.topk.plan_topk); activation (a module or function, e.g. nn.ReLU()) is applied
    to the kept values. forward(x) -> f[same shape as x]; sparse(x) -> (values, indices) with
    values f[..., k] (activation applied) and indices i64[..., k], in an unspecified order.
    """

    def __init__(self, k: int, dim: int = -1, recall_target: float = 0.95, per_bin: int | None = None, activation=None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if activation is not None and not callable(activation):
            raise TypeError(f"activation must be callable, got {type(activation).__name__}")
        self.k = check_k(k)
        self.dim = dim
        self.recall_target = check_recall_target(recall_target)
        self.per_bin = None if per_bin is None else check_per_bin(per_bin)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.topk_mask(x, self.k, self.dim, recall_target=self.recall_target, per_bin=self.per_bin, activation=self.activation)

    def sparse(self, x: torch.Tensor) -> torch.return_types.topk:
        return F.topk_sparse(x, self.k, self.dim, recall_target=self.recall_target, per_bin=self.per_bin, activation=self.activation)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, recall_target={self.recall_target}, per_bin={self.per_bin}"
