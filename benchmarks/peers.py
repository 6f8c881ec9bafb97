"""Adapters: peakknn and its peers behind one small interface, each with its speed/recall knob.

Every method receives the same float32 data. Cosine data arrive normalised with metric "ip";
"l2" means squared Euclidean. A peer whose package is missing is skipped with a message.

    m = METHODS["hnswlib"](threads=2)
    m.build(train, "ip")
    ids = m.search(test, k=10, setting=80)    # setting: one value of m.settings(quick)
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch

import peakknn
from peakknn.evaluation import exact_search


class Method:
    """name; knob (what `setting` means); build(train, metric); search(test, k, setting) -> i64 ids."""

    name = "?"
    knob = "-"
    needs: tuple[str, ...] = ()

    def __init__(self, threads: int = 2):
        self.threads = threads
        self.memory_mb = float("nan")

    @classmethod
    def missing(cls) -> list[str]:
        return [m for m in cls.needs if importlib.util.find_spec(m) is None]

    def settings(self, quick: bool) -> list:
        return [None]

    def build(self, train: np.ndarray, metric: str) -> None:
        raise NotImplementedError

    def search(self, test: np.ndarray, k: int, setting) -> np.ndarray:
        raise NotImplementedError


class PeakFlat(Method):
    name, knob = "peakknn flat bf16", "recall_target"

    def settings(self, quick):
        return [0.8, 0.9, 0.95, 0.99] if quick else [0.7, 0.8, 0.9, 0.95, 0.99, 0.999]

    def build(self, train, metric):
        self.index = peakknn.Index(train.shape[1], metric=metric, precision="bf16")
        self.index.reserve(train.shape[0])
        self.index.add(torch.from_numpy(train))
        self.memory_mb = self.index.memory_bytes / 2**20

    def search(self, test, k, setting):
        return self.index.search(torch.from_numpy(test), k, recall_target=setting).ids.numpy()


class PeakPartitioned(Method):
    """peakknn.PartitionedIndex with about 2 sqrt(n) partitions; the knob is partitions searched
    (per query on average: adaptive probing is the index default)."""

    knob = "probe"
    codes, keep, spill = "bf16", True, None  # code type; keep fp32 vectors for re-ranking; spill (None = default)

    @property
    def name(self):
        return f"peakknn partitioned {self.codes}" + (" no spill" if self.spill is False else "")

    def settings(self, quick):
        top = self.partitions
        return [p for p in ([1, 4, 16, 64] if quick else [2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 48, 64]) if p <= top]

    def build(self, train, metric):
        from peakknn.bench import default_partitions

        self.partitions = default_partitions(train.shape[0])
        settings = peakknn.PartitionSettings(
            partitions=self.partitions, codes=self.codes, keep_vectors=self.keep, spill=self.spill, train_size=None
        )
        self.index = peakknn.PartitionedIndex(train.shape[1], metric=metric, settings=settings)
        self.index.add(torch.from_numpy(train))
        self.index.train()
        self.memory_mb = self.index.memory_bytes / 2**20

    def search(self, test, k, setting):
        return self.index.search(torch.from_numpy(test), k, probe=setting).ids.numpy()


class PeakPartitionedNoSpill(PeakPartitioned):
    spill = False


class PeakPartitionedPQ(PeakPartitioned):
    codes = "pq4"


class PeakPartitionedPQOnly(PeakPartitioned):
    """Compressed-only: 4-bit PQ codes, no fp32 vectors, no re-ranking."""

    codes, keep = "pq4", False

    @property
    def name(self):
        return "peakknn partitioned pq4 codes-only"


class TorchExact(Method):
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
        self.index = faiss.index_factory(train.shape[1], self.factory_for(train.shape[0]), kind)
        if not self.index.is_trained:
            rng = np.random.default_rng(0)
            sample = train[rng.choice(train.shape[0], min(train.shape[0], 100_000), replace=False)]
            self.index.train(sample)
        self.index.add(train)
        self.memory_mb = _faiss_bytes(self.index) / 2**20

    def factory_for(self, n: int) -> str:
        return self.factory

    def search(self, test, k, setting):
        self.apply(setting)
        return self.index.search(test, k)[1]

    def apply(self, setting) -> None:
        pass


def _faiss_bytes(index) -> int:
    import faiss

    return faiss.serialize_index(index).nbytes


class FaissFlat(_Faiss):
    name = "faiss Flat"


class FaissIVF(_Faiss):
    name, knob = "faiss IVF,Flat", "nprobe"

    def factory_for(self, n):
        self.nlist = max(16, int(4 * math.sqrt(n)))
        return f"IVF{self.nlist},Flat"

    def settings(self, quick):
        return [1, 4, 16, 64] if quick else [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]

    def apply(self, setting):
        self.index.nprobe = setting


class FaissIVFPQ(_Faiss):
    """FAISS's fast-scan PQ (4-bit, 2 dims per code) with exact re-ranking of the candidates."""

    name, knob = "faiss IVF,PQfs,RFlat", "nprobe"

    def factory_for(self, n):
        self.nlist = max(16, int(4 * math.sqrt(n)))
        return f"IVF{self.nlist},PQ{self.dim // 2}x4fs,RFlat"

    def build(self, train, metric):
        self.dim = train.shape[1]
        super().build(train, metric)

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
    name, knob, needs = "hnswlib M=32", "ef", ("hnswlib",)

    def settings(self, quick):
        return [10, 40, 160] if quick else [10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320]

    def build(self, train, metric):
        import hnswlib

        self.index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=train.shape[1])
        self.index.init_index(max_elements=train.shape[0], M=32, ef_construction=200, random_seed=0)
        self.index.set_num_threads(self.threads)
        self.index.add_items(train, np.arange(train.shape[0]))
        self.memory_mb = train.shape[0] * (train.shape[1] * 4 + 32 * 2 * 4 + 16) / 2**20  # vectors + level-0 links

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
    needs = ("scann",)

    def _builder(self, train, metric):
        from scann.scann_ops.py import scann_ops_pybind

        self.k = 10
        return scann_ops_pybind.builder(train, self.k, "squared_l2" if metric == "l2" else "dot_product")

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
        self.memory_mb = train.nbytes / 2**20


class ScaNNTree(_ScaNN):
    name, knob = "scann tree+AH+reorder", "leaves_to_search"

    def settings(self, quick):
        top = self.leaves
        return [s for s in ([2, 8, 32, 128] if quick else [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256]) if s <= top]

    def build(self, train, metric):
        n = train.shape[0]
        self.leaves = max(16, int(2 * math.sqrt(n)))
        builder = self._builder(train, metric).tree(num_leaves=self.leaves, num_leaves_to_search=min(32, self.leaves), training_sample_size=min(n, 250_000))
        self.searcher = builder.score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build()
        self.memory_mb = (n * train.shape[1] / 2 * 0.5 + train.nbytes) / 2**20  # 4-bit codes per 2 dims + reorder vectors


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
