"""Approximate top-k: the two-stage partial reduction and its recall formulas."""

from .approx import approx_topk
from .recall import bins_for_recall, expected_recall
from .reference import approx_topk_reference

__all__ = ["approx_topk", "approx_topk_reference", "bins_for_recall", "expected_recall"]
