"""The HTTP API of `peakknn serve` (a Qdrant-shaped subset), built by `create_app`.

Every answer is JSON; every error is {"error": "<what is wrong>"} with a 4xx status for bad input
(never a 500). With an API key set, every endpoint but /healthz and the static /dashboard files
needs `Authorization: Bearer KEY` or `api-key: KEY` (else 401).

    GET    /healthz                        {"status": "ok"}
    PUT    /collections/{name}             create: {"dim": 384, "metric": "ip"|"l2"|"cos" (ip),
                                           "index": "flat"|"partitioned" (flat), flat: "dtype":
                                           "bf16"|"fp32" (bf16), "recall_target": 0.95; partitioned:
                                           "recall_target" (null: searches use the probe) and the
                                           fields of PartitionSettings and SearchSettings (partitions,
                                           codes, block_dims, threshold, anisotropic_partitions,
                                           keep_vectors, scan_dims, spill, train_size, iters, seed,
                                           probe, rerank, adaptive)} -> 200 info + "created": true;
                                           the same config again -> 200 "created": false; another
                                           config under that name -> 409. name: [A-Za-z0-9_-]{1,64}
    GET    /collections                    {"collections": [info, ...]} (by name)
    GET    /collections/{name}             info: {"name", "dim", "metric", "index", "count",
                                           "memory_bytes", "settings": {...}, "seq", "snapshot_seq",
                                           "last_snapshot": iso8601 | null, "trained" (partitioned),
                                           "failed" (only after an internal error: then 503s)}
    DELETE /collections/{name}             {"deleted": true}; unknown -> 404
    PUT    /collections/{name}/points      upsert (a point replaces any with its id, payload included):
                                           JSON {"ids": [int, ...], "vectors": [[float, ...], ...]
                                           or "vectors_b64": base64 of little-endian float32 rows
                                           (C order, len(ids) x dim), "payloads": [{...} | null, ...]
                                           (optional)}; or a body `Content-Type: application/x-npy`
                                           (a .npy file of a float array [m, dim]) with the ids in the
                                           query parameter `ids`: comma-separated ints and half-open
                                           ranges, e.g. `?ids=0:1000,5000,7000:7010` (no payloads).
                                           -> {"upserted": m, "seq": s}, answered once the write is
                                           fsynced in the log
    POST   /collections/{name}/points/delete   {"ids": [...]} -> {"deleted": m, "seq": s}; an id
                                           that is not stored -> 404 naming it, nothing deleted
    POST   /collections/{name}/points/get  {"ids": [...], "with_vectors": false, "with_payload":
                                           true} -> {"points": [{"id", "vector"?, "payload"?}, ...]}
                                           in the order asked, repeats once, unknown ids left out
    POST   /collections/{name}/search      {"vectors": [[...], ...] (or "vectors_b64"), "k": 10,
                                           "recall_target": null (the collection's), "probe": null
                                           (partitioned; not with recall_target), "filter": null,
                                           "with_payload": false} -> {"results": [{"ids": [...],
                                           "scores": [...], "payloads": [...] (with_payload)}, ...]}:
                                           one entry per query, best first, fewer than k entries
                                           where fewer points qualify (scores: ip / cos descending,
                                           l2 squared distances ascending). k <= MAX_K, queries x k <=
                                           MAX_RESULTS. Filter: {"ids": [...], "must": [cond, ...],
                                           "should": [...], "must_not": [...]} (payloads.py: cond is
                                           {"key", "match"} | {"key", "any"} | {"key", "range"} or a
                                           nested filter)
    POST   /collections/{name}/calibrate   {"vectors": [[...], ...] (or "vectors_b64")}: a sample of
                                           the queries searches will send; a trained partitioned
                                           collection measures its recall curves on them, so its
                                           recall target holds for such queries (use it when queries
                                           are not distributed like the points) -> {"calibrated": m,
                                           "recall_curves": {k: {"probes", "recall"}}}; flat or not
                                           yet trained -> 400
    GET    /metrics                        Prometheus text format (metrics.py)
    GET    /stats                          JSON for the dashboard: {"collections": {name: {"dim",
                                           "metric", "index", "count", "memory_bytes"}}, "batcher":
                                           {"queue_depth", "batch_sizes": {"1": n, "2-3": n, "4-7": n,
                                           ...} (index searches by queries), "latency_ms": {"p50",
                                           "p99"} (the last 2048 searches, queued to answered; null
                                           before the first), "batches", "requests"}, "wal": {name:
                                           {"bytes", "seq", "last_snapshot": iso8601 | null,
                                           "snapshot_seq", "fsyncs"}}}
    GET    /dashboard/                     the static dashboard (dashboard/index.html, app.js, style.css)

Vectors and queries: finite numbers, dim of them, norms up to bodies.MAX_NORM (9.2e18: every
score then fits in float32), not zero for cosine. A body is JSON unless its Content-Type is
application/x-npy. Status codes: 400 malformed JSON / wrong types / bad values (the message
names the field), 401 key, 404 unknown collection, route or id to delete, 405 method, 409 config
conflict, 413 body too large (`max_body_bytes`), 422 bad query / path parameters, 503 search
queue full, collection failed or server stopping; 500 only for a server fault (logged with its
traceback).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from .. import __version__
from .errors import ApiError, fault_message
from .middleware import ApiKey, BodyLimit, RequestMetrics, SearchRoute
from .service import Service
from .settings import ServerSettings

log = logging.getLogger("peakknn.server")

DASHBOARD = Path(__file__).parent / "dashboard"
DEFAULTS = ServerSettings()


def create_app(
    data_dir,
    *,
    api_key: str | None = None,
    max_batch: int = DEFAULTS.max_batch,
    max_delay_ms: float = DEFAULTS.max_delay_ms,
    max_queue: int = DEFAULTS.max_queue,
    max_body_bytes: int = DEFAULTS.max_body_bytes,
    snapshot_every: int = DEFAULTS.snapshot_every,
    snapshot_seconds: float = DEFAULTS.snapshot_seconds,
    store=None,
) -> FastAPI:
    """The app over the collections in folder `data_dir`, which are opened (snapshots loaded,
    logs replayed) now; its lifespan runs the snapshot schedule and, at shutdown, snapshots and
    closes them. Options: `settings.ServerSettings` (ValueError when out of range); api_key: None
    for no authentication; store: the collections when not a `collections.Store` of data_dir (the
    sharded server passes its `sharded.ShardedStore`)."""
    settings = ServerSettings(max_batch, max_delay_ms, max_queue, max_body_bytes, snapshot_every, snapshot_seconds)
    service = Service(data_dir, settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="peakknn", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _errors(app)
    _routes(app, service)
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")
    app.add_middleware(SearchRoute, service=service)  # innermost: searches skip the routing (the route below stays for 405s)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKey, key=api_key or None)
    app.add_middleware(RequestMetrics, metrics=service.metrics)  # outermost
    return app


def _routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/collections")
    async def list_collections():
        return await service.list()

    @app.put("/collections/{name}")
    async def create_collection(name: str, request: Request):
        return await service.create(name, await request.body())

    @app.get("/collections/{name}")
    async def collection_info(name: str):
        return await service.info(name)

    @app.delete("/collections/{name}")
    async def delete_collection(name: str):
        return await service.delete(name)

    @app.put("/collections/{name}/points")
    async def upsert_points(name: str, request: Request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        return await service.upsert(name, await request.body(), content_type, request.query_params.get("ids"))

    @app.post("/collections/{name}/points/delete")
    async def delete_points(name: str, request: Request):
        return await service.delete_points(name, await request.body())

    @app.post("/collections/{name}/points/get")
    async def get_points(name: str, request: Request):
        return Response(await service.get_points(name, await request.body()), media_type="application/json")

    @app.post("/collections/{name}/search")
    async def search(name: str, request: Request):
        return Response(await service.search(name, await request.body()), media_type="application/json")

    @app.post("/collections/{name}/calibrate")
    async def calibrate(name: str, request: Request):
        return await service.calibrate(name, await request.body())

    @app.get("/metrics")
    async def metrics():
        return Response(await service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats")
    async def stats():
        return await service.stats()


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        parts = ["/".join(str(x) for x in err.get("loc", ())) + ": " + str(err.get("msg", "")) for err in e.errors()]
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif e.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_fault(request: Request, e: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse({"error": fault_message(e)}, status_code=500)
