"""peakknn and its peers behind one small interface, each with its speed/recall knob.

Used by `peakknn bench --partitioned` and benchmarks/suite.py. Every method receives the same
float32 C-contiguous data; cosine data arrive normalised with metric "ip"; "l2" means squared
Euclidean. Optional packages are imported only inside `build`/`search`; `available` skips a
method whose package is missing, with a message naming the pip package.

    m = METHODS["hnswlib"](threads=2)
    m.build(train, "ip")
    ids = m.search(test, k=10, setting=80)    # setting: one value of m.settings(quick)

memory_mb: the index's own accounting of its size (peakknn `memory_bytes`, FAISS's serialised
size, usearch `memory_usage`), or NaN where the library has none (hnswlib, ScaNN): the caller
then measures the process's RSS growth over the build (`rss_bytes`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os

import numpy as np
import torch

from .evaluation import exact_search

__all__ = ["METHODS", "PIP", "Method", "available", "default_probes", "rss_bytes"]

PIP = {"faiss": "faiss-cpu", "hnswlib": "hnswlib", "usearch": "usearch", "scann": "scann"}  # module -> pip package


class Method:
    """name; knob (what `setting` means); build(train, metric); search(test, k, setting) -> i64 ids
    [nq, k] (-1 where fewer than k were found); needs: modules it imports."""

    name = "?"
    knob = "-"
    needs: tuple[str, ...] = ()

    def __init__(self, threads: int = 2):
        self.threads = threads
        self.memory_mb = float("nan")

    @classmethod
    def missing(cls) -> list[str]:
        """pip packages of the modules in `needs` that cannot be imported."""
        return [PIP.get(m, m) for m in cls.needs if importlib.util.find_spec(m) is None]

    def settings(self, quick: bool) -> list:
        return [None]

    def build(self, train: np.ndarray, metric: str) -> None:
        raise NotImplementedError

    def search(self, test: np.ndarray, k: int, setting) -> np.ndarray:
        raise NotImplementedError


def available(names, threads: int, say=print) -> list[Method]:
    """Instances of METHODS[name] for each name whose packages are installed; for the others
    say(f"skip {name}: pip install {packages}")."""
    methods = []
    for name in names:
        cls = METHODS[name]
        if cls.missing():
            say(f"  skip {name}: pip install {' '.join(cls.missing())}")
        else:
            methods.append(cls(threads=threads))
    return methods


def rss_bytes() -> int | None:
    """Resident set size of this process now (/proc/self/statm), or None where unreadable. First
    returns freed heap memory to the system (glibc malloc_trim, where present), so that the
    growth over a build counts what the build kept, not what it freed or reused."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def default_probes(partitions: int) -> list[int]:
    """The calibration's probe ladder (`partitioned.calibration.probe_ladder`: 1, 2, 3, 4, 6, 8,
    12, 16, 24, ...) up to max(2, partitions // 4). With 256 partitions on
    debian-minilm-384-angular (56,000 rows) recall@10 runs from 0.64 (probe 1) through 0.88 (3)
    to 0.994 (64)."""
    from .partitioned.calibration import probe_ladder

    top = max(2, partitions // 4)
    return [p for p in probe_ladder(max(partitions, top)) if p <= top]


class PeakFlat(Method):
    name, knob = "peakknn flat bf16", "recall_target"

    def settings(self, quick):
        return [0.8, 0.9, 0.95, 0.99] if quick else [0.7, 0.8, 0.9, 0.95, 0.99, 0.999]

    def build(self, train, metric):
        from .index import Index

        self.index = Index(train.shape[1], metric=metric, precision="bf16")
        self.index.reserve(train.shape[0])
        self.index.add(torch.from_numpy(train))
        self.memory_mb = self.index.memory_bytes / 2**20

    def search(self, test, k, setting):
        return self.index.search(torch.from_numpy(test), k, recall_target=setting).ids.numpy()


class PeakPartitioned(Method):
    """peakknn.PartitionedIndex, trained on all rows added. The knob is recall_target (the
    index picks its probe from its calibrated recall curve: what a user asking for a recall
    gets), or, where `probes` are given, partitions searched (a mean over queries: adaptive
    probing is the index default). partitions, codes, spill, keep (keep_vectors):
    PartitionSettings fields, None = the index's default."""

    knob = "recall_target"
    TARGETS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
    codes: str | None = None
    spill: bool | None = None
    keep = True

    def __init__(self, threads: int = 2, *, partitions: int | None = None, codes: str | None = None, probes: list[int] | None = None):
        super().__init__(threads)
        self.partitions, self.probes = partitions, probes
        if probes:
            self.knob = "probe"
        self.codes = codes or self.codes
        self.name = "peakknn partitioned"

    def settings(self, quick):
        if self.probes:
            return list(self.probes)
        if not self.index.recall_curves:  # compressed-only indexes loaded from old files
            self.knob = "probe"
            probes = default_probes(self.index.settings.partitions)
            return sorted(set(probes[::2] + probes[-1:])) if quick else probes
        return list(self.TARGETS[::2]) if quick else list(self.TARGETS)

    def build(self, train, metric):
        from .partitioned import PartitionedIndex, PartitionSettings

        given = {"partitions": self.partitions, "codes": self.codes, "spill": self.spill}
        options = {key: value for key, value in given.items() if value is not None}
        settings = PartitionSettings(keep_vectors=self.keep, **options)
        self.index = PartitionedIndex(train.shape[1], metric=metric, settings=settings)
        self.index.add(torch.from_numpy(train))
        if not self.index.is_trained:  # fewer rows than the index's train_size
            self.index.train()
        if self.keep:  # the recall curves behind recall_target belong to the build
            self.index.calibrate()
        s = self.index.settings
        self.name = f"peakknn partitioned {s.codes} P={s.partitions}" + (" no spill" if self.spill is False else "") + ("" if self.keep else " codes-only")
        self.memory_mb = self.index.memory_bytes / 2**20

    def search(self, test, k, setting):
        if self.knob == "probe":
            return self.index.search(torch.from_numpy(test), k, probe=setting).ids.numpy()
        return self.index.search(torch.from_numpy(test), k, recall_target=setting).ids.numpy()


class PeakPartitionedNoSpill(PeakPartitioned):
    spill = False


class PeakPartitionedPQ(PeakPartitioned):
    codes = "pq4"


class PeakPartitionedPQOnly(PeakPartitioned):
    """Compressed-only: 4-bit PQ codes, no fp32 vectors, no re-ranking."""

    codes, keep = "pq4", False


class TorchExact(Method):
    """fp32 matmul + topk over the caller's array (memory: those vectors)."""

    name = "torch exact (mm+topk)"

    def build(self, train, metric):
        self.x, self.metric = torch.from_numpy(train), metric
        self.memory_mb = train.nbytes / 2**20

    def search(self, test, k, setting):
        return exact_search(self.x, torch.from_numpy(test), k, self.metric)


class _Faiss(Method):
    needs = ("faiss",)
    factory = "Flat"

    def build(self, train, metric):
        import faiss

        faiss.omp_set_num_threads(self.threads)
        kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.index_factory(train.shape[1], self.factory_for(*train.shape), kind)
        if not self.index.is_trained:
            rng = np.random.default_rng(0)
            sample = train[rng.choice(train.shape[0], min(train.shape[0], 100_000), replace=False)]
            self.index.train(sample)
        self.index.add(train)
        self.memory_mb = faiss.serialize_index(self.index).nbytes / 2**20

    def factory_for(self, n: int, d: int) -> str:
        return self.factory

    def search(self, test, k, setting):
        self.apply(setting)
        return self.index.search(test, k)[1]

    def apply(self, setting) -> None:
        pass


class FaissFlat(_Faiss):
    name = "faiss Flat"


class FaissIVF(_Faiss):
    name, knob = "faiss IVF,Flat", "nprobe"

    def factory_for(self, n, d):
        return f"IVF{_nlist(n)},Flat"

    def settings(self, quick):
        return [1, 4, 16, 64] if quick else [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]

    def apply(self, setting):
        self.index.nprobe = setting


def _nlist(n: int) -> int:
    """FAISS IVF lists: about 4 sqrt(n), at least 16."""
    return max(16, int(4 * math.sqrt(n)))


class FaissIVFPQ(_Faiss):
    """FAISS's fast-scan PQ (4-bit codes of 2 dims each; 1 dim each for odd d) with exact
    re-ranking of 10k candidates: IVF{4 sqrt(n)},PQ{d/2}x4fs,RFlat."""

    name, knob = "faiss IVF,PQfs,RFlat", "nprobe"

    def factory_for(self, n, d):
        self.name = f"faiss IVF{_nlist(n)},PQ{d // 2 if d % 2 == 0 else d}x4fs,RFlat"
        return self.name.removeprefix("faiss ")

    def settings(self, quick):
        return [1, 4, 16, 64] if quick else [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]

    def apply(self, setting):
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = setting
        self.index.k_factor = 10  # re-rank 10k PQ candidates exactly (the default 1 re-ranks only k)


class FaissHNSW(_Faiss):
    name, knob, factory = "faiss HNSW32", "efSearch", "HNSW32,Flat"

    def settings(self, quick):
        return [16, 64, 256] if quick else [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]

    def apply(self, setting):
        self.index.hnsw.efSearch = setting


class Hnswlib(Method):
    """hnswlib M=32, ef_construction=200 (memory: RSS growth over the build)."""

    name, knob, needs = "hnswlib M=32", "ef", ("hnswlib",)

    def settings(self, quick):
        return [10, 40, 160] if quick else [10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320]

    def build(self, train, metric):
        import hnswlib

        self.index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=train.shape[1])
        self.index.init_index(max_elements=train.shape[0], M=32, ef_construction=200, random_seed=0)
        self.index.set_num_threads(self.threads)
        self.index.add_items(train, np.arange(train.shape[0]))

    def search(self, test, k, setting):
        self.index.set_ef(max(setting, k))
        return self.index.knn_query(test, k=k, num_threads=self.threads)[0].astype(np.int64)


class USearch(Method):
    name, knob, needs = "usearch bf16", "expansion_search", ("usearch",)

    def settings(self, quick):
        return [16, 64, 256] if quick else [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]

    def build(self, train, metric):
        from usearch.index import Index

        self.index = Index(ndim=train.shape[1], metric="l2sq" if metric == "l2" else "ip", dtype="bf16", connectivity=16)
        self.index.add(np.arange(train.shape[0]), train, threads=self.threads)
        self.memory_mb = self.index.memory_usage / 2**20

    def search(self, test, k, setting):
        self.index.expansion_search = setting
        found = self.index.search(test, k, threads=self.threads)
        ids = found.keys.astype(np.int64)
        ids[np.arange(k)[None, :] >= found.counts[:, None]] = -1  # short results are padded
        return ids


class _ScaNN(Method):
    """ScaNN (memory: RSS growth over the build)."""

    needs = ("scann",)

    def _builder(self, train, metric):
        from scann.scann_ops.py import scann_ops_pybind

        return scann_ops_pybind.builder(train, 10, "squared_l2" if metric == "l2" else "dot_product")

    def search(self, test, k, setting):
        kwargs = {} if setting is None else {"leaves_to_search": setting, "pre_reorder_num_neighbors": 100}
        ids, dist = self.searcher.search_batched_parallel(test, final_num_neighbors=k, **kwargs)
        ids = ids.astype(np.int64)
        ids[np.isnan(dist)] = -1  # ScaNN pads short results (a small leaf) with id 0 and NaN
        return ids


class ScaNNBrute(_ScaNN):
    name = "scann brute force"

    def build(self, train, metric):
        self.searcher = self._builder(train, metric).score_brute_force().build()


class ScaNNTree(_ScaNN):
    """ScaNN tree (2 sqrt(n) leaves) + anisotropic 4-bit AH codes (2 dims each) + exact
    re-ordering of 100 candidates; the knob is leaves searched."""

    name, knob = "scann tree+AH+reorder", "leaves_to_search"

    def settings(self, quick):
        top = self.leaves
        return [s for s in ([2, 8, 32, 128] if quick else [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256]) if s <= top]

    def build(self, train, metric):
        n = train.shape[0]
        self.leaves = max(16, int(2 * math.sqrt(n)))
        builder = self._builder(train, metric).tree(num_leaves=self.leaves, num_leaves_to_search=min(32, self.leaves), training_sample_size=min(n, 250_000))
        self.searcher = builder.score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build()


METHODS: dict[str, type[Method]] = {
    "peakknn": PeakFlat,
    "peakknn-ivf": PeakPartitioned,
    "peakknn-ivf-nospill": PeakPartitionedNoSpill,
    "peakknn-ivf-pq": PeakPartitionedPQ,
    "peakknn-ivf-pq-only": PeakPartitionedPQOnly,
    "torch": TorchExact,
    "faiss-flat": FaissFlat,
    "faiss-ivf": FaissIVF,
    "faiss-ivfpq": FaissIVFPQ,
    "faiss-hnsw": FaissHNSW,
    "hnswlib": Hnswlib,
    "usearch": USearch,
    "scann-brute": ScaNNBrute,
    "scann-tree": ScaNNTree,
}
