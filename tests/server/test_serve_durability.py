"""Durability through real restarts: SIGTERM (exit 0, snapshot), SIGKILL (log replay), a torn or
damaged log tail (cut with a warning, the server starts), snapshots every N writes and every T
seconds (the log truncated), group commit, one server per folder, and writer threads against
SIGKILL at random moments (benchmarks/serve_crash.py with a few kills)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from serve_helpers import SERVE

from peakknn.server import wal

ROOT = Path(__file__).resolve().parents[2]
DIM = 16


def _ok(r):
    assert r.status_code == 200, f"{r.status_code}: {r.text}"
    return r.json()


def _fill(http, rng) -> dict:
    """Three collections written every way; returns {name: {id: (vector, payload)}} as stored."""
    specs = {
        "flat": {"dim": DIM, "metric": "l2", "dtype": "fp32"},
        "cosine": {"dim": DIM, "metric": "cos"},
        "part": {"dim": DIM, "metric": "ip", "index": "partitioned", "partitions": 8, "train_size": 300, "codes": "int8"},
    }
    for name, spec in specs.items():
        _ok(http.put(f"/collections/{name}", json=spec))
        x = rng.standard_normal((500, DIM)).astype(np.float32)
        payloads = [{"i": i, "tag": ["a", "b"][i % 2], "nested": {"v": [i, None, "é"]}} if i % 4 else None for i in range(500)]
        _ok(http.put(f"/collections/{name}/points", json={"ids": list(range(200)), "vectors": x[:200].tolist(), "payloads": payloads[:200]}))
        _ok(http.put(f"/collections/{name}/points", json={"ids": list(range(200, 400)), "vectors_b64": base64.b64encode(x[200:400].tobytes()).decode(),
                                                          "payloads": payloads[200:400]}))  # fmt: skip
        buf = io.BytesIO()
        np.save(buf, x[400:])
        _ok(http.put(f"/collections/{name}/points", params={"ids": "400:500"}, content=buf.getvalue(), headers={"content-type": "application/x-npy"}))
        _ok(http.put(f"/collections/{name}/points", json={"ids": [7], "vectors": [x[8].tolist()], "payloads": [{"replaced": True}]}))
        _ok(http.post(f"/collections/{name}/points/delete", json={"ids": [3, 250, 499]}))
    return {name: _snapshot_of(http, name) for name in specs}


def _snapshot_of(http, name) -> dict:
    points = _ok(http.post(f"/collections/{name}/points/get", json={"ids": list(range(600)), "with_vectors": True}))["points"]
    return {p["id"]: (p["vector"], p["payload"]) for p in points}


def _searches(http, names, rng_seed=5) -> dict:
    q = np.random.default_rng(rng_seed).standard_normal((3, DIM)).astype(np.float32).tolist()
    out = {}
    for name in names:
        options = {"probe": 8} if name == "part" else {"recall_target": 1.0}
        out[name] = _ok(http.post(f"/collections/{name}/search", json={"vectors": q, "k": 10, "with_payload": True, **options}))
    return out


def test_sigterm_exits_0_and_a_restart_keeps_everything(serve):
    server = serve()
    with server.client() as http:
        stored = _fill(http, np.random.default_rng(0))
        found = _searches(http, stored)
        infos = {c["name"]: c for c in _ok(http.get("/collections"))["collections"]}
    assert all(len(points) == 497 for points in stored.values())
    assert server.stop() == 0
    assert "snapshot at seq 5" in server.log_text()
    server.start()
    with server.client() as http:
        after = {c["name"]: c for c in _ok(http.get("/collections"))["collections"]}
        for name in stored:
            assert _snapshot_of(http, name) == stored[name]
            assert {k: after[name][k] for k in ("dim", "metric", "index", "count", "settings", "seq")} == {
                k: infos[name][k] for k in ("dim", "metric", "index", "count", "settings", "seq")}
            assert after[name]["snapshot_seq"] == 5
        assert _searches(http, stored) == found
        stats = _ok(http.get("/stats"))["wal"]
        assert all(stats[name]["bytes"] == len(wal.MAGIC) for name in stored)  # nothing left to replay
    assert "0 log records replayed" in server.log_text().split("==== start 1")[1]


def test_sigkill_replays_the_log(serve):
    server = serve()
    with server.client() as http:
        stored = _fill(http, np.random.default_rng(1))
    server.kill()
    server.start()
    log = server.log_text().split("==== start 1")[1]
    assert "5 log records replayed" in log
    with server.client() as http:
        for name in stored:
            assert _snapshot_of(http, name) == stored[name]
        stats = _ok(http.get("/stats"))["wal"]
        assert all(stats[name]["snapshot_seq"] == 5 for name in stored)  # snapshotted after the replay
        _ok(http.put("/collections/flat/points", json={"ids": [1000], "vectors": [[1.0] * DIM]}))
        assert _ok(http.get("/collections/flat"))["seq"] == 6


def test_a_torn_tail_is_cut_with_a_warning(serve):
    server = serve()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, DIM)).astype(np.float32)
    with server.client() as http:
        _ok(http.put("/collections/t", json={"dim": DIM, "metric": "l2"}))
        for i in range(3):
            _ok(http.put("/collections/t/points", json={"ids": [i], "vectors": [x[i].tolist()], "payloads": [{"i": i}]}))
    server.kill()
    (_, segment), = wal.segments(server.data / "collections" / "t")
    data = segment.read_bytes()
    segment.write_bytes(data[:-7] + b"\x00")  # the third record torn mid-write, a stray byte after it
    server.start()
    assert "write-ahead log" in server.log_text() and "torn record" in server.log_text()
    with server.client() as http:
        got = _ok(http.post("/collections/t/points/get", json={"ids": [0, 1, 2], "with_vectors": True}))["points"]
        assert [p["id"] for p in got] == [0, 1] and [p["payload"] for p in got] == [{"i": 0}, {"i": 1}]
        assert np.array_equal(np.array([p["vector"] for p in got], dtype=np.float32), x[:2])
        assert _ok(http.put("/collections/t/points", json={"ids": [2], "vectors": [x[2].tolist()]}))["seq"] == 3
    # flipped bytes in a record: the same, from that record on
    server.kill()
    (_, segment), = wal.segments(server.data / "collections" / "t")
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    server.start()
    assert "CRC mismatch" in server.log_text()
    with server.client() as http:
        assert [p["id"] for p in _ok(http.post("/collections/t/points/get", json={"ids": [0, 1, 2]}))["points"]] == [0, 1]
    server.stop()
    server.start()  # the cut log is clean now: no warning
    assert server.log_text().split(f"==== start {server.starts - 1}")[1].count("WARNING") == 0


def test_snapshots_every_n_writes_truncate_the_log(serve):
    server = serve(args=("--snapshot-every", "3", "--snapshot-seconds", "1000"))
    folder = server.data / "collections" / "s"
    with server.client() as http:
        _ok(http.put("/collections/s", json={"dim": 4}))
        for i in range(3):
            _ok(http.put("/collections/s/points", json={"ids": [i], "vectors": [[1.0, i, 0, 0]]}))
        w = _wait(http, "s", lambda w: w["snapshot_seq"] == 3)
        assert w["bytes"] == len(wal.MAGIC) and w["last_snapshot"] is not None
        assert [first for first, _ in wal.segments(folder)] == [4]
        assert sorted(p.name for p in folder.glob("snap-*")) == ["snap-00000000000000000003"]
        _ok(http.put("/collections/s/points", json={"ids": [9], "vectors": [[1.0, 9, 0, 0]]}))
        time.sleep(1.0)
        assert _ok(http.get("/stats"))["wal"]["s"]["snapshot_seq"] == 3  # one write: not yet


def test_snapshots_after_t_seconds(serve):
    server = serve(args=("--snapshot-every", "1000", "--snapshot-seconds", "0.5"))
    with server.client() as http:
        _ok(http.put("/collections/s", json={"dim": 4}))
        _ok(http.put("/collections/s/points", json={"ids": [1], "vectors": [[1.0, 0, 0, 0]]}))
        _wait(http, "s", lambda w: w["snapshot_seq"] == 1)


def _wait(http, name, done, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        w = _ok(http.get("/stats"))["wal"][name]
        if done(w):
            return w
        assert time.monotonic() < deadline, w
        time.sleep(0.1)


def test_group_commit_shares_fsyncs(serve):
    server = serve()
    with server.client() as http:
        _ok(http.put("/collections/g", json={"dim": 4}))
        before = _ok(http.get("/stats"))["wal"]["g"]["fsyncs"]

    async def writes():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            rs = await asyncio.gather(*(client.put("/collections/g/points", json={"ids": [i], "vectors": [[1.0, i, 0, 0]]}) for i in range(64)))
        assert all(r.status_code == 200 for r in rs)
        return sorted(r.json()["seq"] for r in rs)

    assert asyncio.run(writes()) == list(range(1, 65))
    with server.client() as http:
        fsyncs = _ok(http.get("/stats"))["wal"]["g"]["fsyncs"] - before
        assert _ok(http.get("/collections/g"))["count"] == 64
    assert fsyncs < 64, f"{fsyncs} fsyncs for 64 concurrent writes"


def test_one_server_per_folder(serve):
    server = serve()
    other = subprocess.run([*SERVE, "--data", str(server.data), "--port", "0"], check=False, capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "in use by another peakknn serve" in other.stderr
    with server.client() as http:
        assert _ok(http.get("/healthz")) == {"status": "ok"}


def test_acknowledged_writes_survive_sigkill(tmp_path):
    spec = importlib.util.spec_from_file_location("serve_crash", ROOT / "benchmarks" / "serve_crash.py")
    crash = importlib.util.module_from_spec(spec)
    sys.modules["serve_crash"] = crash  # dataclasses look their module up
    spec.loader.exec_module(crash)
    rounds = crash.run(tmp_path / "data", kills=3, writers=3, dim=DIM, seed=1, up=(0.3, 0.8), snapshot_every=10)
    assert len(rounds) == 3 and all(r.lost == 0 for r in rounds)
    assert rounds[-1].acknowledged > 100 and rounds[-1].recovered == rounds[-1].acknowledged


def test_sigterm_lets_a_request_in_flight_finish(serve):
    server = serve()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150_000, DIM)).astype(np.float32)  # 9 MiB of float32, 12 MiB as base64
    body = {"ids": list(range(len(x))), "vectors_b64": base64.b64encode(x.tobytes()).decode()}
    with server.client() as http:
        _ok(http.put("/collections/big", json={"dim": DIM, "metric": "l2", "dtype": "fp32"}))
        _ok(http.get("/healthz"))  # the connection is open before the signal
        answer = {}

        def upload():
            answer["r"] = http.put("/collections/big/points", json=body)
            answer["at"] = time.monotonic()

        thread = threading.Thread(target=upload)
        thread.start()
        time.sleep(0.15)  # the upload is under way
        signalled = time.monotonic()
        assert server.stop(signal.SIGINT) == 0  # Ctrl-C: the same graceful stop
        thread.join(60)
    assert answer["r"].status_code == 200 and answer["r"].json()["upserted"] == len(x)
    assert answer["at"] > signalled  # it was answered after the signal
    server.start()
    with server.client() as http:
        assert _ok(http.get("/collections/big"))["count"] == len(x)
        got = _ok(http.post("/collections/big/points/get", json={"ids": [0, len(x) - 1], "with_vectors": True}))["points"]
        assert np.array_equal(np.array([p["vector"] for p in got], dtype=np.float32), x[[0, -1]])
