"""The cost model that picks per_bin and the bin count when approx_topk is given per_bin=None.

Each way of answering a top-k of R rows of n elements costs, in seconds,

    exact (torch.topk)  R * select(n, k)
    per_bin = 1         R * (n * reduce + select(L, k) + k * (n / (T L) + T) * gather) + blocks * 12 * op
    per_bin = p > 1     R * (n * (keys + reduce) + touched * network + select(p L, k)) + blocks * ops * op

with L = topk_bins(n, k, recall_target, p), and `touched` / `ops` the network's counts
(`binned.network_ops`). The unit costs are measured on this machine, once per process, device
and dtype (`unit_costs`, about 50 ms): `reduce` (s per element of the tiled max, also the NaN
check), `keys` (s per element to build the packed keys), `network` (s per element per
elementwise max / min on keys), `gather` (s per gathered element), `op` (s per torch call).
`select(m, k)` is torch.topk's own cost per row for m elements and k results, measured at that
(m, k) when first needed (a few ms) and kept. So the choice follows the machine (a CPU where
torch.topk is cheap picks exact more often) and the shape, not constants tuned on one shape;
benchmarks/topk_models.py prints the prediction beside the measurement for every candidate.

On a CPU the probes run on one thread (on a worker thread of `_workers`, whose torch thread
count is 1; without workers under torch.set_num_threads(1) for their duration) and the fastest
of several runs is kept, and per-element costs are divided by the thread
count (blocks run on one worker thread per torch thread, `_workers`; torch.topk splits its rows
over the threads): a probe then measures the machine, not the other processes sharing it (a parallel op
waits for its slowest thread, which a busy machine deschedules for milliseconds per op). The
model so describes a machine that is not oversubscribed. Probes use about PROBE_ELEMENTS
distinct elements (small repeated inputs let the branch predictor learn torch.topk's branches).

On CUDA with the Triton kernel the candidates are timed directly on a sample of rows (the
kernel's cost per p is not modelled here); `choose` then keeps the fastest. On a CPU, a call of
at least approx.TIMED_MIN_ELEMENTS elements times the model's best SHORTLIST plans against
torch.topk on random rows of its n and dtype (`fastest`) before it decides: the model's unit
costs come from small in-cache probes, and on large inputs it measured 2-4x optimistic for the
binned plans (benchmarks/topk_models.py prints prediction and measurement side by side), which
once made the default slower than torch.topk (64 x 131,072, k = 50: 0.84x).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time

import torch

from .._checks import ceil_div
from . import _workers, binned

LOG = logging.getLogger(__name__)

PER_BIN_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16)  # the per_bin values per_bin=None considers
SHORTLIST = 2  # binned plans (the model's best) a large CPU call times against torch.topk
P1_OPS = 12  # torch calls per block of the per_bin = 1 path
KEY_OPS = 12  # torch calls per block of the per_bin > 1 path outside the network
PROBE_ELEMENTS = 1 << 19  # elements of a probe's input
_PROBE_ROWS, _PROBE_N, _PROBE_BINS = 32, 16384, 256
_REPEAT = 5


@dataclasses.dataclass(frozen=True)
class UnitCosts:
    """Measured seconds per unit on one device for one dtype (see module docstring)."""

    device: str
    dtype: str
    reduce: float
    keys: float
    network: float
    gather: float
    op: float


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to answer: per_bin None is the exact torch.topk; seconds is the prediction."""

    per_bin: int | None
    bins: int | None
    seconds: float


_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # the per_bin = 1 path ranks bins by ordered integers
_GATHER_ROWS = 256  # the gather probe reads rows of _PROBE_N (16 MiB of fp32): the revisit misses the caches
_LOCK = threading.Lock()
_UNITS: dict[tuple[str, torch.dtype], UnitCosts] = {}
_SELECT: dict[tuple, float] = {}


def _best(fn, device: torch.device, repeat: int = _REPEAT) -> float:
    """The fastest of `repeat` calls after a warm-up: costs are best cases (others share the CPU)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def unit_costs(device, dtype: torch.dtype) -> UnitCosts:
    """The unit costs of `device` for `dtype`, measured on first use (per process)."""
    dev = torch.device(device)
    key = (str(dev), dtype)
    with _LOCK:
        if key not in _UNITS:
            share = _share(dev)
            _UNITS[key] = _on_one_thread(dev, lambda: _measure_units(dev, dtype, share))
            LOG.info("top-k unit costs: %s", _UNITS[key])
        return _UNITS[key]


def _on_one_thread(dev: torch.device, fn):
    """fn() with one torch thread on a CPU (a worker's, `_workers.on_one_thread`), else fn()."""
    return _workers.on_one_thread(fn) if dev.type == "cpu" else fn()


def _op_share(device) -> float:
    """The share of the per-call costs on the critical path: blocks on the workers run side by side."""
    dev = torch.device(device)
    return _share(dev) if _workers.pooled(dev) else 1.0


def _share(dev: torch.device) -> float:
    """The fraction of a one-thread probe's time that the same work takes on every thread."""
    return 1.0 / max(1, torch.get_num_threads()) if dev.type == "cpu" else 1.0


def _measure_units(dev: torch.device, dtype: torch.dtype, share: float) -> UnitCosts:
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(_PROBE_ROWS, _PROBE_N, generator=g, device=dev).to(dtype)
    elements = x.numel()
    tiny = torch.zeros(4, 4, device=dev)
    op = _best(lambda: torch.maximum(tiny, tiny), dev, repeat=20)
    t_groups = binned.tile_groups(_PROBE_N // _PROBE_BINS)
    reduce = _best(lambda: torch.amax(x.view(_PROBE_ROWS, -1, t_groups, _PROBE_BINS), dim=2), dev) * share / elements
    if binned.has_keys(dtype):
        half, key_dtype, _ = binned._ORDER[dtype]
        groups = _PROBE_N // _PROBE_BINS
        s = binned.streams(groups)
        work = binned._KeyWork(_PROBE_ROWS, groups, _PROBE_BINS, _PROBE_N, 2, s, half, key_dtype, dev)
        keys_cost = _best(lambda: work.fill(x, True), dev) * share / elements
        keys = work.fill(x, True)
        _, touched = binned.network_ops(groups, 2)
        network = _best(lambda: binned._network(keys, 2, s, work), dev) * share / (touched * _PROBE_BINS * _PROBE_ROWS)
    else:
        keys_cost = network = math.inf
    wide = torch.randn(_GATHER_ROWS, _PROBE_N, generator=g, device=dev).to(dtype)
    pos = torch.randint(0, _PROBE_N, (_GATHER_ROWS, 1024), generator=g, device=dev)
    gather = _best(lambda: wide.gather(1, pos), dev) * share / pos.numel()
    return UnitCosts(str(dev), str(dtype).removeprefix("torch."), reduce, keys_cost, network, gather, op)


def select_cost(m: int, k: int, dtype: torch.dtype, sorted: bool, device) -> float:
    """Seconds per row of torch.topk over m elements of dtype picking k (largest), measured on
    first use of (m, k, dtype, sorted, device) on random rows (about PROBE_ELEMENTS elements,
    at least one row)."""
    dev = torch.device(device)
    key = (m, k, dtype, sorted, str(dev))
    with _LOCK:
        if key not in _SELECT:
            rows = max(1, PROBE_ELEMENTS // m)
            g = torch.Generator(device=dev).manual_seed(m * 131 + k)
            if dtype.is_floating_point:
                data = torch.randn(rows, m, generator=g, device=dev).to(dtype)
            else:
                info = torch.iinfo(dtype)
                data = torch.randint(info.min, info.max, (rows, m), generator=g, device=dev, dtype=dtype)
            share = _share(dev)
            _SELECT[key] = _on_one_thread(dev, lambda: _best(lambda: torch.topk(data, k, dim=1, sorted=sorted), dev, repeat=3)) * share / rows
        return _SELECT[key]


def predict(rows: int, n: int, k: int, per_bin: int | None, bins: int | None, dtype: torch.dtype, device, *, sorted: bool = True) -> float:
    """Predicted seconds of the torch path (module docstring) for one plan; per_bin / bins None: exact."""
    if bins is None:
        return rows * select_cost(n, k, dtype, sorted, device)
    u = unit_costs(device, dtype)
    if per_bin == 1:
        blocks = ceil_div(rows, binned.block_rows(rows, n, binned.BLOCK_ELEMENTS, _workers.pooled(torch.device(device))))
        t_groups = binned.tile_groups(n // bins)
        revisit = k * (ceil_div(n, t_groups * bins) + t_groups)
        per_row = n * u.reduce + select_cost(bins, k, _INTS[dtype.itemsize], True, device) + revisit * u.gather
        return rows * per_row + blocks * P1_OPS * u.op * _op_share(device)
    if not binned.has_keys(dtype):
        return math.inf
    groups = ceil_div(n, bins)
    groups = ceil_div(groups, binned.streams(groups)) * binned.streams(groups)
    ops, touched = binned.network_ops(groups, per_bin)
    key_dtype = binned._ORDER[dtype][1]
    blocks = ceil_div(rows, binned.key_block_rows(rows, groups * bins, key_dtype, _workers.pooled(torch.device(device))))
    per_row = n * (u.keys + u.reduce) + touched * bins * u.network + select_cost(per_bin * bins, k, key_dtype, sorted, device)
    return rows * per_row + blocks * (ops + KEY_OPS) * u.op * _op_share(device)


def candidates(rows: int, n: int, k: int, recall_target: float, dtype: torch.dtype, device, *, sorted: bool = True, choices=PER_BIN_CHOICES) -> list[Candidate]:
    """Every plan per_bin=None considers, with its predicted seconds (exact first)."""
    from .plan import topk_bins

    out = [Candidate(None, None, predict(rows, n, k, None, None, dtype, device, sorted=sorted))]
    seen = set()
    for p in choices:
        bins = topk_bins(n, k, recall_target, p)
        if bins is None or (p, bins) in seen or (p > 1 and not binned.has_keys(dtype)):
            continue
        seen.add((p, bins))
        out.append(Candidate(p, bins, predict(rows, n, k, p, bins, dtype, device, sorted=sorted)))
    return out


@functools.lru_cache(maxsize=1024)
def _chosen(rows: int, n: int, k: int, recall_target: float, dtype: torch.dtype, device: str, sorted: bool) -> Candidate:
    found = candidates(rows, n, k, recall_target, dtype, device, sorted=sorted)
    best = min(found, key=lambda c: c.seconds)
    LOG.debug("top-k plan for rows=%d n=%d k=%d target=%s %s: per_bin=%s bins=%s (%s)", rows, n, k, recall_target, dtype, best.per_bin, best.bins, found)
    return best


def choose(rows: int, n: int, k: int, recall_target: float, dtype: torch.dtype, device, *, sorted: bool = True) -> Candidate:
    """The candidate with the smallest predicted time (kept per shape for the process). Rows are
    rounded up to a power of two, so batches of similar size share one decision."""
    rows_key = 1 << max(0, math.ceil(math.log2(max(1, rows))))
    return _chosen(rows_key, n, k, recall_target, dtype, str(torch.device(device)), sorted)


def every_plan(n: int, k: int, recall_target: float, choices=PER_BIN_CHOICES) -> list[Candidate]:
    """torch.topk and every per_bin of `choices` that has bins for (n, k, recall_target),
    unpredicted (seconds 0): what the Triton path times on CUDA."""
    from .plan import topk_bins

    plans = [Candidate(None, None, 0.0)]
    for p in choices:
        bins = topk_bins(n, k, recall_target, p)
        if bins is not None:
            plans.append(Candidate(p, bins, 0.0))
    return plans


def fastest(run, sample: torch.Tensor, k: int, plans: list[Candidate], *, rows: int, sorted: bool = True) -> Candidate:
    """The plan of `plans` (bins None: torch.topk) that answers the sample rows fastest, timed
    (best of 3 after a warm-up) with `run(sample, k, per_bin, bins)`; seconds scaled to `rows`."""
    scale = rows / sample.shape[0]
    found = []
    for c in plans:
        if c.bins is None:
            fn = lambda: torch.topk(sample, k, dim=1, sorted=sorted)  # noqa: E731
        else:
            fn = lambda c=c: run(sample, k, c.per_bin, c.bins)  # noqa: E731
        found.append(Candidate(c.per_bin, c.bins, scale * _best(fn, sample.device, repeat=3)))
    best = min(found, key=lambda c: c.seconds)
    LOG.debug("top-k plans timed on %d x %d (k=%d): %s -> per_bin=%s bins=%s", sample.shape[0], sample.shape[1], k, found, best.per_bin, best.bins)
    return best


def reset() -> None:
    """Forget measured costs and choices (tests)."""
    with _LOCK:
        _UNITS.clear()
        _SELECT.clear()
    _chosen.cache_clear()
