"""Load benchmark of `peakknn serve`: many concurrent single-query searches, batching on and off.

    python benchmarks/serve_load.py [--dataset debian-minilm-384-angular.hdf5] [--seconds 10]
        [--rounds 2] [--clients 64] [--out benchmarks/results/zen4/serve_load.json]

Data: the ann-benchmarks file's train rows and test queries when --dataset is given, else a
synthetic clustered cosine set of --n x --d (56,000 x 384, 1,000 queries; peakknn.data.clustered).

1. The library in this process: `Index.search` of the queries in batches of 64 by the default
   Index and by one with packed_scan=True (as the server holds a flat collection:
   engine.packed), alternating, for --lib-seconds each, at the start of every round (the
   servers idle meanwhile): the better of the two is what that round's servers are measured
   against, so that a machine whose speed drifts between rounds skews no ratio. `Index.add` of
   the whole set is timed just before each bulk load. One query at a time, for reference.
2. Two real servers (`python -m peakknn serve` subprocesses on free 127.0.0.1 ports, temporary
   data folders): one with the default batching, one with `--max-batch 1`. Each gets a flat
   collection of the set's metric (the server's defaults: bf16, recall_target 0.95) and the set
   through `peakknn.Client.upsert` (its bulk form: .npy bodies for runs of ids without payloads,
   else vectors_b64, in the client's 8 MiB batches, two in flight), timed until the last batch is
   acknowledged (durable), one server after the other.
   The servers run with --snapshot-seconds 3600 so that the periodic snapshot (60 s after the
   first write by default) cannot land inside a timed round; nothing else differs from defaults.
   For reference (not a target), the same rows are also sent as `application/x-npy` bodies into a
   scratch collection of the unbatched server, which is then deleted.
3. --clients keep-alive connections, driven by one client thread (selectors, the way wrk drives
   its connections: prepared request bytes, answers parsed as far as status and Content-Length,
   so the clients take as little as possible of the CPU they share with the server), each with
   one single-query search in flight (k=10, JSON lists as peakknn.Client sends them, the set's
   queries cycled from a different offset per connection) and the next sent as soon as its
   answer came, for --warmup + --seconds per round; only requests that start after the warm-up
   and end within the round count. Rounds alternate on, off, on, off ... (--rounds of each);
   figures are medians over rounds, errors (transport errors, non-200 answers, bodies that are
   not search results) are summed over everything, warm-ups included.
4. CPU: per round the server's CPU time (/proc/PID/stat of its process and of its engine process), this process's (the clients:
   resource.getrusage) and the whole machine's busy time (/proc/stat), as shares of the round's
   wall time x logical CPUs. Batch sizes come from the server's /stats before and after a round,
   the mean time of one batched index search and the share of the round the search worker was
   busy from its /metrics (peakknn_search_batch_duration_seconds). A phase where other processes
   took more than 10% of the machine is flagged in the report ("contended" in the JSON).
   --compare ARGS adds a third server (batching on, those options) to the same interleaved
   rounds and bulk loads, e.g. --compare '--engine inline' (the collections in the HTTP process).
5. A check: the first --verify queries, one request each, against each server give the ids the
   in-process index gives (overlap@k reported).

Targets (issue 20): 0 errors; batched q/s >= 5x unbatched; batched q/s >= 40% of the library's
batched q/s; HTTP bulk load within 3x the library's add time. Prints a table and the ratios;
writes JSON (--out) and, next to it, the same report as Markdown (.md). Exit code 1 if any
request failed, else 0 (targets missed are reported, not failures). --profile DIR runs both
servers under cProfile (main thread: the event loop) and writes their profiles and top
functions there; the figures of such a run are slowed by the profiler.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from peakknn import Index
from peakknn.bench import cpu_model, write_report
from peakknn.client import Client
from peakknn.data import clustered, load_hdf5

COLLECTION = "load"
LIB_BATCH = 64
START_TIMEOUT = 180.0  # seconds to answer /healthz (torch import on a busy 2-core machine)
REQUEST_TIMEOUT = 60.0
TARGETS = {"errors": 0, "batched_over_unbatched": 5.0, "batched_over_library": 0.40, "load_over_add": 3.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENDED = 0.10  # share of the machine's CPU taken by other processes beyond which a phase is flagged


# ----------------------------------------------------------------- options
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", help="ann-benchmarks HDF5 file (train rows, test queries); default: synthetic")
    p.add_argument("--n", type=int, default=56_000, help="synthetic rows (default: %(default)s)")
    p.add_argument("--d", type=int, default=384, help="synthetic dimension (default: %(default)s)")
    p.add_argument("--nq", type=int, default=1000, help="synthetic queries (default: %(default)s)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections, one request in flight each (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per round and server (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per server, interleaved on/off (default: %(default)s)")
    p.add_argument("--lib-seconds", type=float, default=3.0, help="seconds of in-process batched search (default: %(default)s)")
    p.add_argument("--verify", type=int, default=32, help="queries checked against the in-process index (default: %(default)s)")
    p.add_argument("--server-args", default="", help="more `peakknn serve` options of the batched server, e.g. '--threads 1'")
    p.add_argument("--compare", default=None, help="options of a third server, batching on, measured in the same interleaved rounds "
                   "and bulk-loaded the same way (targets stay those of the batched server), e.g. '--engine inline'")
    p.add_argument("--max-batch", type=int, default=None, help="--max-batch of the batched server (default: the server's)")
    p.add_argument("--max-delay-ms", type=float, default=None, help="--max-delay-ms of the batched server (default: the server's)")
    p.add_argument("--profile", default=None, help="folder: run the servers under cProfile and write their profiles there")
    p.add_argument("--out", default=None, help="JSON results file (a .md report is written next to it)")
    p.add_argument("--quiet", action="store_true", help="print only the report")
    args = p.parse_args(argv)
    for name in ("n", "d", "nq", "k", "clients", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0 or args.warmup < 0 or args.lib_seconds <= 0:
        p.error("--seconds and --lib-seconds must be > 0, --warmup >= 0")
    return args


# ----------------------------------------------------------------- data
def load_data(args) -> tuple[str, np.ndarray, np.ndarray, str]:
    """(name, train f32[n, d], queries f32[nq, d], metric)."""
    if args.dataset:
        ds = load_hdf5(args.dataset)
    else:
        ds = clustered(args.n, args.d, nq=args.nq, clusters=max(1, min(1000, args.n // 50)), seed=0)
    return ds.name, np.ascontiguousarray(ds.train, np.float32), np.ascontiguousarray(ds.test, np.float32), ds.metric


# ----------------------------------------------------------------- CPU accounting
def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def tree_cpu(pid: int) -> float:
    """proc_cpu of `pid` and of its live descendants (the server's engine process)."""
    total = proc_cpu(pid)
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            try:
                total += tree_cpu(child)
            except OSError:  # the child ended meanwhile
                pass
    return total


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


# ----------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m peakknn serve` on a free loopback port over folder `data`, logging to `log`."""

    def __init__(self, label: str, data: Path, extra: list[str], profile: Path | None = None):
        self.label, self.data, self.extra = label, data, extra
        self.log = data.with_name(data.name + ".log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.profile = profile
        serve = ["-m", "peakknn", "serve", "--data", str(data), "--port", str(self.port), "--log-level", "warning",
                 "--snapshot-seconds", "3600", *extra]  # fmt: skip
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        self.cmd = [sys.executable, *prof, *serve]
        self.proc: subprocess.Popen | None = None

    @property
    def args(self) -> str:
        """The serve options, as a command line."""
        return "peakknn serve " + " ".join(shlex.quote(a) for a in self.cmd[self.cmd.index("serve") + 1:])

    def launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PEAKKNN_API_KEY"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} server did not answer /healthz within {START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stats(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """The unlabelled sums and counts of /metrics (batch durations, search latencies)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.endswith(("_sum", "_count")) and "{" not in name:
                out[name] = float(value)
        return out

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 120.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# ----------------------------------------------------------------- library figures
def library_indexes(train: np.ndarray, metric: str) -> dict[str, Index]:
    """The in-process indexes: the default Index and one with packed_scan=True (as the server
    holds a flat collection: engine.packed)."""
    out = {}
    for name, options in (("default", {}), ("packed", {"packed_scan": True})):
        out[name] = Index(train.shape[1], metric=metric, **options)
        out[name].add(train, ids=np.arange(len(train), dtype=np.int64))
    return out


def library_add(train: np.ndarray, metric: str) -> float:
    """Seconds of one `Index.add` of the whole set into a new Index."""
    index = Index(train.shape[1], metric=metric)
    t = time.perf_counter()
    index.add(train, ids=np.arange(len(train), dtype=np.int64))
    return time.perf_counter() - t


def library_round(indexes: dict[str, Index], queries: np.ndarray, k: int, seconds: float) -> dict:
    """Batched q/s of each index (batches of LIB_BATCH, alternating, `seconds` each), the better
    one ("best": what a server round is compared with), and the share of the machine that other
    processes took meanwhile (the servers idle)."""
    batches = [queries[s:s + LIB_BATCH] for s in range(0, len(queries), LIB_BATCH)]
    for index in indexes.values():
        index.search(batches[0], k)  # warm-up (packs the rows)
    cpu0, (busy0, total0) = self_cpu(), machine_cpu()
    done, spent = dict.fromkeys(indexes, 0), dict.fromkeys(indexes, 0.0)
    while sum(spent.values()) < len(indexes) * seconds:
        for name, index in indexes.items():
            t0 = time.perf_counter()
            for b in batches:
                index.search(b, k)
                done[name] += len(b)
            spent[name] += time.perf_counter() - t0
    cpu1, (busy1, total1) = self_cpu(), machine_cpu()
    qps = {name: done[name] / spent[name] for name in indexes}
    return {**qps, "best": max(qps.values()), "others_share": max(0.0, ((busy1 - busy0) - (cpu1 - cpu0)) / max(1e-9, total1 - total0))}


def library_single(index: Index, queries: np.ndarray, k: int, seconds: float) -> float:
    """q/s of one query per call."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done < 4:
        index.search(queries[done % len(queries)][None], k)
        done += 1
    return done / (time.perf_counter() - t0)


# ----------------------------------------------------------------- bulk load
def bulk_load(server: Server, train: np.ndarray, metric: str) -> dict:
    """Create the collection and upsert the whole set through peakknn.Client (its bulk
    form); seconds from the first batch sent to the last one acknowledged."""
    with Client(server.url, timeout=REQUEST_TIMEOUT, progress=False) as client:
        coll = client.create_collection(COLLECTION, train.shape[1], metric=metric, index="flat")
        rows = coll._batch_rows(None)
        cpu0, t0 = server.cpu(), time.perf_counter()
        coll.upsert(train, ids=np.arange(len(train), dtype=np.int64), progress=False)
        seconds = time.perf_counter() - t0
        server_cpu = server.cpu() - cpu0
        count = len(coll)
    if count != len(train):
        raise RuntimeError(f"{server.label} server holds {count} points after loading {len(train)}")
    return {"seconds": seconds, "rows_per_request": rows, "requests": -(-len(train) // rows), "server_cpu_s": server_cpu,
            "mb_per_s": train.nbytes / 1e6 / seconds}  # fmt: skip


def bulk_load_npy(server: Server, train: np.ndarray, metric: str, rows: int) -> dict:
    """For reference: the same set as `application/x-npy` bodies (no base64, no JSON) into a
    scratch collection, `rows` per request, then the collection is deleted."""
    import io

    import httpx

    name = COLLECTION + "-npy"
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as http:
        http.put(f"/collections/{name}", json={"dim": int(train.shape[1]), "metric": metric, "index": "flat"}).raise_for_status()
        cpu0, t0 = server.cpu(), time.perf_counter()
        for a in range(0, len(train), rows):
            b = min(len(train), a + rows)
            buf = io.BytesIO()
            np.save(buf, train[a:b])
            http.put(f"/collections/{name}/points", params={"ids": f"{a}:{b}"}, content=buf.getvalue(),
                     headers={"Content-Type": "application/x-npy"}).raise_for_status()  # fmt: skip
        seconds = time.perf_counter() - t0
        server_cpu = server.cpu() - cpu0
        http.delete(f"/collections/{name}").raise_for_status()
    return {"seconds": seconds, "rows_per_request": rows, "requests": -(-len(train) // rows), "server_cpu_s": server_cpu,
            "mb_per_s": train.nbytes / 1e6 / seconds}  # fmt: skip


# ----------------------------------------------------------------- load rounds
class _Connection:
    """One client: a keep-alive connection with at most one request in flight."""

    __slots__ = ("sock", "next", "sent_at", "buf")

    def __init__(self, sock: socket.socket, first: int):
        self.sock, self.next, self.sent_at, self.buf = sock, first, 0.0, bytearray()


class _Clients(threading.Thread):
    """--clients keep-alive HTTP/1.1 connections driven by one thread (selectors, like wrk): each
    sends a request, waits for its whole answer, checks it and sends the next, so there are
    always --clients requests in flight. Requests are prepared bytes, answers are parsed just
    enough (status line, Content-Length): the clients take as little as possible of the CPU they
    share with the server. latencies: seconds of each answered request that started after
    clock["count"] and ended by clock["end"]."""

    def __init__(self, port: int, path: str, bodies: list[bytes], clients: int, clock: dict, ready: threading.Barrier):
        super().__init__(daemon=True)
        self.port, self.clients, self.clock, self.ready = port, clients, clock, ready
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: "
        self.requests_bytes = [head.encode() + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
        self.latencies: list[float] = []
        self.requests = 0
        self.errors = 0
        self.messages: list[str] = []

    def _error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < 5:
            self.messages.append(message)

    def _open(self, first: int) -> _Connection | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT)
        except OSError as e:
            self._error(f"connect: {e!r}")
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return _Connection(sock, first)

    def _send(self, c: _Connection, now: float) -> bool:
        data = self.requests_bytes[c.next]
        c.next = c.next + 1 if c.next + 1 < len(self.requests_bytes) else 0
        c.sent_at = now
        try:
            sent = c.sock.send(data)
            if sent < len(data):  # the socket's buffer is full (rare: bodies are ~8 KB)
                c.sock.setblocking(True)
                c.sock.sendall(data[sent:])
                c.sock.setblocking(False)
            return True
        except OSError as e:
            self._error(f"send: {e!r}")
            return False

    @staticmethod
    def _answer(buf: bytearray) -> tuple[int, bytes, int] | None:
        """(status, body, bytes used) of the first whole answer in buf, or None while incomplete."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            raise ValueError(f"an answer without Content-Length: {bytes(buf[:200])!r}")
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15 : stop if stop >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            return None
        return int(head[9:12]), bytes(buf[end + 4 : end + 4 + length]), end + 4 + length

    def run(self) -> None:
        import selectors

        step = max(1, len(self.requests_bytes) // self.clients)
        conns = [c for c in (self._open((i * step) % len(self.requests_bytes)) for i in range(self.clients)) if c is not None]
        self.ready.wait()
        counted, end = self.clock["count"], self.clock["end"]
        perf = time.perf_counter
        sel = selectors.DefaultSelector()
        for c in conns:
            if self._send(c, perf()):
                sel.register(c.sock, selectors.EVENT_READ, c)
        while sel.get_map():
            events = sel.select(timeout=REQUEST_TIMEOUT)
            if not events:
                self._error(f"no answer within {REQUEST_TIMEOUT} s")
                break
            for key, _ in events:
                c = key.data
                try:
                    chunk = c.sock.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    c.buf += chunk
                    got = self._answer(c.buf)
                except (OSError, ValueError) as e:
                    self._error(repr(e))
                    sel.unregister(c.sock)
                    c.sock.close()
                    continue
                if got is None:
                    continue
                status, body, used = got
                del c.buf[:used]
                t1 = perf()
                if status != 200:
                    self._error(f"HTTP {status}: {body[:200]!r}")
                elif not body.startswith(b'{"results":[{"ids":['):
                    self._error(f"not a search result: {body[:200]!r}")
                else:
                    self.requests += 1
                    if c.sent_at >= counted and t1 <= end:
                        self.latencies.append(t1 - c.sent_at)
                if t1 >= end or not self._send(c, t1):
                    sel.unregister(c.sock)
                    c.sock.close()
        sel.close()


def batch_stats(before: dict, after: dict) -> dict:
    b0, b1 = before.get("batcher", {}), after.get("batcher", {})
    batches = (b1.get("batches") or 0) - (b0.get("batches") or 0)
    requests = (b1.get("requests") or 0) - (b0.get("requests") or 0)
    sizes = {k: v - (b0.get("batch_sizes") or {}).get(k, 0) for k, v in (b1.get("batch_sizes") or {}).items()}
    return {"batches": batches, "requests": requests, "mean_batch": requests / batches if batches else None,
            "batch_sizes": {k: v for k, v in sizes.items() if v}, "server_latency_ms": b1.get("latency_ms")}  # fmt: skip


def batch_times(before: dict, after: dict, wall: float) -> dict:
    """Mean time of one batched index search (the worker thread's run, as the server times it)
    and the share of the round the search worker was busy; mean server-side search latency."""
    key = "peakknn_search_batch_duration_seconds"
    n = after.get(key + "_count", 0) - before.get(key + "_count", 0)
    busy = after.get(key + "_sum", 0) - before.get(key + "_sum", 0)
    lat = "peakknn_search_latency_seconds"
    m = after.get(lat + "_count", 0) - before.get(lat + "_count", 0)
    return {"mean_batch_ms": busy / n * 1e3 if n else None, "search_worker_busy": busy / wall if wall else None,
            "mean_search_latency_ms": (after.get(lat + "_sum", 0) - before.get(lat + "_sum", 0)) / m * 1e3 if m else None}  # fmt: skip


def load_round(server: Server, bodies: list[bytes], args) -> dict:
    """One round of --clients threads for --warmup + --seconds against `server`."""
    path = f"/collections/{COLLECTION}/search"
    clock: dict = {}
    ready = threading.Barrier(2)
    workers = [_Clients(server.port, path, bodies, args.clients, clock, ready)]
    for w in workers:
        w.start()
    stats0 = server.stats()
    now = time.perf_counter()
    clock["count"], clock["end"] = now + args.warmup, now + args.warmup + args.seconds
    ready.wait()  # connections are open; the clock runs
    time.sleep(max(0.0, clock["count"] - time.perf_counter()))
    metrics0 = server.metrics()
    cpu_server0, cpu_self0, (busy0, total0), wall0 = server.cpu(), self_cpu(), machine_cpu(), time.perf_counter()
    time.sleep(max(0.0, clock["end"] - time.perf_counter()))
    cpu_server1, cpu_self1, (busy1, total1), wall1 = server.cpu(), self_cpu(), machine_cpu(), time.perf_counter()
    metrics1 = server.metrics()
    for w in workers:
        w.join(REQUEST_TIMEOUT + 10)
    stats1 = server.stats()
    latencies = np.asarray([x for w in workers for x in w.latencies])
    wall = wall1 - wall0
    cores = os.cpu_count() or 1
    capacity = wall * cores
    return {
        "server": server.label, "qps": latencies.size / args.seconds, "counted": int(latencies.size),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies.size else None,
        "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies.size else None,
        "errors": sum(w.errors for w in workers), "requests": sum(w.requests for w in workers),
        "error_messages": [m for w in workers for m in w.messages][:5],
        "cpu": {"wall_s": wall, "logical_cpus": cores, "server_s": cpu_server1 - cpu_server0, "clients_s": cpu_self1 - cpu_self0,
                "machine_busy_s": busy1 - busy0, "server_share": (cpu_server1 - cpu_server0) / capacity,
                "clients_share": (cpu_self1 - cpu_self0) / capacity, "machine_busy_share": (busy1 - busy0) / max(1e-9, total1 - total0),
                "others_share": max(0.0, (busy1 - busy0) / max(1e-9, total1 - total0) - (cpu_server1 - cpu_server0 + cpu_self1 - cpu_self0) / capacity)},
        "batcher": {**batch_stats(stats0, stats1), **batch_times(metrics0, metrics1, wall)},
    }  # fmt: skip


def verify(server: Server, queries: np.ndarray, index: Index, k: int, count: int) -> float | None:
    """Mean overlap@k of the server's answers (one query per request) with the in-process index's."""
    count = min(count, len(queries))
    if count == 0:
        return None
    want = np.asarray(index.search(queries[:count], k).ids)
    with Client(server.url, timeout=REQUEST_TIMEOUT, progress=False) as client:
        coll = client.collection(COLLECTION)
        got = np.concatenate([coll.search(queries[i:i + 1], k).ids for i in range(count)])
    return float(np.mean([len(set(g[g >= 0].tolist()) & set(w[w >= 0].tolist())) / max(1, (w >= 0).sum()) for g, w in zip(got, want)]))


# ----------------------------------------------------------------- report
def _median(rounds: list[dict], key: str):
    vals = [r[key] for r in rounds if r[key] is not None]
    return statistics.median(vals) if vals else None


def summarize(rounds: list[dict]) -> dict:
    return {
        "qps": _median(rounds, "qps"), "p50_ms": _median(rounds, "p50_ms"), "p99_ms": _median(rounds, "p99_ms"),
        "errors": sum(r["errors"] for r in rounds), "requests": sum(r["requests"] for r in rounds), "rounds": len(rounds),
        "server_share": statistics.median(r["cpu"]["server_share"] for r in rounds),
        "clients_share": statistics.median(r["cpu"]["clients_share"] for r in rounds),
        "machine_busy_share": statistics.median(r["cpu"]["machine_busy_share"] for r in rounds),
        "others_share": statistics.median(r["cpu"]["others_share"] for r in rounds),
        "mean_batch": _median([r["batcher"] for r in rounds], "mean_batch"),
        "mean_batch_ms": _median([r["batcher"] for r in rounds], "mean_batch_ms"),
        "search_worker_busy": _median([r["batcher"] for r in rounds], "search_worker_busy"),
        "over_library": statistics.median(r["qps"] / r["library_qps"] for r in rounds) if rounds else None,  # each round against its library round
    }  # fmt: skip


def _f(x, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def report(res: dict) -> str:
    s, lib, load = res["servers"], res["library"], res["bulk_load"]
    on, off = s["batched"], s["unbatched"]
    t = res["targets"]
    lines = [
        f"{res['dataset']}: n={res['n']:,} d={res['d']} queries={res['queries']:,} k={res['k']} metric={res['metric']} flat bf16",
        (f"CPU: {res['cpu_model']} ({res['logical_cpus']} logical CPUs); library torch threads={lib['torch_threads']}; "
         f"servers: torch default threads, {res['clients']} keep-alive connections driven by one client thread in the bench process"),
        f"{res['rounds']} rounds x {res['seconds']:g} s per server (+{res['warmup']:g} s warm-up), interleaved on/off; medians over rounds",
        "",
        "| method | q/s | p50 ms | p99 ms | errors | mean batch | batch ms | search worker busy | CPU server | CPU clients | CPU others | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("HTTP, batching on (" + s["batched_args"] + ")", on), ("HTTP, batching off (--max-batch 1)", off)]
    if s.get("compared"):
        rows.append(("HTTP, batching on, compared (" + s["compared_args"] + ")", s["compared"]))
    for label, m in rows:
        lines.append(f"| {label} | {_f(m['qps'])} | {_f(m['p50_ms'], '.1f')} | {_f(m['p99_ms'], '.1f')} | {m['errors']} | "
                     f"{_f(m['mean_batch'], '.1f')} | {_f(m['mean_batch_ms'], '.1f')} | {_f(m['search_worker_busy'], '.0%')} | {m['server_share']:.0%} | {m['clients_share']:.0%} | {m['others_share']:.0%} | {m['machine_busy_share']:.0%} |")  # fmt: skip
    lines += [
        *(f"| library Index{label}.search, batches of {lib['batch']} | {_f(lib[key])} | - | - | - | {lib['batch']} | {_f(lib['batch'] / lib[key] * 1e3, '.1f')} | - | - | - | - | - |"
          for label, key in (("", "batched_qps_default"), ("(packed_scan=True)", "batched_qps_packed"))),
        f"| library Index(packed_scan=True).search, one query per call | {_f(lib['single_qps'])} | - | - | - | 1 | {_f(1e3 / lib['single_qps'], '.1f')} | - | - | - | - | - |",
        "",
        "batch ms: mean time of one index search as the server times it (its worker thread's run); search worker busy: share",
        "of the round's wall time that a batch was running (the sum over the batches in flight: the engine process runs two at a time, so up to 200%).",
        "CPU: shares of the round's wall time x logical CPUs (server: its HTTP and engine processes; clients: this process; others: the rest of",
        (f"the machine, the idle other server included; machine: /proc/stat). Before the run the machine was {res['background_busy_share']:.0%} busy "
         f"(1 s sample), load average {res['loadavg_start']:.2f}."),
        "",
        "| bulk load (peakknn.Client.upsert) | seconds | MB/s | requests | server CPU s | Index.add just before, s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in load:
        b = load[label]
        lines.append(f"| into the {label} server | {b['seconds']:.2f} | {b['mb_per_s']:,.0f} | {b['requests']} | {b['server_cpu_s']:.2f} | "
                     f"{b['add_s']:.2f} | {b['seconds'] / b['add_s']:.2f}x |")
    npy = res["bulk_load_npy"]
    lines.append(f"| reference: application/x-npy bodies (no base64 / JSON) into a scratch collection | {npy['seconds']:.2f} | "
                 f"{npy['mb_per_s']:,.0f} | {npy['requests']} | {npy['server_cpu_s']:.2f} | - | - |")  # fmt: skip
    lines += [
        f"| library Index.add (median of {len(lib['add_runs_s'])}) | {lib['add_s']:.2f} | {res['n'] * res['d'] * 4 / 1e6 / lib['add_s']:,.0f} | - | - | - | - |",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, goal in (("errors", "0"), ("batched_over_unbatched", f">= {TARGETS['batched_over_unbatched']:g}x"),
                       ("batched_over_library", f">= {TARGETS['batched_over_library']:.0%}"), ("load_over_add", f"<= {TARGETS['load_over_add']:g}x")):  # fmt: skip
        v = t[name]["value"]
        shown = "-" if v is None else (f"{v:.0%}" if name == "batched_over_library" else (str(v) if name == "errors" else f"{v:.2f}x"))
        lines.append(f"| {name.replace('_', ' ')} | {shown} | {goal} | {'yes' if t[name]['met'] else 'NO'} |")
    if s.get("compared"):
        c = s["compared"]
        lines += ["", (f"compared server ({s['compared_args']}): {_f(c['qps'])} q/s, {c['over_library']:.0%} of the library; "
                       f"the batched server does {on['qps'] / c['qps']:.2f}x its q/s; bulk load {load['compared']['seconds']:.2f} s against "
                       f"{load['batched']['seconds']:.2f} s (same rounds, interleaved)")]
    if res.get("agreement"):
        lines += ["", "overlap@k of the servers' answers with the in-process index: " + ", ".join(f"{k} {v:.3f}" for k, v in res["agreement"].items())]
    if res["contended"]:
        lines += ["", (f"WARNING: other processes took more than {CONTENDED:.0%} of the CPU during: {', '.join(res['contended'])}; "
                       "those figures are low and noisy (the library's 2-thread search suffers most): run again on an idle machine")]
    errs = [m for r in res["rounds_detail"] for m in r["error_messages"]]
    if errs:
        lines += ["", "first errors: " + "; ".join(errs[:3])]
    lines += ["", f"command: {res['command']}"]
    return "\n".join(lines)


def targets(on: dict, off: dict, lib: dict, load: dict, compared: dict | None = None) -> dict:
    errors = on["errors"] + off["errors"] + (compared["errors"] if compared else 0)
    bu = on["qps"] / off["qps"] if on["qps"] and off["qps"] else None
    bl = on["over_library"] if on["qps"] else None
    la = statistics.median(b["seconds"] / b["add_s"] for b in load.values())
    return {
        "errors": {"value": errors, "met": errors == 0},
        "batched_over_unbatched": {"value": bu, "met": bu is not None and bu >= TARGETS["batched_over_unbatched"]},
        "batched_over_library": {"value": bl, "met": bl is not None and bl >= TARGETS["batched_over_library"]},
        "load_over_add": {"value": la, "met": la <= TARGETS["load_over_add"], "note": "median over the two servers of HTTP load / the Index.add run just before it"},
    }


# ----------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    command = "python benchmarks/serve_load.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    background = _background_busy()
    loadavg = os.getloadavg()[0]
    if background > 0.1:
        say(f"warning: the machine is already {background:.0%} busy (load average {loadavg:.2f}): figures will be low and noisy")
    name, train, queries, metric = load_data(args)
    say(f"data: {name} {train.shape[0]:,} x {train.shape[1]} ({metric}), {len(queries):,} queries")
    with tempfile.TemporaryDirectory(prefix="peakknn-serve-load-") as tmp:
        tmp = Path(tmp)
        prof = Path(args.profile) if args.profile else None
        if prof:
            prof.mkdir(parents=True, exist_ok=True)
        on_args = [*(["--max-batch", str(args.max_batch)] if args.max_batch else []),
                   *(["--max-delay-ms", str(args.max_delay_ms)] if args.max_delay_ms is not None else []), *shlex.split(args.server_args)]  # fmt: skip
        servers = {
            "batched": Server("batched", tmp / "batched", on_args, prof / "batched.prof" if prof else None),
            "unbatched": Server("unbatched", tmp / "unbatched", ["--max-batch", "1"], prof / "unbatched.prof" if prof else None),
        }
        if args.compare is not None:
            servers["compared"] = Server("compared", tmp / "compared", shlex.split(args.compare), prof / "compared.prof" if prof else None)
        try:
            for s in servers.values():
                s.launch()  # both start at once; the library is measured once they idle
            for s in servers.values():
                s.wait_ready()
            indexes = library_indexes(train, metric)
            load, adds = {}, []
            for label, s in servers.items():  # each bulk load next to an Index.add of the same rows
                adds.append(library_add(train, metric))
                load[label] = bulk_load(s, train, metric)
                load[label]["add_s"] = adds[-1]
                say(f"bulk load into the {label} server: {load[label]['seconds']:.2f} s ({load[label]['requests']} requests); Index.add {adds[-1]:.2f} s")
            npy = bulk_load_npy(servers["unbatched"], train, metric, load["unbatched"]["rows_per_request"])
            say(f"bulk load as application/x-npy (reference): {npy['seconds']:.2f} s")
            bodies = [json.dumps({"vectors": [q.tolist()], "k": args.k}, separators=(",", ":")).encode() for q in queries]
            for s in servers.values():  # the first search measures the engine's ceilings (perfmodel) and packs the rows: untimed
                with Client(s.url, timeout=START_TIMEOUT, progress=False) as client:
                    client.collection(COLLECTION).search(queries[:1], args.k)
            rounds, lib_rounds = [], []
            for r in range(args.rounds):
                lib_rounds.append(library_round(indexes, queries, args.k, args.lib_seconds))
                say(f"round {r + 1} library: {_f(lib_rounds[-1]['default'])} q/s in batches of {LIB_BATCH}, {_f(lib_rounds[-1]['packed'])} with packed_scan")
                for label in servers:
                    rr = load_round(servers[label], bodies, args)
                    rr["round"], rr["library_qps"] = r, lib_rounds[-1]["best"]
                    rounds.append(rr)
                    say(f"round {r + 1} {label}: {_f(rr['qps'])} q/s, p50 {_f(rr['p50_ms'], '.1f')} ms, p99 {_f(rr['p99_ms'], '.1f')} ms, "
                        f"{rr['errors']} errors, mean batch {_f(rr['batcher']['mean_batch'], '.1f')}, CPU server {rr['cpu']['server_share']:.0%} "
                        f"clients {rr['cpu']['clients_share']:.0%} machine {rr['cpu']['machine_busy_share']:.0%}")  # fmt: skip
            lib = {"add_s": statistics.median(adds), "add_runs_s": adds, "rounds": lib_rounds, "batch": LIB_BATCH, "torch_threads": torch.get_num_threads(),
                   "batched_qps": statistics.median(x["best"] for x in lib_rounds),
                   "batched_qps_default": statistics.median(x["default"] for x in lib_rounds),
                   "batched_qps_packed": statistics.median(x["packed"] for x in lib_rounds),
                   "others_share": max(x["others_share"] for x in lib_rounds),
                   "single_qps": library_single(indexes["packed"], queries, args.k, min(args.lib_seconds, 2.0))}  # fmt: skip
            index = indexes["default"]
            agreement = {label: verify(s, queries, index, args.k, args.verify) for label, s in servers.items()}
        finally:
            for s in servers.values():
                s.terminate()
            for s in servers.values():
                s.wait_stopped()
        if prof:
            for label, s in servers.items():
                _profile_summary(s.profile, prof / f"{label}.txt")
    on = summarize([r for r in rounds if r["server"] == "batched"])
    off = summarize([r for r in rounds if r["server"] == "unbatched"])
    on_text = " ".join(on_args) if on_args else "defaults"
    compared = summarize([r for r in rounds if r["server"] == "compared"]) if args.compare is not None else None
    res = {
        "dataset": name, "n": int(train.shape[0]), "d": int(train.shape[1]), "queries": len(queries), "k": args.k, "metric": metric,
        "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "clients": args.clients, "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds, "command": command,
        "server_args": {label: s.args for label, s in servers.items()}, "profiled": bool(prof),
        "background_busy_share": background, "loadavg_start": loadavg, "library": lib, "bulk_load": load, "bulk_load_npy": npy,
        "servers": {"batched": on, "unbatched": off, "batched_args": on_text, "compared": compared, "compared_args": args.compare},
        "targets": targets(on, off, lib, {k: v for k, v in load.items() if k != "compared"}, compared), "agreement": agreement, "rounds_detail": rounds,
        "contended": ([f"library search ({lib['others_share']:.0%})"] if lib["others_share"] > CONTENDED else [])
        + [f"round {r['round'] + 1} {r['server']} ({r['cpu']['others_share']:.0%})" for r in rounds if r["cpu"]["others_share"] > CONTENDED],
        "total_s": time.perf_counter() - started,
    }  # fmt: skip
    text = report(res)
    print(text, flush=True)
    if args.out:
        write_report(args.out, res, text, indent=2)
    return 1 if res["targets"]["errors"]["value"] else 0


def _background_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU busy over `seconds` before anything of this run starts."""
    b0, t0 = machine_cpu()
    time.sleep(seconds)
    b1, t1 = machine_cpu()
    return (b1 - b0) / max(1e-9, t1 - t0)


def _profile_summary(profile: Path, text: Path, top: int = 40) -> None:
    import io
    import pstats

    if not profile.exists():
        text.write_text(f"no profile written at {profile}\n")
        return
    buf = io.StringIO()
    stats = pstats.Stats(str(profile), stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    text.write_text(buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
