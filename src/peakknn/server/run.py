"""`peakknn serve`: check the options, set up logging, run uvicorn until SIGTERM / Ctrl-C.

A signal stops the server gracefully: no new connections, in-flight requests finish, then the
app's shutdown snapshots and closes every collection, and `serve` returns 0 (uvicorn's own
re-raising of the signal after shutdown is left out). A second Ctrl-C forces the exit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal

from . import require
from .settings import API_KEY_ENV, ServerSettings

log = logging.getLogger("peakknn.server")

GRACEFUL_SECONDS = 30  # in-flight requests get this long to finish after a signal


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def serve(args) -> int:
    """Run the server of parsed CLI arguments (cli.py's serve subcommand); returns the exit code.
    Raises ValueError for bad options, ImportError when the [server] extra is missing."""
    require()
    import uvicorn

    from .app import create_app

    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    key = key or None
    if not is_loopback(args.host) and key is None:
        raise ValueError(f"--host {args.host} is reachable from other machines: set an API key (--api-key or {API_KEY_ENV}) to serve there")
    settings = ServerSettings(
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), snapshot_every=args.snapshot_every, snapshot_seconds=args.snapshot_seconds,
    )  # fmt: skip
    configure_logging(args.log_level)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    store = None
    if getattr(args, "sharded", False):
        from . import sharded

        rank, world_size = sharded.start_group()
        if rank != 0:
            return _serve_shard(args.data, rank, world_size)
        store = _open(lambda: sharded.ShardedStore(args.data))
        log.info("peakknn serve --sharded: rank 0 of %d", world_size)
    elif getattr(args, "engine", "process") == "process":
        from .engine import EngineStore

        store = _open(lambda: EngineStore(args.data, threads=getattr(args, "threads", None), log_level=args.log_level,
                                          on_death=lambda: os.kill(os.getpid(), signal.SIGTERM)))  # fmt: skip
    try:
        app = _open(lambda: create_app(args.data, api_key=key, store=store, **{f: getattr(settings, f) for f in settings.__dataclass_fields__}))
        config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SECONDS, access_log=args.log_level == "debug")  # fmt: skip
        server = _graceful_server(config)
        log.info("peakknn serve: %s on http://%s:%d%s", args.data, args.host, args.port, " (API key required)" if key else "")
        server.run()
    finally:
        if store is not None:
            store.close()  # the other ranks wait for it (a no-op after the app's shutdown closed it)
    return 0 if server.started and not getattr(store, "died", False) else 1


def configure_logging(level: str) -> None:
    """The server's log lines (the HTTP process's and the engine's): time, level, logger, message."""
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _open(make):
    try:
        return make()
    except RuntimeError as e:  # the folder is in use
        raise ValueError(str(e)) from None


def _serve_shard(data, rank: int, world_size: int) -> int:
    """A rank > 0 of `serve --sharded`: its own store, rank 0's commands until "close"."""
    from . import sharded
    from .collections import Store

    for sig in (signal.SIGINT, signal.SIGTERM):  # torchrun forwards them: rank 0 decides when to stop
        signal.signal(sig, signal.SIG_IGN)
    store = _open(lambda: Store(sharded.shard_folder(data, rank), trains_alone=False))
    log.info("peakknn serve --sharded: rank %d of %d, %s", rank, world_size, store.root)
    sharded.serve_commands(sharded.Shard(store, rank, world_size), sharded.Channel())
    log.info("peakknn serve --sharded: rank %d closed", rank)
    return 0


def _graceful_server(config):
    """A uvicorn.Server whose signal handling ends in a normal return (exit code 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)
