"""Launch shapes of the fused scan kernel on a CUDA GPU, side by side (prints markdown tables).

    python benchmarks/tune_gpu.py            # the issue's shapes; needs a CUDA GPU and triton
    python benchmarks/tune_gpu.py --quick    # smaller shapes, narrow sweeps
    python benchmarks/tune_gpu.py --main-only  # the wide sweep of the main shape alone

For each shape (nq, n, d; bf16, k=10, the bins of recall_target 0.95), every candidate
`ScanConfig` is first checked against `kernels.scan_winners.scan_winners_reference` on a small problem, then
timed (median of CUDA-event-timed runs) next to the bare bf16 matmul of the same shape. The
fastest config per shape is what `_triton_kernels.scan_config` should return there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch

from peakknn.engine.kernel_scan import kernel_splits
from peakknn.engine.plan import plan_kernel
from speed_gpu import bare_matmul, cuda_time


def check(kernels, config, d: int) -> bool:
    """Same winners as the reference on a small random problem with edges (nq, n not multiples)."""
    nq, n, bins = 2 * config.block_m + 3, 37 * config.block_n + 5, 2 * config.block_n
    q = torch.randn(nq, d, device="cuda").bfloat16()
    x = torch.randn(n, d, device="cuda").bfloat16()
    best, rows = kernels.scan_winners(q, x, None, None, bins, 3, config)
    ref_best, _ = kernels.scan_winners_reference(q, x, torch.zeros(n, device="cuda"), None, bins, 3)
    scores = q.float() @ x.float().T
    got = scores.gather(1, rows.long().clamp_min(0))
    return bool(torch.allclose(best, ref_best, atol=1e-2 * d**0.5) and torch.allclose(got, best, atol=1e-2 * d**0.5))


def configs(nq: int, d: int, wide: bool):
    """Candidate launch shapes: a wide sweep (block sizes x warps x 2-4 stages) or a narrow one;
    both try one pipelined loop over (tile, depth step) when d takes several steps. (Compiler
    warp specialization, tried on an H100 with triton 3.6: no faster at 8 warps, and at 4 warps
    the compiler failed.)"""
    from peakknn.kernels import scan_winners as kernels

    ks = (64, 128) if d > 128 else (kernels.scan_config(nq, d, 128).block_k,)  # one depth step
    ms = (16, 32, 64) if nq < 64 else (64, 128)
    ns, warps, stages = ((64, 128, 256), (4, 8), (2, 3, 4)) if wide else ((64, 128), (4, 8), (3,))
    for m, nn, k, w, s in itertools.product(ms, ns, ks, warps, stages):
        for flatten in (False, True) if d > k else (False,):
            yield kernels.ScanConfig(m, nn, k, w, s, flatten=flatten)


def tune_shape(nq: int, n: int, d: int, repeat: int, wide: bool) -> list[dict]:
    from peakknn.kernels import scan_winners as kernels

    x = torch.randn(n, d, device="cuda").bfloat16()
    q = torch.randn(nq, d, device="cuda").bfloat16()
    plan = plan_kernel(n, 10, 0.95, None, torch.bfloat16)
    _, t_mm = cuda_time(lambda: bare_matmul(q, x), repeat)
    rows = []
    for config in configs(nq, d, wide):
        bins = max(plan.bins, config.block_n)
        try:
            ok = check(kernels, config, d)
            splits = kernel_splits(nq, n, bins, config, q.device)
            _, t = cuda_time(lambda: kernels.scan_winners(q, x, None, None, bins, splits, config), repeat)
        except Exception as e:  # out of shared memory / registers for this shape
            print(f"  {config}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        rows.append({"nq": nq, "n": n, "d": d, "config": vars(config), "bins": bins, "splits": splits, "ok": ok, "ms": t * 1e3, "matmul_ms": t_mm * 1e3})
        print(f"  {config} bins={bins} splits={splits} ok={ok} {t * 1e3:.2f} ms ({100 * t_mm / t:.0f}% of matmul)", flush=True)
    del x, q
    torch.cuda.empty_cache()
    return rows


def tune_topk(rows: int, n: int, repeat: int) -> list[dict]:
    """`bin_winners` launch shapes for approx_topk on f32[rows, n] (k=10, recall_target 0.95)."""
    import triton

    from peakknn.kernels import bin_winners as kernels
    from peakknn.topk.plan import plan_bins

    x = torch.randn(rows, n, device="cuda")
    bins = plan_bins(n, 10, 0.95, 1)
    ref_best, ref_index = kernels.bin_winners_reference(x[:64], bins, True)
    _, t_topk = cuda_time(lambda: torch.topk(x, 10), repeat)
    out = []
    for block_b, tile, warps in itertools.product((64, 128, 256), (1024, 2048, 4096), (4, 8)):
        if block_b > triton.next_power_of_2(bins):
            continue
        best, index = kernels.bin_winners(x[:64], bins, True, block_b, tile // block_b, warps)
        ok = torch.equal(best, ref_best) and torch.equal(index, ref_index)
        _, t = cuda_time(lambda: kernels.bin_winners(x, bins, True, block_b, tile // block_b, warps), repeat)
        gbps = rows * n * 4 / t / 1e9
        out.append({"rows": rows, "n": n, "bins": bins, "block_b": block_b, "tile": tile, "warps": warps, "ok": ok, "ms": t * 1e3, "topk_ms": t_topk * 1e3})
        print(f"  bin_winners bins={bins} block_b={block_b} tile={tile} warps={warps} ok={ok} {t * 1e3:.2f} ms ({gbps:.0f} GB/s; torch.topk {t_topk * 1e3:.2f} ms)", flush=True)
    del x
    torch.cuda.empty_cache()
    return out


def best_table(results: list[dict], gpu: str) -> str:
    """Markdown table of the fastest correct config of every shape in `results` (tune_shape rows)."""
    lines = [f"best config per shape on {gpu} (bf16, k=10, recall_target 0.95)", "",
             "| nq | n | d | block_m | block_n | block_k | warps | stages | flatten | kernel ms | bare matmul ms | % of matmul rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    shapes = list(dict.fromkeys((r["nq"], r["n"], r["d"]) for r in results))
    for shape in shapes:
        ok = [r for r in results if (r["nq"], r["n"], r["d"]) == shape and r["ok"]]
        if ok:
            r = min(ok, key=lambda r: r["ms"])
            c = r["config"]
            lines.append(f"| {shape[0]:,} | {shape[1]:,} | {shape[2]} | {c['block_m']} | {c['block_n']} | {c['block_k']} | {c['num_warps']} | {c['num_stages']} | {c.get('flatten', False)} | {r['ms']:.2f} | {r['matmul_ms']:.2f} | {100 * r['matmul_ms'] / r['ms']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes, narrow sweeps only")
    p.add_argument("--main-only", action="store_true", help="only the issue's main shape (nq=8192, n=4M, d=128)")
    p.add_argument("--topk", action="store_true", help="also sweep approx_topk's bin_winners kernel")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "tune_gpu.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("tune_gpu.py needs a CUDA GPU and triton")
    n_main, nq_main = (1 << 20, 2048) if args.quick else (1 << 22, 8192)
    shapes = [(nq_main, n_main, 128)]
    if not args.main_only:
        shapes += [(nq_main, n_main // 4, d) for d in (64, 256, 768)] + [(nq, n_main, 128) for nq in (1, 64, 1024)]
    results = []
    for nq, n, d in shapes:
        print(f"shape nq={nq} n={n} d={d}", flush=True)
        results += tune_shape(nq, n, d, args.repeat, wide=not args.quick and (nq, n, d) == shapes[0])
    topk = tune_topk(nq_main, 1 << 20 if not args.quick else 1 << 18, args.repeat) if args.topk else []
    with open(args.json, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "results": results, "topk": topk}, f, indent=1)
    print(best_table(results, torch.cuda.get_device_name()))


if __name__ == "__main__":
    main()
