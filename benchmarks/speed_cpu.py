"""Speed targets of the foundation issue, measured side by side in one run (prints a table).

    python benchmarks/speed_cpu.py [--dataset debian-minilm-384-angular.hdf5]

1. search at recall@10 >= 0.99 vs FAISS IndexFlatIP (2 threads each): 1,000,000 x 128 random
   vectors with 1,000 queries, and the ann-benchmarks file if given.
2. approx_topk vs torch.topk on a (1024, 1,048,576) fp32 tensor, k=10, recall_target 0.95.
"""

from __future__ import annotations

import argparse
import torch

from peakknn import approx_topk
from peakknn.bench import format_table, run_bench
from peakknn.evaluation import timed
from peakknn.data import load_hdf5, synthetic


def topk_table(rows: int, n: int, k: int, target: float, repeat: int) -> str:
    x = torch.randn(rows, n)
    approx_topk(x[:8], k, recall_target=target)  # warm-up
    _, t_approx = timed(lambda: approx_topk(x, k, recall_target=target), repeat)
    _, t_exact = timed(lambda: torch.topk(x, k), repeat)
    _, got = approx_topk(x, k, recall_target=target)
    truth = torch.topk(x, k).indices
    recall = float((got.unsqueeze(2) == truth.unsqueeze(1)).any(2).double().mean())
    return "\n".join([
        f"approx_topk vs torch.topk: x f32[{rows}, {n:,}], k={k}, recall_target={target}",
        "", "| method | seconds | speed-up | recall |", "|---|---|---|---|",
        f"| torch.topk | {t_exact:.3f} | 1.00x | 1.0000 |",
        f"| peakknn.approx_topk | {t_approx:.3f} | {t_exact / t_approx:.2f}x | {recall:.4f} |",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="ann-benchmarks HDF5 file to add")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets = [synthetic(1_000_000, 128, 1000)]
    if args.dataset:
        sets.append(load_hdf5(args.dataset))
    for ds in sets:
        rows = run_bench(ds, k=10, recall_target=0.99, precision="bf16", repeat=args.repeat)
        faiss_qps = next((r.qps for r in rows if r.method.startswith("faiss")), None)
        title = f"{ds.name}: n={ds.train.shape[0]:,} d={ds.train.shape[1]} queries={ds.test.shape[0]:,} k=10 threads={args.threads}"
        print(format_table(rows, title))
        if faiss_qps:
            print(f"\npeakknn / FAISS flat queries/s: {rows[0].qps / faiss_qps:.2f}x\n")
    print(topk_table(1024, 1 << 20, 10, 0.95, max(3, args.repeat // 2)))


if __name__ == "__main__":
    main()
