"""GPU speed targets of the Triton issue, side by side in one run (prints markdown tables).

    python benchmarks/speed_gpu.py            # on a machine with a CUDA GPU and triton
    python benchmarks/speed_gpu.py --quick    # smaller shapes (a smoke run, minutes less)

1. nq=8192, n=4,194,304, d=128, k=10, recall_target 0.95, bf16: peakknn Index.search (fused
   Triton kernel) against the bare bf16 matmul of the same shapes (cuBLAS, database chunks into
   a reused output) and the PyTorch user's way (matmul + torch.topk over query blocks, exact).
2. approx_topk vs torch.topk on a (8192, 1,048,576) fp32 CUDA tensor, k=10.
3. Where the bottleneck moves: d in (64, 128, 256, 768) and nq in (1, 64, 1024).
Times are medians of CUDA-event-timed runs after a warm-up; recall is against exact search.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import peakknn
from peakknn.evaluation import exact_search, recall

MATMUL_CHUNK = 1 << 18  # database rows per bare-matmul chunk (8192 x 262144 bf16 = 4 GiB output)


def cuda_time(fn, repeat: int) -> tuple[object, float]:
    """(result, median seconds) of fn() on the current CUDA stream, after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return result, statistics.median(times)


def bare_matmul(q: torch.Tensor, x: torch.Tensor) -> None:
    out = torch.empty(q.shape[0], min(MATMUL_CHUNK, x.shape[0]), dtype=q.dtype, device=q.device)
    for s in range(0, x.shape[0], MATMUL_CHUNK):
        part = x[s : s + MATMUL_CHUNK]
        torch.matmul(q, part.T, out=out[:, : part.shape[0]])


def search_row(nq: int, n: int, d: int, k: int, target: float, repeat: int, with_torch: bool) -> str:
    x = torch.randn(n, d, device="cuda")
    q = torch.randn(nq, d, device="cuda")
    index = peakknn.Index(d, metric="ip", precision="bf16", device="cuda")
    index.add(x)
    qb, xb = q.bfloat16(), x.bfloat16()
    res, t_search = cuda_time(lambda: index.search(q, k, recall_target=target), repeat)
    _, t_mm = cuda_time(lambda: bare_matmul(qb, xb), repeat)
    sub = min(nq, 256)
    truth = exact_search(x, q[:sub], k, "ip", block=512)  # the PyTorch user's way: matmul + topk
    rec = recall(res.ids[:sub], truth)
    tflops = 2 * nq * n * d / t_mm / 1e12
    ours = 2 * nq * n * d / t_search / 1e12
    cells = [f"{nq:,}", f"{n:,}", str(d), f"{t_search * 1e3:.2f}", f"{t_mm * 1e3:.2f}", f"{t_search / t_mm:.2f}", f"{100 * t_mm / t_search:.0f}%", f"{tflops:.0f}", f"{ours:.0f}"]
    if with_torch:
        _, t_torch = cuda_time(lambda: exact_search(xb, qb, k, "ip", block=512), max(1, repeat // 2))
        cells += [f"{t_torch * 1e3:.1f}", f"{t_torch / t_search:.2f}x"]
    else:
        cells += ["–", "–"]
    cells.append(f"{rec:.4f}")
    del index, x, q, qb, xb
    torch.cuda.empty_cache()
    return "| " + " | ".join(cells) + " |"


def topk_rows(rows: int, n: int, k: int, target: float, repeat: int) -> list[str]:
    x = torch.randn(rows, n, device="cuda")
    (_, got), t_approx = cuda_time(lambda: peakknn.approx_topk(x, k, recall_target=target), repeat)
    (_, truth), t_exact = cuda_time(lambda: torch.topk(x, k), repeat)
    rec = recall(got, truth)
    return [
        f"approx_topk vs torch.topk: x f32[{rows:,}, {n:,}] on {torch.cuda.get_device_name()}, k={k}, recall_target={target}",
        "", "| method | ms | speed-up | recall |", "|---|---|---|---|",
        f"| torch.topk | {t_exact * 1e3:.2f} | 1.00x | 1.0000 |",
        f"| peakknn.approx_topk | {t_approx * 1e3:.2f} | {t_exact / t_approx:.2f}x | {rec:.4f} |",
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("speed_gpu.py needs a CUDA GPU (and triton); see benchmarks/speed_cpu.py for the CPU")
    n_main, nq_main, topk_n = (1 << 20, 2048, 1 << 18) if args.quick else (1 << 22, 8192, 1 << 20)
    header = [
        f"search on {torch.cuda.get_device_name()}: k=10, recall_target 0.95, bf16 (Index.search, fused Triton kernel)",
        "",
        "| nq | n | d | peakknn ms | bare bf16 matmul ms | ratio | % of matmul rate | matmul TFLOP/s | peakknn TFLOP/s | torch mm+topk ms | peakknn speed-up | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    a = torch.randn(8192, 8192, device="cuda").bfloat16()
    _, t_peak = cuda_time(lambda: a @ a, args.repeat)
    print(f"bf16 matmul peak on this GPU: {2 * 8192**3 / t_peak / 1e12:.0f} TFLOP/s (8192 x 8192 x 8192, random data)\n")
    del a
    print("\n".join(header), flush=True)
    print(search_row(nq_main, n_main, 128, 10, 0.95, args.repeat, with_torch=True), flush=True)
    for d in (64, 256, 768):
        print(search_row(nq_main, n_main // 4, d, 10, 0.95, args.repeat, with_torch=True), flush=True)
    for nq in (1, 64, 1024):
        print(search_row(nq, n_main, 128, 10, 0.95, args.repeat, with_torch=False), flush=True)
    print()
    print("\n".join(topk_rows(nq_main, topk_n, 10, 0.95, args.repeat)))


if __name__ == "__main__":
    main()
