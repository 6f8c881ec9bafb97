"""Brute-force k-nearest-neighbour search with the fused partial reduction.

    result = search(queries, database, k=10, metric="ip", recall_target=0.95, precision="bf16")
    result.scores  # f32[nq, k]: inner products / cosines (descending) or squared L2 (ascending)
    result.ids     # i64[nq, k]: row numbers of `database`, -1 where fewer than k rows exist

queries: float[nq, d] (or [d]); database: float[n, d]; torch tensors or numpy arrays, any
floating dtype and strides, on any device (the database's device is used).

Approximation: the database is scanned in chunks; each chunk's scores are reduced to the best
per bin (row j -> bin j mod L, L sized from `recall_target` by `bins_for_recall`), so only
[nq, L] state outlives a chunk. The best bins' cells are re-scored exactly in fp32 and the
top-k returned, so reported scores are exact for the returned ids, and the expected recall
against exact fp32 search is >= recall_target for any storage order that does not correlate
with j mod L (contiguous runs, sorted or clustered data are spread over distinct bins).
recall_target=1.0 runs an exact fp32 scan (chunked matmul + top-k). precision="bf16" scores in
bfloat16 (much faster where the CPU/GPU has bf16 matrix units) and re-scores 2k candidate
cells in fp32 to undo the rounding.

Working memory is bounded by `max_memory` (default 256 MiB) whatever nq and n are, apart from
the [nq, k] outputs.
"""

from __future__ import annotations

import torch

from . import _backend, _scan, perfmodel
from ._checks import as_matrix, check_k, check_recall_target
from ._types import SearchResult, check_metric, is_distance, precision_name, scan_dtype

SCAN_ALIGN = 16  # scan rows are padded to a multiple of this width (faster matrix kernels)


def scan_width(dim: int) -> int:
    """Width d' of a scan row [x, bias, 0...] for vectors of dimension dim."""
    return -(-(dim + 1) // SCAN_ALIGN) * SCAN_ALIGN


def normalize_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows have no direction and are rejected."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} has a zero vector (row {int((norms[:, 0] == 0).nonzero()[0])}); cosine needs a direction")
    return x / norms


def rank_bias(x32: torch.Tensor, metric: str) -> torch.Tensor:
    """f32[n] rank correction of each row: -|x|^2/2 for L2, else 0."""
    if metric == "l2":
        return -0.5 * (x32 * x32).sum(1)
    return torch.zeros(x32.shape[0], dtype=torch.float32, device=x32.device)


def scan_queries(q32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[nq, d'] queries [q, 1, 0...] in the scan dtype."""
    out = torch.zeros(q32.shape[0], scan_width(q32.shape[1]), dtype=dtype, device=q32.device)
    out[:, : q32.shape[1]] = q32
    out[:, q32.shape[1]] = 1.0
    return out


class DenseTable:
    """A plain fp32 matrix as an engine table; scan rows are built chunk by chunk into a buffer."""

    mask = None  # every row may be returned

    def __init__(self, x32: torch.Tensor, metric: str, dtype: torch.dtype):
        self.x = x32
        self.n, self.dim = x32.shape
        self.scan_dtype = dtype
        self.device = x32.device
        self.metric = metric
        self._buf: torch.Tensor | None = None

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        rows = stop - start
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = torch.zeros(rows, scan_width(self.dim), dtype=self.scan_dtype, device=self.device)
        buf = self._buf[:rows]
        chunk = self.x[start:stop]
        buf[:, : self.dim] = chunk
        buf[:, self.dim] = rank_bias(chunk, self.metric)
        return buf

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.x.index_select(0, slots.reshape(-1)).view(*slots.shape, self.x.shape[1])

    def bias(self, start: int, stop: int) -> torch.Tensor:
        return rank_bias(self.x[start:stop], self.metric)

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(slots, dtype=torch.bool)


def run_search(
    table,
    q32: torch.Tensor,
    k: int,
    metric: str,
    recall_target: float,
    candidates: int | None,
    max_memory: int,
    backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine driver shared by `search` and `Index`: (rank f32[nq, k], slots i64[nq, k]).

    backend: "torch" or "triton" (already resolved by `_backend.resolve`).
    """
    nq = q32.shape[0]
    if table.n == 0 or nq == 0:
        return (torch.full((nq, k), float("-inf"), device=q32.device), torch.zeros((nq, k), dtype=torch.int64, device=q32.device))
    fused = backend == "triton"
    if fused:
        plan = _scan.plan_kernel(table.n, k, recall_target, candidates, table.scan_dtype)
    else:  # chunk width and query block from the measured roofline (perfmodel)
        ceilings = perfmodel.ceilings(table.device)
        chunk_columns = ceilings.best_chunk[precision_name(table.scan_dtype)]
        most = perfmodel.query_block(ceilings, table.scan_dtype)
        plan = _scan.plan_scan(table.n, k, recall_target, candidates, table.scan_dtype, chunk_columns)
    if plan is None:
        block = _scan.query_block(_scan.CHUNK_COLUMNS, 8, max_memory)
    elif fused:
        block = _scan.query_block(plan.bins * 16, 4, max_memory, _scan.KERNEL_QUERY_BLOCK)  # winners of up to 16 slices
        operands = _scan.kernel_operands(table)
    else:
        block = _scan.query_block(plan.chunk, table.scan_dtype.itemsize, max_memory, most)
    ranks, slots = [], []
    for i in range(0, nq, block):
        q = q32[i : i + block]
        if plan is None:
            cand, valid = _scan.scan_exact(table, q, k)
        elif fused:
            cand, valid = _scan.kernel_cells(operands, q.to(table.scan_dtype), plan)
        else:
            cand, valid = _scan.scan_cells(table, scan_queries(q, table.scan_dtype), plan)
        r, s = _scan.rescore(table, q, cand, valid, k, metric, max_memory)
        ranks.append(r)
        slots.append(s)
    return torch.cat(ranks), torch.cat(slots)


def finish(rank: torch.Tensor, slot_ids: torch.Tensor, metric: str) -> SearchResult:
    """Turn larger-is-better ranks into reported scores; -inf ranks become fillers with id -1."""
    missing = rank == float("-inf")
    ids = slot_ids.masked_fill(missing, -1)
    scores = -rank if is_distance(metric) else rank  # -(-inf) = +inf filler for distances
    return SearchResult(scores=scores.contiguous(), ids=ids.contiguous())


def search(
    queries,
    database,
    k: int,
    *,
    metric: str = "ip",
    recall_target: float = 0.95,
    precision: str = "fp32",
    candidates: int | None = None,
    max_memory: int = _scan.DEFAULT_MEMORY,
    backend: str = "auto",
) -> SearchResult:
    """k nearest rows of `database` for each query (see the module docstring).

    candidates: number of best bins whose cells are re-scored exactly (default k for fp32,
    2k for bf16); max_memory: working-memory budget in bytes; backend: "auto" (the fused Triton
    kernel for CUDA tensors when triton is installed, else torch), "torch" or "triton".
    """
    metric = check_metric(metric)
    k = check_k(k)
    recall_target = check_recall_target(recall_target)
    dtype = scan_dtype(precision)
    x = as_matrix("database", database, allow_1d=False)
    q = as_matrix("queries", queries, x.shape[1])
    if q.device != x.device:
        raise ValueError(f"queries are on {q.device} but the database is on {x.device}")
    backend = _backend.resolve(backend, x.device)
    x32, q32 = x.to(torch.float32), q.to(torch.float32)
    if metric == "cos":
        x32, q32 = normalize_rows(x32, "database"), normalize_rows(q32, "queries")
    table = DenseTable(x32.contiguous(), metric, dtype)
    rank, slots = run_search(table, q32.contiguous(), k, metric, recall_target, candidates, max_memory, backend)
    return finish(rank, slots, metric)
