"""The engine process (peakknn.server.engine) and the messages it is sent (peakknn.server.messages):
messages read back exactly; an EngineStore answers as the in-process Store does, also under many
concurrent commands; closing snapshots; an engine that dies fails the commands and is reported;
the server and its engine never outlive each other."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from peakknn.server import messages
from peakknn.server.bodies import Search
from peakknn.server.collections import Store
from peakknn.server.engine import EngineStore
from peakknn.server.errors import ApiError, NotFound, Unavailable
from peakknn.server.payloads import compile_filter

DIM, N = 16, 600


# ----------------------------------------------------------------- messages
@pytest.mark.parametrize("copy", [True, False])
def test_messages_read_back_every_dtype_and_shape(copy):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32), "u8": np.arange(3, dtype=np.uint8),
        "i64": rng.integers(-(2**62), 2**62, 7), "empty": np.zeros((0, 4), np.float32), "bool": np.array([True, False, True]),
        "f16": rng.standard_normal(5).astype(np.float16), "scalar": np.array(2.5), "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "strided": rng.standard_normal((6, 6)).astype(np.float32)[::2, 1::3],
    }  # fmt: skip
    header = {"op": "x", "text": "ü 日本", "big": 2**70, "none": None, "nested": {"a": [1, 2.5, -0.0]}}
    raw = b"".join(messages.encode(header, arrays))
    got_header, got = messages.decode(bytearray(raw), copy=copy)
    assert got_header == header
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape and np.array_equal(got[name], a), name
        assert got[name].flags.writeable
        if got[name].size:
            assert got[name].ctypes.data % got[name].dtype.itemsize == 0, f"{name} is not aligned"


def test_object_arrays_are_refused():
    raw = bytearray(b"".join(messages.encode({}, {"x": np.zeros(2, np.int64)})))
    raw = raw.replace(b"<i8", b"|O8")  # same length: the header still parses
    with pytest.raises(ValueError, match="object arrays"):
        messages.decode(raw)


def test_search_requests_travel_exactly():
    rng = np.random.default_rng(1)
    spec = {"must": [{"key": "lang", "match": "en"}], "ids": [3, 1]}
    requests = [Search(rng.standard_normal((n, DIM)).astype(np.float32), k, target, probe, compile_filter(f), with_payload)
                for n, k, target, probe, f, with_payload in [(1, 10, None, None, None, False), (3, 5, 0.9, None, spec, True), (2, 5, None, 4, None, False)]]  # fmt: skip
    specs, queries = messages.search_specs(requests)
    header, arrays = messages.decode(b"".join(messages.encode({"requests": specs}, {"queries": queries})))
    back = messages.searches(header["requests"], arrays["queries"])
    for a, b in zip(requests, back, strict=True):
        assert np.array_equal(a.queries, b.queries) and a.group == b.group and a.with_payload == b.with_payload
        assert (a.filter is None) == (b.filter is None)
        if a.filter is not None:
            assert (a.filter.key, a.filter.sql, a.filter.params) == (b.filter.key, b.filter.sql, b.filter.params)
            assert np.array_equal(a.filter.ids, b.filter.ids)


# ----------------------------------------------------------------- EngineStore
def _points(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, DIM)) + 2.0).astype(np.float32)  # an offset: scores far from 0
    payloads = [{"lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 30} if i % 7 else None for i in range(N)]
    return np.arange(N, dtype=np.int64) * 3 + 1, x, payloads


def _fill(store):
    ids, x, payloads = _points()
    for name, config in (("ip", {"dim": DIM, "metric": "ip", "dtype": "fp32"}), ("l2", {"dim": DIM, "metric": "l2", "recall_target": 1.0})):
        c, created = store.create(name, config)
        assert created
        c.upsert(ids[:400], x[:400], payloads[:400])
        c.upsert(ids[400:], x[400:], payloads[400:])
        c.delete(ids[::50])
    return ids, x


def _searches(rng):
    spec = {"must": [{"key": "lang", "match": "en"}, {"key": "year", "range": {"gte": 2010}}]}
    return [Search(rng.standard_normal((int(rng.integers(1, 5)), DIM)).astype(np.float32) + 2.0, k, target, None, compile_filter(f), with_payload)
            for k, target, f, with_payload in [(10, None, None, False), (5, 1.0, spec, True), (1, 0.9, None, False)]]  # fmt: skip


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same writes into an EngineStore and into an in-process Store."""
    root = tmp_path_factory.mktemp("engine")
    engine, inline = EngineStore(root / "engine"), Store(root / "inline")
    _fill(engine)
    _fill(inline)
    yield engine, inline
    engine.close()
    inline.close()


def test_the_engine_answers_as_the_inline_store(stores):
    engine, inline = stores
    assert engine.names() == inline.names() == ["ip", "l2"]
    rng = np.random.default_rng(2)
    ids, _, _ = _points()
    for name in ("ip", "l2"):
        e, i = engine.get(name), inline.get(name)
        assert e.config == i.config and e.partitioned == i.partitioned
        assert {k: v for k, v in e.info().items() if k != "memory_bytes"} == {k: v for k, v in i.info().items() if k != "memory_bytes"}
        assert e.figures()["count"] == i.figures()["count"] == N - len(ids[::50])
        for request in _searches(rng):
            (got,), (want,) = ([json.loads(a) for a in c.search_encoded([request])] for c in (e, i))
            assert [r["ids"] for r in got["results"]] == [r["ids"] for r in want["results"]]
            for g, w in zip(got["results"], want["results"]):
                np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-5, atol=1e-5)
                assert g.get("payloads") == w.get("payloads")
        asked = np.array([ids[3], 999_999, ids[0], ids[3], ids[50]])
        assert e.get(asked, True, True) == i.get(asked, True, True)


def test_errors_come_back_with_their_status(stores):
    engine, inline = stores
    with pytest.raises(NotFound):
        engine.get("nope")
    for store in (engine, inline):
        with pytest.raises(ApiError) as bad:
            store.create("ip", {"dim": DIM + 1, "metric": "ip"})
        assert bad.value.status == 409
        with pytest.raises(ApiError) as missing:
            store.get("ip").delete(np.array([10**12], dtype=np.int64))
        assert missing.value.status == 404 and "10000000000" in missing.value.message
    with pytest.raises(ApiError) as flat:
        engine.get("ip").calibrate(np.ones((4, DIM), np.float32))
    assert flat.value.status == 400 and "flat" in flat.value.message


def test_concurrent_commands_each_get_their_own_answer(stores):
    engine, _ = stores
    c, _ = engine.create("concurrent", {"dim": DIM, "metric": "l2", "recall_target": 1.0})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, DIM)).astype(np.float32)

    def writer_and_reader(i):
        seq = c.upsert(np.array([10_000 + i], dtype=np.int64), x[i : i + 1], [{"i": i}])
        (answer,) = c.search_encoded([Search(x[i : i + 1], 1, None, None, None, True)])
        (point,) = c.get(np.array([10_000 + i]), True, True)
        return seq, json.loads(answer)["results"][0], point

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(writer_and_reader, range(64)))
    assert sorted(seq for seq, _, _ in outcomes) == list(range(1, 65))  # every write logged once
    for i, (_, result, point) in enumerate(outcomes):
        assert result["ids"] == [10_000 + i] and result["payloads"] == [{"i": i}]  # its own write, seen at once
        assert point["payload"] == {"i": i} and np.array_equal(np.float32(point["vector"]), x[i])
    assert c.info()["count"] == 64
    engine.delete("concurrent")
    assert c.closed and "concurrent" not in engine.names()
    with pytest.raises(NotFound):
        engine.get("concurrent")


def test_close_snapshots_every_collection_and_the_folder_reopens(tmp_path):
    engine = EngineStore(tmp_path / "data")
    ids, x = _fill(engine)
    seqs = {name: engine.get(name).info()["seq"] for name in engine.names()}
    engine.close()
    assert engine.process.returncode == 0
    engine.close()  # a no-op the second time
    reopened = Store(tmp_path / "data")
    try:
        for name, seq in seqs.items():
            info = reopened.get(name).info()
            assert info["snapshot_seq"] == info["seq"] == seq and info["count"] == N - len(ids[::50])
            assert np.array_equal(np.asarray(reopened.get(name).index.get(ids[1:3])), x[1:3])
    finally:
        reopened.close()


def test_an_engine_that_dies_fails_commands_and_is_reported(tmp_path):
    died = threading.Event()
    engine = EngineStore(tmp_path / "data", on_death=died.set)
    c, _ = engine.create("a", {"dim": DIM})
    os.kill(engine.process.pid, signal.SIGKILL)
    assert died.wait(30) and engine.died
    with pytest.raises(Unavailable, match="engine process exited"):
        c.info()
    engine.close()  # logs, does not hang


# ----------------------------------------------------------------- the server and its engine
def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    """Exited (no process, or a zombie left for its new parent to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_until(condition, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigkill_of_the_server_takes_its_engine_along(serve):
    server = serve()
    (engine,) = _children(server.proc.pid)
    assert "peakknn.server.engine" in Path(f"/proc/{engine}/cmdline").read_text().replace("\0", " ")
    server.kill()
    assert _wait_until(lambda: _gone(engine), 10.0), "the engine outlived its server"
    server.start()  # the folder's lock is free again at once
    with server.client() as http:
        assert http.get("/collections").status_code == 200


def test_the_server_stops_when_its_engine_dies(serve):
    server = serve()
    with server.client() as http:
        assert http.put("/collections/a", json={"dim": DIM}).status_code == 200
    (engine,) = _children(server.proc.pid)
    os.kill(engine, signal.SIGKILL)
    assert server.proc.wait(60) == 1
    server.proc = None
    assert "engine process exited" in server.log_text()
    server.start()  # and starts again on the same folder
    with server.client() as http:
        assert [c["name"] for c in http.get("/collections").json()["collections"]] == ["a"]


def test_inline_engine_serves_without_a_second_process(serve):
    server = serve(args=("--engine", "inline"))
    assert _children(server.proc.pid) == []
    with server.client() as http:
        assert http.put("/collections/a", json={"dim": DIM}).status_code == 200
        assert http.put("/collections/a/points", json={"ids": [1], "vectors": [[1.0] * DIM]}).json()["upserted"] == 1
        assert http.post("/collections/a/search", json={"vectors": [[1.0] * DIM], "k": 1}).json()["results"][0]["ids"] == [1]
