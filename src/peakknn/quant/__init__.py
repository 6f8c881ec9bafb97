"""Anisotropic vector quantization (ScaNN's score-aware loss) and partitioned search.

    avq.py          eta, the loss, the closed-form centre, anisotropic k-means
    codes.py        int8 scalar codes and 4-bit product quantization (anisotropic training)
    partitioned.py  PartitionedIndex: partitions + codes + exact re-ranking, with updates
"""

from .avq import anisotropic_centre, anisotropic_loss, assignment_loss, avq_kmeans, eta_from_threshold
from .codes import Int8Codes, ProductQuantizer
from .partitioned import PartitionedIndex, PartitionSettings, SearchSettings

__all__ = [
    "Int8Codes",
    "PartitionSettings",
    "PartitionedIndex",
    "ProductQuantizer",
    "SearchSettings",
    "anisotropic_centre",
    "anisotropic_loss",
    "assignment_loss",
    "avq_kmeans",
    "eta_from_threshold",
]
