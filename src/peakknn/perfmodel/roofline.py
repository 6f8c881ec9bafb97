"""The roofline: predicted time of a flat search from measured ceilings, and its bottleneck.

    from peakknn import perfmodel
    c = perfmodel.ceilings("cpu")                 # measured once, cached on disk, then reused
    p = perfmodel.predict(1000, 1_000_000, 128, 10, 0.99, "bf16", c)
    p.floor_s, p.bottleneck                       # e.g. 0.17 s, "matrix"

For nq queries, n rows of dimension d, scanned in dtype with passes of QB queries
(`Ceilings.pass_queries`), docs/ALGORITHMS.md:
    matrix = 2 nq n d / matmul_flops[dtype]
    memory = (ceil(nq / QB) n d esize + nq d 4 + nq k 12 + nq m d 4) / bandwidth
             (the database once per pass, the queries, the outputs and the m fp32 rows
             re-scored per query: by default the re-ranking depth, 2k for bf16 / k for fp32;
             the torch engine re-reads `groups` rows per candidate, which a caller can pass as
             `rescored`)
    vector = nq n / compare_rate[dtype]                   (one compare per score)
    floor  = max(matrix, memory, vector); bottleneck = the name of the largest term.
The floor is a lower bound of the time of any implementation on the measured ceilings; the
engine's achieved fraction of it is what `peakknn bench` reports.
"""

from __future__ import annotations

import dataclasses
import math

from .._types import default_rerank, scan_dtype
from .machine import Ceilings, dtype_key


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted seconds of each roofline term, the floor (their max) and the bottleneck's name."""

    matrix_s: float
    memory_s: float
    vector_s: float

    @property
    def floor_s(self) -> float:
        return max(self.matrix_s, self.memory_s, self.vector_s)

    @property
    def bottleneck(self) -> str:
        terms = {"matrix": self.matrix_s, "memory": self.memory_s, "vector": self.vector_s}
        return max(terms, key=terms.get)

    def percent_of_floor(self, achieved_s: float) -> float:
        """100 * floor / achieved: how close a measured time is to the floor."""
        return 100.0 * self.floor_s / achieved_s


def predict(
    nq: int,
    n: int,
    d: int,
    k: int,
    recall_target: float,
    dtype,
    c: Ceilings,
    *,
    rescored: int | None = None,
) -> Prediction:
    """Roofline terms of a search (module docstring). rescored: rows re-scored per query
    (default 2k for bf16, k for fp32, 0 when recall_target == 1, which scans exactly in fp32)."""
    if min(nq, n, d, k) < 1:
        raise ValueError(f"nq, n, d, k must be >= 1, got {(nq, n, d, k)}")
    key = "fp32" if recall_target >= 1.0 else dtype_key(dtype)
    esize = scan_dtype(key).itemsize
    if rescored is None:
        rescored = 0 if recall_target >= 1.0 else default_rerank(k, scan_dtype(key))
    blocks = math.ceil(nq / c.pass_queries(key))
    matrix = 2.0 * nq * n * d / c.matmul(key)
    traffic = blocks * n * d * esize + nq * d * 4 + nq * k * 12 + nq * rescored * d * 4
    return Prediction(matrix_s=matrix, memory_s=traffic / c.bandwidth, vector_s=nq * n / c.compare(key))
