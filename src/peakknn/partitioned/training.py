"""Training a PartitionedIndex, and the per-row choices that training fixes.

`fit` learns from a sample: k-means (or anisotropic k-means) centres numbered by popularity, the
optional projection of bf16/int8 rows on the sample's leading principal directions
(scan_dims), the codec (int8 scales or anisotropic 4-bit PQ) and the adaptive probe's gaps.
`assign` picks each row's partition (and with spill, SOAR's second one); `encode` turns rows into
their stored codes. docs/ALGORITHMS.md has the math (AVQ, SOAR, the probe calibration).
"""

from __future__ import annotations

import dataclasses

import torch

from ..engine.table import rank_bias
from ..quant.avq import assignment_loss, avq_kmeans, eta_from_threshold
from ..quant.codes import Int8Codes, ProductQuantizer, calibrated_dims, principal_directions
from .settings import ADAPTIVE_SPREAD, GAP_COLUMNS, SCAN_K, SCAN_RECALL, PartitionSettings

ASSIGN_BLOCK = 8192  # rows assigned to partitions at once (bounds the [rows, partitions] temporaries)
MAX_TRAIN_PER_PARTITION = 128  # k-means sample: at most this many rows per partition
PQ_TRAIN_ROWS = 16384  # PQ codebooks are trained on at most this many residuals
SOAR_LAMBDA = 2.0  # weight of the residual-parallel term when choosing the spill partition
GAP_SAMPLE = 1024  # adaptive probe: rows of the sample its gaps are calibrated on


@dataclasses.dataclass
class Trained:
    """What training learns: centres f32[P, d] (most popular first); codec (None for bf16
    codes); projection f32[d, m] or None; probe_gaps f32[min(P, GAP_COLUMNS)] (see probe_gaps;
    None for an index loaded from a file written before adaptive probing)."""

    centres: torch.Tensor
    codec: Int8Codes | ProductQuantizer | None
    projection: torch.Tensor | None
    probe_gaps: torch.Tensor | None


def partition_eta(settings: PartitionSettings, metric: str, dim: int) -> float:
    """eta of the partitioning loss: anisotropic only when asked for and meaningful."""
    if not settings.anisotropic_partitions or settings.threshold is None or metric == "l2" or dim < 2:
        return 1.0
    return eta_from_threshold(settings.threshold, dim)


def code_eta(settings: PartitionSettings, metric: str, dim: int) -> float:
    """eta of the PQ code loss (1 = plain PQ)."""
    if settings.threshold is None or metric == "l2" or dim < 2:
        return 1.0
    return eta_from_threshold(settings.threshold, dim)


def fit(x: torch.Tensor, settings: PartitionSettings, metric: str, probe: int) -> Trained:
    """Train on rows x f32[m, d] (already normalised for cosine); probe: the search setting
    that orders partitions by popularity."""
    s, dim = settings, x.shape[1]
    if s.partitions > x.shape[0]:
        raise ValueError(f"partitions={s.partitions} is more than the {x.shape[0]} training rows")
    g = torch.Generator().manual_seed(s.seed)
    most = MAX_TRAIN_PER_PARTITION * s.partitions
    if x.shape[0] > most:
        x = x[torch.randperm(x.shape[0], generator=g)[:most].to(x.device)]
    centres, assigned = avq_kmeans(x, s.partitions, eta=partition_eta(s, metric, dim), iters=s.iters, seed=s.seed)
    codec, projection = None, None
    if s.scan_dims == "auto":
        basis = principal_directions(x, dim)
        bias = rank_bias(x, metric) if metric == "l2" else None  # the scan adds it exactly
        m = calibrated_dims(x, basis, SCAN_K, 2 * SCAN_K, SCAN_RECALL, bias=bias, seed=s.seed)
        projection = basis[:, :m].contiguous() if m < dim else None
    elif s.scan_dims is not None:
        projection = principal_directions(x, s.scan_dims)
    if s.codes == "int8":
        codec = Int8Codes.train(x if projection is None else x @ projection)
    elif s.codes == "pq4":
        residuals = x - centres[assigned]
        units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        pick = torch.randperm(x.shape[0], generator=g)[:PQ_TRAIN_ROWS].to(x.device)
        codec = ProductQuantizer.train(residuals[pick], s.block_dims, eta=code_eta(s, metric, dim), directions=units[pick], seed=s.seed)
    centres = by_popularity(centres, x, metric, probe)
    gaps = probe_gaps(x[torch.randperm(x.shape[0], generator=g)[:GAP_SAMPLE].to(x.device)], centres, metric)
    return Trained(centres=centres, codec=codec, projection=projection, probe_gaps=gaps)


def assign(x: torch.Tensor, centres: torch.Tensor, eta: float, copies: int) -> torch.Tensor:
    """i64[m, copies] partitions of rows x: the least partitioning loss, then (copies = 2, spill)
    the SOAR choice: least |x - c|^2 + SOAR_LAMBDA * <x - c, r>^2 over the other partitions,
    r the unit residual in the first, so the two residuals are nearly orthogonal."""
    c = centres
    c2 = (c * c).sum(1)
    parts = []
    for i in range(0, x.shape[0], ASSIGN_BLOCK):
        xb = x[i : i + ASSIGN_BLOCK]
        dot = xb @ c.T
        if eta == 1.0:  # |x - c|^2 up to the row's constant |x|^2
            first = (c2 - 2 * dot).argmin(1)
        else:
            first = assignment_loss(xb, c, eta).argmin(1)
        if copies == 1:
            parts.append(first.unsqueeze(1))
            continue
        r = xb - c[first]
        r = r / torch.linalg.vector_norm(r, dim=1, keepdim=True).clamp_min(1e-30)
        proj = (xb * r).sum(1, keepdim=True) - r @ c.T  # <x - c, r>
        loss = (c2 - 2 * dot).add_(proj.square_(), alpha=SOAR_LAMBDA)  # SOAR loss up to |x|^2
        loss.scatter_(1, first.unsqueeze(1), float("inf"))
        parts.append(torch.stack([first, loss.argmin(1)], dim=1))
    return torch.cat(parts) if parts else torch.empty(0, copies, dtype=torch.int64, device=x.device)


def encode(x: torch.Tensor, partition: torch.Tensor, trained: Trained, eta: float) -> torch.Tensor:
    """Stored codes of rows x f32[m, d] placed in partitions i64[m]: bf16 (projected) rows,
    int8 codes, or packed PQ codes of the residuals x - centre."""
    if trained.projection is not None:
        x = x @ trained.projection
    codec = trained.codec
    if codec is None:
        return x.to(torch.bfloat16)
    if isinstance(codec, Int8Codes):
        return codec.encode(x)
    units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    return codec.encode(x - trained.centres[partition], units, eta)


def best_centres(rows: torch.Tensor, centres: torch.Tensor, metric: str, count: int):
    """Yield (scores f32[b, count], partitions i64[b, count]) of the `count` best centres of each
    block of ASSIGN_BLOCK rows, by rank score <x, c> (- |c|^2/2 for L2), best first."""
    bias = rank_bias(centres, metric) if metric == "l2" else 0.0
    for i in range(0, rows.shape[0], ASSIGN_BLOCK):
        yield torch.topk(rows[i : i + ASSIGN_BLOCK] @ centres.T + bias, count, dim=1)


def probe_gaps(sample: torch.Tensor, centres: torch.Tensor, metric: str) -> torch.Tensor:
    """f32[c] adaptive-probe gaps, c = min(partitions, GAP_COLUMNS): entry p - 1 is the gap g
    for which the sample's rows, as queries, have on average p of their best
    min(c, ADAPTIVE_SPREAD * p) centres within g * |row| of their best (entries p >= c: inf)."""
    c = min(centres.shape[0], GAP_COLUMNS)
    top = torch.cat([values for values, _ in best_centres(sample, centres, metric, c)])
    gaps = (top[:, :1] - top) / torch.linalg.vector_norm(sample, dim=1, keepdim=True).clamp_min(1e-30)
    gaps = gaps.cpu()  # [m, c], ascending along each row, column 0 = 0
    m = gaps.shape[0]
    out = torch.full((c,), float("inf"))
    for p in range(1, c):
        considered = min(c, ADAPTIVE_SPREAD * p)
        out[p - 1] = torch.kthvalue(gaps[:, :considered].reshape(-1), m * p).values  # m * p gaps lie within it
    return out.to(centres.device)


def by_popularity(centres: torch.Tensor, sample: torch.Tensor, metric: str, probe: int) -> torch.Tensor:
    """centres reordered from the most to the least often probed by the sample's rows (as
    queries, `probe` partitions each). Partition ids then follow popularity, and so does the page
    layout: consecutive pages get similar numbers of queries, and the batched products that
    score runs of pages (padded to their busiest page) waste little."""
    hits = torch.zeros(centres.shape[0], dtype=torch.int64)
    for _, probed in best_centres(sample, centres, metric, min(probe, centres.shape[0])):
        hits += torch.bincount(probed.reshape(-1).cpu(), minlength=centres.shape[0])
    return centres[torch.argsort(hits, descending=True, stable=True).to(centres.device)].contiguous()
