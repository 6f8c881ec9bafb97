"""Sharded search and the quantized all-reduce over torch.distributed (gloo, CPU).

    python benchmarks/distributed.py [--procs 1,2] [--dataset /work/shared/datasets/debian-minilm-384-angular.hdf5]
    torchrun --nproc-per-node N benchmarks/distributed.py [...]      # one world size only

Without torchrun the script starts itself under torchrun once per world size in --procs and
prints the tables of all of them. Each of N processes gets max(1, cpus // N) torch threads.

Search: `peakknn.distributed.ShardedIndex` (bf16 scan, exact re-scoring), every rank passes
nq / N queries; q/s = all queries over the slowest rank's time (median of --rounds); recall@10
against the exact neighbours. Sets: the 56,000 x 384 cosine set (--dataset, else synthetic
Gaussian 56,000 x 384) and 1,000,000 x 128 Gaussian (inner product).

All-reduce (N >= 2): `all_reduce_quantized` (int8, block 256) against `dist.all_reduce` of fp32
and of bf16, 1 - 256 MB of fp32 data: median time and bytes each rank sends (nominal: ring
all-reduce 2 (N-1)/N x tensor bytes; quantized: all_to_all + all_gather of codes and scales).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

K = 10
SIZES_MB = (1, 4, 16, 64, 256)


def _sets(args) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    out = []
    if args.dataset:
        from peakknn.data import load_hdf5

        d = load_hdf5(args.dataset)
        out.append((f"{d.name} {d.train.shape[0]:,} x {d.train.shape[1]}", d.train, d.test[: args.queries], d.metric))
    else:
        g = np.random.default_rng(0)
        out.append(("synthetic 56,000 x 384", g.standard_normal((56_000, 384), dtype=np.float32), g.standard_normal((args.queries, 384), dtype=np.float32), "cos"))
    g = np.random.default_rng(1)
    n = args.big
    out.append((f"random {n:,} x 128", g.standard_normal((n, 128), dtype=np.float32), g.standard_normal((args.queries, 128), dtype=np.float32), "ip"))
    return out


def _truth(x: np.ndarray, q: np.ndarray, metric: str) -> torch.Tensor:
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    if metric == "cos":
        xt = xt / xt.norm(dim=1, keepdim=True)
        qt = qt / qt.norm(dim=1, keepdim=True)
    best = []
    for s in range(0, qt.shape[0], 256):
        best.append(torch.topk(qt[s : s + 256] @ xt.T, K, dim=1).indices)
    return torch.cat(best)


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def search_bench(args, rank: int, world: int) -> list[dict]:
    from peakknn.distributed import ShardedIndex

    rows = []
    for name, x, q, metric in _sets(args):
        index = ShardedIndex(x.shape[1], metric=metric)
        mine = np.arange(rank, x.shape[0], world)
        t0 = time.perf_counter()
        index.add(x[mine], ids=mine)  # ids = row numbers (owner = id % world: already local)
        build = _slowest(time.perf_counter() - t0)
        truth = _truth(x, q, metric) if rank == 0 else None
        part = np.array_split(np.arange(q.shape[0]), world)[rank]
        for target in (0.95, 0.99):
            index.search(q[part[:8]], K, recall_target=target)  # warm-up
            times = []
            for _ in range(args.rounds):
                dist.barrier()
                t0 = time.perf_counter()
                res = index.search(q[part], K, recall_target=target)
                times.append(_slowest(time.perf_counter() - t0))
            counts = torch.empty(world, dtype=torch.int64)
            dist.all_gather_into_tensor(counts, torch.tensor([len(part)]))
            ids = torch.empty((q.shape[0], K), dtype=torch.int64)
            dist.all_gather_into_tensor(ids, torch.as_tensor(res.ids).contiguous())  # equal splits
            if rank == 0:
                hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth))
                t = statistics.median(times)
                rows.append({"set": name, "procs": world, "target": target, "qps": q.shape[0] / t, "recall": hits / (q.shape[0] * K), "build_s": build, "queries": q.shape[0]})
        del index
    return rows


def reduce_bench(args, rank: int, world: int) -> list[dict]:
    from peakknn.distributed import all_reduce_quantized
    from peakknn.distributed.quantized import _layout

    rows = []
    if world < 2:
        return rows
    for mb in SIZES_MB:
        if mb > args.max_mb:
            continue
        n = mb * (1 << 20) // 4
        x = torch.randn(n, generator=torch.Generator().manual_seed(rank))
        c = _layout(n, world, 256)
        nb = c // 256
        sent = {
            "fp32": 2 * (world - 1) / world * 4 * n,
            "bf16": 2 * (world - 1) / world * 2 * n,
            "int8 quantized": (world - 1) * (c + 4 * nb) * 2,
        }
        reps = 3 if mb <= 64 else 2
        ref = x.clone()
        dist.all_reduce(ref)
        for kind in ("fp32", "bf16", "int8 quantized"):
            times = []
            for _ in range(reps):
                t = x.clone() if kind != "bf16" else x.to(torch.bfloat16)
                dist.barrier()
                t0 = time.perf_counter()
                if kind == "int8 quantized":
                    all_reduce_quantized(t, op="sum")
                else:
                    dist.all_reduce(t)
                times.append(_slowest(time.perf_counter() - t0))
            err = float((t.float() - ref).norm() / ref.norm())
            if rank == 0:
                rows.append({"MB": mb, "procs": world, "kind": kind, "ms": 1000 * statistics.median(times), "sent_MB": sent[kind] / (1 << 20), "rel_l2": err})
    return rows


def worker(args) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    result = {"search": search_bench(args, rank, world) if not args.skip_search else [], "reduce": reduce_bench(args, rank, world)}
    if rank == 0:
        result["threads"] = torch.get_num_threads()
        if args.out:
            Path(args.out).write_text(json.dumps(result))
        else:
            report([result])
    dist.destroy_process_group()


def report(results: list[dict]) -> None:
    from peakknn.bench import cpu_model

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; gloo on loopback")
    print("\nSharded search (k=10, bf16 scan + exact fp32 re-scoring), threads per process = cpus // procs")
    print("| set | procs | threads | recall_target | q/s | recall@10 | add s |\n|---|---|---|---|---|---|---|")
    for res in results:
        for r in res["search"]:
            print(f"| {r['set']} | {r['procs']} | {res['threads']} | {r['target']} | {r['qps']:,.0f} | {r['recall']:.4f} | {r['build_s']:.1f} |")
    rows = [r for res in results for r in res["reduce"]]
    if rows:
        print("\nAll-reduce of fp32 data (sum), median ms; MB sent per rank (nominal); relative L2 error vs fp32")
        print("| MB | procs | kind | ms | MB sent / rank | rel. L2 error |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['MB']} | {r['procs']} | {r['kind']} | {r['ms']:,.1f} | {r['sent_MB']:,.1f} | {r['rel_l2']:.2e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="ann-benchmarks HDF5 file (default: synthetic 56,000 x 384)")
    p.add_argument("--procs", default="1,2", help="world sizes to run when not under torchrun")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--big", type=int, default=1_000_000, help="rows of the random 128-d set")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-mb", type=int, default=256)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if "RANK" in os.environ:
        worker(args)
        return
    results = []
    for n in (int(v) for v in args.procs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            forward = [a for a in sys.argv[1:]]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(29500 + n), __file__, *forward, "--out", str(out)]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            results.append(json.loads(out.read_text()))
    report(results)


if __name__ == "__main__":
    main()
