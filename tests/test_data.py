"""Data for benchmarks and the command line (peakknn.data): .npy and HDF5 files, synthetic sets."""

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from peakknn.data import HDF5_METRICS, clustered, load_hdf5, load_vectors, synthetic


class _Touch:
    """Unpickling this creates a file: proof that a file was (or was not) unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_load_vectors_never_unpickles(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([_Touch(tmp_path / "unpickled")], dtype=object), allow_pickle=True)
    assert pickle.loads(pickle.dumps(_Touch(tmp_path / "check"))) is None and (tmp_path / "check").exists()  # the probe works
    with pytest.raises(ValueError, match="not a plain .npy array"):
        load_vectors(bad)
    assert not (tmp_path / "unpickled").exists()


def test_load_vectors_from_npy(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    got = load_vectors(tmp_path / "x.npy")
    assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, x)
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int16).reshape(2, 3))  # any numeric dtype
    assert load_vectors(str(tmp_path / "i.npy")).tolist() == [[0, 1, 2], [3, 4, 5]]
    for name, bad in (("one_d", np.ones(3)), ("flags", np.ones((2, 2), dtype=bool)), ("three_d", np.ones((2, 2, 2)))):
        np.save(tmp_path / f"{name}.npy", bad)
        with pytest.raises(ValueError, match="2-d numeric array"):
            load_vectors(tmp_path / f"{name}.npy")
    with pytest.raises(ValueError, match="expected a .npy or .hdf5 file"):
        load_vectors(tmp_path / "x.csv")


def test_hdf5_files(tmp_path):
    train, test = np.random.default_rng(0).standard_normal((20, 3)), np.ones((2, 3))
    path = tmp_path / "tiny.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"], f["neighbors"] = train, test, np.zeros((2, 5), dtype=np.int32)
    ds = load_hdf5(path)
    assert ds.name == "tiny" and ds.metric == "l2" and ds.neighbors.dtype == np.int64 and ds.neighbors.shape == (2, 5)
    assert ds.train.dtype == np.float32 and np.allclose(ds.train, train) and np.allclose(ds.test, test)
    assert np.allclose(load_vectors(path, "test"), test)
    with pytest.raises(ValueError, match="no dataset 'queries'"):
        load_vectors(path, "queries")
    assert {HDF5_METRICS[d] for d in ("angular", "cosine", "euclidean", "dot")} == {"cos", "l2", "ip"}
    with h5py.File(tmp_path / "odd.hdf5", "w") as f:
        f.attrs["distance"] = "hamming"
        f["train"], f["test"] = train, test
    with pytest.raises(ValueError, match="unsupported distance 'hamming'"):
        load_hdf5(tmp_path / "odd.hdf5")
    with h5py.File(tmp_path / "half.hdf5", "w") as f:
        f["train"] = train
    with pytest.raises(ValueError, match="no dataset 'test'"):
        load_hdf5(tmp_path / "half.hdf5")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        load_hdf5(tmp_path / "text.hdf5")


def test_synthetic_sets_are_seeded():
    a, b, c = synthetic(300, 8, 20, seed=1), synthetic(300, 8, 20, seed=1), synthetic(300, 8, 20, seed=2)
    assert a.train.shape == (300, 8) and a.test.shape == (20, 8) and a.metric == "ip" and a.neighbors is None
    assert np.array_equal(a.train, b.train) and not np.array_equal(a.train, c.train)
    ds = clustered(500, 16, 30, clusters=5, spread=0.1, seed=3)
    assert ds.train.shape == (500, 16) and ds.test.shape == (30, 16) and ds.metric == "cos" and ds.train.dtype == np.float32
    assert np.allclose(np.linalg.norm(ds.train, axis=1), 1.0, atol=1e-5)
    # tight clusters: every row is close to one of 5 directions
    sims = ds.train @ ds.train.T
    assert (sims > 0.9).sum(1).min() >= 500 // 5 // 3
    assert np.array_equal(ds.train, clustered(500, 16, 30, clusters=5, spread=0.1, seed=3).train)
