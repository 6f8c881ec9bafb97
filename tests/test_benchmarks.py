"""The benchmark scripts run end to end on tiny data (skipping peers that are not installed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peakknn.partitioned.settings import partitions_for

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_suite_quick_writes_table_points_and_skips_missing_peers(tmp_path):
    out = run("suite.py", "--quick", "--synthetic", "3000x16", "--nq", "50", "--repeat", "1", "--rounds", "2",
              "--methods", "peakknn,peakknn-ivf,torch,faiss-flat,hnswlib", "--out", str(tmp_path))  # fmt: skip
    payload = json.loads((tmp_path / "clustered-3000x16.json").read_text())
    methods = {p["method"] for p in payload["points"]}
    ours = f"peakknn partitioned bf16 P={partitions_for(3000)}"  # the default for n rows
    assert {"peakknn flat bf16", ours, "torch exact (mm+topk)"} <= methods
    curve = [p["recall"] for p in payload["points"] if p["method"] == ours]
    assert len(curve) >= 3 and curve[-1] >= 0.99 and all(b >= a - 0.005 for a, b in zip(curve, curve[1:]))
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
    rows = [line for line in out.splitlines() if line.startswith("| 2 |") or line.startswith("| 8 |")]
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
    rows = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): float(line.split("|")[3]) for line in out.splitlines() if line.startswith("| flat") or line.startswith("| partitioned")}
    assert len(rows) == 2 + 2 * 2
    assert rows["flat Index bf16 recall_target 1.0"] == 1.0
    assert rows[f"partitioned bf16 P={partitions_for(3000)} spill probe 64"] >= 0.99  # all partitions (64), each row in two


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on machines without a GPU")
@pytest.mark.parametrize("script", ["speed_gpu.py", "tune_gpu.py"])
def test_gpu_scripts_say_what_they_need(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr
