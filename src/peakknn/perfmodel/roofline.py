"""The roofline: a lower bound of the time of a flat search from measured ceilings, and its
bottleneck.

    from peakknn import perfmodel
    c = perfmodel.ceilings("cpu")                 # measured, cached on disk, re-measured when stale
    p = perfmodel.predict(1000, 1_000_000, 128, 10, 0.99, "bf16", c)
    p.floor_s, p.bottleneck                       # e.g. 0.15 s, "matrix"

For nq queries, n rows of dimension d, scored in dtype (fp32 when recall_target == 1), with the
best rates measured (`Ceilings.peak`, `Ceilings.peak_bandwidth`; docs/ALGORITHMS.md):
    matrix = 2 nq n d / peak_flops[dtype]             (every query times every row, once)
    memory = max(0, n d esize + nq d 4 + nq k 12 + nq m d 4 - cache_bytes) / peak_bandwidth
             (the rows once, the queries, the outputs and m fp32 rows a method re-reads per
             query, 0 unless given; bytes that fit in the on-chip caches may cost nothing)
    floor  = max(matrix, memory); bottleneck = the name of the larger term.
Each term is a time no implementation that computes every product can beat on these ceilings, so
the floor is a lower bound. `vector_s` (one compare per score at the measured strided-max rate)
is the torch engine's compare time, an estimate reported beside the floor and not part of it: a
fused kernel compares in registers, faster than that measured rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .._types import scan_dtype
from .machine import Ceilings, dtype_key


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Seconds of the matrix and memory bounds, the engine's compare estimate, the floor (the
    larger bound) and the bottleneck's name."""

    matrix_s: float
    memory_s: float
    vector_s: float

    @property
    def floor_s(self) -> float:
        return max(self.matrix_s, self.memory_s)

    @property
    def bottleneck(self) -> str:
        return "matrix" if self.matrix_s >= self.memory_s else "memory"

    def percent_of_floor(self, achieved_s: float) -> float:
        """100 * floor / achieved: how close a measured time is to the floor (above 100: the
        ceilings were measured too low, a ceiling miss)."""
        return 100.0 * self.floor_s / achieved_s


def predict(
    nq: int,
    n: int,
    d: int,
    k: int,
    recall_target: float,
    dtype,
    c: Ceilings | Iterable[Ceilings],
    *,
    rescored: int = 0,
) -> Prediction:
    """Roofline terms of a search (module docstring). c: one measurement, or several of the same
    machine (each rate the best of them, the cache the largest). rescored: fp32 rows a method
    re-reads per query, counted in the memory bound (default 0: only what every method moves)."""
    if min(nq, n, d, k) < 1:
        raise ValueError(f"nq, n, d, k must be >= 1, got {(nq, n, d, k)}")
    found = [c] if isinstance(c, Ceilings) else list(c)
    key = "fp32" if recall_target >= 1.0 else dtype_key(dtype)
    traffic = n * d * scan_dtype(key).itemsize + nq * d * 4 + nq * k * 12 + nq * rescored * d * 4
    beyond_cache = max(0, traffic - max(x.cache_bytes for x in found))
    return Prediction(
        matrix_s=2.0 * nq * n * d / max(x.peak(key) for x in found),
        memory_s=beyond_cache / max(x.peak_bandwidth for x in found),
        vector_s=nq * n / max(x.compare(key) for x in found),
    )
