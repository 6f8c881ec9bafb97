"""Dynamic batching: concurrent searches of one collection run as one index search.

A `Batcher` (one per collection, on the event loop) keeps the waiting requests in groups of
equal key (`bodies.Search.group`: k, recall_target, probe and filter). Up to `max_running`
batches run at a time (1 by default; the engine process runs 2, each on half the cores), each in
a worker thread. When fewer are running, the group whose first request is oldest runs once it
holds `max_batch` queries or its first request has waited `max_delay` seconds, whichever comes
first (the semantics of Triton's max_queue_delay); requests that arrive while max_running
batches run wait for one to finish and then form the next batch at once. A batch takes whole requests in arrival order
up to max_batch queries (a larger request runs alone). With max_batch = 1 every request runs
alone: batching is off. More than `max_queue` waiting requests: `submit` raises Unavailable (503).

The runner gets the batch's items and returns one result per item (or raises: then every item
of the batch fails with that error). on_batch gets the runner's seconds as its worker thread
timed them. Results are exactly what running each item alone gives,
as long as the runner's answer for an item does not depend on the other items: for an index
search of equal k, recall target, probe and filter, each query's answer does not.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any

from .errors import Unavailable


class _Waiting:
    __slots__ = ("arrived", "future", "item", "size")

    def __init__(self, item, size: int, future: asyncio.Future, arrived: float):
        self.item, self.size, self.future, self.arrived = item, size, future, arrived


class Batcher:
    """Batches `submit(key, item, size)` calls; runner(items) -> results runs in `executor`
    (max_running batches at once: give it that many threads). on_batch(queries, requests,
    seconds) is called after each batch (statistics)."""

    def __init__(self, runner: Callable[[list], list], executor: Executor, *, max_batch: int, max_delay: float, max_queue: int,
                 max_running: int = 1, on_batch: Callable[[int, int, float], None] | None = None):
        self.runner, self.executor = runner, executor
        self.max_batch, self.max_delay, self.max_queue, self.max_running = max_batch, max_delay, max_queue, max_running
        self._running: set[asyncio.Task] = set()
        self.on_batch = on_batch
        self._groups: dict[Hashable, collections.deque[_Waiting]] = {}
        self._waiting = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed: Exception | None = None  # the answer of every request once closed

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return self._waiting

    async def submit(self, key: Hashable, item: Any, size: int) -> Any:
        """The runner's result for `item` (size: its queries), once its batch has run."""
        if self._closed is not None:
            raise self._closed
        if self._waiting >= self.max_queue:
            raise Unavailable(f"the search queue is full ({self.max_queue} requests waiting): retry later")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        waiting = _Waiting(item, size, loop.create_future(), time.monotonic())
        self._groups.setdefault(key, collections.deque()).append(waiting)
        self._waiting += 1
        self._wake.set()
        return await waiting.future

    async def close(self, error: Exception | None = None) -> None:
        """Fail the waiting requests with `error` (default: Unavailable, shutting down) and stop;
        a running batch finishes first."""
        self._closed = error or Unavailable("the server is shutting down")
        for group in self._groups.values():
            for w in group:
                if not w.future.done():
                    w.future.set_exception(self._closed)
        self._groups.clear()
        self._waiting = 0
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    async def _run(self) -> None:
        while True:
            if not self._groups or len(self._running) >= self.max_running:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, group = min(self._groups.items(), key=lambda kv: kv[1][0].arrived)
            wait = group[0].arrived + self.max_delay - time.monotonic()
            if sum(w.size for w in group) < self.max_batch and wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [group.popleft()]
            queries = batch[0].size
            while group and queries + group[0].size <= self.max_batch:
                queries += group[0].size
                batch.append(group.popleft())
            if not group:
                del self._groups[key]
            self._waiting -= len(batch)
            task = asyncio.get_running_loop().create_task(self._execute(batch, queries))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._wake.set()

    async def _execute(self, batch: list[_Waiting], queries: int) -> None:
        started = time.perf_counter()
        seconds = None
        try:
            results, seconds = await asyncio.get_running_loop().run_in_executor(self.executor, _timed, self.runner, [w.item for w in batch])
        except asyncio.CancelledError:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(self._closed or Unavailable("the server is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 - whatever the runner raised is every request's answer
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
        else:
            for w, r in zip(batch, results):
                if not w.future.done():
                    w.future.set_result(r)
        if self.on_batch is not None:
            self.on_batch(queries, len(batch), time.perf_counter() - started if seconds is None else seconds)


def _timed(runner: Callable[[list], list], items: list) -> tuple[list, float]:
    """runner(items) and its seconds, timed in the worker thread (not counting the wait for the
    event loop to take the results)."""
    started = time.perf_counter()
    return runner(items), time.perf_counter() - started
