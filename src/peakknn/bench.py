"""`peakknn bench`: recall, queries/s, build time and memory of peakknn next to its peers.

Every method answers the same queries in the same process; recall is computed by
`evaluation.recall_at_k` (ties allowed) against the file's ground truth, or against an exact fp32
torch search for synthetic data. Times are medians over `repeat` runs of the whole query batch.

`--partitioned 4,8,16,32` adds a PartitionedIndex (peakknn.quant) searched with each number of
partitions, one row per setting: the recall / queries-per-second curve next to the peers.

Roofline columns (peakknn.perfmodel): the predicted floor of the search's shape on this
machine's measured ceilings (bf16 floor for peakknn bf16 rows, fp32 for exact methods), the
achieved % of that floor, and the term that sets it (matrix, memory or vector).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import torch

from . import perfmodel
from ._checks import ceil_div
from .data import Dataset, load_hdf5, synthetic
from .evaluation import exact_search, recall_at_k, timed
from .index import Index

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Row:
    method: str
    recall: float
    qps: float
    search_s: float
    build_s: float
    memory_mb: float
    floor_s: float = float("nan")  # predicted roofline floor of the search
    bottleneck: str = ""

    @property
    def pct_floor(self) -> float:
        return 100.0 * self.floor_s / self.search_s


def _progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)


def run_bench(
    ds: Dataset,
    *,
    k: int = 10,
    recall_target: float = 0.99,
    precision: str = "bf16",
    repeat: int = 3,
    peers: bool = True,
    probes: list[int] | None = None,
    codes: str = "bf16",
    partitions: int | None = None,
) -> list[Row]:
    """Rows for the flat Index, then (probes given) a PartitionedIndex at each number of
    partitions searched, then the peers (torch exact, FAISS flat)."""
    train_t, test_t = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    n, d = ds.train.shape
    nq = ds.test.shape[0]
    rows: list[Row] = []
    neighbors = ds.neighbors
    exact_ids, exact_s = None, None
    if peers or neighbors is None:
        exact_ids, exact_s = timed(lambda: exact_search(train_t, test_t, k, ds.metric, progress=lambda it: _progress(it, "torch exact", len(it))), 1)
        if neighbors is None:
            neighbors = exact_ids

    def recall(ids):
        return recall_at_k(np.asarray(ids), neighbors, ds.train, ds.test, ds.metric)

    t0 = time.perf_counter()
    index = Index(d, metric=ds.metric, precision=precision)
    step = max(1, n // 20)
    for i in _progress(range(0, n, step), "peakknn build", ceil_div(n, step)):
        index.add(train_t[i : i + step])
    build = time.perf_counter() - t0
    index.search(test_t[: min(nq, 8)], k, recall_target=recall_target)  # warm-up
    res, secs = timed(lambda: index.search(test_t, k, recall_target=recall_target), repeat)
    rows.append(Row(f"peakknn {precision} r={recall_target}", recall(res.ids.numpy()), nq / secs, secs, build, index.memory_bytes / 2**20))

    if probes:
        rows.extend(partitioned_rows(ds, k, probes, codes, partitions, repeat, recall))
    if peers:
        rows.append(Row("torch exact (mm+topk)", recall(exact_ids), nq / exact_s, exact_s, 0.0, n * d * 4 / 2**20))
        rows.extend(_faiss_rows(ds, k, repeat, recall))
    ceilings = perfmodel.ceilings("cpu")
    for row in rows:
        if "partitioned" in row.method:
            continue  # the roofline model covers brute force only
        exact = not row.method.startswith("peakknn")
        p = perfmodel.predict(nq, n, d, k, 1.0 if exact else recall_target, "fp32" if exact else precision, ceilings)
        row.floor_s, row.bottleneck = p.floor_s, p.bottleneck
    return rows


def default_partitions(n: int) -> int:
    """About 2 sqrt(n) partitions (ScaNN's rule of thumb), a power of two >= 16."""
    return max(16, 1 << round(np.log2(max(1.0, 2 * n**0.5))))


def partitioned_rows(ds: Dataset, k: int, probes: list[int], codes: str, partitions: int | None, repeat: int, recall) -> list[Row]:
    """One Row per number of partitions searched (the recall / queries-per-second curve)."""
    from .partitioned import PartitionedIndex, PartitionSettings

    n, d = ds.train.shape
    test_t = torch.from_numpy(ds.test)
    settings = PartitionSettings(partitions=partitions or default_partitions(n), codes=codes, train_size=None)
    t0 = time.perf_counter()
    index = PartitionedIndex(d, metric=ds.metric, settings=settings)
    index.add(torch.from_numpy(ds.train))
    index.train()  # on the rows added (a sample of at most MAX_TRAIN_PER_PARTITION per partition)
    build = time.perf_counter() - t0
    rows = []
    for probe in probes:
        index.search(test_t[: min(8, len(test_t))], k, probe=probe)  # warm-up
        res, secs = timed(lambda: index.search(test_t, k, probe=probe), repeat)
        name = f"peakknn partitioned {codes} P={settings.partitions} probe={probe}"
        rows.append(Row(name, recall(res.ids.numpy()), len(test_t) / secs, secs, build, index.memory_bytes / 2**20))
    return rows


def _faiss_rows(ds: Dataset, k: int, repeat: int, recall) -> list[Row]:
    try:
        import faiss
    except ImportError:
        LOG.warning("faiss is not installed (pip install faiss-cpu): skipping the FAISS baseline")
        return []
    faiss.omp_set_num_threads(torch.get_num_threads())
    train, test = ds.train, ds.test
    if ds.metric == "cos":
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
    t0 = time.perf_counter()
    if ds.metric == "l2":
        name, index = "faiss IndexFlatL2", faiss.IndexFlatL2(train.shape[1])
    else:
        name, index = "faiss IndexFlatIP", faiss.IndexFlatIP(train.shape[1])
    index.add(np.ascontiguousarray(train, dtype=np.float32))
    build = time.perf_counter() - t0
    (_, ids), secs = timed(lambda: index.search(np.ascontiguousarray(test, dtype=np.float32), k), repeat)
    return [Row(name, recall(ids), test.shape[0] / secs, secs, build, train.nbytes / 2**20)]


def format_table(rows: list[Row], title: str) -> str:
    lines = [
        title, "",
        "| method | recall@k | queries/s | search s | floor s | % of floor | bottleneck | build s | memory MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        floor = "- | - | -" if r.floor_s != r.floor_s else f"{r.floor_s:.3f} | {r.pct_floor:.0f}% | {r.bottleneck}"
        lines.append(f"| {r.method} | {r.recall:.4f} | {r.qps:,.0f} | {r.search_s:.3f} | {floor} | {r.build_s:.2f} | {r.memory_mb:,.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    torch.set_num_threads(args.threads)
    perfmodel.ceilings("cpu", refresh=args.remeasure)  # measured once per machine, then cached
    if args.dataset:
        ds = load_hdf5(args.dataset)
        if args.nq:
            ds.test, ds.neighbors = ds.test[: args.nq], None if ds.neighbors is None else ds.neighbors[: args.nq]
    else:
        ds = synthetic(args.n, args.d, args.nq or 1000, seed=args.seed)
    if ds.neighbors is not None and ds.neighbors.shape[1] < args.k:
        raise ValueError(f"the file's ground truth has {ds.neighbors.shape[1]} neighbours, fewer than k={args.k}")
    probes = [int(p) for p in args.partitioned.split(",")] if args.partitioned else None
    rows = run_bench(
        ds, k=args.k, recall_target=args.recall_target, precision=args.precision, repeat=args.repeat,
        peers=not args.no_peers, probes=probes, codes=args.codes, partitions=args.partitions,
    )  # fmt: skip
    n, d = ds.train.shape
    title = f"{ds.name}: n={n:,} d={d} queries={ds.test.shape[0]:,} k={args.k} metric={ds.metric} threads={args.threads}"
    print(format_table(rows, title))
    print(f"\nceilings: {perfmodel.summary(perfmodel.ceilings('cpu'))}")
    if args.json:
        payload = {"dataset": ds.name, "n": n, "d": d, "nq": ds.test.shape[0], "k": args.k, "metric": ds.metric,
                   "threads": args.threads, "rows": [dataclasses.asdict(r) for r in rows],
                   "ceilings": dataclasses.asdict(perfmodel.ceilings("cpu"))}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0
