"""Training the partitioned shards of a ShardedIndex together: `fit` is `partitioned.training.fit`
with the sample spread over the ranks, and every rank ends with the same `Trained`.

    trained = fit(x_local, settings, metric, probe, group=None, quantized=False)   # collective

Step by step, beside the single-process `partitioned.training.fit`:
  1. sample: at most MAX_TRAIN_PER_PARTITION x partitions rows in all, each rank contributing
     its share (`_comm.shares`: proportional to its rows), picked at random (seeded by
     (seed, rank));
  2. scan frame: mean and mean square distance from sums all-reduced in float64;
  3. k-means / AVQ (`quant.avq.avq_kmeans` with `reduce=`): the initial centres are rows drawn
     from every rank (each its share, all-gathered); each iteration all-reduces the counts and
     the residual sums (`quantized=True`: those through `all_reduce_quantized`, int8 blocks;
     the counts stay exact);
  4. projection (scan_dims): principal directions of the all-reduced second moment (a sum);
     scan_dims="auto" calibrates the width on rank 0;
  5. codec: int8 scales from an all-reduced max; PQ codebooks trained on rank 0;
  6. centres by popularity: the probe counts all-reduced;
  7. adaptive-probe gaps: on rank 0.
What is not a sum (4's width calibration, 5's PQ codebooks, 7's gaps) is computed on rank 0 from
a sample of at most ROOT_ROWS rows gathered there (each rank its share, with each row's partition).
Finally rank 0 broadcasts the whole result (centres, frame, projection, codec, gaps), so the
ranks hold the same bits even where their floating point could differ (other CPUs).
Bytes per k-means iteration per rank: about 2 x partitions x dim x 4 (ring all-reduce of fp32
residual sums), or about a quarter of that with quantized=True.
Rank 0's own steps run inside `_comm.agree`, so a failure there raises on every rank.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..engine.table import FRAME_BLOCK_BYTES, ScanFrame, power_of_two_scale, rank_bias
from ..partitioned import training
from ..partitioned.settings import SCAN_K, SCAN_RECALL, PartitionSettings
from ..quant.avq import avq_kmeans
from ..quant.codes import Int8Codes, ProductQuantizer, calibrated_dims
from ._comm import Reducer, agree, broadcast_tensors, gather_ints, gather_padded, gather_to_root, shares, world

ROOT_ROWS = training.PQ_TRAIN_ROWS  # rows gathered on rank 0 for what is not a sum


def fit(x: torch.Tensor, settings: PartitionSettings, metric: str, probe: int, *, group=None, quantized: bool = False) -> training.Trained:
    """Collective. Train on this rank's rows x f32[m, d] (m may be 0; normalised for cosine)
    together with every other rank's (module docstring); returns the same Trained on every rank.
    ValueError on every rank when partitions exceed the rows of all ranks."""
    rank, _ = world(group)
    s, dim = settings, x.shape[1]
    reduce = Reducer(group, quantized)
    counts = gather_ints([x.shape[0]], group)[:, 0].tolist()
    if s.partitions > sum(counts):
        raise ValueError(f"partitions={s.partitions} is more than the {sum(counts)} training rows of all ranks")
    rng = np.random.default_rng([s.seed, rank])
    most = training.MAX_TRAIN_PER_PARTITION * s.partitions
    if sum(counts) > most:
        counts = shares(counts, most)
        x = x[_pick(rng, x.shape[0], counts[rank])]
    frame = _frame(x, reduce)
    xf = frame.rows(x)
    eta = training.partition_eta(s, metric, dim)
    space = xf if eta == 1.0 else x  # as in training.fit: plain k-means clusters in the frame
    init = torch.cat(gather_padded(space[_pick(rng, x.shape[0], shares(counts, s.partitions)[rank])], shares(counts, s.partitions), group))
    centres, assigned = avq_kmeans(space, s.partitions, eta=eta, iters=s.iters, seed=s.seed, reduce=reduce, init=init)
    if eta == 1.0:
        centres = centres / frame.scale + frame.centre
    basis = None
    if s.scan_dims is not None:
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for i in range(0, xf.shape[0], max(1, FRAME_BLOCK_BYTES // (8 * dim))):
            b = xf[i : i + max(1, FRAME_BLOCK_BYTES // (8 * dim))].double()
            gram += b.T @ b
        _, vectors = torch.linalg.eigh(reduce(gram, "sum"))  # ascending eigenvalues
        basis = vectors.flip(1).to(torch.float32).contiguous()  # as codes.principal_directions
    root_counts = shares(counts, ROOT_ROWS)
    pick = _pick(rng, x.shape[0], root_counts[rank])
    xr = gather_to_root(x[pick], root_counts, group)
    ar = gather_to_root(assigned[pick], root_counts, group)
    projection = None
    if isinstance(s.scan_dims, int):
        projection = basis[:, : s.scan_dims].contiguous()
    elif s.scan_dims == "auto":
        width = agree(group, lambda: _scan_width(xr, basis, frame, metric, s.seed) if rank == 0 else 0)
        (width,) = broadcast_tensors([torch.tensor([width])] if rank == 0 else None, 1, group)
        m = int(width[0])
        projection = basis[:, :m].contiguous() if m < dim else None
    codec = None
    if s.codes == "int8":
        rows = xf if projection is None else xf @ projection
        top = rows.abs().amax(dim=0) if rows.shape[0] else torch.zeros(rows.shape[1])
        codec = Int8Codes.train(reduce(top, "max").unsqueeze(0))  # the scales of the all-ranks absmax
    elif s.codes == "pq4":
        codec = agree(group, lambda: _pq(xr, ar, centres, s, metric, dim) if rank == 0 else None)
    centres = training.by_popularity(centres, x, metric, probe, frame, reduce=reduce)
    gaps = agree(group, lambda: _gaps(xr, centres, metric, frame, s.seed) if rank == 0 else None)
    return _broadcast(training.Trained(centres=centres, codec=codec, projection=projection, probe_gaps=gaps, frame=frame), s.codes, group)


def _pick(rng: np.random.Generator, n: int, m: int) -> torch.Tensor:
    """i64[m]: m distinct row numbers below n, ascending, at random."""
    return torch.from_numpy(np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64))


def _frame(x: torch.Tensor, reduce: Reducer) -> ScanFrame:
    """`ScanFrame.of` the rows of every rank: float64 sums all-reduced (two passes, like it)."""
    n, d = x.shape
    block = max(1, FRAME_BLOCK_BYTES // (8 * d))
    total = torch.zeros(d + 1, dtype=torch.float64)
    total[d] = n
    for i in range(0, n, block):
        total[:d] += x[i : i + block].sum(0, dtype=torch.float64)
    total = reduce(total, "sum")
    mean = total[:d] / total[d]
    squares = torch.zeros(1, dtype=torch.float64)
    for i in range(0, n, block):
        squares += ((x[i : i + block].double() - mean) ** 2).sum()
    squares = reduce(squares, "sum")
    return ScanFrame(mean.to(torch.float32), power_of_two_scale(float(squares[0]) / float(total[d])))


def _scan_width(xr: torch.Tensor, basis: torch.Tensor, frame: ScanFrame, metric: str, seed: int) -> int:
    """scan_dims="auto" on rank 0's gathered rows (training.fit's calibration)."""
    xf = frame.rows(xr)
    bias = rank_bias(xf, metric) if metric == "l2" else None
    return calibrated_dims(xf, basis, SCAN_K, 2 * SCAN_K, SCAN_RECALL, bias=bias, seed=seed, query_rows=frame.queries(xr, metric))


def _pq(xr: torch.Tensor, ar: torch.Tensor, centres: torch.Tensor, s: PartitionSettings, metric: str, dim: int) -> ProductQuantizer:
    """PQ codebooks of rank 0's gathered rows' residuals to their partitions (training.fit's)."""
    residuals = xr - centres[ar]
    units = xr / torch.linalg.vector_norm(xr, dim=1, keepdim=True).clamp_min(1e-30)
    return ProductQuantizer.train(residuals, s.block_dims, eta=training.code_eta(s, metric, dim), directions=units, seed=s.seed)


def _gaps(xr: torch.Tensor, centres: torch.Tensor, metric: str, frame: ScanFrame, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return training.probe_gaps(xr[torch.randperm(xr.shape[0], generator=g)[: training.GAP_SAMPLE]], centres, metric, frame)


def _broadcast(t: training.Trained, codes: str, group) -> training.Trained:
    """Rank 0's Trained on every rank (bit for bit)."""
    rank, _ = world(group)
    codec_state = None if t.codec is None else next(iter(t.codec.state().values()))
    mine = [t.centres, t.frame.centre, torch.tensor([t.frame.scale], dtype=torch.float64), t.projection, codec_state, t.probe_gaps]
    centres, fc, fs, projection, state, gaps = broadcast_tensors(mine if rank == 0 else None, len(mine), group)
    codec = None if state is None else Int8Codes(state) if codes == "int8" else ProductQuantizer(state)
    return dataclasses.replace(t, centres=centres, frame=ScanFrame(fc, float(fs[0])), projection=projection, codec=codec, probe_gaps=gaps)
