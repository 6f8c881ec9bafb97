"""Crash test of `peakknn serve`: writer threads upsert unique ids (vectors and payloads) while
the server is killed with SIGKILL at random moments; after each restart every acknowledged id
must be there with its exact vector and payload, the server must answer a search, and the count
must hold every acknowledged point. Prints one row per kill and a total; exits 1 if anything was
lost. Loopback only, a temporary data folder unless --data.

    python benchmarks/serve_crash.py [--kills 20] [--writers 4] [--dim 16] [--seed 0]

Snapshots are taken every --snapshot-every writes (default 25), so kills also land during
snapshots and log truncations. tests/server/test_serve_crash.py runs `run` with a few kills.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

COLLECTION = "crash"
START_TIMEOUT = 120.0


@dataclasses.dataclass
class Round:
    kill: int
    up_s: float  # how long the server ran before the kill
    acknowledged: int  # acknowledged ids so far (all rounds)
    recovered: int  # of those, present with the exact vector and payload after the restart
    lost: int
    unacknowledged: int  # requests in flight at the kill (their points may or may not be there)
    restart_s: float  # SIGKILL to /healthz answering (recovery included)


class Server:
    """`python -m peakknn serve` on a free loopback port, restartable on one data folder."""

    def __init__(self, data: Path, args=(), log: Path | None = None):
        self.data, self.args = Path(data), [str(a) for a in args]
        self.log = Path(log) if log else self.data.with_name(self.data.name + "-crash-server.log")
        self.proc = None
        self.url = ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "peakknn", "serve", "--data", str(self.data), "--port", str(port), "--log-level", "warning", *self.args]
        env = {k: v for k, v in os.environ.items() if k != "PEAKKNN_API_KEY"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not answer within {START_TIMEOUT} s; see {self.log}")

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=120)
        self.proc = None
        return rc


class Writers:
    """Threads upserting fresh ids in batches of 1-8 until stopped; `acked` maps each
    acknowledged id to its (vector, payload)."""

    def __init__(self, url: str, dim: int, count: int, seed: int, ids):
        self.url, self.dim, self.ids = url, dim, ids
        self.acked: dict[int, tuple[np.ndarray, dict]] = {}
        self.unacked = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(seed * 1000 + i,), daemon=True) for i in range(count)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _write(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                with self._lock:
                    ids = [next(self.ids) for _ in range(int(rng.integers(1, 9)))]
                x = rng.standard_normal((len(ids), self.dim)).astype(np.float32)
                payloads = [{"id": i, "writer": seed, "tags": [str(v) for v in rng.integers(0, 9, size=2)], "f": float(x[j, 0])} for j, i in enumerate(ids)]
                try:
                    r = http.put(f"/collections/{COLLECTION}/points", json={"ids": ids, "vectors": x.tolist(), "payloads": payloads})
                    ok = r.status_code == 200 and r.json().get("upserted") == len(ids)
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    if ok:
                        self.acked.update((i, (x[j], payloads[j])) for j, i in enumerate(ids))
                    else:
                        self.unacked += 1
                if not ok:
                    time.sleep(0.02)


def verify(url: str, acked: dict) -> tuple[int, int]:
    """(recovered, lost) of the acknowledged ids; also checks the count and that a search answers."""
    ids = sorted(acked)
    recovered = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for s in range(0, len(ids), 2000):
            chunk = ids[s : s + 2000]
            points = http.post(f"/collections/{COLLECTION}/points/get", json={"ids": chunk, "with_vectors": True}).json()["points"]
            for p in points:
                vector, payload = acked[p["id"]]
                if np.array_equal(np.asarray(p["vector"], dtype=np.float32), vector) and p["payload"] == payload:
                    recovered += 1
        info = http.get(f"/collections/{COLLECTION}").json()
        if info["count"] < len(ids):
            raise AssertionError(f"count {info['count']} < {len(ids)} acknowledged")
        if ids:
            q = acked[ids[-1]][0]
            res = http.post(f"/collections/{COLLECTION}/search", json={"vectors": [q.tolist()], "k": 1, "recall_target": 1.0}).json()
            if res["results"][0]["ids"] != [ids[-1]]:
                raise AssertionError(f"the search for point {ids[-1]}'s own vector answered {res}")
    return recovered, len(ids) - recovered


def run(data: Path, kills: int, writers: int = 4, dim: int = 16, seed: int = 0, up=(0.3, 1.5), snapshot_every: int = 25, report=None) -> list[Round]:
    """`kills` rounds of write, SIGKILL, restart, verify on folder `data`; then a SIGTERM stop,
    which must exit 0. report(round) is called after each round."""
    rnd = random.Random(seed)
    server = Server(data, args=("--snapshot-every", snapshot_every))
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.put(f"/collections/{COLLECTION}", json={"dim": dim, "metric": "l2", "dtype": "fp32"})
        if r.status_code != 200:
            raise RuntimeError(r.text)
    ids = iter(range(10**12))
    acked: dict = {}
    rounds = []
    for kill in range(1, kills + 1):
        up_s = rnd.uniform(*up)
        with Writers(server.url, dim, writers, seed * 100 + kill, ids) as w:
            time.sleep(up_s)
            killed = time.perf_counter()
            server.stop(signal.SIGKILL)
        acked.update(w.acked)
        server.start()
        restart_s = time.perf_counter() - killed
        recovered, lost = verify(server.url, acked)
        rounds.append(Round(kill, up_s, len(acked), recovered, lost, w.unacked, restart_s))
        if report is not None:
            report(rounds[-1])
    rc = server.stop(signal.SIGTERM)
    if rc != 0:
        raise RuntimeError(f"SIGTERM stop exited with {rc}")
    server.start()  # after a clean stop: nothing to replay, everything there
    try:
        if verify(server.url, acked)[1]:
            raise AssertionError("points lost after the clean restart")
    finally:
        server.stop()
    return rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshot-every", type=int, default=25)
    ap.add_argument("--data", default=None, help="data folder (default: a temporary one)")
    args = ap.parse_args()
    started = time.perf_counter()
    print(f"{'kill':>4} {'up s':>6} {'acknowledged':>12} {'recovered':>10} {'lost':>5} {'in flight':>9} {'restart s':>9}")

    def report(r: Round) -> None:
        print(f"{r.kill:>4} {r.up_s:>6.2f} {r.acknowledged:>12} {r.recovered:>10} {r.lost:>5} {r.unacknowledged:>9} {r.restart_s:>9.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="peakknn-crash-") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        rounds = run(data, args.kills, args.writers, args.dim, args.seed, snapshot_every=args.snapshot_every, report=report)
    lost = sum(r.lost for r in rounds)
    print(f"kills {len(rounds)}, acknowledged {rounds[-1].acknowledged}, recovered {rounds[-1].recovered}, lost {lost} "
          f"(every round), time {time.perf_counter() - started:.1f} s")  # fmt: skip
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
