"""Recall of a PartitionedIndex's recall_target for queries not distributed like its rows
(queries around other centres), with the rows' recall curve (learn_queries=False) and with the
curve learned from the searches' own queries (the default, SearchSettings.learn_queries).

    python benchmarks/recall_elsewhere.py [--rows 4000] [--sent 1000] [--held-out 500]

Rows: a mixture around 32 centres (offset 5); queries: the same kind of mixture around 32 other
centres. --sent queries are searched first in blocks of 100 with recall_target 0.95 (what a
caller's traffic does), then recall@10 of --held-out other queries is measured against an exact
fp32 search at each target. Prints a Markdown table with the CPU model.
"""

from __future__ import annotations

import argparse

import torch

import peakknn
from peakknn.bench import cpu_name
from peakknn.data import mixture
from peakknn.evaluation import recall

TARGETS = (0.9, 0.95, 0.99)
CASES = (("l2", 16), ("cos", 16), ("ip", 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--sent", type=int, default=1000)
    ap.add_argument("--held-out", type=int, default=500)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}; rows {args.rows}, {args.sent} queries sent before, {args.held_out} held out; recall@10 (probe)\n")
    print("| metric | d | curve measured on | " + " | ".join(f"target {t}" for t in TARGETS) + " |")
    print("|---|---|---|" + "---|" * len(TARGETS))
    for metric, d in CASES:
        x = torch.from_numpy(mixture(args.rows, d, centres_seed=3, seed=0))
        q = torch.from_numpy(mixture(args.sent + args.held_out, d, centres_seed=4, seed=1))
        exact = peakknn.Index(d, metric=metric, precision="fp32")
        exact.add(x)
        held_out = q[args.sent :]
        want = exact.search(held_out, 10, recall_target=1.0).ids
        for learn in (False, True):
            index = peakknn.PartitionedIndex(d, metric=metric, search_settings=peakknn.SearchSettings(learn_queries=learn))
            index.add(x)
            index.train()
            for block in q[: args.sent].split(100):
                index.search(block, 10, recall_target=0.95)
            cells = [f"{recall(index.search(held_out, 10, recall_target=t).ids, want):.3f} ({index.probe_for(t)})" for t in TARGETS]
            print(f"| {metric} | {d} | {index.calibration_source} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
