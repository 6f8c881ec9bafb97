"""PartitionedIndex: the projected first pass (`PartitionSettings.scan_dims`) side by side.

    python benchmarks/scan_dims.py --dataset debian-minilm-384-angular.hdf5
    python benchmarks/scan_dims.py --synthetic 200000x128 --scan-dims none,auto,96

Builds one index per scan_dims setting (same partitions, seed and data), then for each probe
searches the whole query batch with every index in turn, `--repeat` times interleaved, and
prints the median time, its ratio to the first setting and recall@k. Only the first pass
differs between the indexes, so the ratio is the projection's effect.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from suite import prepared, synthetic, with_truth  # benchmarks/suite.py, beside this script

import peakknn
from peakknn.partitioned.settings import partitions_for
from peakknn.data import load_hdf5
from peakknn.evaluation import recall_at_k


def parse_setting(text: str):
    text = text.strip().lower()
    return None if text == "none" else text if text == "auto" else int(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="ann-benchmarks HDF5 file")
    p.add_argument("--synthetic", default="200000x128", help="NxD clustered synthetic set (without --dataset)")
    p.add_argument("--scan-dims", default="none,auto", help="comma-separated: none | auto | an int (first = baseline)")
    p.add_argument("--probes", default="2,4,6,10,16")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = with_truth(load_hdf5(args.dataset) if args.dataset else synthetic(args.synthetic, args.nq), args.nq, args.k)
    train, test, metric = prepared(ds)
    settings = [parse_setting(s) for s in args.scan_dims.split(",")]
    indexes = []
    for scan_dims in settings:
        part = peakknn.PartitionSettings(partitions=partitions_for(train.shape[0]), train_size=None, scan_dims=scan_dims)
        index = peakknn.PartitionedIndex(train.shape[1], metric=metric, settings=part)
        index.add(torch.from_numpy(train))
        t0 = time.perf_counter()
        index.train()
        width = index.scan_dims
        print(f"scan_dims={scan_dims}: {width} of {train.shape[1]} dims, trained in {time.perf_counter() - t0:.1f} s", flush=True)
        indexes.append(index)
    q = torch.from_numpy(test)
    print(f"\n{ds.name}: n={train.shape[0]:,} d={train.shape[1]} queries={len(test):,} k={args.k} threads={args.threads}\n")
    print("| probe | " + " | ".join(f"scan_dims={s} ({i.scan_dims}): ms, ratio, recall" for s, i in zip(settings, indexes)) + " |")
    print("|---" * (len(settings) + 1) + "|")
    for probe in (int(v) for v in args.probes.split(",")):
        times = [[] for _ in indexes]
        ids = [None] * len(indexes)
        for index in indexes:  # warm-up (scratch buffers)
            index.search(q[:16], args.k, probe=probe)
        for _ in range(args.repeat):
            for j, index in enumerate(indexes):
                t0 = time.perf_counter()
                ids[j] = index.search(q, args.k, probe=probe).ids.numpy()
                times[j].append(time.perf_counter() - t0)
        med = [float(np.median(t)) for t in times]
        cells = [
            f"{m * 1e3:.1f}, {m / med[0]:.3f}x, {recall_at_k(i, ds.neighbors, ds.train, ds.test, ds.metric):.4f}"
            for m, i in zip(med, ids)
        ]
        print(f"| {probe} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
