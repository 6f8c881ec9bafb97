"""The roofline model: exact arithmetic on stated ceilings, the on-disk cache, and agreement
with measured search times on this CPU within a stated factor."""

import json
import math

import pytest
import torch

import peakknn
from peakknn import perfmodel
from peakknn.bench import timed

STATED = perfmodel.Ceilings(
    device="cpu:test",
    matmul_flops={"fp32": 400e9, "bf16": 1600e9},
    best_chunk={"fp32": 4096, "bf16": 8192},
    compare_rate={"fp32": 12e9, "bf16": 8e9},
    bandwidth=25e9,
)


def test_query_block_formula():
    # QB >= 16 * rate * esize / (2 * bandwidth), rounded up to 64, clamped to [64, 4096]
    assert perfmodel.query_block(STATED, "bf16") == math.ceil(16 * 1600e9 * 2 / (2 * 25e9) / 64) * 64 == 1024
    assert perfmodel.query_block(STATED, "fp32") == math.ceil(16 * 400e9 * 4 / (2 * 25e9) / 64) * 64 == 512
    slow_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e9})
    assert perfmodel.query_block(slow_memory, "bf16") == 4096
    fast_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e15})
    assert perfmodel.query_block(fast_memory, "bf16") == 64


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


def test_cache_round_trip_refresh_and_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("PEAKKNN_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(device="cpu", **_):
        calls.append(device)
        return STATED

    monkeypatch.setattr(perfmodel, "measure", fake_measure)
    monkeypatch.setattr(perfmodel, "_MEMO", {})
    assert perfmodel.ceilings("cpu") == STATED and len(calls) == 1
    path = perfmodel.cache_path("cpu")
    assert json.loads(path.read_text())["format"] == perfmodel.FORMAT
    monkeypatch.setattr(perfmodel, "_MEMO", {})
    assert perfmodel.ceilings("cpu") == STATED and len(calls) == 1  # read back from disk
    assert perfmodel.ceilings("cpu", refresh=True) == STATED and len(calls) == 2
    for bad in ("not json", json.dumps({"format": "other"}), json.dumps({"format": perfmodel.FORMAT, "bandwidth": -1})):
        path.write_text(bad)
        monkeypatch.setattr(perfmodel, "_MEMO", {})
        assert perfmodel.ceilings("cpu") == STATED  # ignored and re-measured
    assert len(calls) == 5
    assert json.loads(path.read_text())["bandwidth"] == STATED.bandwidth  # replaced by a good file


def test_measured_ceilings_are_plausible():
    c = perfmodel.ceilings("cpu")
    assert set(c.matmul_flops) == {"fp32", "bf16"}
    assert all(1e8 < r < 1e16 for r in c.matmul_flops.values())
    assert all(w in perfmodel.CHUNK_WIDTHS for w in c.best_chunk.values())
    assert 1e8 < c.bandwidth < 1e13 and all(1e7 < r < 1e13 for r in c.compare_rate.values())


# The floor is a lower bound; the torch engine on a 2-core CPU measured 7-35% of it (bench and
# scaling tables), so measured / predicted must lie in [1 / 1.5, 15]. The ceilings are measured
# right before the search, so a machine loaded by other work slows both alike.
FACTOR_BELOW, FACTOR_ABOVE = 1.5, 15.0


@pytest.mark.slow
@pytest.mark.parametrize("nq,n,precision", [(1000, 100_000, "bf16"), (200, 100_000, "fp32")])
def test_prediction_within_factor_of_measured(nq, n, precision):
    x, q = torch.randn(n, 128), torch.randn(nq, 128)
    index = peakknn.Index(128, dtype=precision)
    index.add(x)
    index.search(q[:8], 10, recall_target=0.95)
    ceilings = perfmodel.measure("cpu")
    _, secs = timed(lambda: index.search(q, 10, recall_target=0.95), 3)
    floor = perfmodel.predict(nq, n, 128, 10, 0.95, precision, ceilings).floor_s
    assert floor / FACTOR_BELOW <= secs <= FACTOR_ABOVE * floor, (secs, floor)
