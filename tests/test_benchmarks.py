"""The benchmark scripts run end to end on tiny data (skipping peers that are not installed);
`peakknn bench`'s floors (re-measured, never silently above 100%) and its busy-machine warning,
on replaced ceilings and load averages (no real timing decides them)."""

import dataclasses
import datetime
import importlib.util
import itertools
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from bench_helpers import ROOT, run
from perfmodel_stated import STATED

from peakknn import bench, cli
from peakknn.data import synthetic
from peakknn.partitioned.settings import partitions_for
from peakknn.perfmodel import machine


@pytest.mark.slow
def test_suite_quick_writes_table_points_and_skips_missing_peers(tmp_path):
    out = run("suite.py", "--quick", "--synthetic", "3000x16", "--nq", "50", "--repeat", "1", "--rounds", "2",
              "--methods", "peakknn,peakknn-ivf,torch,faiss-flat,hnswlib", "--out", str(tmp_path))  # fmt: skip
    payload = json.loads((tmp_path / "clustered-3000x16.json").read_text())
    methods = {p["method"] for p in payload["points"]}
    ours = f"peakknn partitioned bf16 P={partitions_for(3000)}"  # the default for n rows
    assert {"peakknn flat bf16", ours, "torch exact (mm+topk)"} <= methods
    curve = [p["recall"] for p in payload["points"] if p["method"] == ours]
    assert len(curve) >= 3 and curve[-1] >= 0.99 and all(b >= a - 0.005 for a, b in itertools.pairwise(curve))
    for name, module in (("faiss-flat", "faiss"), ("hnswlib", "hnswlib")):
        if importlib.util.find_spec(module) is None:
            assert f"skip {name}" in out
    assert all(len(p["qps_rounds"]) == 2 and p["qps"] == float(np.median(p["qps_rounds"])) for p in payload["points"])
    assert len({(p["method"], str(p["setting"])) for p in payload["points"]}) == len(payload["points"])  # one point per setting
    exact = [p for p in payload["points"] if p["method"].startswith("torch")]
    assert exact and exact[0]["recall"] == 1.0
    table = (tmp_path / "clustered-3000x16.md").read_text()
    assert "q/s @ recall >= 0.95" in table and "peakknn flat bf16" in table and "memory MiB" in table
    assert all(p["memory_by"] in ("index", "rss") for p in payload["points"]) and payload["cpu"]


@pytest.mark.slow
def test_scan_dims_script_prints_one_row_per_probe():
    out = run("scan_dims.py", "--synthetic", "4000x32", "--nq", "40", "--repeat", "1", "--probes", "2,8",
              "--scan-dims", "none,16,auto")  # fmt: skip
    assert "scan_dims=16: 16 of 32 dims" in out and "scan_dims=None: 32 of 32 dims" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 2 |", "| 8 |"))]
    assert len(rows) == 2 and all(line.count("x, ") == 3 for line in rows)
    assert rows[0].split("|")[2].strip().split(", ")[1] == "1.000x"  # the baseline's own ratio


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    out = run("scaling.py", "--quick", "--max-n", "10000", "--repeat", "1", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "scaling.json").read_text())
    assert {r["axis"] for r in rows} == {"n"} and rows[0]["peakknn_s"] > 0
    assert "% of floor" in out


@pytest.mark.slow
def test_partitioned_gpu_script_runs_on_any_device():
    out = run("partitioned_gpu.py", "--synthetic", "3000x16", "--nq", "40", "--probes", "1,64", "--targets", "0.9,1.0", "--repeat", "1")
    rows = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): float(line.split("|")[3]) for line in out.splitlines() if line.startswith(("| flat", "| partitioned"))}
    assert len(rows) == 2 + 2 * 2
    assert rows["flat Index bf16 recall_target 1.0"] == 1.0
    assert rows[f"partitioned bf16 P={partitions_for(3000)} spill probe 64"] >= 0.99  # all partitions (64), each row in two


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on machines without a GPU")
@pytest.mark.parametrize("script", ["speed_gpu.py", "tune_gpu.py"])
def test_gpu_scripts_say_what_they_need(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr


def stated_here(rate: float) -> machine.Ceilings:
    """STATED measured now on this machine, every FLOP/s `rate` (the floor's matrix term)."""
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rates = {"fp32": rate, "bf16": rate}
    return dataclasses.replace(STATED, **machine._identity(torch.device("cpu")), measured_at=at, matmul_flops=rates, peak_flops=rates)


@pytest.fixture
def measurements(tmp_path, monkeypatch):
    """Replaces measuring: each measurement takes the next of the list the test fills."""
    monkeypatch.setenv("PEAKKNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(machine, "_MEMO", {})
    monkeypatch.setattr(machine, "probe", lambda device="cpu": STATED.probe_flops)
    planned: list = []
    monkeypatch.setattr(machine, "measure", lambda device="cpu", **_: planned.pop(0))
    return planned


@pytest.mark.parametrize("fresh_rate", [1e3, 1e18])
def test_bench_measures_again_when_a_method_beats_its_floor(measurements, fresh_rate, caplog):
    """The issue's FAISS at 111% of its floor: ceilings cached on a busy machine (here 1 kFLOP/s,
    so every method beats the floor) are measured again; a floor still beaten is a ceiling miss."""
    measurements += [stated_here(1e3), stated_here(fresh_rate)]
    with caplog.at_level(logging.WARNING, logger=bench.__name__):
        rows = bench.run_bench(synthetic(400, 8, 10), k=5, repeat=1)
    assert not measurements and "measuring the ceilings again" in caplog.text  # both used
    bound = [r for r in rows if math.isfinite(r.floor_s)]
    assert len(bound) == len(rows) >= 2  # peakknn, torch exact (and FAISS flat where installed)
    table = bench.format_table(rows, "t")
    if fresh_rate == 1e3:  # still too slow: every row says so
        assert all(r.ceiling_miss and r.pct_floor > 100 for r in bound) and "ceiling miss" in caplog.text
        assert table.count("% ceiling miss |") == len(bound)
    else:  # the floor at the best rate of both measurements
        assert all(not r.ceiling_miss and r.pct_floor <= 100 for r in bound) and "ceiling miss" not in table
        assert all(r.floor_s == pytest.approx(2 * 10 * 400 * 8 / 1e18) for r in bound)


def test_bench_floor_below_the_achieved_time_measures_once(measurements):
    measurements.append(stated_here(1e18))
    rows = bench.run_bench(synthetic(400, 8, 10), k=5, repeat=1, peers=False)
    assert not measurements and rows[0].pct_floor <= 100 and not rows[0].ceiling_miss


def test_busy_compares_the_load_average_with_cpus_and_threads(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 1.0, 1.0), raising=False)
    assert bench.busy(2) is None  # 2.4 + 2 threads <= 4 CPUs + BUSY_SLACK
    assert "load average 2.40 on 4 logical CPUs with 3 bench threads" in bench.busy(3)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert bench.busy(2).startswith("busy machine")
    monkeypatch.delattr(os, "getloadavg")  # Windows
    assert bench.busy(2) is None

    def unreadable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unreadable, raising=False)
    assert bench.busy(2) is None


@pytest.mark.parametrize("load", [0.0, 1000.0])
def test_bench_warns_in_the_log_and_table_header_when_busy(measurements, tmp_path, monkeypatch, capsys, caplog, load):
    measurements.append(stated_here(1e18))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    argv = ["bench", "--n", "300", "--d", "8", "--nq", "10", "--k", "5", "--repeat", "1", "--no-peers", "--out", str(tmp_path)]
    with caplog.at_level(logging.WARNING, logger=bench.__name__):
        assert cli.main([*argv, "--threads", str(torch.get_num_threads())]) == 0
    header = capsys.readouterr().out.split("| method")[0]
    payload = json.loads((tmp_path / "bench-random-300x8.json").read_text())
    if load:
        assert "WARNING: busy machine: load average 1000.00" in header and "busy machine" in caplog.text
        assert payload["busy"].startswith("busy machine")
    else:
        assert "busy" not in header and "busy" not in caplog.text and payload["busy"] is None
