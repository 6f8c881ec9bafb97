"""Command line: `peakknn bench | build | search` (also `python -m peakknn`)."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peakknn", description="k-nearest-neighbour search at peak FLOP/s")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="recall, queries/s, build time and memory next to the peers (FAISS, torch; ScaNN, hnswlib, usearch with --partitioned)")
    b.add_argument("--dataset", help="ann-benchmarks HDF5 file (default: synthetic random data)")
    b.add_argument("--n", type=int, default=1_000_000, help="synthetic database rows")
    b.add_argument("--d", type=int, default=128, help="synthetic dimension")
    b.add_argument("--nq", type=int, default=None, help="queries (synthetic default 1000; a file: its first NQ)")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--recall-target", type=float, default=0.99, help="of the flat Index (without --partitioned)")
    b.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="of the flat Index (without --partitioned)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeat", type=int, default=3, help="timed runs per method or setting (median)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-peers", action="store_true", help="peakknn only")
    b.add_argument("--out", default="bench-out", help="directory for bench-<dataset>.md / .json / .png (default: %(default)s)")
    b.add_argument("--json", help="write the JSON here instead of OUT/bench-<dataset>.json")
    b.add_argument(
        "--partitioned", nargs="?", const="auto", type=_probes, metavar="PROBES",
        help="instead: the recall / q/s curve of a PartitionedIndex next to every installed peer (ScaNN, FAISS IVF-PQ, "
        "hnswlib, usearch, FAISS flat), each over its own sweep; the PartitionedIndex over recall_target 0.8 ... "
        "0.995 (its probe from the recall curve it measures), or with PROBES over these comma-separated numbers "
        "of partitions searched per query",
    )  # fmt: skip
    b.add_argument("--rounds", type=int, default=3, help="--partitioned: sweeps of all methods, interleaved (q/s: median over rounds; default: %(default)s)")
    b.add_argument("--codes", choices=["bf16", "int8", "pq4"], default=None, help="codes of the partitioned index (default: PartitionSettings' default)")
    b.add_argument("--partitions", type=int, default=None, help="partitions of the partitioned index (default: PartitionSettings' default)")
    b.add_argument("--remeasure", action="store_true", help="measure the machine's ceilings again (peakknn.perfmodel cache)")

    s = sub.add_parser("build", help="vectors (.npy or HDF5) -> saved index directory")
    s.add_argument("vectors", help=".npy file, or HDF5 file (dataset --key)")
    s.add_argument("out", help="index directory to write")
    s.add_argument("--key", default="train", help="HDF5 dataset holding the vectors")
    s.add_argument("--metric", choices=["ip", "l2", "cos"], default=None, help="default: the HDF5 distance, else ip")
    s.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")

    q = sub.add_parser("search", help="saved index + query vectors -> ids/scores .npy")
    q.add_argument("index", help="index directory")
    q.add_argument("queries", help=".npy file, or HDF5 file (dataset --key)")
    q.add_argument("--key", default="test", help="HDF5 dataset holding the queries")
    q.add_argument("--k", type=int, default=10)
    q.add_argument("--recall-target", type=float, default=None, help="default: the index's setting")
    q.add_argument("--ids-out", default="ids.npy")
    q.add_argument("--scores-out", default="scores.npy")
    return p


def _probes(text: str):
    """--partitioned's value: "auto", or a comma-separated list of positive ints."""
    if text == "auto":
        return text
    try:
        probes = [int(p) for p in text.split(",")]
    except ValueError:
        probes = []
    if not probes or min(probes) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or comma-separated positive numbers of partitions to search, got {text!r}")
    return probes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args)
        if args.command == "build":
            return _build(args)
        return _search(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as e:
        print(f"peakknn {args.command}: error: {e}", file=sys.stderr)
        return 2


def _build(args) -> int:
    from .data import HDF5_METRICS, load_vectors
    from .index import Index

    vectors = load_vectors(args.vectors, args.key)
    metric = args.metric
    if metric is None:
        metric = "ip"
        if args.vectors.endswith((".h5", ".hdf5")):
            from .data import _h5py

            with _h5py().File(args.vectors, "r") as f:
                metric = HDF5_METRICS.get(str(f.attrs.get("distance", "dot")), "ip")
    index = Index(vectors.shape[1], metric=metric, precision=args.precision)
    index.add(vectors)
    index.save(args.out)
    print(f"built {index!r} -> {args.out}")
    return 0


def _search(args) -> int:
    from .data import load_vectors
    from .index import Index

    index = Index.load(args.index)
    queries = load_vectors(args.queries, args.key)
    result = index.search(queries, args.k, recall_target=args.recall_target)
    np.save(args.ids_out, result.ids.numpy())
    np.save(args.scores_out, result.scores.numpy())
    print(f"searched {queries.shape[0]} queries, k={args.k} -> {args.ids_out}, {args.scores_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
