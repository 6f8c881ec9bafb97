"""How a flat search is cut up: bins, cells, re-scoring depth (`ScanPlan`) and query blocks.

The torch scan reads rows in chunks of `bins * groups`; row j of the table is in bin j mod bins,
and a winning bin names a cell of `groups` rows (one per group of the chunk that won), all of
which are re-scored. The fused kernel keeps the exact best row of each bin, so its cells are
single rows. `plan_scan` / `plan_kernel` return None where an exact scan is cheaper
(n < 4 * bins, or recall_target == 1). docs/ALGORITHMS.md explains the choices.
"""

from __future__ import annotations

import dataclasses

import torch

from .._types import default_rerank
from ..topk.plan import BIN_ALIGN, plan_bins

CHUNK_COLUMNS = 8192  # scores per query per chunk of the exact scan (the approximate scan's comes from perfmodel)
MAX_GROUPS = 16  # rows per cell re-scored for each winning bin
MIN_GROUPS = 2
RESCORE_FRACTION = 1500  # rerank * groups <= n / RESCORE_FRACTION where possible
MIN_BIN_FILL = 64  # extra bins (beyond the recall target) only while bins keep >= this many rows
MAX_QUERY_BLOCK = 4096  # queries scanned together at most
DEFAULT_MEMORY = 256 << 20  # working-memory budget of one search call, bytes
KERNEL_MIN_BINS = 128  # the kernel keeps at least this many bins (one BLOCK_N) while n allows
KERNEL_QUERY_BLOCK = 16384  # queries per fused-kernel launch (fewer launches; docs/ARCHITECTURE.md)
SEARCH_CONFIDENCE = 0.95  # a search's bins keep each query's recall >= recall_target with this probability


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """bins: L; groups: rows per cell; chunk = bins * groups rows; rerank: cells re-scored (at
    least); k: results wanted, which lets a low-precision scan re-score the winners its rounding
    cannot tell from the k-th (`torch_scan.winners_within_rounding`; 0: exactly rerank)."""

    bins: int
    groups: int
    rerank: int
    k: int = 0

    @property
    def chunk(self) -> int:
        return self.bins * self.groups


def extra_bins_cap(n: int) -> int:
    """Most bins worth keeping beyond the recall target: each still holds >= MIN_BIN_FILL rows."""
    return max(BIN_ALIGN, (n // MIN_BIN_FILL) // BIN_ALIGN * BIN_ALIGN)


def plan_scan(
    n: int, k: int, recall_target: float, rerank: int | None, scan_dtype: torch.dtype, chunk_columns: int = CHUNK_COLUMNS
) -> ScanPlan | None:
    """Bins, cell height and re-scored cells for a torch scan; None means an exact scan.

    rerank: bin winners re-scored (None: `default_rerank`); chunk_columns: the widest score block
    per query (perfmodel's measured best chunk width).
    """
    bins = plan_bins(n, k, recall_target, confidence=SEARCH_CONFIDENCE)
    if bins is None:
        return None
    rerank = max(k, default_rerank(k, scan_dtype) if rerank is None else rerank)
    # Re-scoring gathers rerank * groups rows per query: keep that a small fraction of n.
    groups = max(MIN_GROUPS, min(MAX_GROUPS, n // (rerank * RESCORE_FRACTION)))
    # More bins cost little while a chunk stays chunk_columns wide, and raise recall.
    bins = max(bins, min(chunk_columns // MAX_GROUPS, extra_bins_cap(n)))
    groups = max(1, min(groups, chunk_columns // bins))
    return ScanPlan(bins=bins, groups=groups, rerank=min(rerank, bins), k=k)


def plan_kernel(n: int, k: int, recall_target: float, rerank: int | None, scan_dtype: torch.dtype) -> ScanPlan | None:
    """Bins and re-scored winners for the fused kernel (cells of one row); None means an exact scan."""
    bins = plan_bins(n, k, recall_target, confidence=SEARCH_CONFIDENCE)
    if bins is None:
        return None
    rerank = max(k, default_rerank(k, scan_dtype) if rerank is None else rerank)
    bins = max(bins, min(KERNEL_MIN_BINS, extra_bins_cap(n)))
    return ScanPlan(bins=bins, groups=1, rerank=rerank)


def query_block(chunk: int, esize: int, memory: int, most: int = MAX_QUERY_BLOCK) -> int:
    """Queries per block (at most `most`) so that one chunk's scores ([block, chunk] of `esize`
    bytes) and the bin state fit in `memory` bytes."""
    per_query = chunk * (esize + 4) + 64
    return int(max(1, min(most, memory // per_query)))
