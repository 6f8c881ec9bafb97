"""The real server in a subprocess (`python -m peakknn serve`), for tests/server and
benchmarks/serve_crash.py, plus a plain-Python evaluation of payload filters.

    server = ServerProcess(data_dir, api_key=None, args=("--max-batch", "1")).start()   # shards=2: sharded
    with server.client() as http: http.get("/healthz")
    server.stop()            # SIGTERM, returns the exit code; server.kill(): SIGKILL; start() again
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SERVE = [sys.executable, "-m", "peakknn", "serve"]
# the sharded server: torchrun (as a module, no script on PATH needed) with `shards` processes
SERVE_SHARDED = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "{shards}", "-m", "peakknn", "serve", "--sharded"]
START_TIMEOUT = 120.0  # seconds to answer /healthz (torch import and log replay on a busy 2-core machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One data folder served by a sequence of server processes (start / stop / kill / start ...).
    Each start takes a fresh free port (`url` changes) and appends to `log_path`."""

    def __init__(self, data: Path, api_key: str | None = None, args=(), log_path: Path | None = None, shards: int = 0):
        """shards: 0 for `peakknn serve`, N for `serve --sharded` under torchrun with N processes
        (stop() then returns torchrun's exit code)."""
        self.data = Path(data)
        self.shards = shards
        self.api_key = api_key
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path) if log_path else self.data.with_name(self.data.name + "-server.log")
        self.proc: subprocess.Popen | None = None
        self.port = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        assert self.proc is None, "already running"
        self.port = free_port()
        launcher = [a.format(shards=self.shards) for a in SERVE_SHARDED] if self.shards else SERVE
        cmd = [*launcher, "--data", str(self.data), "--port", str(self.port), *self.args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        env = {k: v for k, v in os.environ.items() if k != "PEAKKNN_API_KEY"}
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"server exited with {rc} before answering:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not answer /healthz within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig`, wait for the exit; returns the exit code (negative: killed by a signal)."""
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server did not stop within {timeout} s after signal {sig}:\n{self.log_tail()}") from None
        finally:
            self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


# ----------------------------------------------------------------- filters in plain Python
MISSING = object()


def lookup(payload, key: str):
    value = payload
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _kind(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    return "other"


def _scalar_test(value, test) -> bool:
    """test(scalar) for a scalar value, or for some scalar element of an array value."""
    if isinstance(value, list):
        return any(test(e) for e in value if not isinstance(e, (list, dict)))
    if isinstance(value, dict) or value is None:
        return False
    return test(value)


def _equals(want):
    return lambda v: _kind(v) == _kind(want) and v == want


def condition_holds(payload, cond: dict) -> bool:
    if "key" not in cond:
        return filter_holds(payload, cond)
    value = MISSING if payload is None else lookup(payload, cond["key"])
    if value is MISSING:
        return False
    if "match" in cond:
        m = cond["match"]
        if isinstance(m, dict):
            values = [m["value"]] if "value" in m else m["any"]
        else:
            values = [m]
        return any(_scalar_test(value, _equals(w)) for w in values)
    if "any" in cond:
        return any(_scalar_test(value, _equals(w)) for w in cond["any"])
    bounds = cond["range"]
    ops = {"gt": lambda v, b: v > b, "gte": lambda v, b: v >= b, "lt": lambda v, b: v < b, "lte": lambda v, b: v <= b}
    return _scalar_test(value, lambda v: _kind(v) == "number" and all(ops[op](v, b) for op, b in bounds.items()))


def filter_holds(payload, spec: dict, point_id: int | None = None) -> bool:
    """Whether a point (its payload, or None) passes a filter, as payloads.py documents it."""
    if "ids" in spec and point_id not in set(spec["ids"]):
        return False
    if not all(condition_holds(payload, c) for c in spec.get("must", [])):
        return False
    if "should" in spec and not any(condition_holds(payload, c) for c in spec["should"]):
        return False
    return not any(condition_holds(payload, c) for c in spec.get("must_not", []))
