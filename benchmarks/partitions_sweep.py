"""Is `PartitionSettings()`'s partition count right? Best q/s of a PartitionedIndex at recall
>= 0.90 / 0.95 / 0.99 with partitions_for(n) / 2, partitions_for(n) and 2 * partitions_for(n),
on every data set given, swept over probes in interleaved rounds (peakknn.bench.sweep).

    python benchmarks/partitions_sweep.py FILE.hdf5 [FILE.hdf5 ...] [--rounds 3] [--nq 1000]

Prints one table per data set and the ratio of the default's q/s to the best of the three
(the issue's bar: >= 0.9), with the CPU model.
"""

from __future__ import annotations

import argparse

import torch

from peakknn.bench import THRESHOLDS, best_point, cpu_model, sweep, with_truth
from peakknn.data import load_hdf5
from peakknn.partitioned.settings import partitions_for
from peakknn.peers import PeakPartitioned, default_probes


def best(points, method, threshold):
    """Best q/s of method at recall >= threshold (0 where no setting reached it)."""
    point = best_point(points, method, threshold)
    return 0.0 if point is None else point["qps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, threads={args.threads}, rounds={args.rounds}")
    for path in args.datasets:
        ds = load_hdf5(path)
        ds.test, ds.neighbors = ds.test[: args.nq], ds.neighbors[: args.nq]
        ds = with_truth(ds, 10)
        n = ds.train.shape[0]
        default = partitions_for(n)
        methods = []
        for p in (default // 2, default, 2 * default):
            m = PeakPartitioned(args.threads, partitions=p, probes=default_probes(4 * p))  # probes up to p
            methods.append(m)
        points = sweep(methods, ds, 10, args.repeat, args.rounds, say=lambda s: None)
        print(f"\n{ds.name}: n={n:,} d={ds.train.shape[1]} metric={ds.metric}, default partitions {default}\n")
        print("| partitions | " + " | ".join(f"q/s @ {t:.2f}" for t in THRESHOLDS) + " |")
        print("|---|" + "---|" * len(THRESHOLDS))
        names = [m.name for m in methods]
        for m in names:
            print(f"| {m.split('P=')[1]} | " + " | ".join(f"{best(points, m, t):,.0f}" for t in THRESHOLDS) + " |")
        ratios = []
        for t in THRESHOLDS:
            top = max(best(points, m, t) for m in names)
            ratios.append(best(points, names[1], t) / top if top else float("nan"))
        print("| default / best | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
