"""Fixtures running the real server (`python -m peakknn serve` on 127.0.0.1, a free port, a
temporary data folder; serve_helpers.ServerProcess):

    server_url    the base URL of a session-wide server without a key (body limit 1 MiB): each test
                  runs twice, on `peakknn serve` and on `serve --sharded` with 2 torchrun processes
    auth_server   a session-wide ServerProcess with API_KEY (its .url, .client())
    serve         a factory: serve(api_key=None, args=(), data=None, shards=0) -> a started ServerProcess,
                  stopped (SIGTERM) at the end of the test; start() / stop() / kill() it freely

Tests on the session-wide servers use collection names of their own (`unique_name`).
"""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

from serve_helpers import ServerProcess

API_KEY = "s3cret-test-key"
BODY_LIMIT_MB = 1


def unique_name(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", params=[0, 2], ids=["single", "sharded2"])
def _session_server(request, tmp_path_factory):
    """The tests on `server_url` run against `peakknn serve` and against a 2-process sharded one."""
    server = ServerProcess(tmp_path_factory.mktemp("serve") / "data", args=("--max-body-mb", BODY_LIMIT_MB), shards=request.param).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_url(_session_server) -> str:
    return _session_server.url


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("serve-auth") / "data", api_key=API_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def serve(tmp_path):
    started = []

    def make(api_key=None, args=(), data=None, shards=0) -> ServerProcess:
        server = ServerProcess(data or tmp_path / f"data{len(started)}", api_key=api_key, args=args, shards=shards)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
