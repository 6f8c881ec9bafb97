"""peakknn.peers: the adapters behind `peakknn bench --partitioned` and benchmarks/suite.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peakknn import peers

ROOT = Path(__file__).resolve().parents[1]


def test_default_probes_are_a_geometric_list_up_to_a_quarter_of_the_partitions():
    assert peers.default_probes(256) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert peers.default_probes(16) == [1, 2, 3, 4]
    assert peers.default_probes(1) == [1, 2]  # at least two points (search caps probe at the partitions)
    for partitions in (7, 100, 1000, 4096):
        probes = peers.default_probes(partitions)
        assert probes == sorted(set(probes)) and probes[-1] <= max(2, partitions // 4) < probes[-1] * 1.5 + 1


def test_missing_peer_is_skipped_with_its_pip_package(monkeypatch):
    class Ghost(peers.Method):
        name, needs = "ghost", ("peakknn_no_such_module",)

    monkeypatch.setitem(peers.METHODS, "ghost", Ghost)
    monkeypatch.setitem(peers.PIP, "peakknn_no_such_module", "ghost-pip")
    said = []
    methods = peers.available(["ghost", "torch"], threads=1, say=said.append)
    assert [type(m) for m in methods] == [peers.TorchExact] and said == ["  skip ghost: pip install ghost-pip"]
    assert peers.FaissFlat.needs == ("faiss",) and peers.PIP["faiss"] == "faiss-cpu"


def test_importing_peers_loads_no_optional_package():
    code = "import sys, peakknn.peers; print([m for m in ('faiss', 'hnswlib', 'usearch', 'scann', 'h5py', 'matplotlib') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_benchmarks_peers_re_exports_the_package_adapters():
    code = "import sys; sys.path.insert(0, 'benchmarks'); import peers, peakknn.peers; print(peers.METHODS is peakknn.peers.METHODS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "True"


def test_rss_is_measured_on_linux():
    if not Path("/proc/self/statm").exists():
        assert peers.rss_bytes() is None
    else:
        assert peers.rss_bytes() > 0


def test_partitioned_adapter_trains_a_default_index_and_reports_its_memory():
    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    method = peers.PeakPartitioned(threads=1, partitions=16)
    method.build(x, "l2")
    assert method.index.is_trained and method.name == "peakknn partitioned bf16 P=16"
    assert method.settings(False) == list(method.TARGETS) and method.memory_mb == method.index.memory_bytes / 2**20
    assert method.index.recall_curves  # calibrated in the build, so the build time includes it
    ids = method.search(x[:5], 3, 0.99)
    assert ids.shape == (5, 3) and (ids[:, 0] == np.arange(5)).all()
    probing = peers.PeakPartitioned(threads=1, partitions=16, probes=[1, 4])
    probing.build(x, "l2")
    assert probing.knob == "probe" and probing.settings(False) == [1, 4]
    assert (probing.search(x[:5], 3, 4)[:, 0] == np.arange(5)).all()


@pytest.mark.parametrize("name,module,setting", [("scann-tree", "scann", 1), ("usearch", "usearch", 16)])
def test_peer_adapters_mark_short_results_missing(name, module, setting):
    """Peers pad short result lists (ScaNN: id 0 with a NaN distance; usearch: repeated keys):
    the adapters report -1 there, so recall never counts a padded id (or fails on a repeat)."""
    pytest.importorskip(module)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    method = peers.METHODS[name](threads=1)
    method.build(x[:5] if name == "usearch" else x, "ip")  # usearch: 5 rows; ScaNN: 34 leaves of ~9 rows
    ids = method.search(x[:20], 10, setting)
    assert ids.shape == (20, 10) and (ids == -1).any()
    for row in ids:
        found = row[row >= 0]
        assert len(set(found.tolist())) == found.size and (row[found.size :] == -1).all()
