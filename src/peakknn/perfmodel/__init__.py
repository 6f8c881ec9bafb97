"""Roofline performance model: measured ceilings (what the engine reads) and the predicted
floor of a search (what `peakknn bench` reports against).

    machine.py    `Ceilings`, `measure`, the on-disk cache (`ceilings`, `cache_dir`, `cache_path`,
                  `stale`, `probe`; MAX_AGE_DAYS, PROBE_FACTOR)
    roofline.py   `predict` -> `Prediction` (matrix and memory bounds, the floor, its bottleneck)
"""

from .machine import (
    CHUNK_WIDTHS,
    DTYPES,
    FORMAT,
    MAX_AGE_DAYS,
    PROBE_FACTOR,
    Ceilings,
    cache_dir,
    cache_path,
    ceilings,
    measure,
    probe,
    stale,
    summary,
)
from .roofline import Prediction, predict

__all__ = ["CHUNK_WIDTHS", "DTYPES", "FORMAT", "MAX_AGE_DAYS", "PROBE_FACTOR", "Ceilings", "Prediction", "cache_dir", "cache_path", "ceilings", "measure", "predict", "probe", "stale", "summary"]
