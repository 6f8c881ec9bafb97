"""Anisotropic vector quantization (ScaNN's score-aware loss) and the codecs built on it.

    avq.py     eta, the loss, the closed-form centre, anisotropic k-means
    codes.py   int8 scalar codes, 4-bit product quantization (anisotropic training), projections

The partitioned index that uses them lives in peakknn.partitioned; its names are still
importable from here for one version (with a DeprecationWarning).
"""

from .avq import anisotropic_centre, anisotropic_loss, assignment_loss, avq_kmeans, eta_from_threshold
from .codes import Int8Codes, ProductQuantizer

_MOVED = ("PartitionSettings", "PartitionedIndex", "SearchSettings")

__all__ = [
    "Int8Codes",
    "ProductQuantizer",
    "anisotropic_centre",
    "anisotropic_loss",
    "assignment_loss",
    "avq_kmeans",
    "eta_from_threshold",
]


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"peakknn.quant.{name} is now peakknn.{name} (peakknn.partitioned)", DeprecationWarning, stacklevel=2)
        value = globals()[name] = getattr(importlib.import_module("peakknn.partitioned"), name)  # warn once
        return value
    raise AttributeError(f"module 'peakknn.quant' has no attribute {name!r}")
