"""Measured ceilings (peakknn.perfmodel.machine): the query-pass formula, the on-disk cache and
plausible measurements on this machine."""

import json
import math

from peakknn import perfmodel
from perfmodel_stated import STATED
from peakknn.perfmodel import machine as ceilings_module


def test_query_block_formula():
    # QB >= 16 * rate * esize / (2 * bandwidth), rounded up to 64, clamped to [64, 4096]
    assert STATED.pass_queries("bf16") == math.ceil(16 * 1600e9 * 2 / (2 * 25e9) / 64) * 64 == 1024
    assert STATED.pass_queries("fp32") == math.ceil(16 * 400e9 * 4 / (2 * 25e9) / 64) * 64 == 512
    slow_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e9})
    assert slow_memory.pass_queries("bf16") == 4096
    fast_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e15})
    assert fast_memory.pass_queries("bf16") == 64


def test_cache_round_trip_refresh_and_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("PEAKKNN_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(device="cpu", **_):
        calls.append(device)
        return STATED

    monkeypatch.setattr(ceilings_module, "measure", fake_measure)
    monkeypatch.setattr(ceilings_module, "_MEMO", {})
    assert perfmodel.ceilings("cpu") == STATED and len(calls) == 1
    path = perfmodel.cache_path("cpu")
    assert json.loads(path.read_text())["format"] == perfmodel.FORMAT
    monkeypatch.setattr(ceilings_module, "_MEMO", {})
    assert perfmodel.ceilings("cpu") == STATED and len(calls) == 1  # read back from disk
    assert perfmodel.ceilings("cpu", refresh=True) == STATED and len(calls) == 2
    for bad in ("not json", json.dumps({"format": "other"}), json.dumps({"format": perfmodel.FORMAT, "bandwidth": -1})):
        path.write_text(bad)
        monkeypatch.setattr(ceilings_module, "_MEMO", {})
        assert perfmodel.ceilings("cpu") == STATED  # ignored and re-measured
    assert len(calls) == 5
    assert json.loads(path.read_text())["bandwidth"] == STATED.bandwidth  # replaced by a good file


def test_measured_ceilings_are_plausible():
    c = perfmodel.ceilings("cpu")
    assert set(c.matmul_flops) == {"fp32", "bf16"}
    assert all(1e8 < r < 1e16 for r in c.matmul_flops.values())
    assert all(w in perfmodel.CHUNK_WIDTHS for w in c.best_chunk.values())
    assert 1e8 < c.bandwidth < 1e13 and all(1e7 < r < 1e13 for r in c.compare_rate.values())


def test_the_public_names_are_the_submodules():
    """Patching the submodule (as the cache test does) reaches what peakknn.perfmodel exports."""
    assert perfmodel.ceilings is ceilings_module.ceilings and perfmodel.measure is ceilings_module.measure
    assert perfmodel.Ceilings is ceilings_module.Ceilings and perfmodel.FORMAT == ceilings_module.FORMAT
