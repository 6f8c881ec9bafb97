"""The app's state and its operations, called by the routes (app.py) on the event loop.

Everything that may take long runs in threads: parsing large bodies, writes (which wait for
their fsync: many at once, so that group commit has something to group), gets, snapshots, and
batched searches (`batching.Batcher`, one per collection). The event loop only routes, waits and
answers; large answers (searches, gets) are encoded as JSON bytes in the threads too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from . import bodies
from .batching import Batcher
from .collections import Collection, Store
from .errors import BadRequest, NotFound
from .messages import json_bytes
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("peakknn.server")

WRITE_THREADS = 32  # writes waiting for one group fsync at most
READ_THREADS = 4  # gets, infos, /stats, /metrics, parsing large search bodies: never queued behind writes
SEARCH_THREADS = 4  # batches running at once, over all collections (each store says how many per collection)
INLINE_BODY = 256 << 10  # search bodies up to this size are parsed on the event loop
NPY = "application/x-npy"


class Service:
    """The store of collections (opened, and recovered, at construction), one batcher per
    collection, the snapshot schedule and the metrics."""

    def __init__(self, data_dir, settings: ServerSettings, store=None):
        self.settings = settings
        self.store = Store(data_dir) if store is None else store  # store: an engine.EngineStore, a sharded.ShardedStore (same methods)
        self._writes = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="peakknn-write")
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="peakknn-read")
        self._searches = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="peakknn-search")
        self._snapshots = ThreadPoolExecutor(1, thread_name_prefix="peakknn-snapshot")
        self._batchers: dict[Collection, Batcher] = {}
        self.metrics = Metrics(self._state, settings.max_batch)
        self._schedule: asyncio.Task | None = None

    # ----------------------------------------------------------------- life
    async def start(self) -> None:
        self._schedule = asyncio.get_running_loop().create_task(self._snapshot_schedule())

    async def stop(self) -> None:
        """Stop the schedule and the batchers, snapshot and close every collection."""
        if self._schedule is not None:
            self._schedule.cancel()
            try:
                await self._schedule
            except asyncio.CancelledError:
                pass
        for batcher in list(self._batchers.values()):
            await batcher.close()
        await self._in(self._snapshots, self.store.close)
        for pool in (self._writes, self._reads, self._searches, self._snapshots):
            pool.shutdown(wait=True)
        log.info("peakknn serve: every collection snapshotted and closed")

    async def _snapshot_schedule(self) -> None:
        period = min(0.25, self.settings.snapshot_seconds / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for c in self.store.collections():
                try:  # in a thread: the engine process's collections ask it
                    await self._in(self._snapshots, self._snapshot_if_due, c, now)
                except Exception:  # logged; the collection says whether it failed
                    log.exception("collection %s: scheduled snapshot", c.name)

    def _snapshot_if_due(self, c, now: float) -> None:
        if c.snapshot_due(self.settings.snapshot_every, self.settings.snapshot_seconds, now):
            c.snapshot()

    # ----------------------------------------------------------------- collections
    async def create(self, name: str, raw: bytes) -> dict:
        def work():
            c, created = self.store.create(name, bodies.json_object(raw))
            return {**c.info(), "created": created}

        return await self._in(self._writes, work)

    async def delete(self, name: str) -> dict:
        c = self.store.get(name)
        await self._in(self._writes, self.store.delete, name)
        batcher = self._batchers.pop(c, None)
        if batcher is not None:
            await batcher.close(NotFound(f"collection {name!r} was deleted"))
        return {"deleted": True}

    async def info(self, name: str) -> dict:
        return await self._in(self._reads, self.store.get(name).info)

    async def list(self) -> dict:
        return await self._in(self._reads, lambda: {"collections": [c.info() for c in self.store.collections()]})

    # ----------------------------------------------------------------- points
    async def upsert(self, name: str, raw: bytes, content_type: str, ids_text: str | None) -> dict:
        c = self.store.get(name)
        dim, metric = c.config["dim"], c.config["metric"]

        def work():
            if content_type == NPY:
                up = bodies.upsert_npy(raw, ids_text, dim, metric)
            elif ids_text is not None:
                raise BadRequest(f"the query parameter ids is for {NPY} bodies; a JSON body holds its own \"ids\"")
            else:
                up = bodies.upsert_json(raw, dim, metric)
            return {"upserted": int(up.ids.size), "seq": c.upsert(up.ids, up.vectors, up.payloads)}

        return await self._in(self._writes, work)

    async def delete_points(self, name: str, raw: bytes) -> dict:
        c = self.store.get(name)

        def work():
            ids, _ = bodies.id_request(raw)
            ids = bodies.unique_ids(bodies.ids_list(ids))
            return {"deleted": int(ids.size), "seq": c.delete(ids)}

        return await self._in(self._writes, work)

    async def calibrate(self, name: str, raw: bytes) -> dict:
        c = self.store.get(name)
        return await self._in(self._writes, lambda: c.calibrate(bodies.calibration(raw, c.config["dim"], c.config["metric"])))

    async def get_points(self, name: str, raw: bytes) -> bytes:
        c = self.store.get(name)

        def work():
            ids, body = bodies.id_request(raw, {"with_vectors", "with_payload"})
            ids = bodies.ids_list(ids, storable=False)
            return json_bytes({"points": c.get(ids, bodies.get_bool(body, "with_vectors", False), bodies.get_bool(body, "with_payload", True))})

        return await self._in(self._reads, work)

    async def search(self, name: str, raw: bytes) -> bytes:
        c = self.store.get(name)
        parse = functools.partial(bodies.search, raw, c.config["dim"], c.config["metric"], c.partitioned)
        request = parse() if len(raw) <= INLINE_BODY else await self._in(self._reads, parse)
        started = time.perf_counter()
        result = await self._batcher(c).submit(request.group, request, request.queries.shape[0])
        self.metrics.search(time.perf_counter() - started)
        return result

    # ----------------------------------------------------------------- figures
    async def stats(self) -> dict:
        return await self._in(self._reads, self._stats)

    async def metrics_text(self) -> bytes:
        return await self._in(self._reads, self.metrics.text)

    def _stats(self) -> dict:
        figures = {c.name: (c, c.figures()) for c in self.store.collections()}
        return {
            "collections": {name: {"dim": c.config["dim"], "metric": c.config["metric"], "index": c.config["index"], "count": f["count"],
                                   "memory_bytes": f["memory_bytes"]} for name, (c, f) in figures.items()},
            "batcher": {"queue_depth": sum(b.queue_depth for b in list(self._batchers.values())), **self.metrics.batcher_stats()},
            "wal": {name: {"bytes": f["wal_bytes"], "seq": f["seq"], "last_snapshot": f["last_snapshot"], "snapshot_seq": f["snapshot_seq"],
                           "fsyncs": f["fsyncs"]} for name, (c, f) in figures.items()},
        }  # fmt: skip

    def _state(self) -> list:
        return [(c.name, c, self._batchers.get(c)) for c in self.store.collections()]

    # ----------------------------------------------------------------- internals
    def _batcher(self, c: Collection) -> Batcher:
        if c.closed:
            raise NotFound(f"collection {c.name!r} was deleted")
        batcher = self._batchers.get(c)
        if batcher is None:
            s = self.settings
            batcher = Batcher(c.search_encoded, self._searches, max_running=self.store.batches_in_flight, max_batch=s.max_batch, max_delay=s.max_delay_ms / 1000.0,
                              max_queue=s.max_queue, on_batch=self.metrics.batch)  # fmt: skip
            self._batchers[c] = batcher
        return batcher

    @staticmethod
    async def _in(pool: ThreadPoolExecutor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


