"""Smoke test of benchmarks/serve_load.py: its main on a tiny set (2,000 x 32, 8 clients, 1 s,
1 round) writes the JSON with every field and no request fails. Speed is not checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


def _script():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_load_smoke(tmp_path):
    out = tmp_path / "serve_load.json"
    argv = ["--n", "2000", "--d", "32", "--nq", "100", "--clients", "8", "--seconds", "1", "--warmup", "0.2", "--rounds", "1",
            "--lib-seconds", "0.2", "--verify", "4", "--out", str(out), "--quiet"]  # fmt: skip
    assert _script().main(argv) == 0
    res = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith(res["dataset"])
    assert (res["n"], res["d"], res["queries"], res["clients"]) == (2000, 32, 100, 8)
    for key in ("cpu_model", "logical_cpus", "command", "server_args", "library", "bulk_load", "bulk_load_npy", "servers", "targets",
                "rounds_detail", "contended", "background_busy_share"):
        assert key in res, key
    assert "--max-batch 1" in res["server_args"]["unbatched"]
    assert {"add_s", "batched_qps", "single_qps", "torch_threads"} <= set(res["library"])
    for label in ("batched", "unbatched"):
        m = res["servers"][label]
        assert m["errors"] == 0 and m["requests"] > 0, m
        assert m["qps"] > 0 and m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"]
        assert 0 <= m["server_share"] <= 1.5 and 0 <= m["clients_share"] <= 1.5
        assert res["bulk_load"][label]["seconds"] > 0
        assert res["agreement"][label] >= 0.9  # the answers of the in-process index
    assert res["servers"]["unbatched"]["mean_batch"] == 1.0
    assert {"errors", "batched_over_unbatched", "batched_over_library", "load_over_add"} == set(res["targets"])
    assert res["targets"]["errors"] == {"value": 0, "met": True}
    assert [r["server"] for r in res["rounds_detail"]] == ["batched", "unbatched"]
