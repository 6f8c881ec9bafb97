"""peakknn against its peers: recall / queries-per-second sweeps, a summary table and plots.

    python benchmarks/suite.py --dataset debian-minilm-384-angular.hdf5
    python benchmarks/suite.py --synthetic 200000x128        # clustered unit vectors, cosine
    python benchmarks/suite.py --quick                        # CI-sized: 20,000 x 64, few settings
    python benchmarks/suite.py --methods peakknn,faiss-flat   # a subset (names in peers.METHODS)
    python benchmarks/suite.py --rounds 3                     # median of 3 sweeps of all methods

For each dataset, in one process and with the same thread count: every installed method (adapters
in peakknn.peers) is built once, then swept over its knob (`peakknn.bench.sweep`); each setting
answers the whole query batch (median of --repeat timed runs after a warm-up). --rounds R sweeps
all methods R times and reports the median over rounds, so slow spells of a shared machine do not
land on one method only. Recall@k is
`peakknn.evaluation.recall_at_k` against the file's ground truth (or an exact fp32 search for
synthetic data), ties allowed, the same for every method.
Writes, under --out (default benchmarks/results):
  <dataset>.json        every point (method, setting, recall, queries/s and per round, build s,
                        memory MiB: the index's own accounting, else "memory_by": "rss", the
                        growth of the process's resident memory over the build)
  <dataset>.md          best queries/s at recall >= 0.90 / 0.95 / 0.99 per method
  <dataset>.png         recall vs queries/s, log scale, one line per method (ann-benchmarks style)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from peakknn import bench
from peakknn.bench import best_table, cpu_model, plot, prepared, sweep  # noqa: F401 (prepared: for scan_dims.py)
from peakknn.data import Dataset, clustered, load_hdf5
from peakknn.peers import METHODS, available


def synthetic(spec: str, nq: int) -> Dataset:
    """The clustered synthetic set named "NxD" (n // 1000 clusters, at least 10), nq queries."""
    n, d = (int(v) for v in spec.lower().split("x"))
    return clustered(n, d, nq, clusters=max(10, n // 1000))


def with_truth(ds: Dataset, nq: int, k: int) -> Dataset:
    """ds with its first nq queries and their ground truth (`peakknn.bench.with_truth`)."""
    ds.test = ds.test[:nq]
    ds.neighbors = None if ds.neighbors is None else ds.neighbors[:nq]
    return bench.with_truth(ds, k)


def run_dataset(ds: Dataset, names: list[str], k: int, repeat: int, quick: bool, threads: int, rounds: int = 1) -> list[dict]:
    """`peakknn.bench.sweep` of every installed method of `names` (the partitioned ones with
    their default settings). ds: with its ground truth (`with_truth`)."""
    methods = available(names, threads, say=lambda s: print(s, flush=True))
    return sweep(methods, ds, k, repeat, rounds, quick, say=lambda s: print(s, flush=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", action="append", default=[], help="ann-benchmarks HDF5 file (repeatable)")
    p.add_argument("--synthetic", action="append", default=[], help="NxD clustered synthetic set (repeatable)")
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per setting and round (median)")
    p.add_argument("--rounds", type=int, default=1, help="sweeps of all methods (q/s: median over rounds)")
    p.add_argument("--quick", action="store_true", help="CI-sized run: 20,000 x 64 synthetic, fewer settings")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    sets = [load_hdf5(f) for f in args.dataset]
    for spec in args.synthetic or ([] if args.dataset else ["20000x64" if args.quick else "200000x128"]):
        sets.append(synthetic(spec, args.nq))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_model()
    for ds in sets:
        ds = with_truth(ds, args.nq, args.k)
        n, d = ds.train.shape
        title = f"{ds.name}: n={n:,} d={d} queries={len(ds.test):,} k={args.k} metric={ds.metric} CPU: {cpu}, threads={args.threads}"
        print(title, flush=True)
        points = run_dataset(ds, names, args.k, args.repeat, args.quick, args.threads, args.rounds)
        stem = out / ds.name
        stem.with_suffix(".json").write_text(json.dumps({"title": title, "cpu": cpu, "threads": args.threads, "points": points}, indent=1))
        table = best_table(points, title)
        stem.with_suffix(".md").write_text(table + "\n")
        plot(points, title, stem.with_suffix(".png"), args.k)
        print("\n" + table + "\n", flush=True)


if __name__ == "__main__":
    main()
