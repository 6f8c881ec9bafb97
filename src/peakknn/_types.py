"""Shared types: metrics, precisions and the search result.

One metric table (docs/ALGORITHMS.md section 1): every metric is ranked by a cheap "larger is better" score
inside the scan, and corrected once at the end:

| metric | scan score (larger wins)  | reported score                  | filler |
|--------|---------------------------|---------------------------------|--------|
| "ip"   | <q, x>                    | <q, x>, descending              | -inf   |
| "cos"  | <q/|q|, x/|x|>            | cosine similarity, descending   | -inf   |
| "l2"   | <q, x> - |x|^2 / 2        | squared distance, ascending     | +inf   |
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

import numpy as np
import torch

MetricLike = Literal["ip", "l2", "cos"]
PrecisionLike = Literal["fp32", "bf16"]
VectorsLike = Union[torch.Tensor, np.ndarray]

METRICS = ("ip", "l2", "cos")
_PRECISIONS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def check_metric(metric: MetricLike) -> MetricLike:
    """Return `metric` if it is one of "ip", "l2", "cos"; raise ValueError otherwise."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def scan_dtype(precision: Union[PrecisionLike, torch.dtype], name: str = "precision") -> torch.dtype:
    """Map a precision name ("fp32"/"bf16") or torch dtype to the dtype scores are computed in;
    ValueError naming the parameter `name` otherwise."""
    if isinstance(precision, torch.dtype):
        if precision in (torch.float32, torch.bfloat16):
            return precision
        raise ValueError(f"{name} must be torch.float32 or torch.bfloat16, got {precision}")
    if not isinstance(precision, str) or precision not in _PRECISIONS:
        raise ValueError(f"{name} must be 'fp32' or 'bf16', got {precision!r}")
    return _PRECISIONS[precision]


def precision_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def default_rerank(k: int, scan_dtype: torch.dtype) -> int:
    """Candidates re-scored exactly per query when the caller does not say: k for fp32, 2k for
    bf16/fp16 (lower-precision scores can misorder near-ties, which the fp32 re-score undoes)."""
    return k if scan_dtype == torch.float32 else 2 * k


def is_distance(metric: str) -> bool:
    """True when reported scores are distances (smaller is better)."""
    return metric == "l2"


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Neighbours of each query, best first.

    scores: f32[nq, k]  inner products / cosines (descending) or squared L2 distances (ascending),
                        computed exactly in fp32 for the returned ids.
    ids:    i64[nq, k]  ids (row numbers for `search`, user ids for `Index.search`); -1 where
                        fewer than k candidates exist, with score -inf (ip/cos) or +inf (l2) there.

    Torch tensors, or numpy arrays where the queries were a numpy array; `numpy()` and
    `torch()` convert either way.
    """

    scores: torch.Tensor | np.ndarray
    ids: torch.Tensor | np.ndarray

    def __iter__(self):  # allows `scores, ids = result`
        yield self.scores
        yield self.ids

    def numpy(self) -> "SearchResult":
        """The same result as numpy arrays (f32 scores, i64 ids) on the host."""
        return SearchResult(scores=_to_numpy(self.scores), ids=_to_numpy(self.ids))

    def torch(self) -> "SearchResult":
        """The same result as torch tensors (numpy arrays are wrapped without a copy)."""
        return SearchResult(scores=torch.as_tensor(self.scores), ids=torch.as_tensor(self.ids))

    def mean_recall(self, expected: VectorsLike) -> float:
        """Mean over queries of |ids[q] ∩ expected[q, :k]| / k, for i64[nq, >=k] true neighbours
        (`peakknn.evaluation.recall`)."""
        from .evaluation import recall

        return recall(self.ids, expected)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
