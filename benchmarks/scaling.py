"""Scaling of brute-force search: time vs n and vs nq, peakknn (bf16, recall_target 0.99) and FAISS flat.

    python benchmarks/scaling.py            # n = 10^4 .. 10^7 (nq = 1000); nq = 1 .. 10^4 (n = 10^6)
    python benchmarks/scaling.py --quick    # n = 10^4 .. 10^5; nq = 1 .. 1000 (n = 10^5)

Random Gaussian vectors, d = 128, inner product, 2 threads, both methods side by side in one
process; the database is generated and added in blocks, so 10^7 rows fit in memory. Prints a
table with the perfmodel floor next to each peakknn time and writes scaling.png / scaling.json
under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import peakknn
from peakknn import perfmodel
from peakknn.evaluation import timed

BLOCK = 1 << 20


def build(n: int, d: int, faiss, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    index = peakknn.Index(d, precision="bf16")
    index.reserve(n)
    flat = faiss.IndexFlatIP(d) if faiss else None
    for s in range(0, n, BLOCK):
        x = torch.randn(min(BLOCK, n - s), d, generator=g)
        index.add(x)
        if flat is not None:
            flat.add(x.numpy())
    return index, flat


def measure(index, flat, q: torch.Tensor, repeat: int) -> tuple[float, float]:
    index.search(q[:4], 10, recall_target=0.99)
    _, t_peak = timed(lambda: index.search(q, 10, recall_target=0.99), repeat)
    if flat is None:
        return t_peak, float("nan")
    qn = q.numpy()
    flat.search(qn[:4], 10)
    _, t_faiss = timed(lambda: flat.search(qn, 10), repeat)
    return t_peak, t_faiss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-n", type=int, default=None, help="largest database (default 10^7, --quick 10^5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): peakknn only")
        faiss = None
    torch.set_num_threads(args.threads)
    d = 128
    ns = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 10**7]
    ns = [n for n in ns if args.max_n is None or n <= args.max_n]
    n_for_nq = 10**5 if args.quick else 10**6
    nqs = [1, 10, 100, 1000] if args.quick else [1, 10, 100, 1000, 10000]
    ceilings = perfmodel.ceilings("cpu")
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(max(nqs), d, generator=g)
    rows = []
    for n in ns:
        index, flat = build(n, d, faiss)
        t_peak, t_faiss = measure(index, flat, queries[:1000], args.repeat)
        floor = perfmodel.predict(1000, n, d, 10, 0.99, "bf16", ceilings).floor_s
        rows.append({"axis": "n", "n": n, "nq": 1000, "peakknn_s": t_peak, "faiss_s": t_faiss, "floor_s": floor})
        print(rows[-1], flush=True)
        if n == n_for_nq:
            for nq in nqs:
                t_peak, t_faiss = measure(index, flat, queries[:nq], args.repeat)
                floor = perfmodel.predict(nq, n, d, 10, 0.99, "bf16", ceilings).floor_s
                rows.append({"axis": "nq", "n": n, "nq": nq, "peakknn_s": t_peak, "faiss_s": t_faiss, "floor_s": floor})
                print(rows[-1], flush=True)
        del index, flat
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    lines = ["| axis | n | nq | peakknn s | floor s | % of floor | FAISS flat s | peakknn speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['axis']} | {r['n']:,} | {r['nq']:,} | {r['peakknn_s']:.4f} | {r['floor_s']:.4f} | "
                     f"{100 * r['floor_s'] / r['peakknn_s']:.0f}% | {r['faiss_s']:.4f} | {r['faiss_s'] / r['peakknn_s']:.2f}x |")  # fmt: skip
    print("\n".join(lines))
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: pip install matplotlib")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, axis, label in ((axes[0], "n", "database rows n (nq = 1000)"), (axes[1], "nq", f"queries nq (n = {n_for_nq:,})")):
        mine = [r for r in rows if r["axis"] == axis]
        if not mine:
            ax.set_visible(False)
            continue
        xs = [r[axis] for r in mine]
        ax.plot(xs, [r["peakknn_s"] for r in mine], "o-", label="peakknn bf16, recall_target 0.99", linewidth=2)
        ax.plot(xs, [r["faiss_s"] for r in mine], "s--", label="FAISS IndexFlatIP")
        ax.plot(xs, [r["floor_s"] for r in mine], ":", color="gray", label="roofline floor (perfmodel)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per batch")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"brute-force k=10 search, d={d}, {args.threads} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    print(f"wrote {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
