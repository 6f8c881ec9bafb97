"""The sharded server: `torchrun --standalone --nproc-per-node N -m peakknn serve --sharded --data DIR`
(across hosts: torchrun's --nnodes and --rdzv-endpoint instead of --standalone; DIR on each host).

Every rank keeps a store of its own in DIR/shard-<rank>/ (a `collections.Store`: the points it
owns, their payloads, its write-ahead log and snapshots, recovered by that rank at start). Rank 0
serves HTTP exactly as the single-process server does (`service.Service` over a `ShardedStore`,
whose collections have the methods of `collections.Collection`); each operation becomes one
command that rank 0 broadcasts and that every rank, rank 0 included, applies to its own store
(`Shard.handle`); the replies are gathered on rank 0.

Routing: the point with id i lives on rank i % world_size (`owner`). An upsert or a delete
reaches every rank, each applies, logs and fsyncs its own ids, and the write is acknowledged once
every rank has. Every rank logs every write (a record without points where it owns none), so the
ranks' log seqs move in step and a write's "seq" is the highest of them. A delete
first asks every rank which ids it lacks, and deletes nothing when one is missing. A search batch
reaches every rank, each searches its own points with the batch's k, recall target and filter
(the filter evaluated on its own payload table), and rank 0 keeps the best k of the W * k
candidates of each query. The global top k is inside the union of the shards' top k, and a flat
shard's bins follow from (k, recall_target) alone, so the union meets the target as one index of
all points would (`peakknn.distributed.sharded` has the argument). A partitioned collection's
shards never train alone: once the shards together hold train_size points
(`ShardedCollection.train_when_due`) every shard trains with the others on its own points
(`peakknn.distributed.partitioned.train_together`: the k-means / AVQ sums all-reduced over the
process group), so all hold the same centres, frame and codec; each calibrates its probe on its
own points, so each meets the target over its own points. Gets ask every rank and keep the
request's order.

Commands run one at a time (a lock on rank 0), so concurrent writes are not group-committed
across ranks. A message is a JSON header plus raw numpy arrays in one uint8 tensor (`pack`, `messages`), sent
with torch.distributed broadcast and gather (gloo); nothing is pickled. At start rank 0 sends
its collections' configs ("sync"): a rank creates the ones it lacks and drops the ones rank 0
does not have (rank 0's store decides after a crash between two ranks' creates or deletes).
The other ranks wait for commands under the process group's timeout (`WAIT`); a rank that dies
takes the others down through torchrun. SIGTERM / Ctrl-C stop rank 0's uvicorn, whose shutdown
sends "close": every rank snapshots, closes its store and exits 0 (ranks other than 0 ignore the
signals torchrun forwards and wait for that command).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import messages
from .bodies import Search
from .collections import NamedCollections, Store
from .errors import ApiError, NotFound

log = logging.getLogger("peakknn.server")

WAIT = datetime.timedelta(days=365)  # ranks > 0 wait this long for rank 0's next command


def shard_folder(data_dir, rank: int) -> Path:
    return Path(data_dir) / f"shard-{rank:05d}"


def owner(ids: np.ndarray, world_size: int) -> np.ndarray:
    """Rank holding each id: id % world_size."""
    return ids % world_size


# ----------------------------------------------------------------- messages
def pack(header: dict, arrays: dict[str, np.ndarray] | None = None) -> torch.Tensor:
    """u8 tensor of a `messages.encode`d (header, arrays)."""
    return torch.frombuffer(bytearray(b"".join(messages.encode(header, arrays))), dtype=torch.uint8)


def unpack(message: torch.Tensor) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a `pack`ed message."""
    return messages.decode(message.numpy())


class Channel:
    """Rank 0 -> every rank (`broadcast`), every rank -> rank 0 (`gather`), over `group`."""

    def __init__(self, group=None):
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)

    def broadcast(self, message: torch.Tensor | None) -> torch.Tensor:
        """Rank 0 passes the message, the others None; every rank returns it."""
        size = torch.tensor([message.numel() if self.rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(size, 0, group=self.group)
        buf = message if self.rank == 0 else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, 0, group=self.group)
        return buf

    def gather(self, message: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's message on rank 0 (rank order); None elsewhere."""
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([message.numel()], dtype=torch.int64), group=self.group)
        counts = [int(s) for s in sizes]
        pad = torch.zeros(max(counts), dtype=torch.uint8)
        pad[: message.numel()] = message
        out = [torch.empty_like(pad) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(pad, out, dst=0, group=self.group)
        return None if out is None else [t[:c] for t, c in zip(out, counts)]


# ----------------------------------------------------------------- every rank
class Shard:
    """One rank's store and the commands it applies to it (`handle`)."""

    def __init__(self, store: Store, rank: int, world_size: int):
        self.store, self.rank, self.world_size = store, rank, world_size

    def handle(self, op: str, header: dict, arrays: dict) -> tuple[dict, dict]:
        """(reply header, reply arrays); an error becomes {"error": {"status", "message"}}."""
        try:
            return getattr(self, "_" + op)(header, arrays)
        except ApiError as e:
            return {"error": {"status": e.status, "message": e.message}}, {}
        except Exception as e:  # noqa: BLE001 - reported to rank 0, which answers 500
            log.exception("shard %d: command %s", self.rank, op)
            return {"error": {"status": 500, "message": f"{type(e).__name__}: {e}"}}, {}

    def _mine(self, ids: np.ndarray) -> np.ndarray:
        return owner(ids, self.world_size) == self.rank

    def _sync(self, header, arrays):
        wanted = header["collections"]
        for name in self.store.names():
            if name not in wanted:
                log.warning("shard %d: collection %s is not on rank 0: dropped", self.rank, name)
                self.store.delete(name)
        for name, config in wanted.items():
            if name in self.store.names() and self.store.get(name).config != config:
                log.warning("shard %d: collection %s has another config than on rank 0: dropped", self.rank, name)
                self.store.delete(name)
            if name not in self.store.names():
                self.store.create(name, config)
        return {}, {}

    def _create(self, header, arrays):
        _, created = self.store.create(header["name"], header["body"])
        return {"created": created}, {}

    def _delete(self, header, arrays):
        self.store.delete(header["name"])
        return {}, {}

    def _info(self, header, arrays):
        c = self.store.get(header["name"])
        return {"info": c.info(), "figures": c.figures()}, {}

    def _upsert(self, header, arrays):
        ids, payloads = arrays["ids"], header["payloads"]
        mine = self._mine(ids)
        own = None if payloads is None else [p for p, m in zip(payloads, mine.tolist()) if m]
        c = self.store.get(header["name"])
        seq = c.upsert(ids[mine], arrays["vectors"][mine], own, log_empty=True)
        return {"seq": seq, "count": len(c.index), "trained": not c.partitioned or c.index.is_trained}, {}

    def _train(self, header, arrays):
        from ..distributed.partitioned import train_together

        return {"trained": self.store.get(header["name"]).train(together=train_together)}, {}

    def _missing(self, header, arrays):
        c, ids = self.store.get(header["name"]), arrays["ids"]
        mine = ids[self._mine(ids)]
        return {}, {"missing": mine[~c.present(mine)] if mine.size else mine}

    def _delete_points(self, header, arrays):
        ids = arrays["ids"]
        return {"seq": self.store.get(header["name"]).delete(ids[self._mine(ids)], log_empty=True)}, {}

    def _get(self, header, arrays):
        ids = arrays["ids"]
        return {"points": self.store.get(header["name"]).get(ids[self._mine(ids)], header["with_vectors"], header["with_payload"])}, {}

    def _search(self, header, arrays):
        return {"results": self.store.get(header["name"]).search(messages.searches(header["requests"], arrays["queries"]))}, {}

    def _calibrate(self, header, arrays):
        return self.store.get(header["name"]).calibrate(arrays["queries"]), {}

    def _snapshot(self, header, arrays):
        return {"snapshotted": self.store.get(header["name"]).snapshot()}, {}

    def _close(self, header, arrays):
        self.store.close()
        return {}, {}


def serve_commands(shard: Shard, channel: Channel) -> None:
    """Ranks > 0: apply rank 0's commands until "close"."""
    while True:
        header, arrays = unpack(channel.broadcast(None))
        op = header.pop("op")
        channel.gather(pack(*shard.handle(op, header, arrays)))
        if op == "close":
            return


# ----------------------------------------------------------------- rank 0
class Driver:
    """Rank 0's side: `call` runs one command on every rank, one command at a time."""

    def __init__(self, shard: Shard, channel: Channel):
        self.shard, self.channel = shard, channel
        self._lock = threading.Lock()

    def call(self, op: str, header: dict | None = None, arrays: dict | None = None) -> list[tuple[dict, dict]]:
        """Every rank's (reply header, reply arrays); raises the first rank's error (ApiError)."""
        header, arrays = header or {}, arrays or {}
        with self._lock:
            self.channel.broadcast(pack({"op": op, **header}, arrays))
            replies = [unpack(t) for t in self.channel.gather(pack(*self.shard.handle(op, header, arrays)))]
        for rank, (reply, _) in enumerate(replies):
            if "error" in reply:
                e = reply["error"]
                raise ApiError(e["message"] if rank == 0 else f"shard {rank}: {e['message']}", e["status"])
        return replies


class ShardedStore(NamedCollections):
    """Rank 0's store of sharded collections (the methods of `collections.Store`)."""

    batches_in_flight = 1  # commands run one at a time

    def __init__(self, data_dir, group=None):
        channel = Channel(group)
        self.world_size = channel.world_size
        self.local = Store(shard_folder(data_dir, 0), trains_alone=False)
        self.driver = Driver(Shard(self.local, 0, self.world_size), channel)
        self.driver.call("sync", {"collections": {c.name: c.config for c in self.local.collections()}})
        self._lock = threading.Lock()
        self._collections = {c.name: ShardedCollection(self, c) for c in self.local.collections()}
        self.closed = False
        for c in self._collections.values():  # a restart replays points into untrained shards
            if c.partitioned:
                infos = [r["info"] for r, _ in c._call("info")]
                c.train_when_due([(i["count"], i["trained"]) for i in infos])

    def create(self, name: str, body: dict) -> tuple[ShardedCollection, bool]:
        with self._lock:
            (reply, _), *_ = self.driver.call("create", {"name": name, "body": body})
            c = self._collections.get(name)
            if c is None:
                c = self._collections[name] = ShardedCollection(self, self.local.get(name))
            return c, reply["created"]

    def delete(self, name: str) -> None:
        with self._lock:
            if name not in self._collections:
                raise NotFound(f"no collection {name!r}")
            self.driver.call("delete", {"name": name})
            self._collections.pop(name)

    def close(self) -> None:
        """Every rank snapshots and closes its store; the other ranks then exit."""
        if not self.closed:
            self.closed = True
            self.driver.call("close")


class ShardedCollection:
    """A collection over every rank (the methods of `collections.Collection` that the service
    uses); `local` is rank 0's shard of it."""

    def __init__(self, store: ShardedStore, local):
        self.store, self.local = store, local
        self.name, self.config = local.name, local.config
        self.writes_since_snapshot = 0
        self.dirty_since: float | None = None
        self._write_mutex = threading.Lock()  # a delete's check and its delete are not split by a write

    @property
    def partitioned(self) -> bool:
        return self.config["index"] == "partitioned"

    @property
    def closed(self) -> bool:
        return self.local.closed

    def _call(self, op: str, header: dict | None = None, arrays: dict | None = None):
        return self.store.driver.call(op, {"name": self.name, **(header or {})}, arrays)

    # ----------------------------------------------------------------- writes
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: list | None) -> int:
        with self._write_mutex:
            replies = self._call("upsert", {"payloads": payloads}, {"ids": ids, "vectors": vectors})
            self._wrote()
            self.train_when_due([(r["count"], r["trained"]) for r, _ in replies])
        return max(r["seq"] for r, _ in replies)

    def train_when_due(self, shards: list[tuple[int, bool]]) -> None:
        """A partitioned collection trains every shard (together, each on its own points) once
        all shards together hold train_size points; shards: each one's (count, trained)."""
        size = self.config.get("train_size")
        if self.partitioned and size is not None and sum(c for c, _ in shards) >= size and not all(t for _, t in shards):
            self._call("train")

    def delete(self, ids: np.ndarray) -> int:
        with self._write_mutex:
            missing = np.concatenate([a["missing"] for _, a in self._call("missing", arrays={"ids": ids})])
            if missing.size:
                missing = ids[np.isin(ids, missing)]  # in the request's order
                shown = ", ".join(map(str, missing[:10].tolist())) + (", ..." if missing.size > 10 else "")
                raise NotFound(f"{missing.size} of the ids are not in collection {self.name!r}: {shown} (nothing was deleted)")
            replies = self._call("delete_points", arrays={"ids": ids})
            self._wrote()
        return max(r["seq"] for r, _ in replies)

    def _wrote(self) -> None:
        self.writes_since_snapshot += 1
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()

    # ----------------------------------------------------------------- reads
    def get(self, ids: np.ndarray, with_vectors: bool, with_payload: bool) -> list[dict]:
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]
        found = {p["id"]: p for r, _ in self._call("get", {"with_vectors": with_vectors, "with_payload": with_payload}, {"ids": ids}) for p in r["points"]}
        return [found[i] for i in ids.tolist() if i in found]

    def search(self, requests: list[Search]) -> list[dict]:
        """One result per request, as `Collection.search`: the best k of every shard's k."""
        specs, queries = messages.search_specs(requests)
        replies = self._call("search", {"requests": specs}, {"queries": queries})
        descending = self.config["metric"] != "l2"
        out = []
        for i, r in enumerate(requests):
            per_shard = [reply["results"][i]["results"] for reply, _ in replies]
            out.append({"results": [_merge([s[q] for s in per_shard], r.k, descending, r.with_payload) for q in range(r.queries.shape[0])]})
        return out

    def search_encoded(self, requests: list[Search]) -> list[bytes]:
        return [messages.json_bytes(r) for r in self.search(requests)]

    def calibrate(self, queries: np.ndarray) -> dict:
        """Every shard measures its curves on the queries (each then meets the target over its
        own points); rank 0's curves are answered, with "shards"."""
        with self._write_mutex:
            (reply, _), *_ = self._call("calibrate", arrays={"queries": queries})
            self._wrote()
        return {**reply, "shards": self.store.world_size}

    def info(self) -> dict:
        infos = [r["info"] for r, _ in self._call("info")]
        out = dict(infos[0])
        out["count"] = sum(i["count"] for i in infos)
        out["memory_bytes"] = sum(i["memory_bytes"] for i in infos)
        out["seq"] = max(i["seq"] for i in infos)
        out["snapshot_seq"] = min(i["snapshot_seq"] for i in infos)
        out["shards"] = len(infos)
        if "trained" in out:
            out["trained"] = all(i["trained"] for i in infos)
        failed = [f"shard {rank}: {i['failed']}" for rank, i in enumerate(infos) if i.get("failed")]
        if failed:
            out["failed"] = "; ".join(failed)
        return out

    def figures(self) -> dict:
        """`Collection.figures` summed over the ranks (seq: the highest, snapshot_seq and
        last_snapshot: the oldest shard's)."""
        figures = [r["figures"] for r, _ in self._call("info")]
        out = {k: sum(f[k] for f in figures) for k in ("count", "memory_bytes", "wal_bytes", "fsyncs")}
        out["seq"], out["snapshot_seq"] = max(f["seq"] for f in figures), min(f["snapshot_seq"] for f in figures)
        stamps = [f["last_snapshot"] for f in figures]
        out["last_snapshot"] = None if None in stamps else min(stamps)
        return out

    # ----------------------------------------------------------------- snapshots
    @property
    def failed(self) -> str | None:
        return self.local.failed

    def snapshot_due(self, every: int, seconds: float, now: float) -> bool:
        return self.failed is None and not self.closed and self.dirty_since is not None and (self.writes_since_snapshot >= every or now - self.dirty_since >= seconds)

    def snapshot(self) -> bool:
        with self._write_mutex:
            done = any(r["snapshotted"] for r, _ in self._call("snapshot"))
            self.writes_since_snapshot, self.dirty_since = 0, None
        return done


def _merge(results: list[dict], k: int, descending: bool, with_payload: bool) -> dict:
    """The best k of several shards' {"ids", "scores", "payloads"?} of one query (a score of
    None, not finite, ranks last; equal scores keep shard order)."""
    rows = [(s, i, p) for r in results for s, i, p in zip(r["scores"], r["ids"], r["payloads"] if with_payload else [None] * len(r["ids"]))]
    rows.sort(key=lambda row: (True, 0.0) if row[0] is None else (False, -row[0] if descending else row[0]))
    rows = rows[:k]
    entry = {"ids": [i for _, i, _ in rows], "scores": [s for s, _, _ in rows]}
    if with_payload:
        entry["payloads"] = [p for _, _, p in rows]
    return entry


# ----------------------------------------------------------------- start
def start_group() -> tuple[int, int]:
    """init_process_group (gloo) from torchrun's environment; (rank, world size). ValueError when
    not started by torchrun."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"--sharded runs under torchrun (torchrun --standalone --nproc-per-node N -m peakknn serve --sharded ...); {', '.join(missing)} not set")
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT)
    return dist.get_rank(), dist.get_world_size()

