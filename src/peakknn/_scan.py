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

Kernel scan (`kernel_cells`, backend "triton"): one fused Triton kernel computes the scores and
keeps the exact best row of every bin (`_triton_kernels.scan_winners`), so the candidates are the
best `candidates` bin winners themselves (cells of one row), re-scored the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch

from . import _backend
from .topk.plan import BIN_ALIGN, plan_bins

CHUNK_COLUMNS = 8192  # scores per query per chunk of the exact scan (the approximate scan's comes from perfmodel)
MAX_GROUPS = 16  # rows per cell re-scored for each winning bin
MIN_GROUPS = 2
RESCORE_FRACTION = 1500  # candidates * groups <= n / RESCORE_FRACTION where possible
MIN_BIN_FILL = 64  # extra bins (beyond the recall target) only while bins keep >= this many rows
MAX_QUERY_BLOCK = 4096
RESCORE_ROWS = 1024  # CPU: candidate rows gathered at once when re-scoring (1.5 MB at d=384: they stay in L2)
RESCORE_MIN_QUERIES = 16  # ... but at least this many queries' candidates (bounds the loop for large m)
DEFAULT_MEMORY = 256 << 20  # working-memory budget of one search call, bytes
KERNEL_MIN_BINS = 128  # the kernel keeps at least this many bins (one BLOCK_N) while n allows
KERNEL_WAVES = 4  # the kernel's grid aims at this many programs per streaming multiprocessor
KERNEL_QUERY_BLOCK = 16384  # queries per fused-kernel launch (H100, nq=8192: one launch 23 ms, two of 4096 26 ms)


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


def default_candidates(k: int, scan_dtype: torch.dtype) -> int:
    """Bin winners re-scored per query when the caller does not say: k for fp32, 2k for bf16/fp16
    (lower-precision scores can misorder near-ties, which the fp32 re-score undoes)."""
    return k if scan_dtype == torch.float32 else 2 * k


def extra_bins_cap(n: int) -> int:
    """Most bins worth keeping beyond the recall target: each still holds >= MIN_BIN_FILL rows."""
    return max(BIN_ALIGN, (n // MIN_BIN_FILL) // BIN_ALIGN * BIN_ALIGN)


def plan_scan(
    n: int, k: int, recall_target: float, candidates: int | None, scan_dtype: torch.dtype, chunk_columns: int = CHUNK_COLUMNS
) -> ScanPlan | None:
    """Bins, cell height and candidate count for a search; None means an exact scan.

    chunk_columns: the widest score block per query (perfmodel's measured best chunk width).
    """
    bins = plan_bins(n, k, recall_target)
    if bins is None:
        return None
    candidates = max(k, default_candidates(k, scan_dtype) if candidates is None else candidates)
    # Re-scoring gathers candidates * groups rows per query: keep that a small fraction of n.
    groups = max(MIN_GROUPS, min(MAX_GROUPS, n // (candidates * RESCORE_FRACTION)))
    # More bins cost little while a chunk stays chunk_columns wide, and raise recall.
    bins = max(bins, min(chunk_columns // MAX_GROUPS, extra_bins_cap(n)))
    groups = max(1, min(groups, chunk_columns // bins))
    return ScanPlan(bins=bins, groups=groups, candidates=min(candidates, bins))


def plan_kernel(n: int, k: int, recall_target: float, candidates: int | None, scan_dtype: torch.dtype) -> ScanPlan | None:
    """Bins and candidates for the fused kernel (cells of one row); None means an exact scan."""
    bins = plan_bins(n, k, recall_target)
    if bins is None:
        return None
    candidates = max(k, default_candidates(k, scan_dtype) if candidates is None else candidates)
    bins = max(bins, min(KERNEL_MIN_BINS, extra_bins_cap(n)))
    return ScanPlan(bins=bins, groups=1, candidates=candidates)


def scan_winners_reference(
    q: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None, bins: int, splits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch specification of `_triton_kernels.scan_winners` (same arguments and outputs).

    Scores s = q x^T + bias in fp32 (-inf where mask is False); the rows are cut into slices of
    split_rows = round_up(ceil(n / splits), bins) rows; in a slice starting at lo, row j is in
    column (j - lo) mod bins. Returns (best f32[nq, S * bins], row i32[nq, S * bins]) per (slice,
    column), the lowest row among equal bests, row -1 (score -inf) where every
    score of the column is -inf. S is the number of non-empty slices.
    """
    n = x.shape[0]
    s = q.float() @ x.float().T + bias
    if mask is not None:
        s = s.masked_fill(~mask.bool(), float("-inf"))
    split_rows = -(-(-(-n // splits)) // bins) * bins
    slices = -(-n // split_rows)
    padded = s.new_full((s.shape[0], slices * split_rows), float("-inf"))
    padded[:, :n] = s
    view = padded.view(s.shape[0], slices, split_rows // bins, bins)
    best, tile = torch.sort(view, dim=2, descending=True, stable=True)
    best, tile = best[:, :, 0], tile[:, :, 0]  # [nq, slices, bins]
    row = torch.arange(slices, device=s.device).view(1, -1, 1) * split_rows + tile * bins + torch.arange(bins, device=s.device)
    row = row.masked_fill(best == float("-inf"), -1)
    return best.reshape(s.shape[0], -1), row.reshape(s.shape[0], -1).to(torch.int32)


def kernel_splits(nq: int, n: int, bins: int, config, device: torch.device) -> int:
    """Database slices for the kernel grid: enough programs of launch shape `config`
    (`_triton_kernels.ScanConfig`) to fill the GPU, >= 16 tiles each."""
    units = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    programs = -(-nq // config.block_m) * (bins // config.block_n)
    wanted = -(-KERNEL_WAVES * units // programs)
    return int(max(1, min(wanted, n // (16 * bins))))


def kernel_operands(table: Table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What the fused kernel reads, built once per search: rows [n, d] (a column slice of the
    scan rows), rank corrections f32[n] (None when all are zero), and the table's optional mask
    bool[n]."""
    n = table.n
    bias = table.bias(0, n).contiguous()
    if not bool(bias.any()):  # ip / cos with no row deleted: the kernel skips the addition
        bias = None
    return table.scan_rows(0, n)[:, : table.dim], bias, getattr(table, "mask", None)


def kernel_cells(
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], q_scan: torch.Tensor, plan: ScanPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate slots i64[nq, c] and validity bool[nq, c] from the fused Triton scan.

    operands: `kernel_operands(table)`; q_scan: [nq, d] queries in the scan dtype. A mask hides
    rows inside the kernel. c = min(candidates, winners); fewer than k winners never happens
    because bins >= k whenever plan_kernel returns a plan for n >= 4 * bins.
    """
    x, bias, mask = operands
    kernels = _backend.kernels()
    config = kernels.scan_config(q_scan.shape[0], x.shape[1], plan.bins)
    splits = kernel_splits(q_scan.shape[0], x.shape[0], plan.bins, config, q_scan.device)
    best, rows = kernels.scan_winners(q_scan, x, bias, mask, plan.bins, splits, config)
    cell_best, pos = torch.topk(best, min(plan.candidates, best.shape[1]), dim=1)
    slots = rows.gather(1, pos).to(torch.int64)
    return slots.clamp_min(0), cell_best > float("-inf")


def query_block(plan_chunk: int, esize: int, memory: int, most: int = MAX_QUERY_BLOCK) -> int:
    """Queries per block (at most `most`) so one chunk's scores and the bin state fit in `memory` bytes."""
    per_query = plan_chunk * (esize + 4) + 64
    return int(max(1, min(most, memory // per_query)))


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
    The candidates' rows are gathered a few at a time (on CPU, RESCORE_ROWS: the gathered rows
    stay in cache for their products) and scored into one [nq, m] matrix; one top-k follows.
    """
    nq, m = slots.shape
    d = q32.shape[1]
    most = max(RESCORE_MIN_QUERIES, RESCORE_ROWS // max(1, m)) if q32.device.type == "cpu" else MAX_QUERY_BLOCK
    step = int(max(1, min(most, MAX_QUERY_BLOCK, memory // max(1, m * d * 8))))
    r = torch.empty(nq, m, dtype=torch.float32, device=q32.device)
    for i in range(0, nq, step):
        x, q = table.exact_rows(slots[i : i + step]), q32[i : i + step]  # [b, m, d], [b, d]
        if metric == "l2":
            torch.sum((x - q.unsqueeze(1)).square_(), dim=2, out=r[i : i + step]).neg_()
        else:
            torch.bmm(x, q.unsqueeze(2), out=r[i : i + step].unsqueeze(2))
    r.masked_fill_(~(valid & table.alive(slots)), float("-inf"))
    kk = min(k, m)
    top_r, pos = torch.topk(r, kk, dim=1)
    top_s = slots.gather(1, pos)
    if kk < k:
        top_r = torch.cat([top_r, top_r.new_full((nq, k - kk), float("-inf"))], dim=1)
        top_s = torch.cat([top_s, top_s.new_zeros((nq, k - kk))], dim=1)
    return top_r, top_s
