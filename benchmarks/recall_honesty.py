"""Does the flat search keep its recall_target? Measured recall@10 of `peakknn.search` (ties
allowed, against each file's ground truth) at recall_target 0.90 / 0.95 / 0.99, fp32 and bf16,
on every data set given, next to the target - 0.002 bar, and for the partitioned index's
calibrated recall_target (default settings) the same with the target - 0.01 bar.

    python benchmarks/recall_honesty.py FILE.hdf5 [FILE.hdf5 ...] [--no-partitioned]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import peakknn
from peakknn.bench import cpu_model, prepared, with_truth
from peakknn.data import load_hdf5
from peakknn.evaluation import recall_at_k, timed

TARGETS = (0.9, 0.95, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--no-partitioned", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, threads={args.threads}\n")
    print("| data set | index | precision | " + " | ".join(f"recall @ target {t}" for t in TARGETS) + " | bar met |")
    print("|---|---|---|" + "---|" * (len(TARGETS) + 1))
    for path in args.datasets:
        ds = with_truth(load_hdf5(path), 10)
        train, test, metric = prepared(ds)
        x, q = torch.from_numpy(train), torch.from_numpy(test)

        def rec(ids):
            return recall_at_k(np.asarray(ids, dtype=np.int64), ds.neighbors, ds.train, ds.test, ds.metric)

        for precision in ("fp32", "bf16"):
            cells, ok = [], True
            for t in TARGETS:
                res, secs = timed(lambda: peakknn.search(q, x, 10, metric=metric, precision=precision, recall_target=t), 1)
                r = rec(res.ids.numpy())
                ok &= r >= t - 0.002
                cells.append(f"{r:.4f} ({len(q) / secs:,.0f} q/s)")
            print(f"| {ds.name} | flat | {precision} | " + " | ".join(cells) + f" | {'yes' if ok else 'NO'} |", flush=True)
        if args.no_partitioned:
            continue
        index = peakknn.PartitionedIndex(x.shape[1], metric=metric)
        index.add(x)
        if not index.is_trained:  # fewer rows than train_size: train on them
            index.train()
        index.calibrate()
        cells, ok = [], True
        for t in TARGETS:
            res, secs = timed(lambda: index.search(q, 10, recall_target=t), 1)
            r = rec(res.ids.numpy())
            ok &= r >= t - 0.01
            cells.append(f"{r:.4f} (probe {index.probe_for(t)}, {len(q) / secs:,.0f} q/s)")
        p = index.settings.partitions
        print(f"| {ds.name} | partitioned P={p} | bf16 | " + " | ".join(cells) + f" | {'yes' if ok else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
