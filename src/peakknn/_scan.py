"""The brute-force engine: matrix product fused with the partial reduction, chunk by chunk.

A *table* is what gets scanned (see `Table`): n rows, each stored twice,
  - scan rows  s_j = [x_j, bias_j, 0...]  in the scan dtype (bf16 or fp32), width d' >= d + 1,
  - exact rows x_j in fp32 for re-scoring,
where bias_j is the metric's rank correction (-|x|^2/2 for L2, 0 otherwise) or -inf for a dead
row. With the query written as [q, 1, 0...], one matrix product gives the rank score
<q, x_j> + bias_j of every row: L2 and deletions cost no extra pass.

Approximate scan (`scan_cells`): rows are read in chunks of C = groups * bins; a chunk's score
block S: [nq, C] is reduced to its best per bin with one strided max over a [nq, groups, bins]
view (row j of the table goes to bin j mod bins), and a running best per (query, bin) remembers
which chunk won. The score matrix never exceeds one chunk. Afterwards the best `candidates` bins
of each query name `candidates` cells (chunk, bin) of `groups` rows each, which are re-scored
exactly in fp32 (`rescore`). Every bin winner of the chosen bins is among them, so the result
contains the TPU-KNN two-stage top-k and its recall guarantee (plus the winners' cell-mates).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from .topk.plan import BIN_ALIGN, plan_bins

CHUNK_COLUMNS = 8192  # scores per query per chunk: a bf16 chunk of 1024 queries is 16 MiB
MAX_GROUPS = 16  # rows per cell re-scored for each winning bin
MIN_GROUPS = 2
RESCORE_FRACTION = 1500  # candidates * groups <= n / RESCORE_FRACTION where possible
MIN_BIN_FILL = 64  # extra bins (beyond the recall target) only while bins keep >= this many rows
MAX_QUERY_BLOCK = 1024
RESCORE_BLOCK = 32  # queries per gather of candidate rows (small blocks stay in cache)
DEFAULT_MEMORY = 256 << 20  # working-memory budget of one search call, bytes


class Table(Protocol):
    """What the engine scans. Row numbers ("slots") are 0..n-1."""

    n: int
    dim: int  # d, the vectors' dimension
    scan_dtype: torch.dtype
    device: torch.device

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        """[stop-start, d'] scan rows [x, bias, 0...] in scan_dtype (may reuse one buffer)."""

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """f32[..., d] vectors of the given slots (any shape of int64 slots in [0, n))."""

    def bias(self, start: int, stop: int) -> torch.Tensor:
        """f32[stop-start] rank corrections (-inf for dead rows)."""

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        """bool, same shape as slots: which slots hold a live row."""


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """bins: L; groups: rows per cell; chunk = bins * groups rows; candidates: cells re-scored."""

    bins: int
    groups: int
    candidates: int

    @property
    def chunk(self) -> int:
        return self.bins * self.groups


def plan_scan(n: int, k: int, recall_target: float, candidates: int | None, scan_dtype: torch.dtype) -> ScanPlan | None:
    """Bins, cell height and candidate count for a search; None means an exact scan."""
    bins = plan_bins(n, k, recall_target)
    if bins is None:
        return None
    if candidates is None:
        candidates = k if scan_dtype == torch.float32 else 2 * k
    candidates = max(k, candidates)
    # Re-scoring gathers candidates * groups rows per query: keep that a small fraction of n.
    groups = max(MIN_GROUPS, min(MAX_GROUPS, n // (candidates * RESCORE_FRACTION)))
    # More bins cost little while a chunk stays CHUNK_COLUMNS wide, and raise recall.
    fill_cap = max(BIN_ALIGN, (n // MIN_BIN_FILL) // BIN_ALIGN * BIN_ALIGN)
    bins = max(bins, min(CHUNK_COLUMNS // MAX_GROUPS, fill_cap))
    groups = max(1, min(groups, CHUNK_COLUMNS // bins))
    return ScanPlan(bins=bins, groups=groups, candidates=min(candidates, bins))


def query_block(plan_chunk: int, esize: int, memory: int) -> int:
    """Queries per block so one chunk's scores and the bin state stay within `memory` bytes."""
    per_query = plan_chunk * (esize + 4) + 64
    return int(max(1, min(MAX_QUERY_BLOCK, memory // per_query)))


def scan_cells(table: Table, q_scan: torch.Tensor, plan: ScanPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate slots and validity for a query block.

    q_scan: [nq, d'] queries [q, 1, 0...] in the scan dtype.
    Returns slots i64[nq, candidates * groups] (clamped to [0, n)) and valid bool[nq, same].
    """
    nq = q_scan.shape[0]
    bins, groups, chunk = plan.bins, plan.groups, plan.chunk
    dtype, device = q_scan.dtype, q_scan.device
    scores = torch.empty(nq, chunk, dtype=dtype, device=device)
    best = torch.full((nq, bins), float("-inf"), dtype=dtype, device=device)  # running bin winners
    chunk_of = torch.zeros((nq, bins), dtype=torch.int32, device=device)  # chunk holding each winner
    chunk_best = torch.empty((nq, bins), dtype=dtype, device=device)
    better = torch.empty((nq, bins), dtype=torch.bool, device=device)
    for c, start in enumerate(range(0, table.n, chunk)):
        stop = min(start + chunk, table.n)
        rows = table.scan_rows(start, stop)
        if stop - start == chunk:
            torch.mm(q_scan, rows.T, out=scores)
        else:  # last partial chunk: pad the score block with -inf
            scores.fill_(float("-inf"))
            scores[:, : stop - start] = q_scan @ rows.T
        torch.amax(scores.view(nq, groups, bins), dim=1, out=chunk_best)
        torch.gt(chunk_best, best, out=better)
        torch.maximum(best, chunk_best, out=best)
        chunk_of.masked_fill_(better, c)
    k_cells = min(plan.candidates, bins)
    cell_best, cell_bin = torch.topk(best, k_cells, dim=1)
    cell_chunk = chunk_of.gather(1, cell_bin).to(torch.int64)
    offsets = torch.arange(groups, device=device) * bins
    slots = ((cell_chunk * chunk + cell_bin).unsqueeze(2) + offsets).view(nq, -1)
    valid = (slots < table.n) & (cell_best > float("-inf")).repeat_interleave(groups, dim=1)
    return slots.clamp_max(table.n - 1), valid


def scan_exact(table: Table, q32: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k slots by fp32 rank score: i64[nq, min(k, n)] slots and their validity."""
    nq = q32.shape[0]
    kk = min(k, table.n)
    best_s = torch.full((nq, kk), float("-inf"), device=q32.device)
    best_i = torch.zeros((nq, kk), dtype=torch.int64, device=q32.device)
    for start in range(0, table.n, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, table.n)
        idx = torch.arange(start, stop, device=q32.device)
        s = q32 @ table.exact_rows(idx).T + table.bias(start, stop)
        merged_s = torch.cat([best_s, s], dim=1)
        merged_i = torch.cat([best_i, idx.expand(nq, -1)], dim=1)
        best_s, pos = torch.topk(merged_s, kk, dim=1)
        best_i = merged_i.gather(1, pos)
    return best_i, best_s > float("-inf")


def rescore(
    table: Table, q32: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor, k: int, metric: str, memory: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 scores of candidate slots, then the top-k.

    q32: f32[nq, d]; slots, valid: [nq, m]. Returns (rank f32[nq, k], slots i64[nq, k]) where
    rank is larger-is-better (-squared distance for L2) and -inf marks missing results.
    """
    nq, m = slots.shape
    d = q32.shape[1]
    step = int(max(1, min(RESCORE_BLOCK, memory // max(1, m * d * 8))))
    ranks, out_slots = [], []
    for i in range(0, nq, step):
        s, v, q = slots[i : i + step], valid[i : i + step], q32[i : i + step]
        x = table.exact_rows(s)  # [b, m, d]
        if metric == "l2":
            r = -((x - q.unsqueeze(1)) ** 2).sum(-1)
        else:
            r = torch.bmm(x, q.unsqueeze(2)).squeeze(2)
        r = r.masked_fill(~(v & table.alive(s)), float("-inf"))
        kk = min(k, m)
        top_r, pos = torch.topk(r, kk, dim=1)
        top_s = s.gather(1, pos)
        if kk < k:
            top_r = torch.cat([top_r, top_r.new_full((top_r.shape[0], k - kk), float("-inf"))], dim=1)
            top_s = torch.cat([top_s, top_s.new_zeros((top_s.shape[0], k - kk))], dim=1)
        ranks.append(top_r)
        out_slots.append(top_s)
    return torch.cat(ranks), torch.cat(out_slots)
