import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from peakknn.bench import BENCH_PEERS
from peakknn.cli import _parser, main
from peakknn.evaluation import recall_at_k
from peakknn.partitioned import PartitionSettings
from peakknn.partitioned.settings import partitions_for
from peakknn.peers import METHODS, PIP, Method, PeakPartitioned


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


@pytest.fixture
def angular_file(tmp_path):
    """2,000 x 16 clustered rows, 50 queries, in the ann-benchmarks layout with distance="angular"."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 16))
    train = (centres[rng.integers(0, 20, 2000)] + 0.3 * rng.standard_normal((2000, 16))).astype(np.float32)
    test = (centres[rng.integers(0, 20, 50)] + 0.3 * rng.standard_normal((50, 16))).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cos = unit(test) @ unit(train).T
    neighbors = np.argsort(-cos, axis=1)[:, :100].astype(np.int32)
    path = tmp_path / "tiny-angular.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f["train"], f["test"], f["neighbors"] = train, test, neighbors
        f["distances"] = (1 - np.take_along_axis(cos, neighbors, 1)).astype(np.float32)
    return path


def test_bench_on_hdf5_writes_json(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    out = tmp_path / "bench.json"
    assert main(["bench", "--dataset", str(path), "--repeat", "1", "--json", str(out), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "peakknn" in table and "torch exact" in table
    payload = json.loads(out.read_text())
    assert payload["metric"] == "l2" and payload["n"] == 3000
    assert payload["cpu"] and payload["threads"] == 2
    for row in payload["rows"]:
        assert row["recall"] >= 0.9 and row["qps"] > 0 and row["memory_mb"] > 0
        assert 0 < row["floor_s"] and row["bottleneck"] in ("matrix", "memory", "vector")
    assert "% of floor" in table and "ceilings:" in table
    assert payload["ceilings"]["matmul_flops"]["bf16"] > 0
    assert "% of floor" in (tmp_path / "bench-tiny-euclidean.md").read_text()


def test_bench_partitioned_takes_an_optional_probe_list():
    parse = _parser().parse_args
    assert parse(["bench"]).partitioned is None
    assert parse(["bench", "--partitioned"]).partitioned == "auto"
    args = parse(["bench", "--partitioned", "--dataset", "x.hdf5"])
    assert args.partitioned == "auto" and args.dataset == "x.hdf5"
    assert parse(["bench", "--partitioned", "4,8,16"]).partitioned == [4, 8, 16]
    assert parse(["bench", "--partitioned", "auto"]).partitioned == "auto"
    assert parse(["bench", "--partitioned"]).rounds == 3
    for bad in ("0,4", "4,x", ""):
        with pytest.raises(SystemExit):
            parse(["bench", "--partitioned", bad])


def test_bench_partitioned_probe_list(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    args = ["bench", "--dataset", str(path), "--repeat", "1", "--rounds", "2", "--no-peers", "--partitioned", "1,4,16", "--partitions", "16"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bench-tiny-euclidean.json").read_text())
    rows = payload["rows"]
    assert {r["method"] for r in rows} == {"peakknn partitioned bf16 P=16"}
    assert [r["setting"] for r in rows] == [1, 4, 16] and {r["knob"] for r in rows} == {"probe"}
    recalls = [r["recall"] for r in rows]
    assert recalls[0] < recalls[-1] and recalls[-1] >= 0.99
    assert all(len(r["qps_rounds"]) == 2 and r["qps"] == float(np.median(r["qps_rounds"])) for r in rows)
    assert payload["rounds"] == 2
    out = capsys.readouterr().out
    assert "| peakknn partitioned bf16 P=16 |" in out and "(probe=" in out and "rounds=2" in out


def _check_curve(payload: dict, out: str, installed) -> set:
    """The methods of a --partitioned run's JSON; checks every row and the skip messages."""
    rows = payload["rows"]
    assert payload["metric"] == "cos" and payload["n"] == 2000 and payload["cpu"] and payload["threads"] == 2
    for row in rows:
        assert 0.0 <= row["recall"] <= 1.0 and row["qps"] > 0 and len(row["qps_rounds"]) == 1
        assert row["memory_by"] in ("index", "rss") and isinstance(row["memory_mb"], float)
        assert row["memory_mb"] > 0 or row["memory_by"] == "rss"
    assert len({(r["method"], str(r["setting"])) for r in rows}) == len(rows)  # one row per setting
    ours = [r for r in rows if r["method"].startswith("peakknn partitioned")]
    partitions = int(ours[0]["method"].split("P=")[1])  # the index's default for n rows
    assert partitions == partitions_for(payload["n"]) and PartitionSettings().partitions is None
    assert [r["setting"] for r in ours] == list(PeakPartitioned.TARGETS)  # what users ask for: recall targets
    assert [r["recall"] for r in ours][-1] >= 0.99 - 0.02
    assert ours[-1]["recall"] >= 0.9 and ours[0]["memory_by"] == "index"
    methods = {r["method"] for r in rows}
    for name in BENCH_PEERS:
        if installed(name):
            assert f"skip {name}" not in out
        else:
            assert f"skip {name}: pip install {' '.join(METHODS[name].missing())}" in out
    return methods


def test_bench_partitioned_default_sweep_with_installed_peers(angular_file, tmp_path, capsys):
    """`--partitioned` alone: the PartitionedIndex with its default settings and probes, then
    every peer that is installed (the others are skipped with their pip package)."""
    assert main(["bench", "--dataset", str(angular_file), "--partitioned", "--rounds", "1", "--repeat", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    payload = json.loads((tmp_path / "bench-tiny-angular.json").read_text())
    methods = _check_curve(payload, out, lambda name: not METHODS[name].missing())
    assert len(methods) == 1 + sum(not METHODS[name].missing() for name in BENCH_PEERS)
    if not METHODS["faiss-flat"].missing():
        assert [r["recall"] for r in payload["rows"] if r["method"] == "faiss Flat"] == [1.0]
    assert "q/s @ recall >= 0.95" in out and "memory MiB" in out and "CPU: " in out
    assert "q/s @ recall >= 0.95" in (tmp_path / "bench-tiny-angular.md").read_text()
    assert (tmp_path / "bench-tiny-angular.png").exists() or "no plot: pip install matplotlib" in out


def test_bench_partitioned_without_any_peer(angular_file, tmp_path, capsys, monkeypatch):
    """As on a machine with none of the peers' packages: each is skipped, the run succeeds."""
    monkeypatch.setattr(Method, "missing", classmethod(lambda cls: [PIP[m] for m in cls.needs]))
    out_json = tmp_path / "curve.json"
    assert main(["bench", "--dataset", str(angular_file), "--partitioned", "--rounds", "1", "--repeat", "1", "--out", str(tmp_path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert len(_check_curve(json.loads(out_json.read_text()), out, lambda name: False)) == 1
    assert "skip faiss-flat: pip install faiss-cpu" in out and "skip scann-tree: pip install scann" in out


def test_bench_synthetic_small(tmp_path, capsys):
    assert main(["bench", "--n", "5000", "--d", "8", "--nq", "20", "--repeat", "1", "--out", str(tmp_path)]) == 0
    assert "random-5000x8" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench-random-5000x8.json").read_text())["n"] == 5000


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
