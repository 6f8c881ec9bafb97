"""One loop over query blocks for every search surface, and the flat search built on it.

`run_blocks` is the only query-block loop in peakknn: `search`, `Index.search` and
`PartitionedIndex.search` (twice nested: centre scores, then page scans) hand it a function of
one block. `run_search` is the flat search: plan (exact, torch scan or fused kernel), then per
block the candidates and their exact re-scoring.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import perfmodel
from .._types import precision_name
from . import kernel_scan, torch_scan
from .plan import CHUNK_COLUMNS, KERNEL_QUERY_BLOCK, plan_kernel, plan_scan, query_block
from .rescore import rescore
from .table import Table, scan_queries, scan_side

BlockResult = tuple[torch.Tensor, torch.Tensor]


def run_blocks(q: torch.Tensor, block: int, search_block: Callable[[torch.Tensor, int], BlockResult], k: int) -> BlockResult:
    """(rank f32[nq, k], slots i64[nq, k]): search_block(q[i : i + block], i) for every block,
    concatenated; an empty q gives empty [0, k] results."""
    if q.shape[0] == 0:
        return torch.empty((0, k), device=q.device), torch.empty((0, k), dtype=torch.int64, device=q.device)
    block = max(1, int(block))
    ranks, slots = [], []
    for i in range(0, q.shape[0], block):
        r, s = search_block(q[i : i + block], i)
        ranks.append(r)
        slots.append(s)
    if len(ranks) == 1:
        return ranks[0], slots[0]
    return torch.cat(ranks), torch.cat(slots)


def run_search(
    table: Table,
    q32: torch.Tensor,
    k: int,
    metric: str,
    recall_target: float,
    rerank: int | None,
    max_memory: int,
    backend: str = "torch",
) -> BlockResult:
    """The flat search of `search` and `Index`: (rank f32[nq, k], slots i64[nq, k]).

    backend: "torch" or "triton" (already resolved by `_backend.resolve`).
    """
    nq = q32.shape[0]
    if table.n == 0 or nq == 0:
        return (torch.full((nq, k), float("-inf"), device=q32.device), torch.zeros((nq, k), dtype=torch.int64, device=q32.device))
    if backend == "triton":
        plan = plan_kernel(table.n, k, recall_target, rerank, table.scan_dtype)
    else:  # chunk width and longest query block from the measured ceilings (perfmodel)
        ceilings = perfmodel.ceilings(table.device)
        chunk_columns = ceilings.best_chunk[precision_name(table.scan_dtype)]
        plan = plan_scan(table.n, k, recall_target, rerank, table.scan_dtype, chunk_columns)
    if plan is None:
        block = query_block(CHUNK_COLUMNS, 8, max_memory)

        def candidates(q):
            return (*torch_scan.scan_exact(table, q, k), None)

    elif backend == "triton":
        block = query_block(plan.bins * 16, 4, max_memory, KERNEL_QUERY_BLOCK)  # winners of up to 16 slices
        operands = kernel_scan.kernel_operands(table)

        def candidates(q):
            return (*kernel_scan.kernel_cells(operands, q.to(table.scan_dtype), plan), None)

    else:
        block = query_block(plan.chunk, table.scan_dtype.itemsize, max_memory, ceilings.pass_queries(table.scan_dtype))
        # packed rows (engine.packed) where the table keeps them and a block is small enough to gain
        # (every block then holds at most min(nq, block) queries)
        packed_chunks = getattr(table, "packed_chunks", None)
        packed = packed_chunks(plan.chunk) if packed_chunks is not None and min(nq, block) <= ceilings.packed(table.scan_dtype) else None  # None: plain products

        def candidates(q):
            return torch_scan.scan_cells(table, scan_queries(q, table.scan_dtype), plan, packed)

    want = min(k, table.live)  # results every query must get, however sparse the live rows

    def search_block(q, _start):
        qs = scan_side(q, getattr(table, "frame", None), metric)
        cand, valid, unresolved = candidates(qs)
        rank, slots = rescore(table, q, cand, valid, k, metric, max_memory)
        if plan is not None and want:
            again = rank[:, want - 1] == float("-inf")  # bins held too few live rows for these queries
            if unresolved is not None:  # neighbours closer than the scan dtype's rounding
                again |= unresolved
            if bool(again.any()):
                again = again.nonzero()[:, 0]
                cand, valid = torch_scan.scan_exact(table, qs[again], k)
                rank[again], slots[again] = rescore(table, q[again], cand, valid, k, metric, max_memory)
        return rank, slots

    return run_blocks(q32, block, search_block, k)
