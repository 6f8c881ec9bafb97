"""The network term of a sharded search (`peakknn.distributed.ShardedIndex`): how long the
collectives of one search batch take, from the bytes they move and how many there are.

    from peakknn.perfmodel import network
    link = network.LINKS["ib-ndr"]                           # stated figures (NCCL) ...
    link = network.measure()                                 # ... or measured (under torch.distributed)
    t = network.search_traffic(nq=1000, k=10, dim=768, world=8)
    p = network.predict(t, link, world=8)                    # p.seconds = p.bandwidth_s + p.latency_s

Model (alpha-beta, no overlap with compute: ShardedIndex runs its collectives one after another
between the local searches):
    seconds = bytes received per rank / bandwidth + collectives x latency per collective
    latency per collective = link.latency_s x steps(world)   (ring: world - 1; tree: ceil(log2 world))
For one ShardedIndex.search of nq queries in all, spread evenly over W ranks, k results, d dims
(`search_traffic`; no filters, one recall_target): every rank receives the other ranks' queries
(all-gather of fp32 rows: (W-1)/W x nq x d x 4 bytes) and its queries' candidates from the other
shards (all-to-all of fp32 scores + int64 ids: (W-1)/W x nq x k x 12 bytes), plus SEARCH_SMALL
latency-bound collectives of a few hundred bytes per rank (error agreement, sizes, k, targets).
SEARCH_COLLECTIVES = 9 collectives in all per search (tests/distributed counts them).
A distributed k-means iteration (`kmeans_traffic`) all-reduces the partitions x d residual sums
(fp32 ring: 2 (W-1)/W x P x d x 4 bytes received; quantized_training: int8 codes + fp32 scales
per 256-block, about a quarter) and the counts.

With ranks_per_host > 1 (`predict(..., ranks_per_host=G, intra=link)`), the bytes a rank gets
from its G - 1 host mates cross `intra` (NVLink) and the rest cross `link` (the inter-host
network); latency steps follow `link`.

LINKS holds stated figures, each with its source: what NCCL reaches (bus bandwidth) on NVLink 4
and on InfiniBand NDR / HDR, and line rates for Ethernet (CPU hosts, gloo over TCP: no
measurement here, so their latency is an assumption, flagged as such). `measure` times this
group's own collectives (on one machine: gloo over loopback, which is memory copies and the TCP
stack, not a network).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

SEARCH_COLLECTIVES = 9  # per ShardedIndex.search: 3 agree all-reduces, 3 small gathers, 1 query all-gather, 2 all-to-all
SEARCH_SMALL = 7  # of which latency-bound (a few hundred bytes per rank)
AGREE_BYTES = 4 * (1 + 480)  # one rank's row of an agree() all-reduce (distributed._comm.MESSAGE_BYTES)
ALGORITHMS = ("ring", "tree")
MEASURE_SIZES = (1 << 16, 1 << 20, 1 << 22, 1 << 24)  # bytes each rank contributes to the timed all-gathers


@dataclasses.dataclass(frozen=True)
class Link:
    """A link between ranks: bandwidth (bytes/s a rank receives while it sends as much: full
    duplex), latency_s (seconds per collective step), algorithm ("ring": world - 1 steps per
    collective; "tree": ceil(log2 world)), and where the figures come from."""

    name: str
    bandwidth: float
    latency_s: float
    algorithm: str = "ring"
    source: str = ""

    def __post_init__(self):
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise ValueError(f"bandwidth must be a positive number of bytes/s, got {self.bandwidth!r}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"latency_s must be >= 0 seconds, got {self.latency_s!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")

    def steps(self, world: int) -> int:
        """Latency steps of one collective over `world` ranks (0 for one rank)."""
        world = _world(world)
        if world == 1:
            return 0
        return world - 1 if self.algorithm == "ring" else math.ceil(math.log2(world))


GB = 1e9
LINKS = {
    "nvlink4": Link(
        "NVLink 4 (H100 / H200 SXM, NVSwitch)", 370 * GB, 6e-6, "tree",
        "450 GB/s per direction line rate, ~370 GB/s effective for NCCL (NCCL maintainer, "
        "github.com/NVIDIA/nccl-tests/issues/212); ~6 us small all-reduce on 2 H100 with NVLS and "
        "CUDA graphs (github.com/NVIDIA/nccl/issues/1259)",
    ),
    "ib-ndr": Link(
        "InfiniBand NDR 400 Gb/s, one NIC per GPU", 47 * GB, 23e-6, "tree",
        "46-48 GB/s per NDR NIC with NCCL (NVIDIA, github.com/NVIDIA/nccl-tests/issues/290); "
        "~46 us for a small all-reduce over 2 nodes x 8 GPUs on NDR (github.com/NVIDIA/nccl/issues/1244): "
        "23 us per tree step of 16 ranks' 4 steps is our reading, an assumption",
    ),
    "ib-hdr": Link(
        "InfiniBand HDR 200 Gb/s, one NIC", 24 * GB, 23e-6, "tree",
        "~24 GB/s inter-node bus bandwidth (NCCL maintainer, github.com/NVIDIA/nccl/issues/412); latency as ib-ndr (assumed)",
    ),
    "eth-100g": Link(
        "100 Gb/s Ethernet, gloo over TCP (CPU hosts)", 12.5 * GB * 0.8, 50e-6, "ring",
        "12.5 GB/s line rate; 80% of it and 50 us per ring step (TCP round trip plus gloo) are "
        "assumptions, not measured (NCCL reaches 12.2 GB/s on a 100 Gb/s card: "
        "github.com/NVIDIA/nccl-tests/issues/29)",
    ),
    "eth-25g": Link(
        "25 Gb/s Ethernet, gloo over TCP (CPU hosts)", 3.125 * GB * 0.8, 50e-6, "ring",
        "3.125 GB/s line rate; 80% of it and 50 us per ring step are assumptions, not measured",
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What one operation moves: bytes each rank receives in bulk (`bulk_bytes`), small bytes
    (latency-bound collectives), and the number of collectives."""

    bulk_bytes: float
    small_bytes: float
    collectives: int

    @property
    def bytes_per_rank(self) -> float:
        return self.bulk_bytes + self.small_bytes


@dataclasses.dataclass(frozen=True)
class NetworkPrediction:
    """Seconds of the bandwidth and latency terms, and their sum (`seconds`)."""

    bandwidth_s: float
    latency_s: float

    @property
    def seconds(self) -> float:
        return self.bandwidth_s + self.latency_s


def _world(world) -> int:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    return world


def search_traffic(nq: int, k: int, dim: int, world: int) -> Traffic:
    """Traffic of one ShardedIndex.search of nq queries in all (evenly spread), k results, dim
    dims, over `world` ranks (module docstring); nothing for one rank."""
    world = _world(world)
    if min(nq, k, dim) < 0 or k < 1 or dim < 1:
        raise ValueError(f"nq >= 0, k >= 1 and dim >= 1 needed, got nq={nq}, k={k}, dim={dim}")
    if world == 1:
        return Traffic(0.0, 0.0, 0)
    share = (world - 1) / world
    bulk = share * nq * dim * 4 + share * nq * k * 12
    small = 3 * 2 * share * world * AGREE_BYTES + 3 * (world - 1) * 24 + (world - 1) * world * 8
    return Traffic(bulk, small, SEARCH_COLLECTIVES)


def kmeans_traffic(partitions: int, dim: int, world: int, *, quantized: bool = False, block: int = 256) -> Traffic:
    """Traffic of one distributed k-means iteration (`distributed.training`): the residual sums
    f32[partitions, dim] (ring all-reduce, or all_reduce_quantized's int8 codes and per-block
    fp32 scales) and the counts i64[partitions]."""
    world = _world(world)
    if world == 1:
        return Traffic(0.0, 0.0, 0)
    share = 2 * (world - 1) / world
    n = partitions * dim
    sums = share * n * (1 + 4 / block) if quantized else share * n * 4
    collectives = 2 + (2 + 4 if quantized else 0)  # counts + sums; quantized: 2 checks + 2 all_to_all + 2 all_gather
    return Traffic(sums + share * partitions * 8, 0.0, collectives)


def predict(traffic: Traffic, link: Link, world: int, *, ranks_per_host: int = 1, intra: Link | None = None) -> NetworkPrediction:
    """Seconds of `traffic` over `link` among `world` ranks (module docstring). ranks_per_host
    G > 1 with `intra`: the share (G - 1) / (world - 1) of the bytes crosses `intra` instead."""
    world = _world(world)
    if ranks_per_host < 1 or world % ranks_per_host:
        raise ValueError(f"ranks_per_host must divide world={world}, got {ranks_per_host}")
    if ranks_per_host > 1 and intra is None:
        raise ValueError("ranks_per_host > 1 needs intra= (the link between ranks of one host)")
    near = (ranks_per_host - 1) / (world - 1) if world > 1 else 0.0
    bandwidth_s = traffic.bytes_per_rank * (1 - near) / link.bandwidth
    if near:
        bandwidth_s += traffic.bytes_per_rank * near / intra.bandwidth
    latency = link if world > ranks_per_host else intra or link
    return NetworkPrediction(bandwidth_s=bandwidth_s, latency_s=traffic.collectives * latency.latency_s * latency.steps(world))


def measure(group=None, *, sizes=MEASURE_SIZES, reps: int = 5) -> Link:
    """Collective: this group's link, timed under torch.distributed (every rank calls it; every
    rank gets the same Link). Latency: the median time of a 4-byte all_reduce over its steps
    (ring); bandwidth: a least-squares line through the median times of all_gather_into_tensor
    of `sizes` bytes per rank against the bytes each rank receives ((world - 1) x size).
    Each time is the slowest rank's. Needs world size >= 2."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("network.measure needs torch.distributed.init_process_group(...) first")
    world = dist.get_world_size(group)
    if world < 2:
        raise ValueError("network.measure needs at least 2 ranks")

    def timed(fn) -> float:
        times = []
        for _ in range(reps + 1):  # the first is a warm-up
            dist.barrier(group=group)
            t0 = time.perf_counter()
            fn()
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
            times.append(float(t))
        return statistics.median(times[1:])

    tiny = torch.zeros(1, dtype=torch.float32)
    small_s = timed(lambda: dist.all_reduce(tiny, group=group))
    xs, ys = [], []
    for size in sizes:
        mine = torch.zeros(max(1, size // 4), dtype=torch.float32)
        out = torch.empty(world * mine.numel(), dtype=torch.float32)
        ys.append(timed(lambda out=out, mine=mine: dist.all_gather_into_tensor(out, mine, group=group)))
        xs.append((world - 1) * mine.numel() * 4.0)
    slope = _slope(xs, ys)
    backend = dist.get_backend(group)
    return Link(
        f"{backend}, {world} ranks (measured)",
        bandwidth=1.0 / slope if slope > 0 else max(xs) / max(min(ys), 1e-9),
        latency_s=small_s / (world - 1),
        algorithm="ring",
        source=f"peakknn.perfmodel.network.measure: all_gather of {min(sizes)}-{max(sizes)} bytes per rank, {reps} repetitions",
    )


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
