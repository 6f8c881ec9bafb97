"""Measured ceilings of a device: what the engine reads (chunk width, query pass) and what the
roofline (peakknn.perfmodel.roofline) predicts from.

`Ceilings`, measured by `measure`, per device and scan dtype:
- matmul_flops[dtype]: FLOP/s of the engine's inner matrix product (queries [512, 128] x a
  database chunk [C, 128]^T into a reused output), the best over chunk widths C in CHUNK_WIDTHS;
- peak_flops[dtype]: the best FLOP/s of every product timed (those, a square product of side
  PEAK_SIZE and the quick probe): the roofline's arithmetic rate;
- best_chunk[dtype]: the engine's chunk width: the narrowest C whose whole scan step (product,
  strided max over 16 groups, running-state update) is within CHUNK_TOLERANCE of the best rate
  per score (wider chunks also mean more bins, which the probe does not see);
- compare_rate[dtype]: elements/s of the partial reduction (a strided max over [QB, g, L]);
- packed_queries[dtype]: the most queries (of PACKED_QUERIES) up to which a scan over packed rows
  (engine.packed, CPU) beats the plain product (by PACKED_GAIN) at every count probed, over PACKED_BYTES of rows in
  chunks of best_chunk; 0 where it never does or this torch cannot pack (and on CUDA);
- bandwidth: bytes/s of a large copy (read + write counted); read_bandwidth: bytes/s of a large
  read-only sum; cache_bytes: the capacity of all on-chip data caches (an upper bound);
- device, cores, threads, torch_version: the machine measured; measured_at: when (ISO 8601,
  UTC); probe_flops: the rate of the quick probe (`probe`) in that measurement.

Cache: $PEAKKNN_CACHE_DIR, else $XDG_CACHE_HOME/peakknn, else ~/.cache/peakknn; one JSON file
(format FORMAT) per device, core count, thread count and torch version. When a process first
reads a file, the ceilings are measured again (and the file replaced) when:
- it is unreadable, of another format (older peakknn) or describes another machine;
- it is older than MAX_AGE_DAYS (or dated in the future);
- the quick probe (one fp32 product, a few ms) runs more than PROBE_FACTOR times faster than it
  did in the measurement: the file was measured on a busy machine, so its rates are low.
A probe more than PROBE_FACTOR times slower keeps the file (logged): the machine is busy now,
and measuring now would cache rates that are too low. `ceilings(refresh=True)` re-measures.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import threading
import time
from pathlib import Path

import torch

from .._types import precision_name, scan_dtype
from ..engine import packed
from ..evaluation import timed

LOG = logging.getLogger(__name__)

FORMAT = "peakknn.ceilings/3"
DTYPES = ("fp32", "bf16")
CHUNK_WIDTHS = (2048, 4096, 8192, 16384)  # candidate scores per query per chunk
CHUNK_TOLERANCE = 0.10
PROBE_QUERIES = 512  # query rows of the matmul probe
PROBE_DIM = 128
PROBE_BINS = 512
PEAK_SIZE = {"cpu": 1024, "cuda": 4096}  # side of the square product of peak_flops
# Query passes are made long enough that reading X once per pass costs <= 1/MEMORY_RATIO of the
# pass's matmul; 16 because the GEMM also packs X per pass, which is slower than a copy.
MEMORY_RATIO = 16
MIN_PASS_QUERIES, MAX_PASS_QUERIES = 64, 4096
MAX_AGE_DAYS = 30  # a cache file older than this is measured again
QUICK_PROBE = (256, 2048, 128)  # queries, rows, dim of the quick fp32 probe (134 MFLOP)
PROBE_FACTOR = 1.25  # a quick probe this much faster than at the measurement: the file is stale
BANDWIDTH_BYTES = 1 << 28  # the copy probe's buffer (256 MiB), assumed larger than the caches
PACKED_QUERIES = (4, 16, 64, 256)  # query counts of the packed-rows probe
PACKED_BYTES = 16 << 20  # rows the packed-rows probe scans (more than most L2 caches: read from L3 or memory)
PACKED_GAIN = 0.95  # packed rows count as faster when they take at most this share of the plain time (not timing noise)


def dtype_key(dtype) -> str:
    """"fp32" / "bf16" for a precision name or torch dtype."""
    return precision_name(scan_dtype(dtype))


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """Measured rates of one device (see module docstring); dtype keys are "fp32" / "bf16"."""

    device: str
    matmul_flops: dict[str, float]
    best_chunk: dict[str, int]
    compare_rate: dict[str, float]
    bandwidth: float
    threads: int = 1
    torch_version: str = ""
    measured_at: str = ""
    cores: int = 0
    peak_flops: dict[str, float] = dataclasses.field(default_factory=dict)
    read_bandwidth: float = 0.0
    cache_bytes: int = 0
    probe_flops: float = 0.0
    packed_queries: dict[str, int] = dataclasses.field(default_factory=dict)

    def matmul(self, dtype) -> float:
        return self.matmul_flops[dtype_key(dtype)]

    def peak(self, dtype) -> float:
        """The best FLOP/s measured for dtype (peak_flops, at least matmul_flops)."""
        key = dtype_key(dtype)
        return max(self.matmul_flops[key], self.peak_flops.get(key, 0.0))

    @property
    def peak_bandwidth(self) -> float:
        """The best bytes/s measured (copy or read-only)."""
        return max(self.bandwidth, self.read_bandwidth)

    def compare(self, dtype) -> float:
        return self.compare_rate[dtype_key(dtype)]

    def packed(self, dtype) -> int:
        """Most queries per block that scan packed rows faster than plain ones (0: never)."""
        return self.packed_queries.get(dtype_key(dtype), 0)

    def pass_queries(self, dtype) -> int:
        """Queries per pass over the database so that reading it once per pass costs <=
        1/MEMORY_RATIO of the pass's matrix product: QB >= MEMORY_RATIO * matmul_flops * esize /
        (2 * bandwidth), rounded up to a multiple of 64 and clamped to [64, 4096] (d cancels)."""
        esize = scan_dtype(dtype).itemsize
        qb = MEMORY_RATIO * self.matmul(dtype) * esize / (2.0 * self.bandwidth)
        return int(min(MAX_PASS_QUERIES, max(MIN_PASS_QUERIES, math.ceil(qb / 64) * 64)))


def now() -> float:
    """Seconds since the epoch: the clock of the cache's age (tests replace it)."""
    return time.time()


def _best_time(fn, device: torch.device, repeat: int) -> float:
    """Fastest of `repeat` calls after one warm-up (ceilings are best cases)."""
    return timed(fn, repeat, warmup=1, reduce=min, device=device)[1]


def _product_rate(m: int, c: int, d: int, dtype, dev: torch.device, repeat: int) -> float:
    """FLOP/s of [m, d] x [c, d]^T into a reused output, the fastest of `repeat` runs."""
    q = torch.randn(m, d, device=dev).to(dtype)
    x = torch.randn(c, d, device=dev).to(dtype)
    out = torch.empty(m, c, dtype=dtype, device=dev)
    return 2.0 * m * c * d / _best_time(lambda: torch.mm(q, x.T, out=out), dev, repeat)


def probe(device="cpu") -> float:
    """FLOP/s of one quick fp32 product (QUICK_PROBE; about 1 ms per run on a 2-core CPU, 3 runs):
    what a cached file's probe_flops is checked against when it is read."""
    return _product_rate(*QUICK_PROBE, torch.float32, torch.device(device), 3)


def _scan_step(q: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """One chunk of the torch engine's scan (see engine.torch_scan.scan_cells), with groups = 16."""
    nq, chunk = out.shape
    torch.mm(q, x.T, out=out)
    chunk_best = torch.amax(out.view(nq, 16, chunk // 16), dim=1)
    best = chunk_best.roll(1, dims=1)
    better = chunk_best > best
    torch.maximum(best, chunk_best, out=best)
    torch.zeros_like(better, dtype=torch.int32).masked_fill_(better, 1)


def _packed_queries(dtype: torch.dtype, chunk: int, dev: torch.device, repeat: int) -> int:
    """The packed_queries ceiling of dtype (module docstring)."""
    if dev.type != "cpu" or not packed.supported(dtype):
        return 0
    count = max(1, PACKED_BYTES // (chunk * PROBE_DIM * dtype.itemsize))
    x = torch.randn(count * chunk, PROBE_DIM).to(dtype)
    chunks = [x[c * chunk : (c + 1) * chunk] for c in range(count)]
    packs = [packed.pack(rows) for rows in chunks]
    best = 0
    for m in PACKED_QUERIES:
        q = torch.randn(m, PROBE_DIM).to(dtype)
        out = torch.empty(m, chunk, dtype=dtype)
        plain = _best_time(lambda q=q, out=out: [torch.mm(q, rows.T, out=out) for rows in chunks], dev, repeat)
        fast = _best_time(lambda q=q: [packed.product(q, p) for p in packs], dev, repeat)
        if fast > PACKED_GAIN * plain:
            break
        best = m
    return best


def measure(device="cpu", *, repeat: int = 5) -> Ceilings:
    """Measure the ceilings of `device` now (about two seconds on a CPU). Does not touch the cache."""
    dev = torch.device(device)
    flops, peaks, chunks, compares, packs = {}, {}, {}, {}, {}
    for name in DTYPES:
        dtype = scan_dtype(name)
        q = torch.randn(PROBE_QUERIES, PROBE_DIM, device=dev).to(dtype)
        rates, steps = {}, {}
        for chunk in CHUNK_WIDTHS:
            x = torch.randn(chunk, PROBE_DIM, device=dev).to(dtype)
            out = torch.empty(PROBE_QUERIES, chunk, dtype=dtype, device=dev)
            secs = _best_time(lambda q=q, x=x, out=out: torch.mm(q, x.T, out=out), dev, repeat)
            rates[chunk] = 2.0 * PROBE_QUERIES * chunk * PROBE_DIM / secs
            steps[chunk] = chunk / _best_time(lambda q=q, x=x, out=out: _scan_step(q, x, out), dev, repeat)
        flops[name] = max(rates.values())
        side = PEAK_SIZE.get(dev.type, PEAK_SIZE["cpu"])
        peaks[name] = max(flops[name], _product_rate(side, side, side, dtype, dev, 3))
        # the engine's chunk: the narrowest width whose whole scan step (product, strided max,
        # running-state update) runs within CHUNK_TOLERANCE of the best rate per score
        chunks[name] = min(w for w, r in steps.items() if r >= (1 - CHUNK_TOLERANCE) * max(steps.values()))
        scores = torch.randn(PROBE_QUERIES, chunks[name], device=dev).to(dtype)
        winners = torch.empty(PROBE_QUERIES, PROBE_BINS, dtype=dtype, device=dev)
        view = scores.view(PROBE_QUERIES, -1, PROBE_BINS)
        secs = _best_time(lambda view=view, winners=winners: torch.amax(view, dim=1, out=winners), dev, repeat)
        compares[name] = scores.numel() / secs
        packs[name] = _packed_queries(dtype, chunks[name], dev, max(2, repeat // 2))
    quick = probe(dev)
    peaks["fp32"] = max(peaks["fp32"], quick)
    src = torch.empty(BANDWIDTH_BYTES // 4, dtype=torch.float32, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    secs = _best_time(lambda: dst.copy_(src), dev, max(2, repeat // 2))
    read_secs = _best_time(lambda: torch.sum(src), dev, max(2, repeat // 2))
    return Ceilings(
        matmul_flops=flops,
        best_chunk=chunks,
        compare_rate=compares,
        bandwidth=2.0 * BANDWIDTH_BYTES / secs,
        measured_at=datetime.datetime.fromtimestamp(now(), datetime.timezone.utc).isoformat(timespec="seconds"),
        peak_flops=peaks,
        read_bandwidth=BANDWIDTH_BYTES / read_secs,
        cache_bytes=_cache_bytes(dev),
        probe_flops=quick,
        packed_queries=packs,
        **_identity(dev),
    )


def _identity(dev: torch.device) -> dict:
    """The fields that name the machine measured: a cache file for other values is not used."""
    return {"device": _device_name(dev), "cores": os.cpu_count() or 1, "threads": torch.get_num_threads(), "torch_version": torch.__version__}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu:{model}"


def _cache_bytes(dev: torch.device, root: Path = Path("/sys/devices/system/cpu")) -> int:
    """An upper bound of the bytes all on-chip data caches hold: on CUDA the L2, shared memory
    and registers of every SM; on Linux every distinct data or unified cache in sysfs (each L1d
    and L2 once per core group sharing it, each L3 once); else BANDWIDTH_BYTES."""
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        per_sm = getattr(p, "shared_memory_per_multiprocessor", 0) + 4 * getattr(p, "regs_per_multiprocessor", 65536)
        return int(getattr(p, "L2_cache_size", 0) + p.multi_processor_count * per_sm) or BANDWIDTH_BYTES
    caches = {}
    for index in root.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            key = ((index / "level").read_text().strip(), (index / "shared_cpu_list").read_text().strip())
            size = (index / "size").read_text().strip().upper()
            caches[key] = int(size.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        except (OSError, ValueError):
            continue
    return sum(caches.values()) or BANDWIDTH_BYTES


def cache_dir() -> Path:
    if os.environ.get("PEAKKNN_CACHE_DIR"):
        return Path(os.environ["PEAKKNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peakknn"


def cache_path(device="cpu") -> Path:
    dev = torch.device(device)
    ident = "|".join(f"{key}={value}" for key, value in _identity(dev).items())
    return cache_dir() / f"ceilings-{dev.type}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


_MEMO: dict[tuple, Ceilings] = {}
_MEASURING = threading.Lock()  # one measurement at a time: concurrent ones would skew each other


def ceilings(device="cpu", *, refresh: bool = False) -> Ceilings:
    """The device's ceilings: from memory, else from the disk cache while it is fresh (module
    docstring), else measured and cached.

    refresh=True measures again and overwrites the cache. An unreadable or malformed cache file
    is ignored (and replaced); it is parsed as JSON, never executed or unpickled.
    """
    memo_key = (str(torch.device(device)), torch.get_num_threads(), str(cache_dir()))
    if not refresh and memo_key in _MEMO:
        return _MEMO[memo_key]
    with _MEASURING:  # the first searches of many threads: one measures, the others wait for it
        if not refresh and memo_key in _MEMO:
            return _MEMO[memo_key]
        path = cache_path(device)
        found = None if refresh else _read(path)
        why = "asked to" if refresh else "no valid cache file" if found is None else stale(found, device)
        if why:
            LOG.info("measuring the ceilings of %s (%s; cached in %s)", device, why, path)
            found = measure(device)
            _write(path, found)
        _MEMO[memo_key] = found
    return found


def stale(c: Ceilings, device="cpu") -> str | None:
    """Why cached ceilings must be measured again (module docstring), or None. Runs the quick
    probe (`probe`) unless another machine or the age already decides."""
    dev = torch.device(device)
    for key, value in _identity(dev).items():
        if getattr(c, key) != value:
            return f"measured with {key} {getattr(c, key)!r}, now {value!r}"
    try:
        measured = datetime.datetime.fromisoformat(c.measured_at)
    except ValueError:
        measured = None
    if measured is None or measured.tzinfo is None:
        return f"measured at {c.measured_at!r}, not an ISO 8601 time with its UTC offset"
    age = now() - measured.timestamp()
    if not -86400 < age <= MAX_AGE_DAYS * 86400:
        return f"measured {age / 86400:.1f} days ago (at most {MAX_AGE_DAYS})"
    rate = probe(dev)
    if rate > PROBE_FACTOR * c.probe_flops:
        return f"the quick probe now runs {rate / c.probe_flops:.2f}x faster than when measured (busy then)"
    if rate * PROBE_FACTOR < c.probe_flops:
        LOG.info("the quick probe runs %.2fx slower than when the ceilings were measured: busy now, cache kept", c.probe_flops / rate)
    return None


def _read(path: Path) -> Ceilings | None:
    """The file's ceilings, or None where it is unreadable, of another format or implausible."""
    try:
        payload = json.loads(path.read_text())
        if payload.pop("format") != FORMAT:
            return None
        found = Ceilings(**payload)
        per_dtype = (found.matmul_flops, found.peak_flops, found.best_chunk, found.compare_rate, found.packed_queries)
        rates = [*found.matmul_flops.values(), *found.peak_flops.values(), *found.compare_rate.values(), found.bandwidth, found.read_bandwidth, found.probe_flops]
        if not all(set(values) == set(DTYPES) for values in per_dtype) or not set(found.best_chunk.values()) <= set(CHUNK_WIDTHS):
            return None
        if not all(isinstance(r, (int, float)) and r > 0 for r in rates) or not isinstance(found.cache_bytes, int) or found.cache_bytes <= 0:
            return None
        if not all(isinstance(m, int) and 0 <= m <= max(PACKED_QUERIES) for m in found.packed_queries.values()):
            return None
        return found if isinstance(found.measured_at, str) else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _write(path: Path, c: Ceilings) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps({"format": FORMAT, **dataclasses.asdict(c)}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home still gets the in-memory ceilings
        LOG.warning("could not cache ceilings at %s: %s", path, exc)


def summary(c: Ceilings) -> str:
    """One line per ceiling, for `peakknn bench` and logs."""
    parts = [f"device {c.device}, {c.threads} threads, measured {c.measured_at or 'at an unknown date'}"]
    for name in DTYPES:
        parts.append(f"{name}: matmul {c.matmul_flops[name] / 1e9:,.0f} GFLOP/s (peak {c.peak(name) / 1e9:,.0f}, chunk {c.best_chunk[name]}), "
                     f"compare {c.compare_rate[name] / 1e9:.1f} G/s, packed rows up to {c.packed(name)} queries")
    parts.append(f"bandwidth {c.bandwidth / 1e9:.1f} GB/s copy, {c.peak_bandwidth / 1e9:.1f} peak; caches {c.cache_bytes / 2**20:,.1f} MiB")
    return "; ".join(parts)
