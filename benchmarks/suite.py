"""peakknn against its peers: recall / queries-per-second sweeps, a summary table and plots.

    python benchmarks/suite.py --dataset debian-minilm-384-angular.hdf5
    python benchmarks/suite.py --synthetic 200000x128        # clustered unit vectors, cosine
    python benchmarks/suite.py --quick                        # CI-sized: 20,000 x 64, few settings
    python benchmarks/suite.py --methods peakknn,faiss-flat   # a subset (names in peers.METHODS)
    python benchmarks/suite.py --rounds 3                     # median of 3 sweeps of all methods

For each dataset, in one process and with the same thread count: every installed method is built
once, then swept over its knob; each setting answers the whole query batch (median of --repeat
timed runs after a warm-up). --rounds R sweeps all methods R times and reports the median over
rounds, so slow spells of a shared machine do not land on one method only. Recall@k is
`peakknn.evaluation.recall_at_k` against the file's ground truth (or an exact fp32 search for
synthetic data), ties allowed, the same for every method.
Writes, under --out (default benchmarks/results):
  <dataset>.json        every point (method, setting, recall, queries/s and per round, build s, memory MiB)
  <dataset>.md          best queries/s at recall >= 0.90 / 0.95 / 0.99 per method
  <dataset>.png         recall vs queries/s, log scale, one line per method (ann-benchmarks style)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from peers import METHODS  # benchmarks/peers.py, beside this script

from peakknn.data import Dataset, clustered, load_hdf5
from peakknn.evaluation import exact_search, recall_at_k, timed

LOG = logging.getLogger("suite")
THRESHOLDS = (0.90, 0.95, 0.99)


def prepared(ds: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """float32 C-contiguous train/test; cosine becomes normalised inner product."""
    train, test = np.ascontiguousarray(ds.train, np.float32), np.ascontiguousarray(ds.test, np.float32)
    if ds.metric == "cos":
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
        return train, test, "ip"
    return train, test, ds.metric


def synthetic(spec: str, nq: int) -> Dataset:
    """The clustered synthetic set named "NxD" (n // 1000 clusters, at least 10), nq queries."""
    n, d = (int(v) for v in spec.lower().split("x"))
    return clustered(n, d, nq, clusters=max(10, n // 1000))


def with_truth(ds: Dataset, nq: int, k: int) -> Dataset:
    """ds with its first nq queries and their ground truth (exact fp32 search where the file
    has none, or fewer than k neighbours per query)."""
    ds.test = ds.test[:nq]
    ds.neighbors = None if ds.neighbors is None else ds.neighbors[:nq]
    if ds.neighbors is None or ds.neighbors.shape[1] < k:
        ds.neighbors = exact_search(torch.from_numpy(ds.train), torch.from_numpy(ds.test), k, ds.metric)
    return ds


def run_dataset(ds: Dataset, names: list[str], k: int, repeat: int, quick: bool, threads: int, rounds: int = 1) -> list[dict]:
    """Build every method once, then sweep them all `rounds` times (method after method, each
    setting timed as the median of `repeat` runs after a warm-up); a point's q/s is the median
    over rounds, so drift of the shared machine during the run falls on every method alike.
    ds: with its ground truth (`with_truth`)."""
    train, test, metric = prepared(ds)
    built = []
    for name in names:
        cls = METHODS[name]
        if cls.missing():
            print(f"  skip {name}: pip install {' '.join(cls.missing())}", flush=True)
            continue
        method = cls(threads=threads)
        t0 = time.perf_counter()
        method.build(train, metric)
        built.append((method, time.perf_counter() - t0))
    points = {}
    for r in range(rounds):
        for method, build in built:
            for setting in method.settings(quick):
                method.search(test[: min(16, len(test))], k, setting)  # warm-up
                ids, secs = timed(lambda: method.search(test, k, setting), repeat)
                point = points.get((method.name, str(setting)))
                if point is None:  # recall from the first round (every method here is deterministic)
                    rec = recall_at_k(np.asarray(ids, dtype=np.int64), ds.neighbors, ds.train, ds.test, ds.metric)
                    point = points[(method.name, str(setting))] = {
                        "method": method.name, "knob": method.knob, "setting": setting, "recall": rec,
                        "qps_rounds": [], "build_s": build, "memory_mb": method.memory_mb}  # fmt: skip
                point["qps_rounds"].append(len(test) / secs)
                point["qps"] = float(np.median(point["qps_rounds"]))
                tag = f"[{r + 1}/{rounds}] " if rounds > 1 else ""
                print(f"  {tag}{method.name:24s} {method.knob}={setting!s:6s} recall {point['recall']:.4f}  {len(test) / secs:10,.0f} q/s", flush=True)
    return list(points.values())


def best_table(points: list[dict], title: str) -> str:
    methods = list(dict.fromkeys(p["method"] for p in points))
    head = " | ".join(f"q/s @ recall >= {t:.2f}" for t in THRESHOLDS)
    lines = [title, "", f"| method | {head} | build s | memory MiB |", "|---|" + "---|" * (len(THRESHOLDS) + 2)]
    for m in methods:
        mine = [p for p in points if p["method"] == m]
        cells = []
        for t in THRESHOLDS:
            ok = [p for p in mine if p["recall"] >= t]
            best = max(ok, key=lambda p: p["qps"]) if ok else None
            cells.append(f"{best['qps']:,.0f} ({best['knob']}={best['setting']})" if best and best["setting"] is not None else (f"{best['qps']:,.0f}" if best else "–"))
        lines.append(f"| {m} | {' | '.join(cells)} | {mine[0]['build_s']:.1f} | {mine[0]['memory_mb']:,.0f} |")
    return "\n".join(lines)


def plot(points: list[dict], title: str, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  no plot: pip install matplotlib", flush=True)
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab20").colors  # one colour per method (the default cycle has 10)
    for i, m in enumerate(dict.fromkeys(p["method"] for p in points)):
        mine = sorted((p for p in points if p["method"] == m), key=lambda p: p["recall"])
        style = "o-" if m.startswith("peakknn") else ".--"
        ax.plot([p["recall"] for p in mine], [p["qps"] for p in mine], style, label=m, color=colours[i % len(colours)],
                linewidth=2 if m.startswith("peakknn") else 1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries / s (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    for ds in sets:
        ds = with_truth(ds, args.nq, args.k)
        n, d = ds.train.shape
        title = f"{ds.name}: n={n:,} d={d} queries={len(ds.test):,} k={args.k} metric={ds.metric} threads={args.threads}"
        print(title, flush=True)
        points = run_dataset(ds, names, args.k, args.repeat, args.quick, args.threads, args.rounds)
        stem = out / ds.name
        stem.with_suffix(".json").write_text(json.dumps({"title": title, "points": points}, indent=1))
        table = best_table(points, title)
        stem.with_suffix(".md").write_text(table + "\n")
        plot(points, title, stem.with_suffix(".png"))
        print("\n" + table + "\n", flush=True)


if __name__ == "__main__":
    main()
