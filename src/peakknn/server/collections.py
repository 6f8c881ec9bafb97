"""Collections: an index, its payload table and its write-ahead log, kept consistent; and the
store of collections in the data folder.

Folder layout (DIR is `peakknn serve --data`):

    DIR/.serve-lock                 flock'ed by the running server (one server per folder)
    DIR/collections/<name>/
        config.json                 the collection's config (written atomically)
        snapshot.json               {"seq": S, "index": "snap-<S>", "time": iso8601} (atomic; absent before the first)
        snap-<S>/                   Index.save / PartitionedIndex.save of the state at seq S
        payloads.sqlite             the payload table (payloads.py), committed at seq >= S
        wal-<first seq>.log         log segments (wal.py) holding the records after S

Consistency: a write holds the collection's write mutex and the write side of its RW lock while
it changes the index (which checks the input and changes nothing when it is bad), appends its
record to the log and writes its payloads; searches and gets hold the read side, so they see a
write entirely or not at all. A write is acknowledged after `wal.sync` covers its record; a read
answers after the log holds every write it could have seen, so no answer shows an undurable write.

Snapshot at seq S (every N writes / T seconds / shutdown; writers wait, searches go on): under the
write mutex, rotate the log (a new segment starts at S + 1), commit the payload table at S and
save the index to snap-<S>; then replace snapshot.json, delete older snapshots and the segments
before S + 1. A crash at any point leaves snapshot.json naming a complete snapshot and the log
holding every record after it.

Start-up: load the snapshot that snapshot.json names (or an empty index), open the payload table
(rolled back by SQLite to its last commit, at a seq >= S), replay the log's records after S
(`wal.Recovery`: a torn or corrupt tail is cut with a warning). Replay is idempotent: every record
sets each of its ids to a full state (upsert: vector and payload; delete: absent; deleting an
absent id is skipped), so a table or index that already holds some of those records ends the
same. A start-up that replayed or cut anything snapshots at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from .. import Index, PartitionedIndex, PartitionSettings, SearchSettings
from .. import load as load_index
from .._locks import RWLock
from ..io import fsync_dir, write_json
from . import bodies, wal
from .errors import BadRequest, Conflict, NotFound, Unavailable
from .messages import json_bytes
from .payloads import PayloadStore

log = logging.getLogger("peakknn.server")

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DIM = 65536
METRICS = ("ip", "l2", "cos")
KINDS = ("flat", "partitioned")
FLAT_FIELDS = ("dtype", "recall_target")
# partitioned fields: (JSON types allowed, None allowed); defaults from the dataclasses
PARTITION_TYPES = {
    "partitions": ((int,), True), "codes": ((str,), False), "block_dims": ((int,), False),
    "threshold": ((float, int), True), "anisotropic_partitions": ((bool,), False), "keep_vectors": ((bool,), False),
    "scan_dims": ((int, str), True), "spill": ((bool,), True), "train_size": ((int,), True), "iters": ((int,), False),
    "seed": ((int,), False),
}  # fmt: skip
SEARCH_TYPES = {"probe": ((int,), False), "rerank": ((int,), True), "adaptive": ((bool,), False)}
INT_LIMITS = {"partitions": 1 << 20, "block_dims": MAX_DIM, "scan_dims": MAX_DIM, "train_size": 1 << 40, "iters": 1000,
              "seed": 2**63 - 1, "probe": 1 << 20, "rerank": 1 << 20}  # fmt: skip
CONFIG = "config.json"
SNAPSHOT = "snapshot.json"
PAYLOADS = "payloads.sqlite"
MANY_IDS = 1000  # gets of more ids look them up in one sorted copy of the index's ids


# ----------------------------------------------------------------- configs
def parse_config(body: dict) -> dict:
    """The normalized config of a create request: dim, metric, index and the kind's fields, every
    default filled in (two requests meaning the same collection give equal dicts)."""
    dim = bodies.get_int(body, "dim", low=1, high=MAX_DIM, required="the vectors' dimension")
    metric = body.get("metric", "ip")
    if metric not in METRICS:
        raise BadRequest(f"metric must be one of {', '.join(METRICS)}, got {bodies._show(metric)}")
    kind = body.get("index", "flat")
    if kind not in KINDS:
        raise BadRequest(f"index must be one of {', '.join(KINDS)}, got {bodies._show(kind)}")
    config = {"dim": dim, "metric": metric, "index": kind}
    if kind == "flat":
        bodies.check_fields(body, {"dim", "metric", "index", *FLAT_FIELDS})
        dtype = body.get("dtype", "bf16")
        if dtype not in ("bf16", "fp32"):
            raise BadRequest(f"dtype must be bf16 or fp32, got {bodies._show(dtype)}")
        config.update(dtype=dtype, recall_target=bodies.get_fraction(body, "recall_target", 0.95))
    else:
        fields = {**PARTITION_TYPES, **SEARCH_TYPES}
        bodies.check_fields(body, {"dim", "metric", "index", "recall_target", *fields}, "body (a partitioned collection)")
        config["recall_target"] = bodies.get_fraction(body, "recall_target")
        for name, (types, nullable) in fields.items():
            if name in body:
                value = body[name]
                if (value is None and not nullable) or (value is not None and (isinstance(value, bool) != (bool in types) or not isinstance(value, types))):
                    raise BadRequest(f"{name} must be {'/'.join(t.__name__ for t in types)}{' or null' if nullable else ''}, got {bodies._show(value)}")
                if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= INT_LIMITS[name]:
                    raise BadRequest(f"{name} must be in [0, {INT_LIMITS[name]}], got {value}")
        try:
            settings = PartitionSettings(**{k: body[k] for k in PARTITION_TYPES if k in body})
            search = SearchSettings(**{k: body[k] for k in SEARCH_TYPES if k in body})
            PartitionedIndex(dim, metric=metric, settings=settings, search_settings=search)  # its own checks
        except (ValueError, TypeError) as e:
            raise BadRequest(f"bad partitioned settings: {e}") from None
        config.update(dataclasses.asdict(settings), **{k: v for k, v in dataclasses.asdict(search).items() if k in SEARCH_TYPES})
    return config


def _training_by(index, trains_alone: bool):
    """The index, which no longer trains itself at train_size where it must not train alone."""
    if not trains_alone and isinstance(index, PartitionedIndex) and index.settings.train_size is not None:
        index.settings = dataclasses.replace(index.settings, train_size=None)
    return index


def make_index(config: dict) -> Index | PartitionedIndex:
    """An empty index as the config says."""
    if config["index"] == "flat":
        return Index(config["dim"], metric=config["metric"], precision=config["dtype"], recall_target=config["recall_target"])
    settings = PartitionSettings(**{k: config[k] for k in PARTITION_TYPES})
    search = SearchSettings(**{k: config[k] for k in SEARCH_TYPES})
    return PartitionedIndex(config["dim"], metric=config["metric"], settings=settings, search_settings=search)


def config_difference(old: dict, new: dict) -> str:
    return ", ".join(f"{k} {json.dumps(old.get(k))} (asked {json.dumps(new.get(k))})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


# ----------------------------------------------------------------- one collection
class Collection:
    """One collection (see the module). Methods run in worker threads, never on the event loop;
    they raise ApiError subclasses for anything a client did wrong or should retry."""

    def __init__(self, name: str, folder: Path, config: dict, index, payloads: PayloadStore, log_: wal.WriteAheadLog, snapshot: dict | None):
        self.name, self.folder, self.config = name, folder, config
        self.index, self.payloads, self.wal = index, payloads, log_
        if isinstance(index, Index):  # a server's batches are small: packed rows scan them faster (engine.packed)
            index.packed_scan = True
        self.snapshot_seq = snapshot["seq"] if snapshot else 0
        self.last_snapshot: str | None = snapshot["time"] if snapshot else None
        self.writes_since_snapshot = 0
        self.dirty_since: float | None = None  # time.monotonic() of the first write since the last snapshot
        self.failed: str | None = None
        self.closed = False
        self._lock = RWLock()  # reads: searches, gets; writes: updates
        self._write_mutex = threading.Lock()  # writers and snapshots, one at a time (readers never wait for it)

    @property
    def partitioned(self) -> bool:
        return self.config["index"] == "partitioned"

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(cls, folder: Path, name: str, config: dict, *, trains_alone: bool = True) -> Collection:
        index = _training_by(make_index(config), trains_alone)
        return cls(name, folder, config, index, PayloadStore(folder / PAYLOADS), wal.WriteAheadLog(folder, 1), None)

    @classmethod
    def open(cls, folder: Path, *, trains_alone: bool = True) -> Collection:
        """Load the snapshot, replay the log (module docstring). trains_alone=False: a partitioned
        index never trains itself at train_size (a shard of `serve --sharded`: all shards train
        together, `train(together=...)`)."""
        saved = json.loads((folder / CONFIG).read_text())
        name, config = saved.pop("name"), saved
        snapshot = json.loads((folder / SNAPSHOT).read_text()) if (folder / SNAPSHOT).exists() else None
        for old in folder.glob("snap-*"):  # a snapshot interrupted before snapshot.json named it
            if snapshot is None or old.name != snapshot["index"]:
                shutil.rmtree(old, ignore_errors=True)
        if snapshot is None:
            index = make_index(config)
        else:
            index = load_index(folder / snapshot["index"])
            want = Index if config["index"] == "flat" else PartitionedIndex
            if not isinstance(index, want) or index.dim != config["dim"] or index.metric != config["metric"]:
                raise ValueError(f"{folder / snapshot['index']} holds {index!r}, not the {config['index']} index of {folder / CONFIG}")
        index = _training_by(index, trains_alone)
        payloads = PayloadStore(folder / PAYLOADS)
        after = snapshot["seq"] if snapshot else 0
        if payloads.committed_seq < after:
            log.warning("collection %s: its payload table was committed at seq %d, before its snapshot at %d", name, payloads.committed_seq, after)
        recovery = wal.Recovery(folder, after)
        for record in recovery:
            _replay(index, payloads, record, name)
        c = cls(name, folder, config, index, payloads, wal.WriteAheadLog(folder, recovery.last_seq + 1), snapshot)
        log.info("collection %s: %d points, snapshot at seq %d, %d log records replayed", name, len(index), after, recovery.replayed)
        if recovery.replayed or recovery.cut:
            c._wrote()
            c.snapshot()
        return c

    # ----------------------------------------------------------------- writes
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: list | None, *, log_empty: bool = False) -> int:
        """Insert or replace points (vector and payload); returns the seq, once durable. No ids:
        nothing is logged unless log_empty (the sharded server keeps every shard's seq in step)."""
        if ids.size == 0 and not log_empty:
            return self._durable(self.wal.last_seq)
        with self._write_mutex, self._lock.write():
            self._usable()
            before = len(self.index)
            try:
                self.index.upsert(vectors, ids=ids)
            except (ValueError, TypeError) as e:
                # bodies.py checked the input as the index does, so a refusal here is one of the
                # partitioned index's automatic training (after the rows went in), or a change made
                if self.partitioned or len(self.index) != before:
                    with self._fatal("an upsert that failed half-way"):
                        raise
                raise BadRequest(str(e)) from None
            except Exception:
                with self._fatal("an upsert"):
                    raise
            with self._fatal("logging an upsert"):
                seq = self.wal.append_upsert(ids, vectors, payloads)
                self.payloads.upsert(ids, payloads)
            self._wrote()
        return self._durable(seq)

    def delete(self, ids: np.ndarray, *, log_empty: bool = False) -> int:
        """Delete points; NotFound (nothing deleted) if one is not stored. Returns the seq (no
        ids: as for upsert)."""
        if ids.size == 0 and not log_empty:
            return self._durable(self.wal.last_seq)
        with self._write_mutex, self._lock.write():
            self._usable()
            missing = ids[~self.present(ids)]
            if missing.size:
                shown = ", ".join(map(str, missing[:10].tolist())) + (", ..." if missing.size > 10 else "")
                raise NotFound(f"{missing.size} of the ids are not in collection {self.name!r}: {shown} (nothing was deleted)")
            try:
                self.index.remove(ids)
            except (ValueError, TypeError) as e:
                raise BadRequest(str(e)) from None
            with self._fatal("logging a delete"):
                seq = self.wal.append_delete(ids)
                self.payloads.delete(ids)
            self._wrote()
        return self._durable(seq)

    def train(self, together=None) -> bool:
        """Train a partitioned collection that is not trained yet on its points now. False when
        flat, trained already, or too small to train (it goes on scanning exactly). together:
        the sharded server's training of every shard at once (`together(index)`, a collective
        such as `distributed.partitioned.train_together`): every shard runs it, trained or not,
        empty or not, and all end with the same centres; False there when it refused (on every
        shard alike)."""
        if not self.partitioned:
            return False
        with self._write_mutex, self._lock.write():
            if together is None:
                self._usable()
                if self.index.is_trained or len(self.index) == 0:
                    return False
            try:
                if together is None:
                    self.index.train()
                else:  # a collective: never skipped on one shard, or the others would wait for it
                    together(self.index)
            except ValueError as e:  # too few points for its settings: refused before changing anything
                log.info("collection %s: not trained on %d points: %s", self.name, len(self.index), e)
                return False
            self._wrote()  # the next snapshot keeps the training
        return True

    def calibrate(self, queries: np.ndarray) -> dict:
        """Measure a trained partitioned collection's recall curves on these queries
        (`PartitionedIndex.calibrate`): its recall target then holds for queries like them. Kept
        with the next snapshot. -> {"calibrated": m, "recall_curves": {k: {"probes", "recall"}}}."""
        if not self.partitioned:
            raise BadRequest(f"collection {self.name!r} is flat: its recall target needs no calibration")
        with self._write_mutex, self._lock.write():
            self._usable()
            if not self.index.is_trained:
                raise BadRequest(f"collection {self.name!r} is not trained yet (it scans its points exactly): calibrate once it holds train_size points")
            try:
                self.index.calibrate(queries)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            self._wrote()
            curves = self.index.recall_curves
        return {"calibrated": int(queries.shape[0]), "recall_curves": {str(k): {"probes": p, "recall": r} for k, (p, r) in curves.items()}}

    # ----------------------------------------------------------------- reads
    def get(self, ids: np.ndarray, with_vectors: bool, with_payload: bool) -> list[dict]:
        """[{"id", "vector"?, "payload"?}] of the stored ones of `ids` (unique, in order)."""
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]
        with self._lock.read():
            self._usable()
            known = ids[self.present(ids)]
            vectors = None
            if with_vectors and known.size:
                try:
                    vectors = np.asarray(self.index.get(known)).tolist()
                except ValueError as e:
                    raise BadRequest(str(e)) from None
            found = self.payloads.get(known) if with_payload else {}
            seen = self.wal.last_seq
        self._durable(seen)
        points = []
        for row, i in enumerate(known.tolist()):
            point = {"id": i}
            if vectors is not None:
                point["vector"] = vectors[row]
            if with_payload:
                point["payload"] = found.get(i)
            points.append(point)
        return points

    def search(self, requests: list[bodies.Search]) -> list[dict]:
        """Run requests that share one `Search.group` as one index search; one result per request:
        {"ids": [...], "scores": [...], "payloads": [...] (with_payload)} per query, fillers dropped."""
        first = requests[0]
        q = requests[0].queries if len(requests) == 1 else np.concatenate([r.queries for r in requests])
        options = {}
        if first.probe is not None:
            options["probe"] = first.probe
        elif first.recall_target is not None or (self.partitioned and self.config["recall_target"] is not None):
            options["recall_target"] = first.recall_target if first.recall_target is not None else self.config["recall_target"]
        with self._lock.read():
            self._usable()
            allowed = None if first.filter is None else first.filter.allowed(self.payloads)
            try:
                res = self.index.search(q, first.k, allowed_ids=allowed, **options)
            except (ValueError, TypeError) as e:
                raise BadRequest(str(e)) from None
            ids, scores = np.asarray(res.ids), np.asarray(res.scores)
            starts = np.cumsum([0] + [r.queries.shape[0] for r in requests])
            found = {}
            if any(r.with_payload for r in requests):
                hit = np.concatenate([ids[s : s + r.queries.shape[0]].ravel() for s, r in zip(starts, requests) if r.with_payload])
                found = self.payloads.get(np.unique(hit[hit >= 0]))
            seen = self.wal.last_seq
        self._durable(seen)
        out = []
        for start, r in zip(starts.tolist(), requests):
            results = []
            for row in range(start, start + r.queries.shape[0]):
                keep = ids[row] >= 0
                entry = {"ids": ids[row][keep].tolist(), "scores": [s if math.isfinite(s) else None for s in scores[row][keep].tolist()]}
                if r.with_payload:
                    entry["payloads"] = [found.get(i) for i in entry["ids"]]
                results.append(entry)
            out.append({"results": results})
        return out

    def search_encoded(self, requests: list[bodies.Search]) -> list[bytes]:
        """`search`'s results as JSON bytes (made in the worker thread: large answers never hold
        the event loop)."""
        return [json_bytes(r) for r in self.search(requests)]

    def info(self) -> dict:
        settings = {k: v for k, v in self.config.items() if k not in ("dim", "metric", "index")}
        info = {
            "name": self.name, "dim": self.config["dim"], "metric": self.config["metric"], "index": self.config["index"],
            "count": len(self.index), "memory_bytes": int(self.index.memory_bytes), "settings": settings,
            "seq": self.wal.last_seq, "snapshot_seq": self.snapshot_seq, "last_snapshot": self.last_snapshot,
        }  # fmt: skip
        if self.partitioned:
            info["trained"] = self.index.is_trained
        if self.failed is not None:
            info["failed"] = self.failed
        return info

    def figures(self) -> dict:
        """The gauges of /stats and /metrics: count, memory_bytes, wal_bytes, seq, fsyncs,
        snapshot_seq, last_snapshot."""
        return {
            "count": len(self.index), "memory_bytes": int(self.index.memory_bytes), "wal_bytes": self.wal.bytes,
            "seq": self.wal.last_seq, "fsyncs": self.wal.fsyncs, "snapshot_seq": self.snapshot_seq, "last_snapshot": self.last_snapshot,
        }  # fmt: skip

    # ----------------------------------------------------------------- snapshots
    def snapshot_due(self, every: int, seconds: float, now: float) -> bool:
        return self.failed is None and not self.closed and self.dirty_since is not None and (self.writes_since_snapshot >= every or now - self.dirty_since >= seconds)

    def snapshot(self) -> bool:
        """Snapshot as the module describes; False when nothing changed since the last one."""
        with self._write_mutex:
            if self.closed or self.failed is not None or self.wal.last_seq == self.snapshot_seq:
                return False
            started = time.perf_counter()
            with self._fatal("starting a snapshot"):  # the log and the table must not fail here
                seq = self.wal.rotate()
                self.payloads.commit(seq)
            name = f"snap-{seq:020d}"
            try:  # a failure here leaves the previous snapshot and the whole log: retried later
                shutil.rmtree(self.folder / name, ignore_errors=True)
                self.index.save(self.folder / name)
                stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                write_json(self.folder / SNAPSHOT, {"seq": seq, "index": name, "time": stamp})
            except OSError:
                log.exception("collection %s: snapshot at seq %d failed (the log keeps every write)", self.name, seq)
                return False
            self.snapshot_seq, self.last_snapshot = seq, stamp
            self.writes_since_snapshot, self.dirty_since = 0, None
            for old in self.folder.glob("snap-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
            self.wal.drop_before(seq)
        log.info("collection %s: snapshot at seq %d (%d points) in %.3f s", self.name, seq, len(self.index), time.perf_counter() - started)
        return True

    def close(self, snapshot: bool = True) -> None:
        """Snapshot (unless asked not to or failed), then close the log and the table; later
        requests answer 404."""
        if snapshot and not self.closed:
            with contextlib.suppress(Unavailable):
                self.snapshot()
        with self._write_mutex, self._lock.write():
            if self.closed:
                return
            self.closed = True
            for close in (self.wal.close, self.payloads.close):
                try:
                    close()
                except Exception:  # a failed log cannot sync: nothing more to save
                    log.exception("collection %s: closing", self.name)

    # ----------------------------------------------------------------- internals
    def _usable(self) -> None:
        if self.closed:
            raise NotFound(f"collection {self.name!r} was deleted")
        if self.failed is not None:
            raise Unavailable(f"collection {self.name!r} is unavailable after an internal error ({self.failed}); restarting the server recovers it from its log")

    @contextlib.contextmanager
    def _fatal(self, what: str):
        """Any error inside leaves the collection failed (memory and log may differ)."""
        try:
            yield
        except Exception as e:
            self.failed = f"{what}: {type(e).__name__}: {e}"
            log.exception("collection %s failed while %s", self.name, what)
            raise Unavailable(f"collection {self.name!r} failed while {what} ({e}); restarting the server recovers it from its log") from None

    def _durable(self, seq: int) -> int:
        try:
            self.wal.sync(seq)
        except OSError as e:
            self.failed = f"log fsync: {e}"
            log.exception("collection %s: log fsync failed", self.name)
            raise Unavailable(f"collection {self.name!r}: its write-ahead log failed ({e})") from None
        return seq

    def _wrote(self) -> None:
        self.writes_since_snapshot += 1
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()

    def present(self, ids: np.ndarray) -> np.ndarray:
        """bool[m]: which of ids the index holds. Takes no lock: callers hold the collection's, or
        are the sharded server's commands, which run one at a time."""
        if ids.size > MANY_IDS:
            return np.isin(ids, np.asarray(self.index.ids))
        return np.fromiter((i in self.index for i in ids.tolist()), dtype=bool, count=ids.size)


def _replay(index, payloads: PayloadStore, record: wal.Record, name: str) -> None:
    """Apply a logged write again (idempotent, see the module)."""
    try:
        if record.op == "upsert":
            index.upsert(record.vectors, ids=record.ids)
            payloads.upsert(record.ids, record.payloads)
        else:
            present = np.array([i in index for i in record.ids.tolist()], dtype=bool)
            ids = record.ids[present] if record.ids.size else record.ids
            if ids.size:
                index.remove(ids)
            payloads.delete(record.ids)
    except (ValueError, TypeError) as e:  # it failed the same way when it was written: never acknowledged
        log.warning("collection %s: log record %d (%s) cannot be applied, skipped: %s", name, record.seq, record.op, e)


# ----------------------------------------------------------------- the store
def _lock_folder(lockfile, wait: float) -> None:
    """An exclusive flock on lockfile, tried for `wait` seconds (BlockingIOError after that); no
    lock where there is no fcntl (not POSIX: no guard against a second server)."""
    try:
        import fcntl
    except ImportError:
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class NamedCollections:
    """names / get / collections of a store that keeps its collections in `self._collections` (a
    dict by name) under `self._lock` (this store, sharded.ShardedStore, engine.EngineStore)."""

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def get(self, name: str):
        with self._lock:
            c = self._collections.get(name)
        if c is None:
            raise NotFound(f"no collection {name!r}")
        return c

    def collections(self) -> list:
        with self._lock:
            return [self._collections[n] for n in sorted(self._collections)]


class Store(NamedCollections):
    """The collections in a data folder: opened (and recovered) at construction, one server per
    folder (an exclusive flock on DIR/.serve-lock)."""

    batches_in_flight = 1  # batched searches the service runs at once per collection (here they share the event loop's interpreter lock)

    def __init__(self, data_dir, *, trains_alone: bool = True, lock_wait: float = 0.0):
        """trains_alone=False: partitioned collections never train themselves (`Collection.open`).
        lock_wait: seconds to wait for the folder's lock (RuntimeError when another server still
        holds it then)."""
        self.root = Path(data_dir)
        self.trains_alone = trains_alone
        self.root.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.root / ".serve-lock", "a+b")  # noqa: SIM115 - held until close()
        try:
            _lock_folder(self._lockfile, lock_wait)
        except BlockingIOError:
            self._lockfile.close()
            raise RuntimeError(f"{self.root} is in use by another peakknn serve") from None
        self.folder = self.root / "collections"
        self.folder.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        for leftover in [*self.folder.glob(".tmp-*"), *self.folder.glob(".trash-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        for path in sorted(self.folder.iterdir()):
            if path.is_dir() and NAME.fullmatch(path.name) and (path / CONFIG).exists():
                self._collections[path.name] = Collection.open(path, trains_alone=trains_alone)

    def create(self, name: str, body: dict) -> tuple[Collection, bool]:
        """(collection, created): the existing one when its config is the same; Conflict if not."""
        if not NAME.fullmatch(name):
            raise BadRequest(f"collection name {name!r} must be 1-64 letters, digits, '_' or '-'")
        config = parse_config(body)
        with self._lock:
            existing = self._collections.get(name)
            if existing is not None:
                if existing.config != config:
                    raise Conflict(f"collection {name!r} exists with another config: {config_difference(existing.config, config)}")
                return existing, False
            shutil.rmtree(self.folder / name, ignore_errors=True)  # not a collection: no config.json
            tmp = self.folder / f".tmp-{name}-{secrets.token_hex(4)}"
            tmp.mkdir()
            write_json(tmp / CONFIG, {"name": name, **config})
            os.replace(tmp, self.folder / name)
            fsync_dir(self.folder)
            c = Collection.create(self.folder / name, name, config, trains_alone=self.trains_alone)
            self._collections[name] = c
        log.info("collection %s created: %s", name, config)
        return c, True

    def delete(self, name: str) -> None:
        with self._lock:
            c = self._collections.pop(name, None)
            if c is None:
                raise NotFound(f"no collection {name!r}")
            c.close(snapshot=False)
            trash = self.folder / f".trash-{name}-{secrets.token_hex(4)}"
            os.replace(c.folder, trash)
            fsync_dir(self.folder)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("collection %s deleted", name)

    def close(self) -> None:
        """Snapshot and close every collection, then release the folder."""
        for c in self.collections():
            try:
                c.close(snapshot=True)
            except Exception:
                log.exception("collection %s: closing", c.name)
        self._lockfile.close()


