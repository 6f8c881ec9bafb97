"""Roofline performance model: measured ceilings (what the engine reads) and the predicted
floor of a search (what `peakknn bench` reports against).

    machine.py    `Ceilings`, `measure`, the on-disk cache (`ceilings`, `cache_dir`, `cache_path`)
    roofline.py   `predict` -> `Prediction` (matrix, memory and vector terms; floor; bottleneck)
"""

from .machine import CHUNK_WIDTHS, DTYPES, FORMAT, Ceilings, cache_dir, cache_path, ceilings, measure, summary
from .roofline import Prediction, predict

__all__ = ["CHUNK_WIDTHS", "DTYPES", "FORMAT", "Ceilings", "Prediction", "cache_dir", "cache_path", "ceilings", "measure", "predict", "summary"]
