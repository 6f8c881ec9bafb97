"""Data for benchmarks and the command line: ann-benchmarks HDF5 files, .npy files and synthetic
sets (recall is measured by peakknn.evaluation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

# ann-benchmarks "distance" attribute -> peakknn metric
HDF5_METRICS = {"angular": "cos", "cosine": "cos", "euclidean": "l2", "l2": "l2", "dot": "ip", "ip": "ip"}


@dataclasses.dataclass
class Dataset:
    """train f32[n, d], test f32[nq, d], neighbors i64[nq, >=k] (exact, best first), metric."""

    name: str
    train: np.ndarray
    test: np.ndarray
    neighbors: np.ndarray | None
    metric: str


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 files needs h5py: pip install 'peakknn[bench]'") from None
    return h5py


def load_hdf5(path: str | Path) -> Dataset:
    """Read an ann-benchmarks file (datasets train, test, neighbors; attribute distance)."""
    h5py = _h5py()
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file: {e}") from None
    with f:
        missing = [key for key in ("train", "test") if key not in f]
        if missing:
            raise ValueError(f"{path} has no dataset {missing[0]!r} (ann-benchmarks layout expected)")
        distance = f.attrs.get("distance", "angular")
        distance = distance.decode() if isinstance(distance, bytes) else str(distance)
        if distance not in HDF5_METRICS:
            raise ValueError(f"{path}: unsupported distance {distance!r}; known: {sorted(HDF5_METRICS)}")
        neighbors = np.asarray(f["neighbors"], dtype=np.int64) if "neighbors" in f else None
        return Dataset(
            name=path.stem,
            train=np.ascontiguousarray(f["train"], dtype=np.float32),
            test=np.ascontiguousarray(f["test"], dtype=np.float32),
            neighbors=neighbors,
            metric=HDF5_METRICS[distance],
        )


def load_vectors(path: str | Path, key: str = "train") -> np.ndarray:
    """f32[n, d] from a .npy file (never unpickled) or the dataset `key` of an HDF5 file."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            if key not in f:
                raise ValueError(f"{path} has no dataset {key!r}")
            return np.ascontiguousarray(f[key], dtype=np.float32)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path} is not a plain .npy array: {e}") from None
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{path} must hold a 2-d numeric array, got {arr.dtype}{list(arr.shape)}")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise ValueError(f"{path}: expected a .npy or .hdf5 file")


def synthetic(n: int = 1_000_000, d: int = 128, nq: int = 1000, seed: int = 0) -> Dataset:
    """Gaussian random vectors, inner product; neighbors are left for the caller to compute."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n, d, generator=g).numpy()
    test = torch.randn(nq, d, generator=g).numpy()
    return Dataset(name=f"random-{n}x{d}", train=train, test=test, neighbors=None, metric="ip")


def clustered(
    n: int = 1_000_000, d: int = 128, nq: int = 1000, clusters: int = 1000, spread: float = 0.5, seed: int = 0
) -> Dataset:
    """Unit vectors around `clusters` random unit centres (cosine); queries drawn the same way.

    Row = normalize(centre + noise), noise ~ N(0, spread^2 / d) per coordinate (norm ~ spread):
    the structure partitioned indexes exploit. Neighbours are left for the caller to compute.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g), dim=1)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 1 << 18):
            e = min(m, s + (1 << 18))
            c = centres[torch.randint(clusters, (e - s,), generator=g)]
            noise = torch.randn(e - s, d, generator=g) * (spread / d**0.5)
            out[s:e] = torch.nn.functional.normalize(c + noise, dim=1).numpy()
        return out

    return Dataset(name=f"clustered-{n}x{d}", train=draw(n), test=draw(nq), neighbors=None, metric="cos")


def mixture(n: int, d: int, *, centres_seed: int = 0, seed: int = 0, clusters: int = 32, offset: float = 5.0) -> np.ndarray:
    """f32[n, d] rows around `clusters` centres (coordinates N(0, 9), drawn with centres_seed),
    each row its centre plus N(0, 1) noise, all shifted by `offset`. Another centres_seed gives
    another distribution: queries from elsewhere than the rows (a recall target calibrated on
    rows promises too much for them; benchmarks/recall_elsewhere.py)."""
    centres = np.random.default_rng(centres_seed).standard_normal((clusters, d)) * 3
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)) + offset).astype(np.float32)
