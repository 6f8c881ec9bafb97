"""Measured ceilings of a device: what the engine reads (chunk width, query pass) and what the
roofline (peakknn.perfmodel.roofline) predicts from.

`Ceilings`, measured by `measure`, per device and scan dtype:
- matmul_flops[dtype]: FLOP/s of the engine's inner matrix product (queries [512, 128] x a
  database chunk [C, 128]^T into a reused output), the best over chunk widths C in CHUNK_WIDTHS;
- best_chunk[dtype]: the engine's chunk width: the narrowest C whose whole scan step (product,
  strided max over 16 groups, running-state update) is within CHUNK_TOLERANCE of the best rate
  per score (wider chunks also mean more bins, which the probe does not see);
- compare_rate[dtype]: elements/s of the partial reduction (a strided max over [QB, g, L]);
- bandwidth: bytes/s of a large copy (read + write counted).

Cache: $PEAKKNN_CACHE_DIR, else $XDG_CACHE_HOME/peakknn, else ~/.cache/peakknn; one JSON file
per device, thread count and torch version. `ceilings(refresh=True)` re-measures.
"""

from __future__ import annotations

import dataclasses
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
from ..evaluation import timed

LOG = logging.getLogger(__name__)

FORMAT = "peakknn.ceilings/1"
DTYPES = ("fp32", "bf16")
CHUNK_WIDTHS = (2048, 4096, 8192, 16384)  # candidate scores per query per chunk
CHUNK_TOLERANCE = 0.10
PROBE_QUERIES = 512  # query rows of the matmul probe
PROBE_DIM = 128
PROBE_BINS = 512
# Query passes are made long enough that reading X once per pass costs <= 1/MEMORY_RATIO of the
# pass's matmul; 16 because the GEMM also packs X per pass, which is slower than a copy.
MEMORY_RATIO = 16
MIN_PASS_QUERIES, MAX_PASS_QUERIES = 64, 4096


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

    def matmul(self, dtype) -> float:
        return self.matmul_flops[dtype_key(dtype)]

    def compare(self, dtype) -> float:
        return self.compare_rate[dtype_key(dtype)]

    def pass_queries(self, dtype) -> int:
        """Queries per pass over the database so that reading it once per pass costs <=
        1/MEMORY_RATIO of the pass's matrix product: QB >= MEMORY_RATIO * matmul_flops * esize /
        (2 * bandwidth), rounded up to a multiple of 64 and clamped to [64, 4096] (d cancels)."""
        esize = scan_dtype(dtype).itemsize
        qb = MEMORY_RATIO * self.matmul(dtype) * esize / (2.0 * self.bandwidth)
        return int(min(MAX_PASS_QUERIES, max(MIN_PASS_QUERIES, math.ceil(qb / 64) * 64)))


def _best_time(fn, device: torch.device, repeat: int) -> float:
    """Fastest of `repeat` calls after one warm-up (ceilings are best cases)."""
    return timed(fn, repeat, warmup=1, reduce=min, device=device)[1]


def _scan_step(q: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """One chunk of the torch engine's scan (see engine.torch_scan.scan_cells), with groups = 16."""
    nq, chunk = out.shape
    torch.mm(q, x.T, out=out)
    chunk_best = torch.amax(out.view(nq, 16, chunk // 16), dim=1)
    best = chunk_best.roll(1, dims=1)
    better = chunk_best > best
    torch.maximum(best, chunk_best, out=best)
    torch.zeros_like(better, dtype=torch.int32).masked_fill_(better, 1)


def measure(device="cpu", *, repeat: int = 5) -> Ceilings:
    """Measure the ceilings of `device` now (about a second on a CPU). Does not touch the cache."""
    dev = torch.device(device)
    flops, chunks, compares = {}, {}, {}
    for name in DTYPES:
        dtype = scan_dtype(name)
        q = torch.randn(PROBE_QUERIES, PROBE_DIM, device=dev).to(dtype)
        rates, steps = {}, {}
        for chunk in CHUNK_WIDTHS:
            x = torch.randn(chunk, PROBE_DIM, device=dev).to(dtype)
            out = torch.empty(PROBE_QUERIES, chunk, dtype=dtype, device=dev)
            secs = _best_time(lambda: torch.mm(q, x.T, out=out), dev, repeat)
            rates[chunk] = 2.0 * PROBE_QUERIES * chunk * PROBE_DIM / secs
            steps[chunk] = chunk / _best_time(lambda: _scan_step(q, x, out), dev, repeat)
        flops[name] = max(rates.values())
        # the engine's chunk: the narrowest width whose whole scan step (product, strided max,
        # running-state update) runs within CHUNK_TOLERANCE of the best rate per score
        chunks[name] = min(w for w, r in steps.items() if r >= (1 - CHUNK_TOLERANCE) * max(steps.values()))
        scores = torch.randn(PROBE_QUERIES, chunks[name], device=dev).to(dtype)
        winners = torch.empty(PROBE_QUERIES, PROBE_BINS, dtype=dtype, device=dev)
        view = scores.view(PROBE_QUERIES, -1, PROBE_BINS)
        secs = _best_time(lambda: torch.amax(view, dim=1, out=winners), dev, repeat)
        compares[name] = scores.numel() / secs
    src = torch.empty(1 << 26, dtype=torch.float32, device=dev).fill_(1.0)  # 256 MiB
    dst = torch.empty_like(src)
    secs = _best_time(lambda: dst.copy_(src), dev, max(2, repeat // 2))
    bandwidth = 2.0 * src.numel() * 4 / secs
    return Ceilings(
        device=_device_name(dev),
        matmul_flops=flops,
        best_chunk=chunks,
        compare_rate=compares,
        bandwidth=bandwidth,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


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


def cache_dir() -> Path:
    if os.environ.get("PEAKKNN_CACHE_DIR"):
        return Path(os.environ["PEAKKNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peakknn"


def cache_path(device="cpu") -> Path:
    dev = torch.device(device)
    ident = f"{_device_name(dev)}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    return cache_dir() / f"ceilings-{dev.type}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


_MEMO: dict[tuple, Ceilings] = {}
_MEASURING = threading.Lock()  # one measurement at a time: concurrent ones would skew each other


def ceilings(device="cpu", *, refresh: bool = False) -> Ceilings:
    """The device's ceilings: from memory, else from the disk cache, else measured and cached.

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
        if found is None:
            LOG.info("measuring the ceilings of %s (cached in %s)", device, path)
            found = measure(device)
            _write(path, found)
        _MEMO[memo_key] = found
    return found


def _read(path: Path) -> Ceilings | None:
    try:
        payload = json.loads(path.read_text())
        if payload.pop("format") != FORMAT:
            return None
        found = Ceilings(**payload)
        rates = [*found.matmul_flops.values(), *found.compare_rate.values(), found.bandwidth]
        if set(found.matmul_flops) != set(DTYPES) or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
            return None
        return found
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
    parts = [f"device {c.device}, {c.threads} threads"]
    for name in DTYPES:
        parts.append(f"{name}: matmul {c.matmul_flops[name] / 1e9:,.0f} GFLOP/s (chunk {c.best_chunk[name]}), compare {c.compare_rate[name] / 1e9:.1f} G/s")
    parts.append(f"bandwidth {c.bandwidth / 1e9:.1f} GB/s")
    return "; ".join(parts)
