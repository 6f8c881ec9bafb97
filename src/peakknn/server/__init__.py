"""`peakknn serve`: collections of vectors with payloads behind an HTTP API (FastAPI + uvicorn).

Importing `peakknn` (or this package) loads none of the server's dependencies; `require()` and
`create_app` say what to install (`pip install 'peakknn[server]'`) when they are missing.

Modules, along the seams of a request:

    app.py          the FastAPI app: routes, error shape {"error": ...}, the endpoint list
    middleware.py   pure ASGI layers: request metrics, API key, body size limit
    bodies.py       request bodies -> checked numpy arrays and options (JSON, base64, .npy)
    service.py      the app's state: the store, one batcher per collection, threads, snapshots, /stats
    batching.py     dynamic batching of concurrent searches (asyncio, a few batches in flight per collection)
    engine.py       the engine process (default): the store in a process of its own, sent commands
                    over a socket pair, so searches never wait for the HTTP side's interpreter lock
    messages.py     the messages between processes: a JSON header plus raw numpy arrays, no pickle
    collections.py  a collection = index + payload database + write-ahead log, under one RW lock;
                    the store of collections in the data folder (configs, open, replay, delete)
    payloads.py     SQLite payload table and filter compilation (parameterised SQL only)
    wal.py          write-ahead log segments: record format, group commit, recovery of a torn tail
    metrics.py      Prometheus metrics (own registry per app) and the figures /stats shows
    settings.py     the server's options and their defaults (no dependencies: the CLI reads them)
    run.py          `peakknn serve`: logging, host / key checks, uvicorn, graceful stop
    sharded.py      `serve --sharded` under torchrun: a store per rank, commands broadcast from
                    rank 0 (JSON + raw arrays over torch.distributed), answers merged on rank 0
"""

from __future__ import annotations

DEPENDENCIES = ("fastapi", "uvicorn", "prometheus_client", "orjson")
INSTALL_HINT = "pip install 'peakknn[server]'"


def require() -> None:
    """Raise ImportError naming what to install when a server dependency is missing."""
    import importlib

    missing = []
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"peakknn serve needs {', '.join(missing)}: {INSTALL_HINT}")


def create_app(data_dir, **options):
    """`peakknn.server.app.create_app`, imported on first use (see there)."""
    require()
    from .app import create_app as create

    return create(data_dir, **options)
