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

from .packed import product
from .plan import CHUNK_COLUMNS, ScanPlan
from .table import Table, in_frame

ROUNDING_ULPS = 2.0  # winners this close (in the scan dtype's units in the last place) to the k-th are re-scored
DEEPEST_RERANK = 8  # ... up to this multiple of the planned rerank
UNRESOLVED_FRACTION = 0.25  # more winners than this share of the bins within rounding: bins hide rows too (fp32 scan)


def scan_cells(
    table: Table, q_scan: torch.Tensor, plan: ScanPlan, packed: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate slots, their validity, and the queries the scan dtype could not resolve.

    q_scan: [nq, d'] queries [q, 1, 0...] in the scan dtype; packed: the table's first chunks
    packed for the CPU's matrix kernel (`engine.packed`; chunk c = rows of chunk c), used for
    the chunks they cover (torch.mm's scores up to the order of the fp32 sums).
    Returns slots i64[nq, c * groups] (clamped to [0, n)), valid bool[nq, same] and unresolved
    bool[nq] (`winners_within_rounding`; such queries need an fp32 scan), c >= rerank.
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
        if packed is not None and c < len(packed):
            scores = product(q_scan, packed[c])
        elif stop - start == chunk:
            torch.mm(q_scan, table.scan_rows(start, stop).T, out=scores)
        else:  # last partial chunk: pad the score block with -inf
            scores.fill_(float("-inf"))
            scores[:, : stop - start] = q_scan @ table.scan_rows(start, stop).T
        torch.amax(scores.view(nq, groups, bins), dim=1, out=chunk_best)
        torch.gt(chunk_best, best, out=better)
        torch.maximum(best, chunk_best, out=best)
        chunk_of.masked_fill_(better, c)
    cell_best, cell_bin, unresolved = winners_within_rounding(best, plan.rerank, plan.k)
    cell_chunk = chunk_of.gather(1, cell_bin).to(torch.int64)
    offsets = torch.arange(groups, device=device) * bins
    slots = ((cell_chunk * chunk + cell_bin).unsqueeze(2) + offsets).view(nq, -1)
    valid = (slots < table.n) & (cell_best > float("-inf")).repeat_interleave(groups, dim=1)
    return slots.clamp_max(table.n - 1), valid, unresolved


def winners_within_rounding(best: torch.Tensor, rerank: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bins to re-score: (winner scores [nq, c], bins i64[nq, c], unresolved bool[nq]), best
    first, -inf where a query needs fewer than c.

    fp32 scores: the best `rerank` winners. Lower precision: also every winner within
    ROUNDING_ULPS units in the last place of the k-th best winner (the scores were rounded to
    that dtype, so any of them may hide a true top-k row), up to DEEPEST_RERANK * rerank. A query
    with more such winners than that, or than UNRESOLVED_FRACTION of the bins (then rows within
    rounding of each other share bins, and a bin's winner is a toss-up), is `unresolved`: its
    neighbours are closer together than the scan dtype's rounding (e.g. tight clusters far from
    the data's mean). Measured share of the bins within 2 ulps at bins = 128 (docs/ALGORITHMS.md):
    0.08-0.16 on Gaussian, offset and anisotropic data, 0.46-1.0 on tight clusters (the top 10,
    0.08 of them, included; beyond the k-th they are counted).
    """
    bins = best.shape[1]
    nq = best.shape[0]
    if best.dtype == torch.float32 or not 0 < k <= rerank:
        top, at = torch.topk(best, min(rerank, bins), dim=1)
        return top, at, torch.zeros(nq, dtype=torch.bool, device=best.device)
    deep = min(bins, DEEPEST_RERANK * rerank)
    top, at = torch.topk(best, deep, dim=1)
    kth = top[:, k - 1 : k].float()
    ulp = torch.finfo(best.dtype).eps * torch.exp2(torch.floor(torch.log2(kth.abs().clamp_min(torch.finfo(torch.float32).tiny))))
    near = top.float() >= kth - ROUNDING_ULPS * ulp  # winners the rounding cannot tell from the k-th
    keep = near.clone()
    keep[:, :rerank] = True
    within = keep.sum(1)
    crowded = near[:, k:].sum(1) > bins * UNRESOLVED_FRACTION  # beyond the k-th: the ones it may lose to
    unresolved = (near[:, -1] & (deep < bins) & (top[:, -1] > float("-inf"))) | crowded
    depth = int(within.max())
    top, at = top[:, :depth], at[:, :depth]
    return top.masked_fill(~keep[:, :depth], float("-inf")), at, unresolved


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
