import argparse
import dataclasses
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

import peakknn
from peakknn import Index, PartitionedIndex, SearchSettings
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
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
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
    assert main(["search", str(index_dir), str(npy), "--ids-out", str(ids_out), "--scores-out", str(scores_out), "--force"]) == 0


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


# ----------------------------------------------------------------- issue 19: the CLI a new user meets
def _subparsers():
    """{name: parser} of every subcommand."""
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_of_every_subcommand_has_help():
    for name, parser in {"peakknn": _parser(), **_subparsers()}.items():
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings or action.dest} has no help"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"peakknn {peakknn.__version__}"


def test_partitioned_help_says_probes():
    text = _subparsers()["bench"].format_help().replace("\n", " ")
    assert "comma-separated probes" in " ".join(text.split()) and "partition counts" not in text


def _refuse_work(monkeypatch):
    """Make any bench run fail loudly: validation must come first."""
    import peakknn.bench

    monkeypatch.setattr(peakknn.bench, "main", lambda args: pytest.fail("the bench ran before its arguments were checked"))


@pytest.mark.parametrize("argv", [["--k", "0"], ["--n", "0"], ["--d", "-1"], ["--nq", "0"], ["--threads", "0"], ["--repeat", "0"],
                                  ["--rounds", "0"], ["--partitioned", "0"], ["--partitions", "0"], ["--recall-target", "1.5"],
                                  ["--recall-target", "nan"], ["--k", "x"]])  # fmt: skip
def test_bench_rejects_bad_numbers_when_parsing(argv, monkeypatch, capsys):
    _refuse_work(monkeypatch)
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"peakknn bench: error: argument {argv[0]}" in err and "Traceback" not in err


def test_bench_k_beyond_the_rows_is_refused_before_any_work(hdf5_file, monkeypatch, capsys):
    path, train, _, neighbors = hdf5_file
    _refuse_work(monkeypatch)
    cases = [
        (["--n", "1000", "--d", "16", "--nq", "10", "--k", "5000"], "--k 5000 is more than the 1000 database rows"),
        (["--dataset", str(path), "--k", str(train.shape[0] + 1)], f"more than the {train.shape[0]} database rows"),
        (["--dataset", str(path), "--k", str(neighbors.shape[1] + 1)], f"the {neighbors.shape[1]} neighbours"),
    ]
    for argv, message in cases:
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("peakknn bench: error: ") and message in err


def test_bench_missing_dataset_is_one_line(tmp_path, monkeypatch, capsys):
    _refuse_work(monkeypatch)
    assert main(["bench", "--dataset", str(tmp_path / "none.hdf5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.hdf5" in err


def test_build_and_search_a_partitioned_index(hdf5_file, tmp_path, capsys):
    path, train, test, neighbors = hdf5_file
    ix = tmp_path / "part"
    assert main(["build", str(path), str(ix), "--index", "partitioned", "--partitions", "16", "--codes", "int8", "--probe", "4", "--seed", "3"]) == 0
    index = PartitionedIndex.load(ix)
    assert index.is_trained and len(index) == train.shape[0] and index.metric == "l2"  # the file's distance
    assert (index.settings.partitions, index.settings.codes, index.settings.seed, index.search_settings.probe) == (16, "int8", 3, 4)
    assert index.recall_curves  # measured at build: --recall-target searches need not measure again
    truth = neighbors.astype(np.int64)
    for options, least in ((["--probe", "16"], 0.99), (["--recall-target", "0.9"], 0.8), ([], 0.0)):
        out = tmp_path / f"ids{len(options)}{options[:1]}.npy"
        assert main(["search", str(ix), str(path), "--ids-out", str(out), *options]) == 0
        ids = np.load(out)
        assert ids.shape == (test.shape[0], 10) and recall_at_k(ids, truth, train, test, "l2") >= least
    assert "probe or recall_target" in _error(["search", str(ix), str(path), "--probe", "4", "--recall-target", "0.9"], capsys)


def test_build_partitioned_defaults_are_the_settings_defaults(hdf5_file, tmp_path):
    path, train, *_ = hdf5_file
    assert main(["build", str(path), str(tmp_path / "part"), "--index", "partitioned"]) == 0
    index = PartitionedIndex.load(tmp_path / "part")
    assert index.settings == dataclasses.replace(PartitionSettings(), partitions=partitions_for(train.shape[0]))
    assert index.search_settings == SearchSettings()


def _error(argv, capsys) -> str:
    """The one stderr line of a command that must fail with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"peakknn {argv[0]}: error: ")
    return err


def test_build_options_belong_to_their_kind_and_the_settings_check_them(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    ix = str(tmp_path / "ix")
    assert "--codes" in _error(["build", str(path), ix, "--codes", "pq4"], capsys)  # flat is the default
    assert "--probe" in _error(["build", str(path), ix, "--index", "flat", "--probe", "3"], capsys)
    assert "--precision" in _error(["build", str(path), ix, "--index", "partitioned", "--precision", "fp32"], capsys)
    assert "partitions must be positive" in _error(["build", str(path), ix, "--index", "partitioned", "--partitions", "0"], capsys)
    assert "probe must be positive" in _error(["build", str(path), ix, "--index", "partitioned", "--probe", "0"], capsys)
    assert not (tmp_path / "ix").exists()


def test_search_without_outputs_prints_and_writes_nothing(hdf5_file, tmp_path, monkeypatch, capsys):
    path, train, test, _ = hdf5_file
    ix = tmp_path / "ix"
    assert main(["build", str(path), str(ix)]) == 0
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["search", str(ix), str(path), "--k", "3", "--recall-target", "1.0"]) == 0
    assert list(work.iterdir()) == []
    lines = capsys.readouterr().out.splitlines()
    exact = np.argsort(((test[:, None] - train[None]) ** 2).sum(2), axis=1)[:, :3]
    shown = [line for line in lines if line[:1].isdigit()]
    assert 0 < len(shown) < test.shape[0] and "--ids-out" in lines[-1]
    for i, line in enumerate(shown):
        assert [int(pair.split(":")[0]) for pair in line.split()[1:]] == exact[i].tolist()


def test_search_never_overwrites_without_force(hdf5_file, tmp_path, capsys):
    path, *_ = hdf5_file
    ix = tmp_path / "ix"
    assert main(["build", str(path), str(ix)]) == 0
    ids_out, scores_out = tmp_path / "ids.bin", tmp_path / "scores"  # written under exactly these names
    ids_out.write_bytes(b"keep me")
    err = _error(["search", str(ix), str(path), "--ids-out", str(ids_out), "--scores-out", str(scores_out)], capsys)
    assert str(ids_out) in err and "--force" in err
    assert ids_out.read_bytes() == b"keep me" and not scores_out.exists()  # nothing written
    assert main(["search", str(ix), str(path), "--ids-out", str(ids_out), "--scores-out", str(scores_out), "--force", "--k", "4"]) == 0
    ids, scores = np.load(ids_out), np.load(scores_out)
    assert ids.shape == scores.shape == (50, 4) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert not (tmp_path / "scores.npy").exists()
    assert "same file" in _error(["search", str(ix), str(path), "--ids-out", str(ids_out), "--scores-out", str(ids_out), "--force"], capsys)
    assert "no folder" in _error(["search", str(ix), str(path), "--ids-out", str(tmp_path / "no" / "ids.npy")], capsys)


def test_search_opens_a_partitioned_folder_and_refuses_other_folders(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "p"), "--index", "partitioned", "--partitions", "4", "--metric", "l2"]) == 0
    assert main(["search", str(tmp_path / "p"), str(tmp_path / "x.npy"), "--k", "1", "--probe", "4", "--ids-out", str(tmp_path / "i.npy")]) == 0
    assert (np.load(tmp_path / "i.npy")[:, 0] == np.arange(300)).mean() > 0.9  # each row finds itself
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in _error(["search", str(tmp_path / "empty"), str(tmp_path / "x.npy")], capsys)
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "f")]) == 0
    assert "--probe" in _error(["search", str(tmp_path / "f"), str(tmp_path / "x.npy"), "--probe", "2"], capsys)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_input_is_refused_like_the_api(tmp_path, dtype, capsys):
    rows = np.random.default_rng(0).integers(0, 2, (40, 8)).astype(dtype)
    with pytest.raises(TypeError, match="floating dtype"):
        Index(8).add(rows)  # the API's rule, which the command line follows
    npy, h5 = tmp_path / "ints.npy", tmp_path / "ints.hdf5"
    np.save(npy, rows)
    with h5py.File(h5, "w") as f:
        f["train"] = f["test"] = rows
    for file in (npy, h5):
        err = _error(["build", str(file), str(tmp_path / "ix")], capsys)
        assert str(file) in err and "floating dtype" in err and np.dtype(dtype).name in err
    np.save(tmp_path / "x.npy", rows.astype(np.float16))  # any float dtype is fine
    assert main(["build", str(tmp_path / "x.npy"), str(tmp_path / "ix")]) == 0
    err = _error(["search", str(tmp_path / "ix"), str(npy)], capsys)
    assert str(npy) in err and "queries must have a floating dtype" in err
