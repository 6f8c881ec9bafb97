"""Client of `peakknn serve`: collections on a server, used like a local `Index`.

    client = peakknn.Client("http://127.0.0.1:7575", api_key="...")
    docs = client.create_collection("docs", 384, metric="cos")
    docs.upsert(vectors, ids=np.arange(len(vectors)), payloads=[{"lang": "en"}, ...])
    res = docs.search(queries, k=10, filter={"must": [{"key": "lang", "match": "en"}]})
    res.ids, res.scores                       # i64[nq, k], f32[nq, k] numpy arrays, best first
    docs.get([3]).vectors; docs.remove([5]); len(docs); docs.info()

Needs httpx (`pip install 'peakknn[server]'`); importing `peakknn` alone does not load it.

Writes: vectors are checked here (shape, dim, finite values, ids) before anything is sent, so bad
input stores nothing. Large arrays go in batches of `batch_size` rows in the server's binary form
(.npy bodies for runs of ids without payloads, else `vectors_b64`: base64 of little-endian float32 rows), with a tqdm progress bar when there is more
than one batch (`progress=False` hides it); a batch the server refuses as too large (413) is
split in halves until it fits. Uploads keep UPLOAD_IN_FLIGHT batches in flight (one crosses the
network while the server stores the other; the ids of one call are distinct, so the order in
which batches are stored does not matter). Each batch is durable once the server acknowledges
it; a transfer interrupted after some batches leaves those batches stored (and possibly the one
in flight beside the batch that failed). Many queries are searched in
batches the same way.

`add` vs `upsert`: the server only upserts. `add` mirrors `Index.add` with one extra round trip:
it asks the server whether any of the ids is stored and raises ValueError (storing nothing) if so;
without ids it takes `len(collection), len + 1, ...` (the next ids when ids were assigned this way
and nothing was removed; ValueError if one of them is taken). The check and the write are two
requests, so two clients adding the same ids at once may both succeed: use explicit ids and
`upsert` where several writers share a collection.

Errors: the server's `{"error": ...}` becomes ValueError (400, 409, 413, 415 and other 4xx),
KeyError (404: unknown collection, or an id to remove that is not stored), PermissionError
(401 / 403: missing or wrong key) or RuntimeError (5xx; 503 when the server's queue is full),
each with the server's message, method and path; a server that cannot be reached (refused,
timed out, broken connection) raises ConnectionError naming the URL.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import math
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._checks import as_id_set, as_ids, as_matrix
from ._types import SearchResult

try:
    import httpx
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("peakknn.Client needs httpx: pip install 'peakknn[server]'") from e

BATCH_BYTES = 8 << 20  # default batch: about 8 MiB of float32 rows per request (11 MiB as base64)
BINARY_MIN_ROWS = 64  # requests of fewer rows send JSON lists ("vectors"), larger ones vectors_b64
UPLOAD_IN_FLIGHT = 2  # upload requests at once: one crosses the network while the server stores another (docs/SERVER.md)
DEFAULT_TIMEOUT = 60.0  # seconds per request (a write waits for its fsync)


class PayloadTooLarge(ValueError):
    """The server refused a request body as too large (413). Uploads and searches split their
    batch in halves and go on (keeping the smaller size); one row too large raises it."""


@dataclasses.dataclass(frozen=True)
class RemoteSearchResult(SearchResult):
    """A `SearchResult` (numpy `ids` i64[nq, k], `scores` f32[nq, k], best first; -1 and -inf /
    +inf where fewer than k points qualify) with `payloads`: per query, a list of the k payloads
    (None for points without one and for fillers) when asked with `with_payload=True`, else None."""

    payloads: list | None = None


@dataclasses.dataclass(frozen=True)
class Points:
    """Stored points as `get` returns them, in the order asked; ids not stored are left out.

    ids: i64[m]; vectors: f32[m, dim] (unit vectors for cosine) or None without `with_vectors`;
    payloads: list of m dicts (or None where a point has none)."""

    ids: np.ndarray
    vectors: np.ndarray | None
    payloads: list


class Client:
    """Connection to a `peakknn serve` at `url` (for example "http://127.0.0.1:7575").

    api_key: sent as `Authorization: Bearer KEY`; timeout: seconds per request; batch_size: rows
    per upload request (default: about BATCH_BYTES of float32 rows); progress: show a tqdm bar for
    uploads of more than one batch. Usable as a context manager (`close` ends the connections).
    Thread-safe: one client may be shared by many threads.
    """

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 batch_size: int | None = None, progress: bool = True):
        self.url = url.rstrip("/")
        self.batch_size = None if batch_size is None else _positive("batch_size", batch_size)
        self.progress = progress
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- server and collections
    def health(self) -> dict:
        """The server's `/healthz` answer ({"status": "ok"}); ConnectionError if it is down."""
        return self._request("GET", "/healthz")

    def collections(self) -> dict[str, dict]:
        """{name: info} of every collection (dim, metric, index, count, memory_bytes, ...)."""
        return {c["name"]: c for c in self._request("GET", "/collections")["collections"]}

    def collection(self, name: str) -> Collection:
        """Handle of an existing collection; KeyError if there is none of that name."""
        handle = Collection(self, name)
        handle.info()  # one round trip: unknown names fail here, not at the first use
        return handle

    def create_collection(self, name: str, dim: int, *, metric: str = "ip", index: str = "flat",
                          dtype: str | None = None, recall_target: float | None = None, **settings) -> Collection:
        """Create collection `name` (or open it if it exists with the same configuration; ValueError
        if it exists with another). metric "ip" | "l2" | "cos"; index "flat" | "partitioned"; dtype
        "bf16" | "fp32" and recall_target default to the server's (as `Index`: bf16, 0.95);
        settings: further fields of the server's config (partitioned: partitions, codes, ...)."""
        config: dict[str, Any] = {"dim": dim, "metric": metric, "index": index, **settings}
        if dtype is not None:
            config["dtype"] = dtype
        if recall_target is not None:
            config["recall_target"] = recall_target
        self._request("PUT", f"/collections/{_name(name)}", json=config)
        return Collection(self, name)

    def delete_collection(self, name: str) -> None:
        """Delete collection `name` and its points; KeyError if there is none."""
        self._request("DELETE", f"/collections/{_name(name)}")

    # ----------------------------------------------------------------- transport
    def _request(self, method: str, path: str, **kwargs) -> Any:
        """One request; the JSON answer, or the server's error as the documented exception."""
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise ConnectionError(f"peakknn server at {self.url} did not answer {method} {path} in time: {e}") from e
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach the peakknn server at {self.url} ({method} {path}): {e}") from e
        if r.status_code < 400:
            return r.json() if r.content else {}
        try:
            message = r.json().get("error") or r.text
        except ValueError:
            message = r.text
        message = f"{method} {path}: {message} (HTTP {r.status_code})"
        if r.status_code in (401, 403):
            raise PermissionError(message)
        if r.status_code == 404:
            raise KeyError(message)
        if r.status_code == 413:
            raise PayloadTooLarge(message)
        if r.status_code < 500:
            raise ValueError(message)
        raise RuntimeError(message)


class Collection:
    """A collection on the server, with the methods of `Index` (numpy in, numpy out).

    Made by `Client.collection` / `Client.create_collection`. `len(handle)` and `info()` ask the
    server each time; the dim and metric are read once and kept.
    """

    def __init__(self, client: Client, name: str):
        self.client = client
        self.name = name
        self._path = f"/collections/{_name(name)}"
        self._config: dict | None = None  # dim and metric, read at the first use
        self._max_rows: int | None = None  # learnt from a 413: rows that fit the server's body limit

    def __repr__(self) -> str:
        return f"Collection({self.name!r} at {self.client.url!r})"

    def __len__(self) -> int:
        return int(self.info()["count"])

    def info(self) -> dict:
        """The server's description: dim, metric, index, count, memory_bytes, settings."""
        info = self.client._request("GET", self._path)
        self._config = info
        return info

    @property
    def dim(self) -> int:
        return int(self._info()["dim"])

    @property
    def metric(self) -> str:
        return str(self._info()["metric"])

    # ----------------------------------------------------------------- writes
    def upsert(self, vectors, ids, payloads: list | None = None, *, batch_size: int | None = None,
               progress: bool | None = None) -> np.ndarray:
        """Insert or replace points: vectors f32[m, dim] (numpy, torch or nested lists), ids i64[m],
        payloads: m JSON-able dicts or None. Returns the ids (i64[m]). Checked here first (ValueError
        / TypeError, nothing sent); sent in batches of `batch_size` rows (default: the client's)."""
        x, ids = self._rows(vectors, ids, payloads)

        def body(a: int, b: int) -> dict:
            if payloads is None and b - a >= BINARY_MIN_ROWS:
                spans = _id_spans(ids[a:b])
                if spans is not None:  # the raw .npy body: no base64, no JSON around the rows
                    return {"content": _npy(x[a:b]), "params": {"ids": spans}, "headers": {"Content-Type": "application/x-npy"}}
            batch = {"ids": ids[a:b].tolist(), **_vectors(x[a:b])}
            if payloads is not None:
                batch["payloads"] = list(payloads[a:b])
            return {"json": batch}

        rows = self._batch_rows(batch_size)
        show = (self.client.progress if progress is None else progress) and len(ids) > rows
        bar = _progress(len(ids), f"upsert {self.name}") if show else None
        try:  # ids are distinct (as_ids), so batches may be stored in any order
            for done, _ in self._send("PUT", "/points", len(ids), rows, body, UPLOAD_IN_FLIGHT):
                if bar is not None:
                    bar.update(done - bar.n)
        finally:
            if bar is not None:
                bar.close()
        return ids

    def add(self, vectors, ids=None, payloads: list | None = None, **upload) -> np.ndarray:
        """Insert new points like `Index.add`: ValueError (nothing stored) if an id is already
        stored. ids default to len(collection), len + 1, ... (see the module's notes on add).
        Returns the ids; `upload` takes upsert's batch_size / progress."""
        x = self._matrix(vectors)
        assigned = ids is None
        if assigned:
            start = len(self)
            ids = np.arange(start, start + x.shape[0], dtype=np.int64)
        ids = as_ids("ids", ids, x.shape[0])
        taken = self._stored(ids)
        if taken.size:
            hint = "; ids after removals: pass ids" if assigned else "; use upsert to replace"
            raise ValueError(f"ids already stored in {self.name!r}, e.g. {int(taken[0])} (nothing was added{hint})")
        return self.upsert(x, ids, payloads, **upload)

    def remove(self, ids) -> None:
        """Delete points by id (any iterable of ints); KeyError (the server's 404) naming an id that
        is not stored, and nothing is removed."""
        ids = as_id_set("ids", ids)
        self.client._request("POST", f"{self._path}/points/delete", json={"ids": ids.tolist()})

    def calibrate(self, queries) -> dict:
        """Measure a trained partitioned collection's recall curves on queries f32[m, dim], a
        sample of the queries you will search with, so that recall_target holds for queries like
        them (`PartitionedIndex.calibrate`). Returns {"calibrated": m, "recall_curves": ...}."""
        q = self._matrix(queries, "queries")
        return self.client._request("POST", f"{self._path}/calibrate", json=_vectors(q))

    # ----------------------------------------------------------------- reads
    def get(self, ids, with_vectors: bool = True) -> Points:
        """The stored points of `ids` (order kept, unknown ids left out, as the server does)."""
        ids = as_ids("ids", ids, storable=False)
        body = self.client._request("POST", f"{self._path}/points/get",
                                    json={"ids": ids.tolist(), "with_vectors": bool(with_vectors), "with_payload": True})
        found = {int(p["id"]): p for p in body["points"]}
        points = [found[i] for i in ids.tolist() if i in found]
        vectors = None
        if with_vectors:
            vectors = np.asarray([p["vector"] for p in points], dtype=np.float32).reshape(len(points), self.dim)
        return Points(np.asarray([p["id"] for p in points], dtype=np.int64), vectors, [p.get("payload") for p in points])

    def search(self, queries, k: int = 10, *, recall_target: float | None = None, filter: dict | None = None,
               allowed_ids: Iterable[int] | None = None, with_payload: bool = False) -> RemoteSearchResult:
        """k nearest points of each query f32[nq, dim] (or [dim]): a RemoteSearchResult of numpy
        arrays, best first (ip / cos descending, L2 squared distances ascending).

        recall_target: None = the collection's; 1.0 = exact. filter: the server's filter
        ({"ids": [...]} and / or {"must": [...]} payload conditions); allowed_ids: shorthand for
        {"ids": ...}. with_payload: fill `.payloads`."""
        q = self._matrix(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        body: dict[str, Any] = {"k": int(k), "with_payload": bool(with_payload)}
        if recall_target is not None:
            body["recall_target"] = float(recall_target)
        if allowed_ids is not None:
            if filter and "ids" in filter:
                raise ValueError("give allowed ids either as allowed_ids or as filter['ids'], not both")
            filter = {**(filter or {}), "ids": as_id_set("allowed_ids", allowed_ids).tolist()}
        if filter is not None:
            body["filter"] = filter
        sent = self._send("POST", "/search", len(q), self._batch_rows(None), lambda a, b: {"json": {**body, **_vectors(q[a:b])}})
        results = [r for _, answer in sent for r in answer["results"]]  # many queries: several requests
        fill = math.inf if self.metric == "l2" else -math.inf
        ids = np.full((len(results), int(k)), -1, dtype=np.int64)
        scores = np.full((len(results), int(k)), fill, dtype=np.float32)
        payloads = [] if with_payload else None
        for row, r in enumerate(results):
            n = min(len(r["ids"]), int(k))
            ids[row, :n] = r["ids"][:n]
            scores[row, :n] = [fill if s is None else s for s in r["scores"][:n]]  # JSON has no inf
            if payloads is not None:
                got = list(r.get("payloads") or [None] * n)[:n]
                payloads.append(got + [None] * (int(k) - len(got)))
        return RemoteSearchResult(scores=scores, ids=ids, payloads=payloads)

    # ----------------------------------------------------------------- internals
    def _info(self) -> dict:
        return self._config if self._config is not None else self.info()

    def _matrix(self, vectors, name: str = "vectors") -> np.ndarray:
        """vectors as C-order float32 [m, dim], checked like `Index` checks them."""
        return np.ascontiguousarray(as_matrix(name, vectors, self.dim).float().cpu().numpy())

    def _batch_rows(self, batch_size: int | None) -> int:
        """Rows per request: batch_size, else the client's, else about BATCH_BYTES of float32."""
        if batch_size is not None:
            return _positive("batch_size", batch_size)
        return self.client.batch_size or max(1, BATCH_BYTES // (4 * self.dim))

    def _send(self, method: str, path: str, n: int, rows: int, body, in_flight: int = 1):
        """Send rows [0, n) as requests of at most `rows` rows each (body(a, b): the request's
        keyword arguments: json=..., or content=/params=/headers= for a .npy body), yielding (rows done,
        answer) for each in order; up to `in_flight` requests at once (threads sharing the
        connection pool). After an error no further request is sent (those in flight finish) and
        the first error in row order is raised."""
        ranges = [(a, min(n, a + rows)) for a in range(0, n, rows)]
        if in_flight <= 1 or len(ranges) <= 1:
            for a, b in ranges:
                for stop, answer in self._send_range(method, path, a, b, body):
                    yield stop, answer
            return
        with ThreadPoolExecutor(in_flight, thread_name_prefix="peakknn-upload") as pool:
            pending: collections.deque = collections.deque()
            try:
                for a, b in ranges:
                    if any(f.done() and f.exception() is not None for f in pending):
                        break  # a later batch failed while an earlier one is in flight: send nothing more
                    pending.append(pool.submit(lambda a=a, b=b: list(self._send_range(method, path, a, b, body))))
                    if len(pending) >= in_flight:
                        yield from pending.popleft().result()
                while pending:
                    yield from pending.popleft().result()
            finally:  # an error (or the caller stopped): nothing more is sent
                for f in pending:
                    f.cancel()

    def _send_range(self, method: str, path: str, a: int, b: int, body):
        """Rows [a, b) as one request, yielding (rows done, answer); on a 413 it is split in halves,
        and later requests stay that small."""
        done = a
        while done < b:
            stop = min(b, done + (self._max_rows or b - done))
            try:
                answer = self.client._request(method, self._path + path, **body(done, stop))
            except PayloadTooLarge:
                if stop - done < 2:
                    raise
                self._max_rows = (stop - done) // 2
                continue
            done = stop
            yield done, answer

    def _rows(self, vectors, ids, payloads) -> tuple[np.ndarray, np.ndarray]:
        x = self._matrix(vectors)
        ids = as_ids("ids", ids, x.shape[0])
        if payloads is not None:
            if len(payloads) != len(ids):
                raise ValueError(f"payloads has {len(payloads)} entries but there are {len(ids)} vectors")
            bad = next((p for p in payloads if p is not None and not isinstance(p, dict)), None)
            if bad is not None:
                raise TypeError(f"payloads must be dicts or None, got {type(bad).__name__}")
        return x, ids

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """Those of `ids` that the server holds (batched like uploads)."""
        rows = max(1, self.client.batch_size or BATCH_BYTES // 32)
        taken = [self.get(ids[s:s + rows], with_vectors=False).ids for s in range(0, len(ids), rows)]
        return np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)


MAX_SPANS = 64  # ids sent as at most this many "a:b" ranges in the query string (else the JSON form)


def _id_spans(ids: np.ndarray) -> str | None:
    """ids as the server's `?ids=` form ("a:b" half-open ranges, comma-separated), or None when
    they need more than MAX_SPANS ranges (the URL would grow with the batch)."""
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    if breaks.size >= MAX_SPANS:
        return None
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [ids.size]])
    return ",".join(f"{int(ids[a])}:{int(ids[b - 1]) + 1}" for a, b in zip(starts, ends))


def _npy(x: np.ndarray) -> bytes:
    """x as the bytes of a little-endian float32 .npy file."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(x, dtype="<f4"))
    return out.getvalue()


def _vectors(x: np.ndarray) -> dict:
    """Rows for a request body: JSON lists when few, else the binary form (exact float32 either way)."""
    if len(x) < BINARY_MIN_ROWS:
        return {"vectors": x.tolist()}
    return {"vectors_b64": base64.b64encode(x.astype("<f4", copy=False).tobytes()).decode("ascii")}


def _name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"collection name must be a non-empty string, got {name!r}")
    return urllib.parse.quote(name, safe="")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _progress(total: int, desc: str):
    """A tqdm bar over rows, or None where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)
