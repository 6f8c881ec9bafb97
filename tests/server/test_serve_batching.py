"""Dynamic batching: the Batcher's grouping, delay, batch limit and queue limit (asyncio, no
server), and through the real server: concurrent searches run in shared batches and each gets
exactly what it gets alone and from a server with batching off (--max-batch 1)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from peakknn.server.batching import Batcher
from peakknn.server.errors import Unavailable


class Recorder:
    """A runner that records its batches; item -> ("done", item)."""

    def __init__(self, hold: threading.Event | None = None):
        self.batches: list[list] = []
        self.hold = hold

    def __call__(self, items):
        if self.hold is not None:
            self.hold.wait(5)
        self.batches.append(list(items))
        return [("done", i) for i in items]


def _run(coro):
    return asyncio.run(coro)


def test_requests_of_one_key_share_a_batch():
    async def main():
        runner, pool = Recorder(), ThreadPoolExecutor(1)
        b = Batcher(runner, pool, max_batch=64, max_delay=0.05, max_queue=100)
        results = await asyncio.gather(*(b.submit("k", i, 1) for i in range(10)))
        await b.close()
        pool.shutdown()
        return runner.batches, results

    batches, results = _run(main())
    assert results == [("done", i) for i in range(10)]
    assert batches == [list(range(10))]


def test_keys_are_batched_apart_and_max_batch_holds():
    async def main():
        runner, pool = Recorder(), ThreadPoolExecutor(1)
        b = Batcher(runner, pool, max_batch=4, max_delay=0.05, max_queue=100)
        jobs = [b.submit(("a" if i % 2 else "b"), i, 1) for i in range(12)] + [b.submit("a", "big", 9)]
        results = await asyncio.gather(*jobs)
        await b.close()
        pool.shutdown()
        return runner.batches, results

    batches, results = _run(main())
    assert results[:12] == [("done", i) for i in range(12)] and results[12] == ("done", "big")
    # whole requests in arrival order, at most 4 queries, one key each; the 9-query one alone
    assert sorted(map(tuple, batches), key=str) == sorted([(0, 2, 4, 6), (8, 10), (1, 3, 5, 7), (9, 11), ("big",)], key=str)


def test_a_lone_request_waits_at_most_the_delay():
    async def main():
        pool = ThreadPoolExecutor(1)
        b = Batcher(Recorder(), pool, max_batch=64, max_delay=0.02, max_queue=10)
        started = time.perf_counter()
        await b.submit("k", 1, 1)
        elapsed = time.perf_counter() - started
        await b.close()
        pool.shutdown()
        return elapsed

    assert _run(main()) < 0.5  # the delay (20 ms) plus scheduling, not a wait for a full batch


def test_max_batch_one_runs_each_request_alone():
    async def main():
        runner, pool = Recorder(), ThreadPoolExecutor(1)
        b = Batcher(runner, pool, max_batch=1, max_delay=1.0, max_queue=100)
        started = time.perf_counter()
        await asyncio.gather(*(b.submit("k", i, 1) for i in range(5)))
        elapsed = time.perf_counter() - started
        await b.close()
        pool.shutdown()
        return runner.batches, elapsed

    batches, elapsed = _run(main())
    assert batches == [[0], [1], [2], [3], [4]] and elapsed < 0.9  # no waiting for the 1 s delay


def test_requests_arriving_during_a_batch_form_the_next_one():
    async def main():
        hold = threading.Event()
        runner, pool = Recorder(hold), ThreadPoolExecutor(1)
        b = Batcher(runner, pool, max_batch=64, max_delay=0.001, max_queue=100)
        first = asyncio.ensure_future(b.submit("k", "first", 1))
        await asyncio.sleep(0.05)  # the first batch is running (held)
        rest = [asyncio.ensure_future(b.submit("k", i, 1)) for i in range(6)]
        await asyncio.sleep(0.02)
        depth = b.queue_depth
        hold.set()
        await asyncio.gather(first, *rest)
        await b.close()
        pool.shutdown()
        return runner.batches, depth

    batches, depth = _run(main())
    assert depth == 6 and batches == [["first"], list(range(6))]


def test_a_full_queue_answers_unavailable_and_errors_reach_every_request():
    async def main():
        hold = threading.Event()
        pool = ThreadPoolExecutor(1)
        b = Batcher(Recorder(hold), pool, max_batch=1, max_delay=0.0, max_queue=3)
        running = asyncio.ensure_future(b.submit("k", 0, 1))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit("k", i, 1)) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="queue is full"):
            await b.submit("k", 99, 1)
        hold.set()
        await asyncio.gather(running, *waiting)

        def broken(items):
            raise ValueError("boom")

        b2 = Batcher(broken, pool, max_batch=8, max_delay=0.01, max_queue=10)
        outcomes = await asyncio.gather(*(b2.submit("k", i, 1) for i in range(3)), return_exceptions=True)
        await b.close()
        await b2.close()
        pool.shutdown()
        return outcomes

    outcomes = _run(main())
    assert all(isinstance(o, ValueError) and str(o) == "boom" for o in outcomes)


def test_max_running_batches_run_at_once_and_no_more():
    class Overlap:
        """A runner that holds each batch until released and records how many ran at once."""

        def __init__(self):
            self.lock, self.running, self.most, self.batches = threading.Lock(), 0, 0, []
            self.release = threading.Semaphore(0)

        def __call__(self, items):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.batches.append(list(items))
            self.release.acquire(timeout=5)
            with self.lock:
                self.running -= 1
            return [("done", i) for i in items]

    async def main():
        runner, pool = Overlap(), ThreadPoolExecutor(3)
        b = Batcher(runner, pool, max_batch=2, max_delay=0.0, max_queue=100, max_running=2)
        jobs = [asyncio.ensure_future(b.submit("k", i, 1)) for i in range(8)]
        await asyncio.sleep(0.1)
        at_first = (runner.running, b.queue_depth)  # two batches of 2 held, 4 requests waiting
        for _ in range(8):
            runner.release.release()
        results = await asyncio.gather(*jobs)
        await b.close()
        pool.shutdown()
        return runner, at_first, results

    runner, at_first, results = _run(main())
    assert at_first == (2, 4)
    assert runner.most == 2
    assert results == [("done", i) for i in range(8)]
    assert sorted(i for batch in runner.batches for i in batch) == list(range(8)) and all(len(batch) <= 2 for batch in runner.batches)


# ----------------------------------------------------------------- through the server
DIM, N = 24, 2000


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The same points on a batching server (long delay: concurrent requests surely meet), on
    one with batching off, and on a batching one whose collections live in the HTTP process
    (--engine inline)."""
    from serve_helpers import ServerProcess

    root = tmp_path_factory.mktemp("batching")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    payloads = [{"group": int(i % 3)} for i in range(N)]
    made = []
    for name, args in (("batched", ("--max-delay-ms", "50")), ("unbatched", ("--max-batch", "1")),
                       ("inline", ("--max-delay-ms", "50", "--engine", "inline"))):  # fmt: skip
        server = ServerProcess(root / name, args=args).start()
        made.append(server)
        with server.client() as http:
            for coll, metric in (("ip", "ip"), ("l2", "l2")):
                assert http.put(f"/collections/{coll}", json={"dim": DIM, "metric": metric}).status_code == 200
                r = http.put(f"/collections/{coll}/points", json={"ids": list(range(N)), "vectors": x.tolist(), "payloads": payloads})
                assert r.status_code == 200, r.text
    yield made
    for server in made:
        server.stop()


def _requests(rng):
    reqs = []
    for i in range(48):
        body = {"vectors": rng.standard_normal((int(rng.integers(1, 4)), DIM)).astype(np.float32).tolist(), "k": int(rng.choice([5, 10])),
                "with_payload": bool(i % 5 == 0)}  # fmt: skip
        if i % 4 == 1:
            body["recall_target"] = 0.8
        if i % 6 == 2:
            body["filter"] = {"must": [{"key": "group", "match": int(i % 3)}]}
        reqs.append((("ip", "l2")[i % 2], body))
    return reqs


def _concurrently(url: str, reqs) -> list:
    """Every request at once: one thread and connection each, released together."""
    clients = [httpx.Client(base_url=url, timeout=60) for _ in reqs]
    for client in clients:
        client.get("/healthz")  # connected before the start
    start = threading.Barrier(len(reqs))

    def send(i):
        start.wait()
        c, b = reqs[i]
        return clients[i].post(f"/collections/{c}/search", json=b)

    try:
        with ThreadPoolExecutor(len(reqs)) as pool:
            answers = list(pool.map(send, range(len(reqs))))
    finally:
        for client in clients:
            client.close()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    return [a.json() for a in answers]


@pytest.mark.parametrize("which", [0, 2], ids=["engine-process", "inline"])
def test_batched_answers_equal_unbatched_ones_exactly(servers, which):
    batched, unbatched = servers[which], servers[1]
    reqs = _requests(np.random.default_rng(1))
    with batched.client() as http:
        before = http.get("/stats").json()["batcher"]
    together = _concurrently(batched.url, reqs)
    with batched.client() as http:
        after = http.get("/stats").json()["batcher"]
        alone = [http.post(f"/collections/{c}/search", json=b).json() for c, b in reqs]  # one at a time
    batches = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == len(reqs)
    assert batches < len(reqs) / 2, f"{batches} batches for {len(reqs)} concurrent requests: little batching"
    assert together == alone
    with unbatched.client() as http:
        before = http.get("/stats").json()["batcher"]
    off = _concurrently(unbatched.url, reqs)
    assert off == alone
    with unbatched.client() as http:
        after = http.get("/stats").json()["batcher"]
    assert after["batches"] - before["batches"] == after["requests"] - before["requests"] == len(reqs)  # batching off: one index search per request
