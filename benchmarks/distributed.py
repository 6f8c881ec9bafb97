"""Sharded search, distributed training and the quantized all-reduce over torch.distributed (gloo, CPU).

    python benchmarks/distributed.py --procs 1,2,4 --dataset /work/shared/datasets/debian-minilm-384-angular.hdf5 \
        --results benchmarks/results/zen4
    torchrun --nproc-per-node N benchmarks/distributed.py [...]      # one world size only

Without torchrun the script starts itself under torchrun once per world size in --procs and
writes the tables of all of them (stdout, and with --results DIR: DIR/distributed.json and
DIR/distributed.md). Each of N processes gets max(1, cpus // N) torch threads; with more
processes than cores (4 on 2 cores) the processes share cores: such rows are marked
oversubscribed, and their q/s say what the sharding costs, not what it gains.

Search (`peakknn.distributed.ShardedIndex`, k = 10, every rank passes nq / N queries; q/s = all
queries over the slowest rank's time, median of --rounds; recall@10 against exact fp32
neighbours computed here):
  kind="flat": bf16 scan with exact re-scoring;
  kind="partitioned": PartitionedIndex shards trained together (default PartitionSettings:
  about 2 sqrt(n) partitions, bf16 codes, calibrated scan dims, spill), probe read off recall
  curves measured over the union; build = add + distributed training + calibration (the first
  search with a recall_target measures the curves: counted in build, not in q/s);
  quantized_training=True (N >= 2): the same with the k-means sums through all_reduce_quantized.
Sets: the 56,000 x 384 cosine set (--dataset, else synthetic Gaussian 56,000 x 384), 1,000,000 x
128 Gaussian (inner product: no structure, the hard case for partitions) and 1,000,000 x 128
clustered (L2: 1,000 Gaussian clusters in a 16-dim subspace plus noise 0.1 in all dims, like
embeddings of low intrinsic dimension); --big sets the 1M.

Network: `peakknn.perfmodel.network.measure` on this group (N >= 2: gloo over loopback) and the
model's prediction of a search batch's network time beside it.
All-reduce (N >= 2): `all_reduce_quantized` (int8, block 256) against `dist.all_reduce` of fp32
and of bf16, 1 - 256 MB of fp32 data: median time and bytes each rank sends (nominal: ring
all-reduce 2 (N-1)/N x tensor bytes; quantized: all_to_all + all_gather of codes and scales).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from peakknn.bench import cpu_name

K = 10
TARGETS = (0.95, 0.99)
SIZES_MB = (1, 4, 16, 64, 256)
SETS = ("dataset", "random", "clustered")
LATENT = 16  # the clustered set: intrinsic dimension (isotropic 128-d clusters would leave near-equidistant neighbours)


def _sets(args) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    out = []
    wanted = args.sets.split(",")
    if "dataset" in wanted:
        if args.dataset:
            from peakknn.data import load_hdf5

            d = load_hdf5(args.dataset)
            out.append((f"{d.name} {d.train.shape[0]:,} x {d.train.shape[1]}", d.train, d.test[: args.queries], d.metric))
        else:
            g = np.random.default_rng(0)
            out.append(("synthetic 56,000 x 384", g.standard_normal((56_000, 384), dtype=np.float32), g.standard_normal((args.queries, 384), dtype=np.float32), "cos"))
    n = args.big
    if "random" in wanted:
        g = np.random.default_rng(1)
        out.append((f"random {n:,} x 128", g.standard_normal((n, 128), dtype=np.float32), g.standard_normal((args.queries, 128), dtype=np.float32), "ip"))
    if "clustered" in wanted:
        g = np.random.default_rng(2)
        centres = g.standard_normal((1000, LATENT), dtype=np.float32) * 3.0
        embed = g.standard_normal((LATENT, 128), dtype=np.float32) / np.sqrt(LATENT)

        def draw(m):  # a mixture in a LATENT-dim subspace, plus a little noise in all 128
            z = centres[g.integers(0, 1000, m)] + g.standard_normal((m, LATENT), dtype=np.float32)
            return z @ embed + 0.1 * g.standard_normal((m, 128), dtype=np.float32)

        out.append((f"clustered {n:,} x 128", draw(n), draw(args.queries), "l2"))
    return out


def _truth(x: np.ndarray, q: np.ndarray, metric: str) -> torch.Tensor:
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    if metric == "cos":
        xt = xt / xt.norm(dim=1, keepdim=True)
        qt = qt / qt.norm(dim=1, keepdim=True)
    half = 0.5 * (xt * xt).sum(1) if metric == "l2" else None
    best = []
    for s in range(0, qt.shape[0], 256):
        scores = qt[s : s + 256] @ xt.T
        if half is not None:
            scores -= half
        best.append(torch.topk(scores, K, dim=1).indices)
    return torch.cat(best)


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _variants(args, world: int) -> list[tuple[str, str, dict]]:
    """(label, kind, options) of the indexes to build."""
    out = []
    kinds = args.kinds.split(",")
    if "flat" in kinds:
        out.append(("flat", "flat", {}))
    if "partitioned" in kinds:
        out.append(("partitioned", "partitioned", {}))
        if world >= 2 and not args.no_quantized:
            out.append(("partitioned, quantized training", "partitioned", {"quantized_training": True}))
    return out


def search_bench(args, rank: int, world: int) -> list[dict]:
    from peakknn.distributed import ShardedIndex

    rows = []
    for name, x, q, metric in _sets(args):
        truth = _truth(x, q, metric) if rank == 0 else None
        part = np.array_split(np.arange(q.shape[0]), world)[rank]
        mine = np.arange(rank, x.shape[0], world)
        for label, kind, options in _variants(args, world):
            if kind == "flat" and x.shape[0] > args.flat_max:
                continue
            dist.barrier()
            t0 = time.perf_counter()
            index = ShardedIndex(x.shape[1], metric=metric, kind=kind, **options)
            index.add(x[mine], ids=mine)  # ids = row numbers (owner = id % world: already local)
            index.search(q[part[:8]], K, recall_target=TARGETS[0])  # partitioned: measures the recall curves
            build = _slowest(time.perf_counter() - t0)
            for target in TARGETS:
                index.search(q[part[:8]], K, recall_target=target)  # warm-up
                times = []
                for _ in range(args.rounds):
                    dist.barrier()
                    t0 = time.perf_counter()
                    res = index.search(q[part], K, recall_target=target)
                    times.append(_slowest(time.perf_counter() - t0))
                ids = torch.empty((q.shape[0], K), dtype=torch.int64)
                sizes = [len(p) for p in np.array_split(np.arange(q.shape[0]), world)]
                got = [torch.empty((s, K), dtype=torch.int64) for s in sizes]
                dist.all_gather(got, torch.as_tensor(res.ids).contiguous())
                ids = torch.cat(got)
                if rank == 0:
                    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth))
                    t = statistics.median(times)
                    row = {"set": name, "kind": label, "procs": world, "target": target, "qps": q.shape[0] / t, "recall": hits / (q.shape[0] * K), "build_s": build, "queries": q.shape[0]}
                    if kind == "partitioned":
                        from peakknn.distributed.partitioned import probe_for

                        probes, recall = index.shard.recall_curves[K]  # the union's calibration curve
                        row.update(partitions=index.shard.settings.partitions, probe=probe_for(index, target, K), scan_dims=index.shard.scan_dims,
                                   copies=index.shard._copies, curve={"probes": probes, "recall": recall})  # fmt: skip
                    rows.append(row)
                    print(f"[{world} procs] {name} {label} target {target}: {row['qps']:,.0f} q/s recall {row['recall']:.4f} (build {build:.1f} s)", flush=True)
            del index
    return rows


def network_bench(args, rank: int, world: int) -> dict:
    from peakknn.perfmodel import network

    if world < 2:
        return {}
    link = network.measure()
    nq, dim = args.queries, 384
    model = network.predict(network.search_traffic(nq, K, dim, world), link, world)
    return {"bandwidth_GBps": link.bandwidth / 1e9, "latency_us": link.latency_s * 1e6, "procs": world, "model_search_ms": model.seconds * 1e3,
            "model_bandwidth_ms": model.bandwidth_s * 1e3, "model_latency_ms": model.latency_s * 1e3, "nq": nq, "dim": dim}  # fmt: skip


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


def _busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far (/proc/stat), or (0, 0)."""
    try:
        with open("/proc/stat") as f:
            v = [float(a) for a in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def worker(args) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=1800))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    result = {
        "search": search_bench(args, rank, world) if not args.skip_search else [],
        "network": network_bench(args, rank, world),
        "reduce": reduce_bench(args, rank, world) if not args.skip_reduce else [],
    }
    if rank == 0:
        result["threads"] = torch.get_num_threads()
        result["procs"] = world
        result["oversubscribed"] = world * torch.get_num_threads() > (os.cpu_count() or 1)
        if args.out:
            Path(args.out).write_text(json.dumps(result))
        else:
            print(markdown([result], args))
    dist.destroy_process_group()


def markdown(results: list[dict], args) -> str:
    lines = [f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; gloo on loopback; {datetime.date.today()}"]
    lines.append(f"Command: `python benchmarks/distributed.py {' '.join(_forwarded(sys.argv[1:]))}`")
    busy = [r for r in results if r.get("others_busy") is not None]
    if busy:
        lines.append("Machine busy outside this benchmark during each world size (share of all CPUs, /proc/stat): "
                     + ", ".join(f"{r['procs']} procs {r['others_busy']:.0%}" for r in busy))  # fmt: skip
    lines.append("\n### Sharded search (k=10; q/s = all queries / slowest rank; build = add + training + calibration)\n")
    lines.append("| set | kind | procs | threads / proc | recall_target | q/s | recall@10 | build s | partitions | probe |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        over = " (oversubscribed)" if res.get("oversubscribed") else ""
        for r in res["search"]:
            lines.append(f"| {r['set']} | {r['kind']} | {r['procs']}{over} | {res['threads']} | {r['target']} | {r['qps']:,.0f} | {r['recall']:.4f} | {r['build_s']:.1f} | {r.get('partitions', '')} | {r.get('probe', '')} |")
    quant = _quantized_effect([r for res in results for r in res["search"]])
    if quant:
        lines.append("\n### Quantized training (all_reduce_quantized for the k-means sums) against fp32 sums\n")
        lines.append("recall@10 of the searches above (each index reads its own probe off its own curve, so a probe step")
        lines.append("can differ), and the union's calibration curves (recall@10 of 500 stored rows as queries) at the")
        lines.append("same probe, the fp32 index's probe for that target:\n")
        lines.append("| set | procs | recall_target | probe fp32 / int8 | recall, fp32 sums | recall, int8 sums | curve at the fp32 probe: fp32 / int8 |\n|---|---|---|---|---|---|---|")
        lines += quant
    nets = [res["network"] for res in results if res.get("network")]
    if nets:
        lines.append("\n### Link measured by perfmodel.network.measure (gloo on loopback: memory copies and the TCP stack)\n")
        lines.append("| procs | bandwidth GB/s | latency / step us | model: search batch network ms (nq, dim) | of which bandwidth / latency ms |\n|---|---|---|---|---|")
        for n in nets:
            lines.append(f"| {n['procs']} | {n['bandwidth_GBps']:.2f} | {n['latency_us']:.0f} | {n['model_search_ms']:.2f} ({n['nq']}, {n['dim']}) | {n['model_bandwidth_ms']:.2f} / {n['model_latency_ms']:.2f} |")
    rows = [r for res in results for r in res["reduce"]]
    if rows:
        lines.append("\n### All-reduce of fp32 data (sum), median ms; MB sent per rank (nominal); relative L2 error vs fp32\n")
        lines.append("| MB | procs | kind | ms | MB sent / rank | rel. L2 error |\n|---|---|---|---|---|---|")
        for r in rows:
            lines.append(f"| {r['MB']} | {r['procs']} | {r['kind']} | {r['ms']:,.1f} | {r['sent_MB']:,.1f} | {r['rel_l2']:.2e} |")
    return "\n".join(lines) + "\n"


def _quantized_effect(rows: list[dict]) -> list[str]:
    plain = {(r["set"], r["procs"], r["target"]): r for r in rows if r["kind"] == "partitioned"}
    out = []
    for r in rows:
        key = (r["set"], r["procs"], r["target"])
        if r["kind"] == "partitioned, quantized training" and key in plain:
            p = plain[key]
            a, b = _curve_at(p.get("curve"), p["probe"]), _curve_at(r.get("curve"), p["probe"])
            curve = f"{a:.4f} / {b:.4f}" if a is not None and b is not None else ""
            out.append(f"| {r['set']} | {r['procs']} | {r['target']} | {p['probe']} / {r['probe']} | {p['recall']:.4f} | {r['recall']:.4f} | {curve} |")
    return out


def _curve_at(curve: dict | None, probe: int) -> float | None:
    """Recall of a calibration curve at `probe` (linear between measured probes)."""
    if not curve:
        return None
    return float(np.interp(probe, curve["probes"], curve["recall"]))


def _forwarded(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("--out")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="ann-benchmarks HDF5 file (default: synthetic 56,000 x 384)")
    p.add_argument("--procs", default="1,2", help="world sizes to run when not under torchrun")
    p.add_argument("--kinds", default="flat,partitioned", help="ShardedIndex kinds: flat, partitioned")
    p.add_argument("--sets", default=",".join(SETS), help="dataset (--dataset or synthetic), random, clustered")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--big", type=int, default=1_000_000, help="rows of the random and clustered 128-d sets")
    p.add_argument("--flat-max", type=int, default=10**12, help="skip kind=flat on sets with more rows than this")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-mb", type=int, default=256)
    p.add_argument("--no-quantized", action="store_true", help="skip the quantized_training runs")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-reduce", action="store_true")
    p.add_argument("--results", help="folder for distributed.json and distributed.md")
    p.add_argument("--scaling", metavar="JSON", help="print docs/SCALING.md's tables from a distributed.json of this script, and exit")
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.scaling:
        print(scaling(args))
        return
    if "RANK" in os.environ:
        worker(args)
        return
    results = []
    for n in (int(v) for v in args.procs.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            forward = [a for a in sys.argv[1:]]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(29500 + n), __file__, *forward, "--out", str(out)]
            busy0, total0 = _busy()
            own0 = _children_cpu()
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            busy1, total1 = _busy()
            res = json.loads(out.read_text())
            jiffies = os.sysconf("SC_CLK_TCK")
            own = _children_cpu() - own0  # CPU seconds of torchrun and its workers
            res["others_busy"] = max(0.0, ((busy1 - busy0) / jiffies - own) / ((total1 - total0) / jiffies)) if total1 > total0 else None
            res["wall_s"] = time.perf_counter() - start
            results.append(res)
    text = markdown(results, args)
    print(text)
    if args.results:
        folder = Path(args.results)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(), "date": str(datetime.date.today()), "argv": _forwarded(sys.argv[1:])}
        (folder / "distributed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (folder / "distributed.md").write_text("# benchmarks/distributed.py\n\n" + text)


# ---------------------------------------------------------------------------------------------
# --scaling: docs/SCALING.md's tables (predictions next to what was measured here)

NQ_BATCH = 1000  # queries per predicted search batch
DIM = 768
HOST_CORES = 64  # the larger CPU host: this machine's per-core FLOP/s x 32
HOST_BANDWIDTH = 460.8e9  # 12-channel DDR5-4800 (AMD EPYC 9004 product specifications), bytes/s
HOST_MEMORY = 768 << 30  # assumed RAM of the larger CPU host
H200 = {"bf16": 989e12, "bandwidth": 4.8e12, "memory": 141e9}  # NVIDIA H200 SXM datasheet: dense bf16 FLOP/s, HBM3e B/s, bytes
GPUS_PER_HOST = 8


def partitioned_floor(nq, n_shard, partitions, probe, copies, scan_dims, dim, flops, bandwidth) -> float:
    """Seconds no partitioned search can beat on these rates: the centre scores and the probed
    pages' products (2 nq (P d + rows m) FLOP), or reading the probed pages once per batch (bf16
    rows of m dims) and the centres, whichever is longer. rows = n_shard x copies x probe / P."""
    rows = n_shard * copies * probe / partitions
    matrix = 2.0 * nq * (partitions * dim + rows * scan_dims) / flops
    memory = (min(n_shard * copies, nq * rows) * scan_dims * 2 + partitions * dim * 4) / bandwidth
    return max(matrix, memory)


def scaling(args) -> str:
    from peakknn.partitioned.settings import partitions_for
    from peakknn.perfmodel import LINKS, ceilings, network

    data = json.loads(Path(args.scaling).read_text())
    results, cpu = data["results"], data["meta"]["cpu"]
    c = ceilings("cpu")
    flops, bw = c.peak("bf16"), c.peak_bandwidth
    rows = [r for res in results for r in res["search"] if r["kind"] == "partitioned"]
    nets = {res["procs"]: res["network"] for res in results if res.get("network")}
    lines = [f"Ceilings of this machine ({cpu_name()}, {c.threads} threads, perfmodel.ceilings): bf16 {flops / 1e9:,.0f} GFLOP/s, memory {bw / 1e9:.1f} GB/s; measured runs: {cpu}."]
    # measured here against the model, per set and target
    lines.append("\n| set | recall_target | procs | measured q/s | model q/s | model compute ms | model network ms | efficiency (1 proc) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    eff = {}
    dims = {}
    for r in sorted(rows, key=lambda r: (r["set"], r["target"], r["procs"])):
        n, d = _set_shape(r["set"])
        dims[r["set"]] = d
        copies = 2  # spill (the default for bf16 codes)
        procs = r["procs"]
        # the ranks share this machine's cores and memory: each gets 1 / procs of the rates
        floor = partitioned_floor(r["queries"], n / procs, r["partitions"], r["probe"], r.get("copies", copies), r["scan_dims"], d, flops / procs, bw / procs)
        key = (r["set"], r["target"])
        if procs == 1:
            eff[key] = floor / (r["queries"] / r["qps"])
        if key not in eff:
            continue
        compute = floor / eff[key]
        link = _link(nets.get(procs))
        net = network.predict(network.search_traffic(r["queries"], K, d, procs), link, procs).seconds if link and procs > 1 else 0.0
        model_qps = r["queries"] / (compute + net)
        lines.append(f"| {r['set']} | {r['target']} | {procs} | {r['qps']:,.0f} | {model_qps:,.0f} | {compute * 1e3:.1f} | {net * 1e3:.1f} | {eff[key]:.2f} |")
    # at scale
    base = [r for r in rows if r["procs"] == 1 and r["set"].startswith("debian")]
    lines.append("\n| rows x 768 | hosts | ranks | host | partitions | probe | memory / rank GB | compute ms | network ms | q/s (batch of 1,000) | bottleneck |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for target_row in base:
        frac = target_row["probe"] / target_row["partitions"]
        m = round(DIM * target_row["scan_dims"] / dims[target_row["set"]])
        e = eff[(target_row["set"], target_row["target"])]
        lines.append(f"| recall_target {target_row['target']}: probe fraction {frac:.3f} and scan dims {target_row['scan_dims']}/{dims[target_row['set']]} of the Debian set, efficiency {e:.2f} | | | | | | | | | | |")
        for n in (10**8, 10**9):
            parts = partitions_for(n)
            probe = max(1, round(frac * parts))
            for hosts in (8, 64):
                for host, ranks, fl, bwh, mem, link, intra, eff_used in (
                    (f"{cpu}, {os.cpu_count()} vCPUs (this VM)", hosts, flops, bw, 23 << 30, LINKS["eth-100g"], None, e),
                    (f"{HOST_CORES}-core Zen 4 host (this VM's per-core rate)", hosts, flops * HOST_CORES / (os.cpu_count() or 2), HOST_BANDWIDTH, HOST_MEMORY, LINKS["eth-100g"], None, e),
                    ("8x H200 (floor)", hosts * GPUS_PER_HOST, H200["bf16"], H200["bandwidth"], H200["memory"], LINKS["ib-ndr"], LINKS["nvlink4"], 1.0),
                ):
                    n_shard = n / ranks
                    need = n_shard * (DIM * 4 + 2 * m * 2)
                    floor = partitioned_floor(NQ_BATCH, n_shard, parts, probe, 2, m, DIM, fl, bwh)
                    compute = floor / eff_used
                    g = GPUS_PER_HOST if intra is not None else 1
                    net = network.predict(network.search_traffic(NQ_BATCH, K, DIM, ranks), link, ranks, ranks_per_host=g, intra=intra)
                    fits = "" if need <= mem else " (does not fit)"
                    neck = "network" if net.seconds > compute else "compute"
                    lines.append(f"| {n:.0e} | {hosts} | {ranks} | {host} | {parts:,} | {probe:,} | {need / 1e9:,.1f}{fits} | {compute * 1e3:,.1f} | {net.seconds * 1e3:,.2f} | {NQ_BATCH / (compute + net.seconds):,.0f} | {neck} |")
    lines.append("\nTraining (distributed k-means, 10 iterations): network bytes per rank and time per iteration")
    lines.append("\n| rows | partitions | ranks | link | MB / iteration (fp32 sums) | ms | MB (quantized) | ms |\n|---|---|---|---|---|---|---|---|")
    for n in (10**8, 10**9):
        parts = partitions_for(n)
        for ranks, link in ((8, LINKS["eth-100g"]), (64, LINKS["eth-100g"]), (512, LINKS["ib-ndr"])):
            full, quant = network.kmeans_traffic(parts, DIM, ranks), network.kmeans_traffic(parts, DIM, ranks, quantized=True)
            a, b = network.predict(full, link, ranks).seconds, network.predict(quant, link, ranks).seconds
            lines.append(f"| {n:.0e} | {parts:,} | {ranks} | {link.name} | {full.bytes_per_rank / 1e6:,.0f} | {a * 1e3:,.1f} | {quant.bytes_per_rank / 1e6:,.0f} | {b * 1e3:,.1f} |")
    return "\n".join(lines) + "\n"


def _set_shape(name: str) -> tuple[int, int]:
    """(rows, dim) from a set's label such as "random 1,000,000 x 128"."""
    rows, dim = name.rsplit(" ", 3)[-3], name.rsplit(" ", 1)[-1]
    return int(rows.replace(",", "")), int(dim)


def _link(net: dict | None):
    from peakknn.perfmodel import Link

    if not net:
        return None
    return Link("gloo loopback (measured)", net["bandwidth_GBps"] * 1e9, net["latency_us"] * 1e-6, "ring")


if __name__ == "__main__":
    main()
