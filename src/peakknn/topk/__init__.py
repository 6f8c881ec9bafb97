"""Top-k: the approximate two-stage partial reduction, its recall formulas, the cost model that
picks per_bin, and an exact two-pass top-k."""

from .approx import approx_topk
from .exact import exact_topk_rows
from .plan import TopkPlan, plan_topk
from .recall import bins_for_recall, expected_recall
from .reference import approx_topk_reference

__all__ = ["TopkPlan", "approx_topk", "approx_topk_reference", "bins_for_recall", "exact_topk_rows", "expected_recall", "plan_topk"]
