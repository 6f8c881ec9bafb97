"""Roofline performance model: measured ceilings (what the engine reads) and the predicted
floor of a search (what `peakknn bench` reports against).

    machine.py    `Ceilings`, `measure`, the on-disk cache (`ceilings`, `cache_dir`, `cache_path`,
                  `stale`, `probe`; MAX_AGE_DAYS, PROBE_FACTOR)
    roofline.py   `predict` -> `Prediction` (matrix and memory bounds, the floor, its bottleneck)
    network.py    the network term of a sharded search: `Link` (measured, or `LINKS` with their
                  sources), `search_traffic` / `kmeans_traffic` -> `Traffic`, `network.predict`
                  -> `NetworkPrediction`, `network.measure` (under torch.distributed)
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
from . import network
from .network import LINKS, Link, NetworkPrediction, Traffic, kmeans_traffic, search_traffic
from .roofline import Prediction, predict

__all__ = [
    "CHUNK_WIDTHS", "DTYPES", "FORMAT", "LINKS", "MAX_AGE_DAYS", "PROBE_FACTOR", "Ceilings", "Link", "NetworkPrediction",
    "Prediction", "Traffic", "cache_dir", "cache_path", "ceilings", "kmeans_traffic", "measure", "network", "predict",
    "probe", "search_traffic", "stale", "summary",
]  # fmt: skip
