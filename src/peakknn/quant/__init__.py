"""Anisotropic vector quantization (ScaNN's score-aware loss): training pieces.

Status: the loss, eta, the closed-form centre and anisotropic k-means are here and tested; the
compressed codes and the partitioned index built on them are not written yet (issue #5).
"""

from .avq import anisotropic_centre, anisotropic_loss, assignment_loss, avq_kmeans, eta_from_threshold

__all__ = ["anisotropic_centre", "anisotropic_loss", "assignment_loss", "avq_kmeans", "eta_from_threshold"]
