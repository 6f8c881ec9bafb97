"""`peakknn bench`: recall, queries/s, build time and memory of peakknn next to its peers.

Every method answers the same queries in the same process, with the same thread count; recall
is `evaluation.recall_at_k` (ties allowed) against the file's ground truth, or against an exact
fp32 torch search where there is none (synthetic data, or fewer than k neighbours per query).

Without --partitioned: the flat Index at one recall_target next to torch exact and FAISS flat,
one row each (times: median of `repeat` runs of the whole query batch), with roofline columns
(peakknn.perfmodel): the floor of the search's shape on this machine's measured ceilings (bf16
for peakknn rows, fp32 for exact methods; a lower bound of the time, as every method here
computes every product), the achieved % of it and the term that sets it (matrix or memory).
A method faster than its floor means low ceilings: they are measured again and the floor taken
at the best rates of both measurements; a row still faster is marked "ceiling miss" (JSON:
"ceiling_miss": true), never shown as a plain percentage above 100.

Both modes warn (log and table header) when the load average says the machine is busy (`busy`).

With --partitioned: the recall / queries-per-second curve of a PartitionedIndex (swept over
`peers.PeakPartitioned.TARGETS` of recall_target, or over the probes given) next to every
installed peer of BENCH_PEERS, each swept over its own knob (`sweep`); the table gives each
method's best q/s at recall >= 0.90 / 0.95 / 0.99 (`best_point`).

Memory MiB: the index's own accounting (`peers` module docstring), else the growth of the
process's resident set over the build (marked "rss"). Both modes write the table (.md) and the
JSON under --out, the curve also a plot (.png).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import perfmodel
from ._checks import ceil_div
from .data import Dataset, load_hdf5, synthetic
from .evaluation import exact_search, recall_at_k, timed
from .index import Index
from .peers import Method, PeakPartitioned, available, rss_bytes

LOG = logging.getLogger(__name__)
THRESHOLDS = (0.90, 0.95, 0.99)
BENCH_PEERS = ("scann-tree", "faiss-ivfpq", "hnswlib", "usearch", "faiss-flat")  # names in peers.METHODS
# the flat bench's rows whose arithmetic is known (every query times every row): their floor is a bound
EXACT_ROWS = ("torch exact", "faiss Flat")  # row names start so (peers.TorchExact, peers.FaissFlat)
# busy: the 1-minute load average plus the bench's threads exceed the logical CPUs by more than
# this (half a core of other runnable work competing with the bench's threads)
BUSY_SLACK = 0.5


@dataclasses.dataclass
class Row:
    method: str
    recall: float
    qps: float
    search_s: float
    build_s: float
    memory_mb: float
    floor_s: float = float("nan")  # roofline floor of the search: a lower bound of search_s
    bottleneck: str = ""
    ceiling_miss: bool = False  # search_s < floor_s even after the ceilings were measured again

    @property
    def pct_floor(self) -> float:
        return 100.0 * self.floor_s / self.search_s


def _progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)


def run_bench(
    ds: Dataset,
    *,
    k: int = 10,
    recall_target: float = 0.99,
    precision: str = "bf16",
    repeat: int = 3,
    peers: bool = True,
) -> list[Row]:
    """Rows for the flat Index, then (peers) torch exact and FAISS flat, with roofline columns
    (module docstring: a row faster than its floor has the ceilings measured again)."""
    train_t, test_t = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    n, d = ds.train.shape
    nq = ds.test.shape[0]
    rows: list[Row] = []
    neighbors = ds.neighbors
    exact_ids, exact_s = None, None
    if peers or neighbors is None:
        exact_ids, exact_s = timed(lambda: exact_search(train_t, test_t, k, ds.metric, progress=lambda it: _progress(it, "torch exact", len(it))), 1)
        if neighbors is None:
            neighbors = exact_ids

    def recall(ids):
        return recall_at_k(np.asarray(ids), neighbors, ds.train, ds.test, ds.metric)

    t0 = time.perf_counter()
    index = Index(d, metric=ds.metric, precision=precision)
    index.reserve(n)  # a bulk load of known size: no doubling slack (README: memory)
    step = max(1, n // 20)
    for i in _progress(range(0, n, step), "peakknn build", ceil_div(n, step)):
        index.add(train_t[i : i + step])
    build = time.perf_counter() - t0
    index.search(test_t[: min(nq, 8)], k, recall_target=recall_target)  # warm-up
    res, secs = timed(lambda: index.search(test_t, k, recall_target=recall_target), repeat)
    rows.append(Row(f"peakknn {precision} r={recall_target}", recall(res.ids.numpy()), nq / secs, secs, build, index.memory_bytes / 2**20))

    if peers:
        rows.append(Row("torch exact (mm+topk)", recall(exact_ids), nq / exact_s, exact_s, 0.0, n * d * 4 / 2**20))
        train, test, metric = prepared(ds)
        for m in available(["faiss-flat"], torch.get_num_threads(), say=LOG.warning):
            t0 = time.perf_counter()
            m.build(train, metric)
            build = time.perf_counter() - t0
            ids, secs = timed(lambda m=m: m.search(test, k, None), repeat)
            rows.append(Row(m.name, recall(ids), nq / secs, secs, build, m.memory_mb))

    def set_floors(measured: list) -> list[str]:
        for row in rows:
            exact = row.method.startswith(EXACT_ROWS)
            if exact or row.method.startswith("peakknn"):
                p = perfmodel.predict(nq, n, d, k, 1.0 if exact else recall_target, "fp32" if exact else precision, measured)
                row.floor_s, row.bottleneck, row.ceiling_miss = p.floor_s, p.bottleneck, row.search_s < p.floor_s
        return [r.method for r in rows if r.ceiling_miss]

    measured = [perfmodel.ceilings("cpu")]
    if missed := set_floors(measured):
        LOG.warning("%s ran faster than the floor: measuring the ceilings again", ", ".join(missed))
        measured.append(perfmodel.ceilings("cpu", refresh=True))
        if missed := set_floors(measured):
            LOG.warning("ceiling miss: %s still faster than the floor at the best measured rates", ", ".join(missed))
    return rows


def busy(threads: int) -> str | None:
    """A warning when the machine is busy: the 1-minute load average (os.getloadavg, where
    available) plus `threads` exceeds the logical CPUs by more than BUSY_SLACK; else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no getloadavg on Windows; OSError where unobtainable
        return None
    cpus = os.cpu_count() or 1
    if load + threads <= cpus + BUSY_SLACK:
        return None
    return f"busy machine: load average {load:.2f} on {cpus} logical CPUs with {threads} bench threads; times will be slower and noisier than on an idle machine"


def format_table(rows: list[Row], title: str) -> str:
    lines = [
        title, "",
        "| method | recall@k | queries/s | search s | floor s | % of floor | bottleneck | build s | memory MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        pct = f"{r.pct_floor:.0f}%" + (" ceiling miss" if r.ceiling_miss else "")
        floor = "- | - | -" if r.floor_s != r.floor_s else f"{r.floor_s:.3f} | {pct} | {r.bottleneck}"
        lines.append(f"| {r.method} | {r.recall:.4f} | {r.qps:,.0f} | {r.search_s:.3f} | {floor} | {r.build_s:.2f} | {r.memory_mb:,.1f} |")
    lines += ["", "floor: a lower bound of the search time from the best measured ceilings (peakknn.perfmodel)"]
    if any(r.ceiling_miss for r in rows):
        lines.append("ceiling miss: faster than the floor even after measuring the ceilings again (the ceilings are wrong, not the method)")
    return "\n".join(lines)


# ----------------------------------------------------------------- curves (--partitioned, suite.py)
def prepared(ds: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """float32 C-contiguous train/test and the metric for `peers`: cosine becomes normalised "ip"."""
    train, test = np.ascontiguousarray(ds.train, np.float32), np.ascontiguousarray(ds.test, np.float32)
    if ds.metric == "cos":
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
        return train, test, "ip"
    return train, test, ds.metric


def with_truth(ds: Dataset, k: int) -> Dataset:
    """ds with ground truth for k: an exact fp32 search where the file has none, or fewer than
    k neighbours per query."""
    if ds.neighbors is None or ds.neighbors.shape[1] < k:
        ds.neighbors = exact_search(torch.from_numpy(ds.train), torch.from_numpy(ds.test), k, ds.metric)
    return ds


def sweep(methods: list[Method], ds: Dataset, k: int, repeat: int, rounds: int = 1, quick: bool = False, say=print) -> list[dict]:
    """Build every method once, then sweep them all `rounds` times, method after method (each
    setting: a warm-up, then the median of `repeat` timed runs of the whole batch). A point's
    qps is the median over rounds, so slow spells of a shared machine fall on every method
    alike; recall is from the first round. ds: with its ground truth (`with_truth`).
    A peer whose build raises is skipped with a message (peakknn's errors propagate)."""
    train, test, metric = prepared(ds)
    built = []
    for m in methods:
        gc.collect()
        before, t0 = rss_bytes(), time.perf_counter()
        try:
            m.build(train, metric)
        except Exception as e:  # a peer's library refusing this data should not end the run
            if not m.needs:
                raise
            say(f"  skip {m.name}: {type(e).__name__}: {e}")
            continue
        build_s, after = time.perf_counter() - t0, rss_bytes()
        rss_mb = float("nan") if before is None or after is None else (after - before) / 2**20
        own = m.memory_mb == m.memory_mb
        built.append((m, {"build_s": build_s, "memory_mb": m.memory_mb if own else rss_mb, "memory_by": "index" if own else "rss", "rss_mb": rss_mb}))
    points: dict[tuple, dict] = {}
    for r in range(rounds):
        for m, common in built:
            for setting in m.settings(quick):
                m.search(test[: min(16, len(test))], k, setting)  # warm-up
                ids, secs = timed(lambda m=m, setting=setting: m.search(test, k, setting), repeat)
                point = points.get((m.name, str(setting)))
                if point is None:
                    rec = recall_at_k(np.asarray(ids, dtype=np.int64), ds.neighbors, ds.train, ds.test, ds.metric)
                    point = points[(m.name, str(setting))] = {"method": m.name, "knob": m.knob, "setting": setting, "recall": rec, "qps_rounds": [], **common}
                point["qps_rounds"].append(len(test) / secs)
                point["qps"] = float(np.median(point["qps_rounds"]))
                tag = f"[{r + 1}/{rounds}] " if rounds > 1 else ""
                knob = "" if setting is None else f"{m.knob}={setting}"
                say(f"  {tag}{m.name:30s} {knob:22s} recall {point['recall']:.4f} {len(test) / secs:10,.0f} q/s")
    return list(points.values())


def best_point(points: list[dict], method: str, threshold: float) -> dict | None:
    """The point of `method` with the most q/s among those at recall >= threshold (None: none)."""
    return max((p for p in points if p["method"] == method and p["recall"] >= threshold), key=lambda p: p["qps"], default=None)


def best_table(points: list[dict], title: str) -> str:
    """Per method: best q/s at recall >= each of THRESHOLDS (with its setting), build s, memory."""
    head = " | ".join(f"q/s @ recall >= {t:.2f}" for t in THRESHOLDS)
    lines = [title, "", f"| method | {head} | build s | memory MiB |", "|---|" + "---|" * (len(THRESHOLDS) + 2)]
    for m in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == m]
        cells = []
        for t in THRESHOLDS:
            best = best_point(mine, m, t)
            if best is None:
                cells.append("–")
            else:
                cells.append(f"{best['qps']:,.0f}" + ("" if best["setting"] is None else f" ({best['knob']}={best['setting']})"))
        memory = f"{mine[0]['memory_mb']:,.1f}" + (" (rss)" if mine[0]["memory_by"] == "rss" else "")
        lines.append(f"| {m} | {' | '.join(cells)} | {mine[0]['build_s']:.1f} | {memory} |")
    lines += ["", "memory: the index's own accounting; (rss): growth of the process's resident memory over the build"]
    return "\n".join(lines)


def plot(points: list[dict], title: str, path: Path, k: int = 10, say=print) -> None:
    """Recall vs q/s (log scale), one line per method, to path (PNG); without matplotlib: a message."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("  no plot: pip install matplotlib")
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab20").colors  # one colour per method (the default cycle has 10)
    for i, m in enumerate(dict.fromkeys(p["method"] for p in points)):
        mine = sorted((p for p in points if p["method"] == m), key=lambda p: p["recall"])
        ours = m.startswith("peakknn")
        ax.plot([p["recall"] for p in mine], [p["qps"] for p in mine], "o-" if ours else ".--", label=m, color=colours[i % len(colours)], linewidth=2 if ours else 1)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("queries / s (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo "model name", else lscpu "Model name", else platform."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def write_report(path, result: dict, text: str, indent: int = 1) -> None:
    """A benchmark's results: `result` as JSON at path, `text` (its Markdown report) next to it
    with the suffix .md; folders made as needed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent) + "\n")
    out.with_suffix(".md").write_text(text + "\n")


# ----------------------------------------------------------------- command

def cpu_name() -> str:
    """`cpu_model()` with the family / model numbers of /proc/cpuinfo, e.g. "AMD EPYC (family
    25, model 17)": the model name alone can be as vague as "AMD EPYC"."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    extra = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields and "model" in fields else ""
    return cpu_model() + extra


def main(args) -> int:
    torch.set_num_threads(args.threads)
    warning = busy(args.threads)  # before the bench's own work raises the load
    if args.dataset:
        ds = load_hdf5(args.dataset)
        if args.nq:
            ds.test, ds.neighbors = ds.test[: args.nq], None if ds.neighbors is None else ds.neighbors[: args.nq]
    else:
        ds = synthetic(args.n, args.d, args.nq or 1000, seed=args.seed)
    n, d = ds.train.shape
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads}
    title = f"{ds.name}: n={n:,} d={d} queries={ds.test.shape[0]:,} k={args.k} metric={ds.metric}\nCPU: {machine['cpu']} ({machine['cpus']} logical CPUs), threads={args.threads}"
    if warning:
        LOG.warning(warning)
        title += f"\nWARNING: {warning}"
    payload = {"dataset": ds.name, "n": n, "d": d, "nq": ds.test.shape[0], "k": args.k, "metric": ds.metric, **machine, "busy": warning}
    points = None
    if args.partitioned is None:
        perfmodel.ceilings("cpu", refresh=args.remeasure)  # cached per machine, re-measured when stale
        if ds.neighbors is not None and ds.neighbors.shape[1] < args.k:
            raise ValueError(f"the file's ground truth has {ds.neighbors.shape[1]} neighbours, fewer than k={args.k}")
        rows = run_bench(ds, k=args.k, recall_target=args.recall_target, precision=args.precision, repeat=args.repeat, peers=not args.no_peers)
        table = format_table(rows, title) + f"\n\nceilings: {perfmodel.summary(perfmodel.ceilings('cpu'))}"
        payload.update(repeat=args.repeat, rows=[dataclasses.asdict(r) for r in rows], ceilings=dataclasses.asdict(perfmodel.ceilings("cpu")))
    else:
        probes = None if args.partitioned == "auto" else args.partitioned
        methods: list[Method] = [PeakPartitioned(args.threads, partitions=args.partitions, codes=args.codes, probes=probes)]
        if not args.no_peers:
            methods += available(BENCH_PEERS, args.threads)
        title += f", rounds={args.rounds}, repeat={args.repeat}"
        print(title, flush=True)
        points = sweep(methods, with_truth(ds, args.k), args.k, args.repeat, args.rounds, say=lambda s: print(s, flush=True))
        table = best_table(points, title)
        payload.update(rounds=args.rounds, repeat=args.repeat, rows=points)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [Path(args.json) if args.json else out / f"bench-{ds.name}.json", out / f"bench-{ds.name}.md"]
    written[0].write_text(json.dumps(payload, indent=1))
    written[1].write_text(table + "\n")
    if points is not None:
        written.append(out / f"bench-{ds.name}.png")
        plot(points, title, written[-1], args.k)
    print("\nwrote " + ", ".join(str(p) for p in written if p.exists()))
    return 0
