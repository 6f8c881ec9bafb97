"""Exact fp32 re-scoring of candidates, and the scores users see.

`rescore` turns candidate slots into the top-k by exact fp32 rank score (larger is better:
<q, x> for ip / cos, -|q - x|^2 for L2); `finish` turns those ranks into reported scores
(squared distances ascending for L2) with the documented fillers.
"""

from __future__ import annotations

import torch

from .._checks import is_numpy
from .._types import SearchResult, is_distance
from .plan import MAX_QUERY_BLOCK


RESCORE_ROWS = 1024  # CPU: candidate rows gathered at once (they stay in L2 cache for their products)
RESCORE_MIN_QUERIES = 16  # ... but at least this many queries' candidates (bounds the loop for large m)


def rescore(table, q32: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor, k: int, metric: str, memory: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 scores of candidate slots, then the top-k.

    table: anything with `exact_rows(slots)`, `alive(slots)` and `frame` (engine.table.Table);
    q32: f32[nq, d]; slots, valid: [nq, m]. Returns (rank f32[nq, k], slots i64[nq, k]) where
    rank is larger-is-better (-squared distance for L2, <q, x> otherwise) and -inf marks missing
    results. Where a common offset matters (`ScanFrame.offset_matters`), inner products are
    summed in float64 (products of float32 values are exact there) and ranked before rounding
    to float32, so a large offset costs no digits where the candidates are told apart and each
    reported score is <q, x> correctly rounded.
    The candidates' rows are gathered a few at a time (on CPU, RESCORE_ROWS) and scored into one
    [nq, m] matrix within `memory` bytes of gathered rows; one top-k follows.
    """
    nq, m = slots.shape
    d = q32.shape[1]
    frame = getattr(table, "frame", None)
    wide = metric != "l2" and frame is not None and frame.offset_matters
    most = max(RESCORE_MIN_QUERIES, RESCORE_ROWS // max(1, m)) if q32.device.type == "cpu" else MAX_QUERY_BLOCK
    step = int(max(1, min(most, MAX_QUERY_BLOCK, memory // max(1, m * d * (16 if wide else 8)))))
    r = torch.empty(nq, m, dtype=torch.float64 if wide else torch.float32, device=q32.device)
    for i in range(0, nq, step):
        x, q = table.exact_rows(slots[i : i + step]), q32[i : i + step]  # [b, m, d], [b, d]
        if metric == "l2":
            torch.sum((x - q.unsqueeze(1)).square_(), dim=2, out=r[i : i + step]).neg_()
        elif wide:
            r[i : i + step] = torch.linalg.vecdot(x.double(), q.double().unsqueeze(1))
        else:  # a batch of matrix-vector products: vecdot streams the rows (bmm runs ~6x slower here)
            r[i : i + step] = torch.linalg.vecdot(x, q.unsqueeze(1))
    r.masked_fill_(~(valid & table.alive(slots)), float("-inf"))
    kk = min(k, m)
    top_r, pos = torch.topk(r, kk, dim=1)
    top_r, top_s = top_r.to(torch.float32), slots.gather(1, pos)
    return pad_results(top_r, top_s, k)


def pad_results(rank: torch.Tensor, slots: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen [nq, m <= k] results to k columns with rank -inf and slot 0 (missing results)."""
    nq, m = rank.shape
    if m < k:
        rank = torch.cat([rank, rank.new_full((nq, k - m), float("-inf"))], dim=1)
        slots = torch.cat([slots, slots.new_zeros((nq, k - m))], dim=1)
    return rank, slots


def finish(rank: torch.Tensor, slot_ids: torch.Tensor, metric: str) -> SearchResult:
    """Turn larger-is-better ranks into reported scores; -inf ranks become fillers with id -1."""
    missing = rank == float("-inf")
    ids = slot_ids.masked_fill(missing, -1)
    scores = -rank if is_distance(metric) else rank  # -(-inf) = +inf filler for distances
    return SearchResult(scores=scores.contiguous(), ids=ids.contiguous())


def empty_result(nq: int, k: int, metric: str) -> SearchResult:
    """Fillers only (ids -1, scores -inf / +inf for distances): the answer of an empty index."""
    rank = torch.full((nq, k), float("-inf"))
    return finish(rank, torch.zeros(nq, k, dtype=torch.int64), metric)


def answer(queries, result: SearchResult) -> SearchResult:
    """`result` in the kind of the caller's queries: numpy arrays for numpy queries, else tensors."""
    return result.numpy() if is_numpy(queries) else result
