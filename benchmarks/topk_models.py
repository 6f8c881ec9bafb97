"""approx_topk and peakknn.nn.TopK against torch.topk on the shapes of models (issue 22), side by side.

    python benchmarks/topk_models.py [--quick] [--rounds 3] [--threads 2] [--shapes mlp3072,mlp16384,vocab,issue38475]
        [--out benchmarks/results/zen4/topk_models.json]

Shapes (rows x n, k): mlp3072 8,192 x 3,072, k=128 and mlp16384 8,192 x 16,384, k=64 (MLP
activations, fp32 and bf16); vocab 64 x 131,072, k=50 (top-k sampling); issue38475 512 x
2,097,152, k=100 (pytorch/pytorch issue 38475). --quick divides the rows by 8 (by 32 for
issue38475) for a short run; --shapes tiny (64 x 6,000, k=16) is the smoke test's. Rows are
standard normal (one seed per shape).

Rows of the main table, each at recall_target 0.95 with per_bin chosen by the cost model:
- topk: torch.topk(x, k) (sorted) against approx_topk(x, k) (sorted), the measured recall of
  approx_topk against torch.topk's indices;
- mask fwd / fwd+bwd (MLP shapes): TopK(k) (activation ReLU) against the PyTorch user's top-k
  activation, torch.zeros_like(x).scatter(-1, i, relu(x.gather(-1, i))) with i from
  torch.topk(x, k, sorted=False), forward, and forward + backward of (out * w).sum();
- block fwd / fwd+bwd (MLP shapes): Linear(d, n) -> top-k activation -> Linear(n, d) on the rows
  as tokens (d = 768 for n = 3,072, d = 256 for n = 16,384), the same two activations.
Every method of a row runs once per round, rounds interleaved, after a warm-up call; seconds are
medians over rounds (wall clock). Targets (issue 22): topk speed-up >= 2x on every shape on CPU.

The choice table: for each shape and dtype, every plan per_bin=None considered (exact, per_bin
1, 2, 3, 4, 6, 8 ...) with the cost model's predicted seconds and the measured ones
(approx_topk(x, k, per_bin=p); exact, per_bin=1, the chosen plan and those predicted within 3x
of the best are measured), the chosen one marked; "auto / best" is per_bin=None's time over the
fastest measured, "auto / per_bin=1" over per_bin=1's (the stated margin: <= 1.10; where auto
chose per_bin=1 the two are the same code and the ratio shows the noise of the measurement).

Writes the JSON and, next to it, the same report as Markdown (.md); prints the Markdown. The
header names the CPU (lscpu "Model name", family and model), torch's threads and the load average
before and after (others' work on a shared machine slows some rounds; interleaving shares it out).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from peakknn import approx_topk
from peakknn.bench import cpu_name, write_report
from peakknn.evaluation import recall
from peakknn.nn import TopK
from peakknn.topk import costs
from peakknn.topk.approx import choose_plan

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95
SPEEDUP_TARGET = 2.0
AUTO_MARGIN = 1.10  # auto may be at most this much slower than per_bin = 1 (and than the best)
MEASURE_WITHIN = 3.0  # the choice table measures the plans predicted within this factor of the best
SHAPES = {  # name: (rows, n, k, dtypes, block dim or None, quick row divisor)
    "mlp3072": (8192, 3072, 128, ("fp32", "bf16"), 768, 8),
    "mlp16384": (8192, 16384, 64, ("fp32", "bf16"), 256, 8),
    "vocab": (64, 131072, 50, ("fp32",), None, 1),
    "issue38475": (512, 2097152, 100, ("fp32",), None, 32),
    "tiny": (64, 6000, 16, ("fp32", "bf16"), 32, 1),  # for the smoke test; not in the default set
}
DEFAULT_SHAPES = ("mlp3072", "mlp16384", "vocab", "issue38475")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def interleaved(methods: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each method, one call per method per round after one warm-up each."""
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


class TorchTopK(nn.Module):
    """The PyTorch user's top-k activation (relu of the kept values), for the baseline."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        i = torch.topk(x, self.k, dim=-1, sorted=False).indices
        return torch.zeros_like(x).scatter(-1, i, torch.relu(x.gather(-1, i)))


def row(shape, dtype, what, times_torch, times_ours, plan=None, measured_recall=None) -> dict:
    t, o = statistics.median(times_torch), statistics.median(times_ours)
    return {"shape": shape, "dtype": dtype, "what": what, "torch_s": t, "peakknn_s": o, "speedup": t / o, "torch_rounds": times_torch,
            "peakknn_rounds": times_ours, "per_bin": None if plan is None else plan.per_bin, "bins": None if plan is None else plan.bins,
            "recall": measured_recall}  # fmt: skip


def bench_shape(name: str, args) -> tuple[list[dict], list[dict]]:
    rows_full, n, k, dtypes, block_dim, quick_div = SHAPES[name]
    rows = max(1, rows_full // quick_div) if args.quick else rows_full
    out, choice = [], []
    for dname in dtypes:
        dtype = DTYPES[dname]
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        x = torch.randn(rows, n, generator=g).to(dtype)
        label = f"{rows:,} x {n:,}, k={k}"
        plan = used_plan(rows, n, k, dtype, sorted=True)
        # the approx_topk op, sorted, against torch.topk
        t = interleaved({"torch": lambda x=x: torch.topk(x, k), "ours": lambda x=x: approx_topk(x, k, recall_target=TARGET)}, args.rounds)
        got = approx_topk(x, k, recall_target=TARGET).indices
        out.append(row(label, dname, "topk", t["torch"], t["ours"], plan, recall(got, torch.topk(x, k).indices)))
        print(f"{name} {dname} topk: {out[-1]['speedup']:.2f}x (per_bin={plan.per_bin}, bins={plan.bins})", file=sys.stderr, flush=True)
        choice.append(check_choice(label, dname, x, k, args.rounds))
        if block_dim is not None:
            out += bench_mask_and_block(label, dname, x, k, block_dim, args.rounds)
    return out, choice


def used_plan(rows: int, n: int, k: int, dtype: torch.dtype, *, sorted: bool):
    """The plan approx_topk(per_bin=None) runs for this call on the CPU (the model's choice, or
    on large calls the fastest of its shortlist and torch.topk, timed)."""
    return choose_plan(rows, n, k, TARGET, None, dtype, torch.device("cpu"), False, sorted)


def check_choice(label: str, dname: str, x: torch.Tensor, k: int, rounds: int) -> dict:
    """Predicted and measured seconds of the candidate plans of per_bin=None: exact, per_bin=1,
    the chosen one and every other predicted within MEASURE_WITHIN of the best prediction (the
    rest are listed unmeasured: on the largest shapes they would take minutes)."""
    rows, n = x.shape
    found = costs.candidates(rows, n, k, TARGET, x.dtype, x.device)
    chosen = used_plan(rows, n, k, x.dtype, sorted=True)
    best_predicted = min(c.seconds for c in found)
    methods = {}
    for c in found:
        key = "exact" if c.per_bin is None else f"per_bin={c.per_bin}"
        if c.per_bin in (None, 1, chosen.per_bin) or c.seconds <= MEASURE_WITHIN * best_predicted:
            methods[key] = (lambda: torch.topk(x, k)) if c.per_bin is None else (lambda p=c.per_bin: approx_topk(x, k, recall_target=TARGET, per_bin=p))
    methods["auto"] = lambda: approx_topk(x, k, recall_target=TARGET)
    times = interleaved(methods, rounds)
    med = {key: statistics.median(v) for key, v in times.items()}
    plans = []
    for c in found:
        key = "exact" if c.per_bin is None else f"per_bin={c.per_bin}"
        plans.append({"plan": key, "bins": c.bins, "predicted_s": c.seconds, "measured_s": med.get(key)})
    chosen_key = "exact" if chosen.exact else f"per_bin={chosen.per_bin}"
    fastest = min((p for p in plans if p["measured_s"] is not None), key=lambda p: p["measured_s"])
    p1 = med.get("per_bin=1")
    return {"shape": label, "dtype": dname, "chosen": chosen_key, "fastest": fastest["plan"], "plans": plans, "auto_s": med["auto"],
            "auto_over_best": med["auto"] / fastest["measured_s"], "auto_over_per_bin_1": None if p1 is None else med["auto"] / p1}  # fmt: skip


def bench_mask_and_block(label, dname, x, k, block_dim, rounds) -> list[dict]:
    rows, n = x.shape
    dtype = x.dtype
    ours, theirs = TopK(k, recall_target=TARGET, activation=torch.relu), TorchTopK(k)
    w = torch.randn_like(x)
    plan = used_plan(rows, n, k, dtype, sorted=False)
    xg = x.clone().requires_grad_(True)

    def fwd_bwd(layer):
        xg.grad = None
        (layer(xg) * w).sum().backward()

    with torch.no_grad():
        t = interleaved({"torch": lambda: theirs(x), "ours": lambda: ours(x)}, rounds)
    out = [row(label, dname, "mask fwd", t["torch"], t["ours"], plan)]
    t = interleaved({"torch": lambda: fwd_bwd(theirs), "ours": lambda: fwd_bwd(ours)}, rounds)
    out.append(row(label, dname, "mask fwd+bwd", t["torch"], t["ours"], plan))
    torch.manual_seed(0)
    up, down = nn.Linear(block_dim, n).to(dtype), nn.Linear(n, block_dim).to(dtype)
    tokens = torch.randn(rows, block_dim).to(dtype)
    block_ours, block_theirs = nn.Sequential(up, ours, down), nn.Sequential(up, theirs, down)

    def block_step(block):
        block.zero_grad(set_to_none=True)
        block(tokens).float().square().mean().backward()

    with torch.no_grad():
        t = interleaved({"torch": lambda: block_theirs(tokens), "ours": lambda: block_ours(tokens)}, rounds)
    out.append(row(f"{label}, block d={block_dim}", dname, "block fwd", t["torch"], t["ours"], plan))
    t = interleaved({"torch": lambda: block_step(block_theirs), "ours": lambda: block_step(block_ours)}, rounds)
    out.append(row(f"{label}, block d={block_dim}", dname, "block fwd+bwd", t["torch"], t["ours"], plan))
    for r in out:
        print(f"  {dname} {r['what']}: {r['speedup']:.2f}x", file=sys.stderr, flush=True)
    return out


def within_margin(c: dict) -> bool:
    """auto is per_bin=1 itself, or at most AUTO_MARGIN slower than it (or per_bin=1 cannot run)."""
    return c["chosen"] == "per_bin=1" or c["auto_over_per_bin_1"] is None or c["auto_over_per_bin_1"] <= AUTO_MARGIN



def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# approx_topk / peakknn.nn.TopK vs torch.topk (benchmarks/topk_models.py)", "",
        (f"CPU: {meta['cpu']}; {meta['threads']} torch threads; torch {meta['torch']}; {meta['date']}; "
         f"load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after"),
        f"Command: `python benchmarks/topk_models.py {meta['args']}`", "",
        (f"recall_target {TARGET}, per_bin chosen by the cost model; median seconds over {meta['rounds']} interleaved rounds "
         f"(wall clock). Target: topk speed-up >= {SPEEDUP_TARGET:g}x."), "",
        "| shape | dtype | what | torch s | peakknn s | speed-up | per_bin | bins | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rows"]:
        plan = ("exact", "-") if r["per_bin"] is None else (r["per_bin"], r["bins"])
        rec = "" if r["recall"] is None else f"{r['recall']:.4f}"
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['what']} | {r['torch_s']:.4f} | {r['peakknn_s']:.4f} | {r['speedup']:.2f}x | {plan[0]} | {plan[1]} | {rec} |"
        )
    lines += ["", ("mask: the top-k activation alone (relu of the kept values); block: Linear -> top-k activation -> Linear; "
                   "torch: torch.topk(sorted=False) + scatter, the same for both."), "",
              "## The automatic choice (per_bin=None) against every plan it considered", "",
              f"Stated margin: auto / per_bin=1 <= {AUTO_MARGIN:.2f} (auto may choose exact or per_bin > 1).", "",
              "| shape | dtype | plan | bins | predicted s | measured s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c in result["choice"]:
        for p in c["plans"]:
            mark = " **(chosen)**" if p["plan"] == c["chosen"] else ""
            measured = "not measured" if p["measured_s"] is None else f"{p['measured_s']:.4f}"
            lines.append(f"| {c['shape']} | {c['dtype']} | {p['plan']}{mark} | {p['bins'] or '-'} | {p['predicted_s']:.4f} | {measured} |")
    lines += [
        "",
        "| shape | dtype | chosen | fastest measured | auto s | auto / best | auto / per_bin=1 | within margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["choice"]:
        p1 = "-" if c["auto_over_per_bin_1"] is None else f"{c['auto_over_per_bin_1']:.2f}"
        ok = within_margin(c)
        if c["chosen"] == "per_bin=1":
            p1 += " (the same plan: the ratio is noise)"
        lines.append(
            f"| {c['shape']} | {c['dtype']} | {c['chosen']} | {c['fastest']} | {c['auto_s']:.4f} | {c['auto_over_best']:.2f} | {p1} | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rows (a short run)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zen4" / "topk_models.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(names) - set(SHAPES))
    if unknown:
        p.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "load_before": os.getloadavg()[0], "rounds": args.rounds, "args": " ".join(argv if argv is not None else sys.argv[1:]), "quick": args.quick}  # fmt: skip
    rows, choice = [], []
    for name in names:
        r, c = bench_shape(name, args)
        rows += r
        choice += c
    meta["load_after"] = os.getloadavg()[0]
    for c in choice:
        c["within_margin"] = within_margin(c)
    result = {"meta": meta, "rows": rows, "choice": choice, "unit_costs": [vars(u) for u in costs._UNITS.values()]}
    text = markdown(result)
    write_report(args.out, result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
