"""The torch scan: chunked matrix products reduced to the best score per bin.

`scan_cells`: rows are read in chunks of C = groups * bins; a chunk's score block S: [nq, C] is
reduced to its best per bin with one strided max over a [nq, groups, bins] view (row j of the
table goes to bin j mod bins), and a running best per (query, bin) remembers which chunk won.
The score matrix never exceeds one chunk. Afterwards the best `rerank` bins of each query name
`rerank` cells (chunk, bin) of `groups` rows each, which `rescore` scores exactly in fp32.
Every bin winner of the chosen bins is among them, so the result contains the TPU-KNN
two-stage top-k and its recall guarantee (plus the winners' cell-mates).

`scan_exact`: the exact fp32 scan (chunked matmul + running top-k).
"""

from __future__ import annotations

import torch

from .plan import CHUNK_COLUMNS, ScanPlan
from .table import Table, in_frame


def scan_cells(table: Table, q_scan: torch.Tensor, plan: ScanPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate slots and validity for a query block.

    q_scan: [nq, d'] queries [q, 1, 0...] in the scan dtype.
    Returns slots i64[nq, rerank * groups] (clamped to [0, n)) and valid bool[nq, same].
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
    k_cells = min(plan.rerank, bins)
    cell_best, cell_bin = torch.topk(best, k_cells, dim=1)
    cell_chunk = chunk_of.gather(1, cell_bin).to(torch.int64)
    offsets = torch.arange(groups, device=device) * bins
    slots = ((cell_chunk * chunk + cell_bin).unsqueeze(2) + offsets).view(nq, -1)
    valid = (slots < table.n) & (cell_best > float("-inf")).repeat_interleave(groups, dim=1)
    return slots.clamp_max(table.n - 1), valid


def scan_exact(table: Table, q32: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k slots by fp32 rank score: i64[nq, min(k, n)] slots and their validity.

    q32: f32[nq, d] queries as the scan sees them (`table.scan_side`); rows are taken in the
    table's frame, so scores keep the digits of the rows' spread."""
    nq = q32.shape[0]
    kk = min(k, table.n)
    mask = getattr(table, "mask", None)
    best_s = torch.full((nq, kk), float("-inf"), device=q32.device)
    best_i = torch.zeros((nq, kk), dtype=torch.int64, device=q32.device)
    for start in range(0, table.n, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, table.n)
        idx = torch.arange(start, stop, device=q32.device)
        s = q32 @ in_frame(table.exact_rows(idx), getattr(table, "frame", None)).T + table.bias(start, stop)
        if mask is not None:  # rows outside a filter the kernel would have masked
            s.masked_fill_(~mask[start:stop], float("-inf"))
        merged_s = torch.cat([best_s, s], dim=1)
        merged_i = torch.cat([best_i, idx.expand(nq, -1)], dim=1)
        best_s, pos = torch.topk(merged_s, kk, dim=1)
        best_i = merged_i.gather(1, pos)
    return best_i, best_s > float("-inf")
