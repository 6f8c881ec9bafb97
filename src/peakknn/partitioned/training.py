"""Training a PartitionedIndex, and the per-row choices that training fixes.

`fit` learns from a sample: its scan frame (mean and scale: every score below is computed on
s (x - m), so a large common offset or a tiny norm costs no digits), k-means (or anisotropic
k-means) centres numbered by popularity, the optional projection of bf16/int8 rows on the
sample's leading principal directions (scan_dims), the codec (int8 scales or anisotropic 4-bit
PQ) and the adaptive probe's gaps.
`assign` picks each row's partition (and with spill, SOAR's second one); `encode` turns rows into
their stored codes. docs/ALGORITHMS.md has the math (AVQ, SOAR, the probe calibration).
"""

from __future__ import annotations

import dataclasses

import torch

from ..engine.table import ScanFrame, in_frame, rank_bias, scan_side
from ..quant.avq import Reduce, assignment_loss, avq_kmeans, eta_from_threshold
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
    None for an index loaded from a file written before adaptive probing); frame: the scan frame
    (identity for files written before it existed). bf16/int8 codes hold projected frame rows
    P^T s (x - m); partition choice, assignment and calibration score in the frame too."""

    centres: torch.Tensor
    codec: Int8Codes | ProductQuantizer | None
    projection: torch.Tensor | None
    probe_gaps: torch.Tensor | None
    frame: ScanFrame

    @property
    def frame_centres(self) -> torch.Tensor:
        """f32[P, d] the centres in the frame."""
        return self.frame.rows(self.centres)


def partition_eta(settings: PartitionSettings, metric: str, dim: int) -> float:
    """eta of the partitioning loss: anisotropic only when asked for and meaningful. The
    threshold's eta, (d - 1) T^2 / (1 - T^2), falls below 1 in few dimensions (d < 25 at
    T = 0.2), where anisotropic k-means would weigh the parallel error less than plain k-means
    does: there the partitions are plain k-means (eta 1)."""
    if not settings.anisotropic_partitions or settings.threshold is None or metric == "l2" or dim < 2:
        return 1.0
    return max(1.0, eta_from_threshold(settings.threshold, dim))


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
    frame = ScanFrame.of(x)
    xf = frame.rows(x)
    eta = partition_eta(s, metric, dim)
    if eta == 1.0:  # k-means is translation invariant: cluster in the frame, where |x - c| keeps its digits
        centres, assigned = avq_kmeans(xf, s.partitions, eta=eta, iters=s.iters, seed=s.seed)
        centres = centres / frame.scale + frame.centre
    else:  # the anisotropic loss weighs directions from the origin: cluster the rows as they are
        centres, assigned = avq_kmeans(x, s.partitions, eta=eta, iters=s.iters, seed=s.seed)
    codec, projection = None, None
    if s.scan_dims == "auto":
        basis = principal_directions(xf, dim)
        bias = rank_bias(xf, metric) if metric == "l2" else None  # the scan adds it exactly
        m = calibrated_dims(xf, basis, SCAN_K, 2 * SCAN_K, SCAN_RECALL, bias=bias, seed=s.seed, query_rows=frame.queries(x, metric))
        projection = basis[:, :m].contiguous() if m < dim else None
    elif s.scan_dims is not None:
        projection = principal_directions(xf, s.scan_dims)
    if s.codes == "int8":
        codec = Int8Codes.train(xf if projection is None else xf @ projection)
    elif s.codes == "pq4":
        residuals = x - centres[assigned]
        units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        pick = torch.randperm(x.shape[0], generator=g)[:PQ_TRAIN_ROWS].to(x.device)
        codec = ProductQuantizer.train(residuals[pick], s.block_dims, eta=code_eta(s, metric, dim), directions=units[pick], seed=s.seed)
    centres = by_popularity(centres, x, metric, probe, frame)
    gaps = probe_gaps(x[torch.randperm(x.shape[0], generator=g)[:GAP_SAMPLE].to(x.device)], centres, metric, frame)
    return Trained(centres=centres, codec=codec, projection=projection, probe_gaps=gaps, frame=frame)


def assign(x: torch.Tensor, centres: torch.Tensor, eta: float, copies: int, frame: ScanFrame | None = None) -> torch.Tensor:
    """i64[m, copies] partitions of rows x: the least partitioning loss, then (copies = 2, spill)
    the SOAR choice: least |x - c|^2 + SOAR_LAMBDA * <x - c, r>^2 over the other partitions,
    r the unit residual in the first, so the two residuals are nearly orthogonal. Both are
    translation invariant and are computed in the frame (eta = 1), where they keep their digits."""
    c = centres
    if eta == 1.0 and frame is not None:
        x, c = frame.rows(x), frame.rows(centres)
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
    codec = trained.codec
    if isinstance(codec, ProductQuantizer):  # residuals of the rows as they are
        units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        return codec.encode(x - trained.centres[partition], units, eta)
    x = trained.frame.rows(x)
    if trained.projection is not None:
        x = x @ trained.projection
    return x.to(torch.bfloat16) if codec is None else codec.encode(x)


def best_centres(rows: torch.Tensor, centres: torch.Tensor, metric: str, count: int, frame: ScanFrame | None = None):
    """Yield (scores f32[b, count], partitions i64[b, count]) of the `count` best centres of each
    block of ASSIGN_BLOCK rows (as queries), by rank score in the frame: <q', c'> (- |c'|^2/2 for
    L2) for q' = frame.queries(q), c' = frame.rows(c) (q, c without a frame), best first."""
    cf = in_frame(centres, frame)
    bias = rank_bias(cf, metric) if metric == "l2" else 0.0
    for i in range(0, rows.shape[0], ASSIGN_BLOCK):
        yield torch.topk(scan_side(rows[i : i + ASSIGN_BLOCK], frame, metric) @ cf.T + bias, count, dim=1)


def probe_gaps(sample: torch.Tensor, centres: torch.Tensor, metric: str, frame: ScanFrame | None = None) -> torch.Tensor:
    """f32[c] adaptive-probe gaps, c = min(partitions, GAP_COLUMNS): entry p - 1 is the gap g
    for which the sample's rows, as queries q, have on average p of their best
    min(c, ADAPTIVE_SPREAD * p) centres (by `best_centres`) within g * |q'| of their best, where
    q' = frame.queries(q) (entries p >= c: inf)."""
    c = min(centres.shape[0], GAP_COLUMNS)
    top = torch.cat([values for values, _ in best_centres(sample, centres, metric, c, frame)])
    norms = torch.linalg.vector_norm(scan_side(sample, frame, metric), dim=1, keepdim=True)
    gaps = (top[:, :1] - top) / norms.clamp_min(1e-30)
    gaps = gaps.cpu()  # [m, c], ascending along each row, column 0 = 0
    m = gaps.shape[0]
    out = torch.full((c,), float("inf"))
    for p in range(1, c):
        considered = min(c, ADAPTIVE_SPREAD * p)
        out[p - 1] = torch.kthvalue(gaps[:, :considered].reshape(-1), m * p).values  # m * p gaps lie within it
    return out.to(centres.device)


def by_popularity(centres: torch.Tensor, sample: torch.Tensor, metric: str, probe: int, frame: ScanFrame | None = None, reduce: Reduce | None = None) -> torch.Tensor:
    """centres reordered from the most to the least often probed by the sample's rows (as
    queries, `probe` partitions each). Partition ids then follow popularity, and so does the page
    layout: consecutive pages get similar numbers of queries, and the batched products that
    score runs of pages (padded to their busiest page) waste little. reduce (`quant.avq.Reduce`):
    the sample is one holder's part, and the counts are summed over every holder."""
    hits = torch.zeros(centres.shape[0], dtype=torch.int64)
    for _, probed in best_centres(sample, centres, metric, min(probe, centres.shape[0]), frame):
        hits += torch.bincount(probed.reshape(-1).cpu(), minlength=centres.shape[0])
    if reduce is not None:
        hits = reduce(hits, "sum")
    return centres[torch.argsort(hits, descending=True, stable=True).to(centres.device)].contiguous()
