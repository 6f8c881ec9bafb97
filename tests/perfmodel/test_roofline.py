"""The roofline model (peakknn.perfmodel.roofline): exact arithmetic on stated ceilings, a floor
that is a lower bound, and agreement with measured search times on this CPU within a factor."""

import dataclasses

import pytest
import torch
from perfmodel_stated import STATED

import peakknn
from peakknn import perfmodel
from peakknn.evaluation import timed


def test_predict_terms_exactly():
    nq, n, d, k = 1000, 1_000_000, 128, 10
    p = perfmodel.predict(nq, n, d, k, 0.95, "bf16", STATED)
    assert p.matrix_s == pytest.approx(2 * nq * n * d / 2000e9, rel=1e-12)  # the peak, not the chunk probe
    traffic = n * d * 2 + nq * d * 4 + nq * k * 12  # the rows once, queries, outputs
    assert p.memory_s == pytest.approx((traffic - (32 << 20)) / 40e9, rel=1e-12)  # beyond the caches, at the best bandwidth
    assert p.vector_s == pytest.approx(nq * n / 8e9, rel=1e-12)
    assert p.floor_s == max(p.matrix_s, p.memory_s) == p.matrix_s
    assert p.bottleneck == "matrix"
    assert p.percent_of_floor(2 * p.floor_s) == pytest.approx(50.0)


def test_predict_exact_uses_fp32_and_names_the_memory_bottleneck():
    p = perfmodel.predict(1000, 1_000_000, 128, 10, 1.0, "bf16", STATED)
    assert p.matrix_s == pytest.approx(2 * 1000 * 1_000_000 * 128 / 500e9)
    assert p.memory_s == pytest.approx((1_000_000 * 128 * 4 + 1000 * 128 * 4 + 1000 * 10 * 12 - (32 << 20)) / 40e9)
    one_query = perfmodel.predict(1, 1_000_000, 128, 10, 0.95, "bf16", STATED)
    assert one_query.bottleneck == "memory"  # one query: the database read dominates
    with pytest.raises(ValueError, match="nq, n, d, k"):
        perfmodel.predict(0, 10, 10, 1, 0.9, "bf16", STATED)


def test_floor_counts_only_what_every_method_must_do():
    """The old model was no bound: it read the database once per engine pass, counted re-scored
    rows, charged the measured (unfused) compare rate and ignored the caches."""
    many = perfmodel.predict(100_000, 1_000_000, 128, 10, 0.95, "bf16", STATED)  # ~100 engine passes
    assert many.memory_s == pytest.approx((1_000_000 * 128 * 2 + 100_000 * (128 * 4 + 120) - (32 << 20)) / 40e9)
    tiny_d = perfmodel.predict(1000, 1_000_000, 1, 10, 0.95, "bf16", STATED)
    assert tiny_d.vector_s > tiny_d.floor_s and tiny_d.bottleneck in ("matrix", "memory")
    in_cache = perfmodel.predict(1, 100_000, 64, 10, 0.95, "fp32", STATED)  # 25.6 MB < 32 MiB of caches
    assert in_cache.memory_s == 0.0 and in_cache.floor_s == in_cache.matrix_s
    more = perfmodel.predict(1, 1_000_000, 64, 10, 0.9, "fp32", STATED, rescored=50)
    base = perfmodel.predict(1, 1_000_000, 64, 10, 0.9, "fp32", STATED)
    assert more.matrix_s == base.matrix_s and more.memory_s - base.memory_s == pytest.approx(50 * 64 * 4 / 40e9)


def test_several_measurements_give_the_best_rate_of_each_term():
    slow = dataclasses.replace(STATED, peak_flops={"fp32": 100e9, "bf16": 300e9}, read_bandwidth=50e9, cache_bytes=1 << 20)
    both = perfmodel.predict(10, 1_000_000, 128, 10, 0.95, "bf16", [slow, STATED])
    assert both.matrix_s == pytest.approx(2 * 10 * 1_000_000 * 128 / 2000e9)  # STATED's peak
    assert both.memory_s == pytest.approx((1_000_000 * 256 + 10 * (512 + 120) - (32 << 20)) / 50e9)  # slow's bandwidth
    assert both == perfmodel.predict(10, 1_000_000, 128, 10, 0.95, "bf16", (c for c in [STATED, slow]))


def test_peak_is_at_least_the_chunk_probe():
    old_style = dataclasses.replace(STATED, peak_flops={}, read_bandwidth=0.0)  # fields measure() did not fill before
    assert old_style.peak("bf16") == 1600e9 and old_style.peak_bandwidth == 25e9
    assert STATED.peak("bf16") == 2000e9 and STATED.peak_bandwidth == 40e9


# The floor is a lower bound (measured >= floor); the torch engine on a 2-core CPU measured 7-35%
# of the old, higher floor (bench and scaling tables), so measured / floor must lie in [1, 25].
# The ceilings are measured right before the search, so a machine loaded by other work slows both.
FACTOR_ABOVE = 25.0


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
    assert floor <= secs <= FACTOR_ABOVE * floor, (secs, floor)
