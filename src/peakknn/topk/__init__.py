"""Top-k: the approximate two-stage partial reduction, its recall formulas, and an exact two-pass top-k."""

from .approx import approx_topk
from .exact import exact_topk_rows
from .recall import bins_for_recall, expected_recall
from .reference import approx_topk_reference

__all__ = ["approx_topk", "approx_topk_reference", "bins_for_recall", "exact_topk_rows", "expected_recall"]
