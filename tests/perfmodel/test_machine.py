"""Measured ceilings (peakknn.perfmodel.machine): the query-pass formula, the on-disk cache and
when it is measured again (clock, probe and measurement replaced: no real timing), and plausible
measurements on this machine."""

import dataclasses
import datetime
import json
import logging
import math
import os

import pytest
import torch
from perfmodel_stated import STATED

from peakknn import perfmodel
from peakknn.perfmodel import machine as ceilings_module

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc).timestamp()
DAY = 86400.0


def test_query_block_formula():
    # QB >= 16 * rate * esize / (2 * bandwidth), rounded up to 64, clamped to [64, 4096]
    assert STATED.pass_queries("bf16") == math.ceil(16 * 1600e9 * 2 / (2 * 25e9) / 64) * 64 == 1024
    assert STATED.pass_queries("fp32") == math.ceil(16 * 400e9 * 4 / (2 * 25e9) / 64) * 64 == 512
    slow_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e9})
    assert slow_memory.pass_queries("bf16") == 4096
    fast_memory = perfmodel.Ceilings(**{**STATED.__dict__, "bandwidth": 1e15})
    assert fast_memory.pass_queries("bf16") == 64


def here(at: float = NOW, **changes) -> perfmodel.Ceilings:
    """STATED as if measured on this machine at `at` (quick probe: 100 GFLOP/s)."""
    iso = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds")
    return dataclasses.replace(STATED, **ceilings_module._identity(torch.device("cpu")), measured_at=iso, **changes)


class Measured(list):
    """The measurements made (each a `here()` at the clock's time `now`, bandwidth 1 + count)."""

    now = NOW


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Measured:
    """A fresh cache directory, the clock at NOW and the quick probe at the cached 100 GFLOP/s."""
    monkeypatch.setenv("PEAKKNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings_module, "_MEMO", {})
    made = Measured()
    monkeypatch.setattr(ceilings_module, "now", lambda: made.now)
    monkeypatch.setattr(ceilings_module, "probe", lambda device="cpu": 100e9)
    monkeypatch.setattr(ceilings_module, "measure", lambda device="cpu", **_: made.append(here(made.now, bandwidth=1.0 + len(made))) or made[-1])
    return made


def reload(monkeypatch) -> perfmodel.Ceilings:
    """ceilings("cpu") in a new process: nothing in memory, the disk cache read."""
    monkeypatch.setattr(ceilings_module, "_MEMO", {})
    return perfmodel.ceilings("cpu")


def test_cache_round_trip_refresh_and_corruption(cache, monkeypatch):
    assert perfmodel.ceilings("cpu") == cache[0] and len(cache) == 1
    path = perfmodel.cache_path("cpu")
    assert json.loads(path.read_text())["format"] == perfmodel.FORMAT == "peakknn.ceilings/3"
    assert reload(monkeypatch) == cache[0] and len(cache) == 1  # read back from disk
    assert perfmodel.ceilings("cpu", refresh=True) == cache[1] and len(cache) == 2
    for bad in ("not json", json.dumps({"format": "other"}), json.dumps({"format": perfmodel.FORMAT, "bandwidth": -1})):
        path.write_text(bad)
        assert reload(monkeypatch) == cache[-1]  # ignored and re-measured
    assert len(cache) == 5
    assert json.loads(path.read_text())["bandwidth"] == cache[-1].bandwidth  # replaced by a good file


def test_a_file_with_odd_packed_ceilings_is_measured_again(cache, monkeypatch):
    perfmodel.ceilings("cpu")
    saved = json.loads(perfmodel.cache_path("cpu").read_text())
    assert saved["packed_queries"] == STATED.packed_queries
    for odd in ({"fp32": -1, "bf16": 64}, {"fp32": 64}, {"fp32": 1.5, "bf16": 64}, {"fp32": 10**6, "bf16": 64}):
        perfmodel.cache_path("cpu").write_text(json.dumps({**saved, "packed_queries": odd}))
        before = len(cache)
        assert reload(monkeypatch) == cache[-1] and len(cache) == before + 1, odd


def test_the_file_names_the_machine_torch_and_date(cache, monkeypatch):
    perfmodel.ceilings("cpu")
    saved = json.loads(perfmodel.cache_path("cpu").read_text())
    assert saved["device"].startswith("cpu:") and saved["cores"] == os.cpu_count()
    assert saved["threads"] == torch.get_num_threads() and saved["torch_version"] == torch.__version__
    assert datetime.datetime.fromisoformat(saved["measured_at"]).timestamp() == NOW
    for key, other in (("device", "cpu:another"), ("cores", 999), ("threads", 999), ("torch_version", "0.0")):
        perfmodel.cache_path("cpu").write_text(json.dumps({**saved, key: other}))  # a copied file
        before = len(cache)
        assert reload(monkeypatch) == cache[-1] and len(cache) == before + 1, key


def test_an_old_file_is_measured_again(cache, monkeypatch):
    perfmodel.ceilings("cpu")
    cache.now = NOW + (perfmodel.MAX_AGE_DAYS - 1) * DAY
    assert reload(monkeypatch) == cache[0] and len(cache) == 1
    cache.now = NOW + (perfmodel.MAX_AGE_DAYS + 1) * DAY
    assert reload(monkeypatch) == cache[1] and len(cache) == 2  # older than MAX_AGE_DAYS
    cache.now -= 10 * DAY  # the clock went back: a file dated in the future
    assert reload(monkeypatch) == cache[2] and len(cache) == 3
    assert perfmodel.MAX_AGE_DAYS == 30 and "MAX_AGE_DAYS" in ceilings_module.__doc__


def test_a_much_faster_probe_measures_again_a_slower_one_keeps_the_file(cache, monkeypatch, caplog):
    perfmodel.ceilings("cpu")  # measured with a 100 GFLOP/s probe
    for rate in (100e9 * perfmodel.PROBE_FACTOR, 100e9 / perfmodel.PROBE_FACTOR, 1e9):  # within the factor, or busy now
        monkeypatch.setattr(ceilings_module, "probe", lambda device="cpu", r=rate: r)
        with caplog.at_level(logging.INFO, logger=ceilings_module.__name__):
            assert reload(monkeypatch) == cache[0] and len(cache) == 1, rate
    assert "busy now, cache kept" in caplog.text
    monkeypatch.setattr(ceilings_module, "probe", lambda device="cpu": 140e9)  # the issue: cached 135, fresh 187 GFLOP/s
    assert reload(monkeypatch) == cache[1] and len(cache) == 2
    assert perfmodel.PROBE_FACTOR < 187 / 135


def test_a_file_of_the_old_format_is_stale_not_a_crash(cache, monkeypatch):
    old = {  # as peakknn 0.1 wrote it: format 1, local time, no cores, peaks or probe
        "format": "peakknn.ceilings/1", "device": here().device, "matmul_flops": {"fp32": 135e9, "bf16": 400e9},
        "best_chunk": {"fp32": 2048, "bf16": 2048}, "compare_rate": {"fp32": 1e10, "bf16": 8e9},
        "bandwidth": 3e10, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "measured_at": "2030-06-01T09:23:29",
    }  # fmt: skip
    path = perfmodel.cache_path("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    for payload in (old, {**old, "format": perfmodel.FORMAT}):  # also: the new format name on old fields
        path.write_text(json.dumps(payload))
        assert reload(monkeypatch) == cache[-1]
    assert len(cache) == 2 and json.loads(path.read_text())["format"] == perfmodel.FORMAT
    naive = {**json.loads(path.read_text()), "measured_at": "2030-06-01T00:00:00"}  # no time zone
    path.write_text(json.dumps(naive))
    assert reload(monkeypatch) == cache[2]


def test_cache_bytes_counts_each_shared_data_cache_once(tmp_path):
    layout = {0: [("Data", 1, "32K", "0"), ("Instruction", 1, "32K", "0"), ("Unified", 2, "1024K", "0"), ("Unified", 3, "32M", "0-1")],
              1: [("Data", 1, "32K", "1"), ("Instruction", 1, "32K", "1"), ("Unified", 2, "1024K", "1"), ("Unified", 3, "32M", "0-1")]}  # fmt: skip
    for cpu, caches in layout.items():
        for i, (kind, level, size, shared) in enumerate(caches):
            d = tmp_path / f"cpu{cpu}" / "cache" / f"index{i}"
            d.mkdir(parents=True)
            for name, value in (("type", kind), ("level", level), ("size", size), ("shared_cpu_list", shared)):
                (d / name).write_text(f"{value}\n")
    got = ceilings_module._cache_bytes(torch.device("cpu"), tmp_path)
    assert got == 2 * (32 << 10) + 2 * (1 << 20) + (32 << 20)
    assert ceilings_module._cache_bytes(torch.device("cpu"), tmp_path / "none") == ceilings_module.BANDWIDTH_BYTES


def test_measured_ceilings_are_plausible():
    c = perfmodel.ceilings("cpu")
    assert set(c.matmul_flops) == set(c.peak_flops) == {"fp32", "bf16"}
    assert all(1e8 < r < 1e16 for r in c.matmul_flops.values())
    assert all(c.peak(name) >= c.matmul_flops[name] for name in c.matmul_flops) and c.peak("fp32") >= c.probe_flops > 0
    assert all(w in perfmodel.CHUNK_WIDTHS for w in c.best_chunk.values())
    assert 1e8 < c.bandwidth < 1e13 and all(1e7 < r < 1e13 for r in c.compare_rate.values())
    assert c.read_bandwidth > 1e8 and c.cache_bytes > 0 and c.cores == os.cpu_count()
    assert perfmodel.stale(c) is None or "probe" in perfmodel.stale(c)  # this machine, just measured


def test_the_public_names_are_the_submodules():
    """Patching the submodule (as the cache test does) reaches what peakknn.perfmodel exports."""
    assert perfmodel.ceilings is ceilings_module.ceilings and perfmodel.measure is ceilings_module.measure
    assert perfmodel.Ceilings is ceilings_module.Ceilings and perfmodel.FORMAT == ceilings_module.FORMAT
