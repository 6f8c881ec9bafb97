"""Command line: `peakknn bench | build | search | serve` (also `python -m peakknn`).

Bad arguments and bad files end with one line on stderr, `peakknn CMD: error: ...`, and exit
code 2 (argparse's format: usage errors come from argparse, the rest from `main`), never a
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from ._checks import check_recall_target
from .partitioned.settings import CODE_TYPES, PartitionSettings, SearchSettings

HDF5_SUFFIXES = (".h5", ".hdf5")  # as data.load_vectors dispatches
FLAT_OPTIONS = ("precision",)  # build options of each index kind: the classes' own keyword / field names
PARTITION_OPTIONS = ("partitions", "codes", "block_dims", "keep_vectors", "iters", "seed")
SEARCH_OPTIONS = ("probe", "rerank")
SHOWN_QUERIES = 5  # search without --ids-out / --scores-out prints this many queries' results


def _default(cls, field: str):
    """The dataclass field's default, for help texts."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == field)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peakknn", description="k-nearest-neighbour search at peak FLOP/s")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print peakknn's version and exit")
    sub = p.add_subparsers(dest="command", required=True, help="what to do (peakknn CMD --help: its options)")

    b = sub.add_parser("bench", help="recall, queries/s, build time and memory next to the peers (FAISS, torch; ScaNN, hnswlib, usearch with --partitioned)")
    b.add_argument("--dataset", help="ann-benchmarks HDF5 file (default: synthetic random data)")
    b.add_argument("--n", type=_positive, default=1_000_000, help="synthetic database rows (default: %(default)s)")
    b.add_argument("--d", type=_positive, default=128, help="synthetic dimension (default: %(default)s)")
    b.add_argument("--nq", type=_positive, default=None, help="queries (synthetic default 1000; a file: its first NQ)")
    b.add_argument("--k", type=_positive, default=10, help="neighbours per query, at most the database rows (default: %(default)s)")
    b.add_argument("--recall-target", type=_recall_target, default=0.99, help="of the flat Index (without --partitioned), in (0, 1] (default: %(default)s)")
    b.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="of the flat Index (without --partitioned; default: %(default)s)")
    b.add_argument("--threads", type=_positive, default=2, help="CPU threads of torch and of every peer (default: %(default)s)")
    b.add_argument("--repeat", type=_positive, default=3, help="timed runs per method or setting (median; default: %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    b.add_argument("--no-peers", action="store_true", help="peakknn only")
    b.add_argument("--out", default="bench-out", help="directory for bench-<dataset>.md / .json / .png (default: %(default)s)")
    b.add_argument("--json", help="write the JSON here instead of OUT/bench-<dataset>.json")
    b.add_argument(
        "--partitioned", nargs="?", const="auto", type=_probes, metavar="PROBES",
        help="instead: the recall / q/s curve of a PartitionedIndex next to every installed peer (ScaNN, FAISS IVF-PQ, "
        "hnswlib, usearch, FAISS flat), each over its own sweep; the PartitionedIndex over recall_target 0.8 ... "
        "0.995 (its probe from the recall curve it measures), or with PROBES over these comma-separated probes "
        "(SearchSettings.probe: partitions searched per query, each >= 1)",
    )  # fmt: skip
    b.add_argument("--rounds", type=_positive, default=3, help="--partitioned: sweeps of all methods, interleaved (q/s: median over rounds; default: %(default)s)")
    b.add_argument("--codes", choices=CODE_TYPES, default=None, help="codes of the partitioned index (default: PartitionSettings' default)")
    b.add_argument("--partitions", type=_positive, default=None, help="partitions of the partitioned index (default: PartitionSettings' default)")
    b.add_argument("--remeasure", action="store_true", help="measure the machine's ceilings again (peakknn.perfmodel cache)")

    s = sub.add_parser(
        "build", help="vectors (.npy or HDF5) -> saved index directory",
        description="Build an index of the vectors and save it to OUT (replacing an index saved there). "
        "--index partitioned adds the rows, trains on all of them and measures the recall curve "
        "behind `search --recall-target`; options left out take the classes' defaults.",
    )  # fmt: skip
    s.add_argument("vectors", help=".npy file, or HDF5 file (dataset --key); a floating dtype")
    s.add_argument("out", help="index directory to write")
    s.add_argument("--key", default="train", help="HDF5 dataset holding the vectors (default: %(default)s)")
    s.add_argument("--metric", choices=["ip", "l2", "cos"], default=None, help="default: the HDF5 distance, else ip")
    s.add_argument("--index", choices=["flat", "partitioned"], default="flat", help="Index (exact or bin-approximate scan of every row) or PartitionedIndex (default: %(default)s)")
    flat = s.add_argument_group("--index flat (Index)")
    flat.add_argument("--precision", choices=["bf16", "fp32"], default=argparse.SUPPRESS, help="scan precision (default: bf16)")
    part = s.add_argument_group("--index partitioned (PartitionSettings, SearchSettings: they check the values)")
    given = {"default": argparse.SUPPRESS}  # absent unless given: the settings' own defaults apply
    part.add_argument("--partitions", type=int, **given, help="k-means partitions (default: about 2 sqrt(rows), at training)")
    part.add_argument("--codes", choices=CODE_TYPES, **given, help=f"stored codes (default: {_default(PartitionSettings, 'codes')})")
    part.add_argument("--block-dims", type=int, **given, help=f"pq4: dimensions per 16-centre block (default: {_default(PartitionSettings, 'block_dims')})")
    part.add_argument("--keep-vectors", action=argparse.BooleanOptionalAction, **given,
                      help=f"keep fp32 vectors for exact re-ranking (default: {_default(PartitionSettings, 'keep_vectors')})")  # fmt: skip
    part.add_argument("--iters", type=int, **given, help=f"k-means iterations (default: {_default(PartitionSettings, 'iters')})")
    part.add_argument("--seed", type=int, **given, help=f"seeds training (default: {_default(PartitionSettings, 'seed')})")
    part.add_argument("--probe", type=int, **given, help=f"searches' default probe, partitions per query (default: {_default(SearchSettings, 'probe')})")
    part.add_argument("--rerank", type=int, **given, help="searches' default candidates re-scored exactly (default: 2k, 10k for pq4)")

    q = sub.add_parser(
        "search", help="saved index + query vectors -> ids/scores .npy",
        description="Search a saved Index or PartitionedIndex (peakknn.load). Results go only where "
        "--ids-out / --scores-out say (i64[nq, k] ids, f32[nq, k] scores, .npy); an existing file is "
        f"kept unless --force. With neither, the first {SHOWN_QUERIES} queries' results are printed.",
    )  # fmt: skip
    q.add_argument("index", help="index directory (either kind)")
    q.add_argument("queries", help=".npy file, or HDF5 file (dataset --key); a floating dtype")
    q.add_argument("--key", default="test", help="HDF5 dataset holding the queries (default: %(default)s)")
    q.add_argument("--k", type=int, default=10, help="neighbours per query (default: %(default)s)")
    q.add_argument("--recall-target", type=_recall_target, default=None,
                   help="in (0, 1]; 1.0 is exact for a flat index; a partitioned one reads its probe off its recall curve "
                   "(default: a flat index's recall_target, a partitioned index's probe)")  # fmt: skip
    q.add_argument("--probe", type=int, default=None, help="partitioned index: partitions searched per query (default: the index's setting; not with --recall-target)")
    q.add_argument("--ids-out", default=None, help="write the ids here (.npy; default: not written)")
    q.add_argument("--scores-out", default=None, help="write the scores here (.npy; default: not written)")
    q.add_argument("--force", action="store_true", help="overwrite existing --ids-out / --scores-out files")
    _serve_parser(sub)
    return p


def _serve_parser(sub) -> None:
    """`peakknn serve`: options of peakknn.server (defaults: server.settings, which needs no server dependency)."""
    from .server.settings import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, ServerSettings

    d = ServerSettings()
    v = sub.add_parser(
        "serve", help="an HTTP server of collections in a data folder (needs peakknn[server])",
        description="Serve the collections in --data over HTTP (FastAPI + uvicorn; the API is listed in peakknn.server.app): "
        "durable writes (write-ahead log, snapshots), dynamic batching of searches, payload filters, /metrics and a "
        "/dashboard. SIGTERM or Ctrl-C finishes the requests in flight, snapshots and exits 0.",
    )  # fmt: skip
    v.add_argument("--data", required=True, help="folder of the collections (created if missing; one server per folder)")
    v.add_argument("--host", default=DEFAULT_HOST, help="address to listen on; other than loopback needs an API key (default: %(default)s)")
    v.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    v.add_argument("--api-key", default=None, help=f"require this key (Authorization: Bearer KEY); default: ${API_KEY_ENV}, else none")
    v.add_argument("--max-batch", type=_positive, default=d.max_batch, help="most queries one batched index search runs; 1 turns batching off (default: %(default)s)")
    v.add_argument("--max-delay-ms", type=_non_negative, default=d.max_delay_ms, help="longest a search waits for others to batch with (default: %(default)s)")
    v.add_argument("--max-queue", type=_positive, default=d.max_queue, help="searches waiting per collection before 503 (default: %(default)s)")
    v.add_argument("--max-body-mb", type=_positive_float, default=d.max_body_bytes / (1 << 20), help="largest request body in MiB, 413 beyond (default: %(default)s)")
    v.add_argument("--snapshot-every", type=_positive, default=d.snapshot_every, help="snapshot a collection after this many writes (default: %(default)s)")
    v.add_argument("--snapshot-seconds", type=_positive_float, default=d.snapshot_seconds, help="... or this long after its first unsnapshotted write (default: %(default)s)")
    v.add_argument("--threads", type=_positive, default=None, help="torch threads of each search and write (default: torch's, one per core; with --engine process "
                   "a search gets half of them, as two batches run at once)")
    v.add_argument("--engine", choices=["process", "inline"], default="process" if os.name == "posix" else "inline",
                   help="process: the collections live in a process of their own, so searches never wait for the HTTP side's Python "
                   "(POSIX only); inline: in the HTTP process (default: %(default)s; --sharded is always inline)")
    v.add_argument("--sharded", action="store_true", help="one shard per torchrun process (rank i % N holds id i; data in DATA/shard-<rank>): "
                   "torchrun --standalone --nproc-per-node N -m peakknn serve --sharded --data DATA")
    v.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info", help="logging level; debug adds an access log (default: %(default)s)")


def _number(cast, valid, expected: str):
    """An argparse type: the option's text as cast(text), which must satisfy `valid`; else
    "expected <expected>, got <text>"."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive = _number(int, lambda v: v >= 1, "a positive integer")
_port = _number(int, lambda v: 0 <= v <= 65535, "a TCP port in [0, 65535]")
_non_negative = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")  # NaN fails both


def _positive_float(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _recall_target(text: str) -> float:
    """--recall-target's value: a number in (0, 1], as the API checks it."""
    try:
        return check_recall_target(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def _probes(text: str):
    """--partitioned's value: "auto", or a comma-separated list of positive ints."""
    if text == "auto":
        return text
    try:
        probes = [int(p) for p in text.split(",")]
    except ValueError:
        probes = []
    if not probes or min(probes) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or comma-separated positive probes (partitions searched per query), got {text!r}")
    return probes


def main(argv: list[str] | None = None) -> int:
    """Run the command line on argv (default: sys.argv[1:]). Returns the exit code: 0, or 2 after
    printing one error line on stderr; argparse exits with 2 itself on usage errors."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            _check_bench(args)
            from .bench import main as bench_main

            return bench_main(args)
        if args.command == "build":
            return _build(args)
        if args.command == "serve":
            from .server.run import serve

            return serve(args)
        return _search(args)
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"peakknn {args.command}: error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------- bench
def _check_bench(args) -> None:
    """What argparse cannot check alone, before the bench does any work: --k at most the
    database rows (--n, or the rows of the file's "train", read from its shape only) and, for
    the flat bench, at most the neighbours of the file's ground truth. Raises ValueError."""
    rows, truth = args.n, None
    if args.dataset:
        with _open_hdf5(args.dataset) as f:
            rows = _shape(f, args.dataset, "train")[0]
            if "neighbors" in f:
                truth = _shape(f, args.dataset, "neighbors")[1]
    if args.k > rows:
        raise ValueError(f"--k {args.k} is more than the {rows} database rows")
    if args.partitioned is None and truth is not None and truth < args.k:  # --partitioned computes its own
        raise ValueError(f"--k {args.k} is more than the {truth} neighbours of {args.dataset}'s ground truth")


def _open_hdf5(path: str):
    """The h5py.File at `path`, open for reading; ValueError naming it when it is not one."""
    from .data import _h5py

    try:
        return _h5py().File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file: {e}") from None


def _shape(f, path: str, key: str) -> tuple[int, int]:
    """The shape of 2-d dataset `key` of open HDF5 file `f`; ValueError naming the file otherwise."""
    shape = getattr(f.get(key), "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{path} has no 2-d dataset {key!r}" + (f" (its shape: {list(shape)})" if shape is not None else ""))
    return shape


# ----------------------------------------------------------------- build / search
def _read_vectors(path: str, key: str, name: str) -> np.ndarray:
    """f32[n, d] from a .npy file or HDF5 dataset `key` (`data.load_vectors`), once the stored
    array is known to have a floating dtype: like the API, integer (or other) arrays raise
    TypeError, here naming the file and `name` (vectors or queries)."""
    from .data import load_vectors

    dtype = None
    if Path(path).suffix in HDF5_SUFFIXES:
        with _open_hdf5(path) as f:
            dtype = getattr(f.get(key), "dtype", None)  # missing: load_vectors says so
    elif Path(path).suffix == ".npy":
        try:
            dtype = np.load(path, mmap_mode="r", allow_pickle=False).dtype  # reads the header only
        except ValueError:  # object arrays cannot be mapped: load_vectors reports them
            pass
    if dtype is not None and not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{path}: {name} must have a floating dtype, got {dtype} (convert it, e.g. x.astype(np.float32))")
    return load_vectors(path, key)


def _file_metric(path: str) -> str:
    """The metric named by an HDF5 file's "distance" attribute (ann-benchmarks), else "ip"."""
    from .data import HDF5_METRICS

    if Path(path).suffix not in HDF5_SUFFIXES:
        return "ip"
    with _open_hdf5(path) as f:
        distance = f.attrs.get("distance", "dot")
    return HDF5_METRICS.get(distance.decode() if isinstance(distance, bytes) else str(distance), "ip")


def _build(args) -> int:
    from .index import Index
    from .partitioned import PartitionedIndex

    options = vars(args)  # the kind's options that were given (the others are absent)
    wrong = FLAT_OPTIONS if args.index == "partitioned" else PARTITION_OPTIONS + SEARCH_OPTIONS
    for name in wrong:
        if name in options:
            raise ValueError(f"--{name.replace('_', '-')} is not an option of --index {args.index}")
    if args.index == "partitioned":  # checked by the settings before the vectors are read
        settings = PartitionSettings(**{k: options[k] for k in PARTITION_OPTIONS if k in options})
        search_settings = SearchSettings(**{k: options[k] for k in SEARCH_OPTIONS if k in options})
    vectors = _read_vectors(args.vectors, args.key, "vectors")
    metric = args.metric or _file_metric(args.vectors)
    if args.index == "flat":
        index = Index(vectors.shape[1], metric=metric, **{k: options[k] for k in FLAT_OPTIONS if k in options})
        index.add(vectors)
    else:
        index = PartitionedIndex(vectors.shape[1], metric=metric, settings=settings, search_settings=search_settings)
        index.add(vectors)  # trains itself when train_size rows are in
        if not index.is_trained:
            index.train()
        if index.settings.keep_vectors:  # a compressed-only index measured its curve at training
            index.calibrate()
    index.save(args.out)
    print(f"built {index!r} -> {args.out}")
    return 0


def _outputs(args) -> list[tuple[str, str]]:
    """(path, "ids" | "scores") of each result file asked for, checked before any search: the
    paths differ, their folders exist, and none exists unless --force. Raises ValueError."""
    outputs = [(path, what) for path, what in ((args.ids_out, "ids"), (args.scores_out, "scores")) if path is not None]
    if len(outputs) == 2 and Path(args.ids_out).resolve() == Path(args.scores_out).resolve():
        raise ValueError(f"--ids-out and --scores-out name the same file {args.ids_out}")
    for path, what in outputs:
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"--{what}-out {path} is a directory")
        if not p.resolve().parent.is_dir():
            raise ValueError(f"--{what}-out {path}: there is no folder {p.parent}")
        if p.exists() and not args.force:
            raise ValueError(f"--{what}-out {path} exists: pass --force to overwrite it")
    return outputs


def _search(args) -> int:
    from .partitioned import PartitionedIndex
    from .saved import load

    outputs = _outputs(args)
    queries = _read_vectors(args.queries, args.key, "queries")
    index = load(args.index)
    options = {"recall_target": args.recall_target}
    if args.probe is not None:
        if not isinstance(index, PartitionedIndex):
            raise ValueError(f"--probe is for a partitioned index; {args.index} holds a flat Index")
        options["probe"] = args.probe
    result = index.search(queries, args.k, **options)
    arrays = {"ids": np.asarray(result.ids), "scores": np.asarray(result.scores)}
    for path, what in outputs:
        with open(path, "wb" if args.force else "xb") as f:  # exactly this name (np.save would add .npy)
            np.save(f, arrays[what])
    if outputs:
        print(f"searched {queries.shape[0]} queries, k={args.k} -> {', '.join(path for path, _ in outputs)}")
        return 0
    shown = min(SHOWN_QUERIES, queries.shape[0])
    print(f"searched {queries.shape[0]} queries, k={args.k}; the first {shown} (id:score, best first):")
    for i in range(shown):
        print(f"{i}: " + "  ".join(f"{j}:{s:.6g}" for j, s in zip(arrays["ids"][i].tolist(), arrays["scores"][i].tolist())))
    print("(pass --ids-out / --scores-out to write all results)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
