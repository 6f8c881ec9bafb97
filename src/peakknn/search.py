"""`search`: brute-force k-nearest-neighbour search with the fused partial reduction."""

from __future__ import annotations

import torch

from . import _backend
from ._checks import as_matrix, check_k, check_recall_target, check_search_options, renamed
from ._types import MetricLike, PrecisionLike, SearchResult, check_metric, scan_dtype
from .engine.driver import run_search
from .engine.plan import DEFAULT_MEMORY
from .engine.rescore import answer, finish
from .engine.table import DenseTable, check_scorable, normalize_rows, scan_dtype_for


def search(
    queries,
    database,
    k: int,
    *,
    metric: MetricLike = "ip",
    recall_target: float = 0.95,
    precision: PrecisionLike = "fp32",
    rerank: int | None = None,
    max_memory: int = DEFAULT_MEMORY,
    backend: str = "auto",
    candidates: int | None = None,
) -> SearchResult:
    """k nearest rows of `database` for each query.

        result = search(queries, database, k=10, metric="ip", recall_target=0.95, precision="bf16")
        result.scores  # f32[nq, k]: inner products / cosines (descending) or squared L2 (ascending)
        result.ids     # i64[nq, k]: row numbers of `database`, -1 where fewer than k rows exist

    queries: float[nq, d] (or [d]); database: float[n, d]; torch tensors (any floating dtype
    and strides, with or without gradients: results carry none), numpy arrays or nested lists,
    on any device (the database's; results stay there). Numpy queries get numpy results
    (`SearchResult.numpy()` / `.torch()` convert); a 0-row database gives fillers only.

    Approximation: the database is scanned in chunks; each chunk's scores are reduced to the best
    per bin (row j -> bin j mod L, L sized from `recall_target` by `bins_for_recall`), so only
    [nq, L] state outlives a chunk. The best bins' cells are re-scored exactly in fp32 and the
    top-k returned, so reported scores are exact for the returned ids, and the expected recall
    against exact fp32 search is >= recall_target for any storage order that does not correlate
    with j mod L. recall_target=1.0 runs an exact fp32 scan (chunked matmul + top-k).
    precision="bf16" scores in bfloat16 (much faster where the CPU/GPU has bf16 matrix units)
    and re-scores 2k candidate cells in fp32 to undo the rounding (below 16 dims the scan runs in
    fp32 anyway: `engine.table.scan_dtype_for`). Rows are scanned relative to their mean, so a
    large common offset costs no precision.

    rerank: bin winners whose cells are re-scored exactly (default k for fp32, 2k for bf16;
    former name `candidates`); max_memory: working-memory budget in bytes (bounded whatever nq
    and n are, apart from the [nq, k] outputs); backend: "auto" (the fused Triton kernel for CUDA
    tensors when triton is installed, else torch), "torch" or "triton".
    """
    rerank = renamed("candidates", candidates, "rerank", rerank)
    metric = check_metric(metric)
    k = check_k(k)
    recall_target = check_recall_target(recall_target)
    check_search_options(rerank, max_memory)
    dtype = scan_dtype(precision)
    x = as_matrix("database", database, allow_1d=False)
    q = as_matrix("queries", queries, x.shape[1])
    if q.device != x.device:
        raise ValueError(f"queries are on {q.device} but the database is on {x.device}")
    backend = _backend.resolve(backend, x.device)
    x32, q32 = x.to(torch.float32), q.to(torch.float32)
    if metric == "cos":
        x32, q32 = normalize_rows(x32, "database"), normalize_rows(q32, "queries")
    else:
        check_scorable(x32, "database")
        check_scorable(q32, "queries")
    table = DenseTable(x32.contiguous(), metric, scan_dtype_for(dtype, x32.shape[1]))
    rank, slots = run_search(table, q32.contiguous(), k, metric, recall_target, rerank, max_memory, backend)
    return answer(queries, finish(rank, slots, metric))
