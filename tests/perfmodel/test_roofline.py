"""The roofline model (peakknn.perfmodel.roofline): exact arithmetic on stated ceilings, and
agreement with measured search times on this CPU within a stated factor."""

import math

import pytest
import torch

import peakknn
from peakknn import perfmodel
from perfmodel_stated import STATED
from peakknn.evaluation import timed


def test_predict_terms_exactly():
    nq, n, d, k = 1000, 1_000_000, 128, 10
    p = perfmodel.predict(nq, n, d, k, 0.95, "bf16", STATED)
    assert p.matrix_s == pytest.approx(2 * nq * n * d / 1600e9, rel=1e-12)
    blocks = math.ceil(nq / 1024)
    traffic = blocks * n * d * 2 + nq * d * 4 + nq * k * 12 + nq * (2 * k) * d * 4
    assert p.memory_s == pytest.approx(traffic / 25e9, rel=1e-12)
    assert p.vector_s == pytest.approx(nq * n / 8e9, rel=1e-12)
    assert p.floor_s == max(p.matrix_s, p.memory_s, p.vector_s) == p.matrix_s
    assert p.bottleneck == "matrix"
    assert p.percent_of_floor(2 * p.floor_s) == pytest.approx(50.0)


def test_predict_exact_uses_fp32_and_names_other_bottlenecks():
    p = perfmodel.predict(1000, 1_000_000, 128, 10, 1.0, "bf16", STATED)
    assert p.matrix_s == pytest.approx(2 * 1000 * 1_000_000 * 128 / 400e9)
    assert p.memory_s == pytest.approx((2 * 1_000_000 * 128 * 4 + 1000 * 128 * 4 + 1000 * 10 * 12) / 25e9)
    one_query = perfmodel.predict(1, 1_000_000, 128, 10, 0.95, "bf16", STATED)
    assert one_query.bottleneck == "memory"  # one query: the database read dominates
    tiny_d = perfmodel.predict(1000, 1_000_000, 1, 10, 0.95, "bf16", STATED)
    assert tiny_d.bottleneck == "vector"  # d = 1: one compare per score costs more than 2 FLOPs
    with pytest.raises(ValueError, match="nq, n, d, k"):
        perfmodel.predict(0, 10, 10, 1, 0.9, "bf16", STATED)


def test_rescored_rows_count_in_memory_only():
    base = perfmodel.predict(100, 50_000, 64, 10, 0.9, "fp32", STATED)
    more = perfmodel.predict(100, 50_000, 64, 10, 0.9, "fp32", STATED, rescored=50)
    assert more.matrix_s == base.matrix_s and more.vector_s == base.vector_s
    assert more.memory_s - base.memory_s == pytest.approx(100 * (50 - 10) * 64 * 4 / 25e9, rel=1e-9)  # default: k for fp32


# The floor is a lower bound; the torch engine on a 2-core CPU measured 7-35% of it (bench and
# scaling tables), so measured / predicted must lie in [1 / 1.5, 15]. The ceilings are measured
# right before the search, so a machine loaded by other work slows both alike.
FACTOR_BELOW, FACTOR_ABOVE = 1.5, 15.0


@pytest.mark.slow
@pytest.mark.parametrize("nq,n,precision", [(1000, 100_000, "bf16"), (200, 100_000, "fp32")])
def test_prediction_within_factor_of_measured(nq, n, precision):
    x, q = torch.randn(n, 128), torch.randn(nq, 128)
    index = peakknn.Index(128, precision=precision)
    index.add(x)
    index.search(q[:8], 10, recall_target=0.95)
    ceilings = perfmodel.measure("cpu")
    _, secs = timed(lambda: index.search(q, 10, recall_target=0.95), 3)
    floor = perfmodel.predict(nq, n, 128, 10, 0.95, precision, ceilings).floor_s
    assert floor / FACTOR_BELOW <= secs <= FACTOR_ABOVE * floor, (secs, floor)
