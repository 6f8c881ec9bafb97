import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from peakknn.cli import main
from peakknn.evaluation import recall_at_k


@pytest.fixture
def hdf5_file(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((3000, 16)).astype(np.float32)
    test = rng.standard_normal((50, 16)).astype(np.float32)
    d = ((test[:, None, :] - train[None]) ** 2).sum(2)
    neighbors = np.argsort(d, axis=1)[:, :100].astype(np.int32)
    path = tmp_path / "tiny-euclidean.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"], f["neighbors"] = train, test, neighbors
        f["distances"] = np.sqrt(np.take_along_axis(d, neighbors, 1))
    return path, train, test, neighbors


def test_bench_on_hdf5_writes_json(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    out = tmp_path / "bench.json"
    assert main(["bench", "--dataset", str(path), "--repeat", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "peakknn" in table and "torch exact" in table
    payload = json.loads(out.read_text())
    assert payload["metric"] == "l2" and payload["n"] == 3000
    for row in payload["rows"]:
        assert row["recall"] >= 0.9 and row["qps"] > 0
        assert 0 < row["floor_s"] and row["bottleneck"] in ("matrix", "memory", "vector")
    assert "% of floor" in table and "ceilings:" in table
    assert payload["ceilings"]["matmul_flops"]["bf16"] > 0


def test_bench_partitioned_sweep(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    out = tmp_path / "bench.json"
    args = ["bench", "--dataset", str(path), "--repeat", "1", "--no-peers", "--partitioned", "1,4,16", "--partitions", "16"]
    assert main([*args, "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if "partitioned" in r["method"]]
    assert [r["method"].rsplit("=", 1)[1] for r in rows] == ["1", "4", "16"]
    recalls = [r["recall"] for r in rows]
    assert recalls[0] < recalls[-1] and recalls[-1] >= 0.99
    assert "peakknn partitioned bf16 P=16 probe=4" in capsys.readouterr().out


def test_bench_synthetic_small(capsys):
    assert main(["bench", "--n", "5000", "--d", "8", "--nq", "20", "--repeat", "1"]) == 0
    assert "random-5000x8" in capsys.readouterr().out


def test_build_and_search_round_trip(hdf5_file, tmp_path):
    path, train, test, neighbors = hdf5_file
    index_dir = tmp_path / "ix"
    assert main(["build", str(path), str(index_dir)]) == 0
    ids_out, scores_out = tmp_path / "ids.npy", tmp_path / "scores.npy"
    assert main(["search", str(index_dir), str(path), "--k", "10", "--recall-target", "1.0",
                 "--ids-out", str(ids_out), "--scores-out", str(scores_out)]) == 0  # fmt: skip
    ids = np.load(ids_out)
    assert ids.shape == (50, 10) and np.load(scores_out).shape == (50, 10)
    assert recall_at_k(ids, neighbors.astype(np.int64), train, test, "l2") == 1.0
    npy = tmp_path / "q.npy"
    np.save(npy, test)
    assert main(["search", str(index_dir), str(npy), "--ids-out", str(ids_out), "--scores-out", str(scores_out)]) == 0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["build", str(bad), str(tmp_path / "ix")]) == 2  # never unpickled
    assert main(["search", str(tmp_path / "nothing"), str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_python_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "peakknn", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout


def test_import_is_lean():
    code = "import sys, peakknn; bad = [m for m in ('h5py', 'faiss', 'triton', 'safetensors') if m in sys.modules]; import torch; print(bad, torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"
