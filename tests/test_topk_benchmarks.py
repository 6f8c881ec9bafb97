"""benchmarks/topk_models.py and benchmarks/topk_sae.py run end to end on tiny shapes (as
tests/test_benchmarks.py does for the search benchmarks): the tables, the JSON fields, the CPU
named in the header. No timing decides a test."""

import json

import pytest
from bench_helpers import run


@pytest.mark.slow
def test_topk_models_tiny_writes_tables_with_plans_recall_and_cpu(tmp_path):
    out = run("topk_models.py", "--shapes", "tiny", "--rounds", "1", "--out", str(tmp_path / "m.json"))
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["meta"]["cpu"] and res["meta"]["cpu"] in out and "torch threads" in out
    whats = [(r["dtype"], r["what"]) for r in res["rows"]]
    assert whats == [(d, w) for d in ("fp32", "bf16") for w in ("topk", "mask fwd", "mask fwd+bwd", "block fwd", "block fwd+bwd")]
    for r in res["rows"]:
        assert r["torch_s"] > 0 and r["peakknn_s"] > 0 and r["speedup"] == pytest.approx(r["torch_s"] / r["peakknn_s"])
        assert len(r["torch_rounds"]) == len(r["peakknn_rounds"]) == 1
    topk = [r for r in res["rows"] if r["what"] == "topk"]
    assert all(r["recall"] >= 0.9 for r in topk)  # recall_target 0.95 on 64 rows: a loose floor
    assert len(res["choice"]) == 2
    for c in res["choice"]:
        assert c["plans"][0]["plan"] == "exact" and c["chosen"] in {p["plan"] for p in c["plans"]}
        assert all(p["predicted_s"] > 0 for p in c["plans"])
        measured = {p["plan"] for p in c["plans"] if p["measured_s"] is not None}
        assert {"exact", c["chosen"]} <= measured and all(p["measured_s"] > 0 for p in c["plans"] if p["plan"] in measured)
    table = (tmp_path / "m.md").read_text()
    assert "| shape | dtype | what | torch s | peakknn s | speed-up | per_bin | bins | recall |" in table
    assert "**(chosen)**" in table and "auto / per_bin=1" in table


@pytest.mark.slow
def test_topk_sae_tiny_trains_both_and_falls_back_to_synthetic_data(tmp_path):
    out = run("topk_sae.py", "--dataset", str(tmp_path / "missing.hdf5"), "--synthetic-rows", "2000", "--steps", "8", "--warmup", "2",
              "--batch", "64", "--latents", "1024", "--k", "8", "--out", str(tmp_path / "s.json"))  # fmt: skip
    res = json.loads((tmp_path / "s.json").read_text())
    assert "synthetic" in res["meta"]["data"] and "not found" in res["meta"]["data"]
    assert set(res["runs"]) == {"torch.topk", "peakknn.nn.TopK"}
    for r in res["runs"].values():
        assert r["step_s"] > 0 and 0 < r["eval_nmse"] < 10 and 0.0 <= r["dead_fraction"] <= 1.0
    assert res["nmse_ratio"] == pytest.approx(res["runs"]["peakknn.nn.TopK"]["eval_nmse"] / res["runs"]["torch.topk"]["eval_nmse"])
    assert 0.8 <= res["recall"] <= 1.0 and res["meta"]["cpu"] in out
    assert "| top-k | step ms (median) |" in (tmp_path / "s.md").read_text()
