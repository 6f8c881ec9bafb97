"""Flat Index (fused Triton kernel) next to PartitionedIndex on a CUDA GPU (prints a markdown table).

    python benchmarks/partitioned_gpu.py                       # clustered 1,000,000 x 128, 10,000 queries
    python benchmarks/partitioned_gpu.py --synthetic 200000x64 --nq 2000 --probes 2,8

Recall@10 is against exact fp32 search (cosine); q/s is nq over the median of `repeat`
synchronised runs after a warm-up; build = add (+ train) wall time. Without a GPU it runs on the
CPU (slowly, and the flat index then uses the torch engine).
"""

from __future__ import annotations

import argparse
import time

import torch

import peakknn
from peakknn import evaluation
from peakknn.partitioned.settings import partitions_for
from suite import synthetic

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat: int):
    """(last result, median seconds) of fn() after one warm-up call."""
    return evaluation.timed(fn, repeat, warmup=1, device=DEVICE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", default="1000000x128", help="clustered set NxD")
    p.add_argument("--nq", type=int, default=10_000)
    p.add_argument("--probes", default="1,2,4,8,16,32")
    p.add_argument("--targets", default="0.9,0.95,0.99,1.0", help="recall_target of the flat index")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    k = 10
    ds = synthetic(args.synthetic, args.nq)
    x, q = torch.from_numpy(ds.train).to(DEVICE), torch.from_numpy(ds.test).to(DEVICE)
    n, d = x.shape
    truth = evaluation.exact_search(x, q, k, "cos", block=1000)
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    print(f"{ds.name}, {len(q):,} queries, k={k}, cosine, on {device_name}\n")
    print("| method | setting | recall@10 | q/s | build s |\n|---|---|---|---|---|", flush=True)
    t0 = time.perf_counter()
    flat = peakknn.Index(d, metric="cos", precision="bf16", device=DEVICE)
    flat.add(x)
    sync()
    build = time.perf_counter() - t0
    for target in (float(t) for t in args.targets.split(",")):
        res, secs = timed(lambda: flat.search(q, k, recall_target=target), args.repeat)
        print(f"| flat Index bf16 | recall_target {target} | {res.mean_recall(truth):.4f} | {len(q) / secs:,.0f} | {build:.1f} |", flush=True)
    del flat
    for spill in (None, False):
        t0 = time.perf_counter()
        settings = peakknn.PartitionSettings(partitions=partitions_for(n), codes="bf16", train_size=None, spill=spill)
        index = peakknn.PartitionedIndex(d, metric="cos", settings=settings, device=DEVICE)
        index.add(x)
        index.train()
        sync()
        build = time.perf_counter() - t0
        name = f"partitioned bf16 P={settings.partitions}" + (" no spill" if spill is False else " spill")
        for probe in (int(v) for v in args.probes.split(",")):
            res, secs = timed(lambda: index.search(q, k, probe=probe), args.repeat)
            print(f"| {name} | probe {probe} | {res.mean_recall(truth):.4f} | {len(q) / secs:,.0f} | {build:.1f} |", flush=True)
        del index


if __name__ == "__main__":
    main()
