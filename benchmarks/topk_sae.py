"""A top-k sparse autoencoder trained twice, with torch.topk and with peakknn.nn.TopK (issue 22).

    python benchmarks/topk_sae.py [--dataset /work/shared/datasets/debian-minilm-384-angular.hdf5]
        [--steps 200] [--batch 256] [--latents 8192] [--k 32] [--recall 0.95] [--seed 0]
        [--out benchmarks/results/zen4/topk_sae.json]

The Gao et al. 2024 recipe ("Scaling and evaluating sparse autoencoders", OpenAI): d = 384
inputs (the sentence embeddings of the HDF5 file's `train` split; its `test` split is the
evaluation set), `--latents` latents, z = relu(topk_k(W_enc (x - b_pre) + b_enc)), x_hat =
W_dec z + b_pre; W_enc initialised as W_dec^T (tied init), the columns of W_dec kept at unit norm
(renormalised after every step, the gradient's component along each column removed before it),
b_pre initialised to the mean of the data, Adam (lr --lr), loss the normalised MSE
|x - x_hat|^2 / |x - mean(x)|^2. Without the file (or with --synthetic) the inputs are a
clustered synthetic set of unit vectors of the same size (peakknn.data.clustered).

The two runs share the seed, the initial weights and every batch, and step in lockstep (one
step of each in turn), so each step time is measured under the same conditions. Reported: the
median step time of each (after --warmup steps) and the ratio, the final normalised MSE of each
on the evaluation set (target: the approximate one within 2% of the exact one), the fraction of
dead latents (never among the kept k over the evaluation set and the last 50 training batches),
and the measured recall of the approximate top-k against torch.topk on the final encoder's
pre-activations of the evaluation set.
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

from peakknn.bench import cpu_name, write_report
from peakknn.evaluation import recall
from peakknn.nn import TopK
from peakknn.topk import plan_topk

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = "/work/shared/datasets/debian-minilm-384-angular.hdf5"
NMSE_TOLERANCE = 0.02  # the approximate run's final normalised MSE within 2% of the exact run's
DEAD_WINDOW = 50  # training batches (besides the evaluation set) a live latent must fire in


class TorchTopK(nn.Module):
    """relu(topk) with torch.topk: the exact baseline (OpenAI's sparse_autoencoder TopK)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        top = torch.topk(x, self.k, dim=-1, sorted=False)
        return torch.zeros_like(x).scatter(-1, top.indices, torch.relu(top.values))


class SparseAutoencoder(nn.Module):
    def __init__(self, d: int, latents: int, activation: nn.Module, pre_bias: torch.Tensor):
        super().__init__()
        self.pre_bias = nn.Parameter(pre_bias.clone())
        self.encoder = nn.Linear(d, latents, bias=False)
        self.latent_bias = nn.Parameter(torch.zeros(latents))
        self.decoder = nn.Linear(latents, d, bias=False)
        self.activation = activation

    def encode_pre(self, x):
        return self.encoder(x - self.pre_bias) + self.latent_bias

    def forward(self, x):
        z = self.activation(self.encode_pre(x))
        return self.decoder(z) + self.pre_bias, z


def init_weights(d: int, latents: int, seed: int) -> torch.Tensor:
    """W_dec [d, latents] with unit-norm columns (the encoder is its transpose: tied init)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, latents, generator=g)
    return w / w.norm(dim=0, keepdim=True)


def make_model(d, latents, activation, pre_bias, w_dec) -> SparseAutoencoder:
    model = SparseAutoencoder(d, latents, activation, pre_bias)
    with torch.no_grad():
        model.decoder.weight.copy_(w_dec)
        model.encoder.weight.copy_(w_dec.T)
    return model


def unit_norm_step(model: SparseAutoencoder) -> None:
    """Remove the gradient's component along each decoder column (before the step)."""
    w, g = model.decoder.weight, model.decoder.weight.grad
    if g is not None:
        g.sub_((g * w).sum(0, keepdim=True) * w)


def renormalise(model: SparseAutoencoder) -> None:
    with torch.no_grad():
        w = model.decoder.weight
        w.div_(w.norm(dim=0, keepdim=True))


def nmse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).pow(2).sum() / (x - x.mean(0, keepdim=True)).pow(2).sum()


def load(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    path = Path(args.dataset) if args.dataset else None
    if path is not None and path.exists() and not args.synthetic:
        from peakknn.data import load_hdf5

        data = load_hdf5(path)
        return torch.from_numpy(data.train), torch.from_numpy(data.test), str(path)
    from peakknn.data import clustered

    data = clustered(n=args.synthetic_rows, d=384, nq=1000, clusters=200, seed=args.seed)
    why = "--synthetic" if args.synthetic else f"{path} not found" if path is not None else "no --dataset"
    return torch.from_numpy(data.train), torch.from_numpy(data.test), f"synthetic clustered {args.synthetic_rows} x 384 ({why})"


def train(args) -> dict:
    train_x, eval_x, source = load(args)
    d = train_x.shape[1]
    w_dec = init_weights(d, args.latents, args.seed)
    pre_bias = train_x.mean(0)
    models = {
        "torch.topk": make_model(d, args.latents, TorchTopK(args.k), pre_bias, w_dec),
        "peakknn.nn.TopK": make_model(d, args.latents, TopK(args.k, recall_target=args.recall, activation=torch.relu), pre_bias, w_dec),
    }
    optims = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    g = torch.Generator().manual_seed(args.seed)
    times = {name: [] for name in models}
    losses = {name: [] for name in models}
    fired = {name: torch.zeros(args.latents, dtype=torch.bool) for name in models}
    for step in range(args.steps):
        batch = train_x[torch.randint(0, train_x.shape[0], (args.batch,), generator=g)]
        for name, model in models.items():  # lockstep: the same batch, one step each in turn
            t0 = time.perf_counter()
            x_hat, z = model(batch)
            loss = nmse(x_hat, batch)
            optims[name].zero_grad(set_to_none=True)
            loss.backward()
            unit_norm_step(model)
            optims[name].step()
            renormalise(model)
            times[name].append(time.perf_counter() - t0)
            losses[name].append(float(loss.detach()))
            if step >= args.steps - DEAD_WINDOW:
                fired[name] |= (z != 0).any(0)
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step}: " + ", ".join(f"{n} nmse {losses[n][-1]:.4f}" for n in models), file=sys.stderr, flush=True)
    results = {}
    with torch.no_grad():
        for name, model in models.items():
            x_hat, z = model(eval_x)
            fired[name] |= (z != 0).any(0)
            results[name] = {
                "step_s": statistics.median(times[name][args.warmup :]),
                "eval_nmse": float(nmse(x_hat, eval_x)),
                "train_nmse_last50": statistics.mean(losses[name][-50:]),
                "dead_fraction": float((~fired[name]).float().mean()),
            }
        pre = models["peakknn.nn.TopK"].encode_pre(eval_x)
        approx = models["peakknn.nn.TopK"].activation.sparse(pre).indices
        measured_recall = recall(approx, torch.topk(pre, args.k).indices)
    exact, ours = results["torch.topk"], results["peakknn.nn.TopK"]
    plan = plan_topk(args.batch, args.latents, args.k, args.recall, sorted=False)
    meta = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "data": source, "train_rows": train_x.shape[0], "eval_rows": eval_x.shape[0], "args": vars(args),
            "load_before": args.load_before, "load_after": os.getloadavg()[0]}  # fmt: skip
    return {
        "meta": meta,
        "runs": results,
        "speedup": exact["step_s"] / ours["step_s"],
        "nmse_ratio": ours["eval_nmse"] / exact["eval_nmse"],
        "nmse_within_tolerance": ours["eval_nmse"] <= exact["eval_nmse"] * (1 + NMSE_TOLERANCE),
        "per_bin": plan.per_bin,
        "bins": plan.bins,
        "recall": measured_recall,
    }



def markdown(res: dict) -> str:
    m, a = res["meta"], res["meta"]["args"]
    plan = "exact" if res["per_bin"] is None else f"per_bin={res['per_bin']}, bins={res['bins']}"
    lines = [
        "# Top-k sparse autoencoder: torch.topk vs peakknn.nn.TopK (benchmarks/topk_sae.py)", "",
        f"CPU: {m['cpu']}; {m['threads']} torch threads; torch {m['torch']}; {m['date']}; load average {m['load_before']:.2f} before, {m['load_after']:.2f} after",
        f"Data: {m['data']} ({m['train_rows']:,} training rows, {m['eval_rows']:,} evaluation rows)",
        (f"SAE: d=384, {a['latents']:,} latents, k={a['k']}, batch {a['batch']}, {a['steps']} steps, Adam lr {a['lr']}, seed {a['seed']}; "
         f"TopK recall_target {a['recall']} ({plan}); measured recall on the final pre-activations {res['recall']:.4f}"), "",
        "| top-k | step ms (median) | eval normalised MSE | train NMSE (last 50) | dead latents |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for name, r in res["runs"].items():
        lines.append(f"| {name} | {r['step_s'] * 1e3:.2f} | {r['eval_nmse']:.4f} | {r['train_nmse_last50']:.4f} | {r['dead_fraction']:.2%} |")
    within = "within" if res["nmse_within_tolerance"] else "NOT within"
    lines += [
        "",
        f"step time ratio (torch.topk / peakknn): {res['speedup']:.2f}x; normalised MSE ratio (peakknn / torch.topk): {res['nmse_ratio']:.4f} ({within} {NMSE_TOLERANCE:.0%})",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="ann-benchmarks HDF5 file of embeddings (train / test)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic clustered set even if the file exists")
    p.add_argument("--synthetic-rows", type=int, default=56000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--recall", type=float, default=0.95)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zen4" / "topk_sae.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup >= args.steps:
        p.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    args.load_before = os.getloadavg()[0]
    res = train(args)
    text = markdown(res)
    write_report(args.out, res, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
