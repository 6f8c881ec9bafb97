"""peakknn: k-nearest-neighbour search at the hardware's peak arithmetic rate.

    import peakknn
    values, indices = peakknn.approx_topk(x, k=10, recall_target=0.95)   # drop-in for torch.topk
    result = peakknn.search(queries, database, k=10, metric="l2", precision="bf16")
    index = peakknn.Index(128, metric="cos"); index.add(vectors); index.search(queries, 10)
    big = peakknn.PartitionedIndex(128, settings=peakknn.PartitionSettings(codes="pq4")); big.add(vectors)
    index = peakknn.load("saved.index")   # an Index or a PartitionedIndex, as saved
    layer = peakknn.nn.TopK(k=32)         # top-k activation (imported on first use)

Importing peakknn starts no CUDA and loads no optional dependency. The layers, and where each
piece lives, are described in docs/ARCHITECTURE.md.
"""

from ._types import SearchResult
from .index import Index
from .partitioned import PartitionedIndex, PartitionSettings, SearchSettings
from .saved import load
from .search import search
from .topk import approx_topk, bins_for_recall, expected_recall

__version__ = "0.1.0"
__all__ = ["Index", "PartitionSettings", "PartitionedIndex", "SearchResult", "SearchSettings", "approx_topk", "bins_for_recall", "expected_recall", "load", "search"]


def __getattr__(name):  # peakknn.Client (httpx) and peakknn.nn are imported on first use, not with peakknn
    if name == "Client":
        return __import__("peakknn.client", fromlist=["Client"]).Client
    if name == "nn":
        import importlib

        return importlib.import_module("peakknn.nn")
    raise AttributeError(f"module 'peakknn' has no attribute {name!r}")
