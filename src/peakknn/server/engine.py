"""The engine process of `peakknn serve`: the collections (indexes, payload tables, write-ahead
logs: one `collections.Store`) in a process of their own, to which the HTTP process sends commands.

Why (docs/SERVER.md): a search makes a few hundred torch calls, each of which lets go of the
interpreter lock and takes it back. In the HTTP process it waits at each call for the event
loop's Python (reading requests, writing answers): a batch of 32 queries took 31.5 ms there and
15-20 ms alone. In a process of its own it waits for nothing but the CPU. (vLLM splits its API
server from its engine core for the same reason.)

How: `EngineStore` (in the HTTP process; the methods of `collections.Store` that the service
uses) starts `python -m peakknn.server.engine` with one end of a socket pair; its collections
(`EngineCollection`: the methods of `collections.Collection` that the service uses) turn each
call into a command. A frame on the socket is an 8-byte little-endian length and a `messages`
message. A command's header holds "op", "call" (its number) and the operation's fields; its reply
holds the same "call" and the result, or "error": {"status", "message"}. Many commands are in
flight at once (writes waiting for one group fsync, searches of several collections, gets): the
engine runs each in a thread of its pool and answers each as it finishes, so the concurrency is
the one-process server's, and a write is visible to every command sent after its answer came.
Search answers are encoded as JSON in the engine and sent on by the HTTP process as they are.
Nothing is pickled.

Lifetime: the engine opens the store (waiting up to LOCK_WAIT seconds for the folder's lock,
which the engine of a server killed a moment ago may still hold), sends {"collections": {name:
config}} or the "error" that stopped it, and serves until "close": then it finishes the commands
in flight, snapshots and closes every collection, answers and exits 0. It ignores SIGINT and
SIGTERM (Ctrl-C reaches the whole process group; the HTTP process decides when to stop), is
killed when the HTTP process dies (PR_SET_PDEATHSIG, Linux) and exits at once when its socket
closes. If the engine dies, every command answers 503 and `peakknn serve` stops (exit code 1).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import messages
from .collections import NamedCollections
from .errors import ApiError, Unavailable, fault_message

log = logging.getLogger("peakknn.server")

LOCK_WAIT = 5.0  # seconds the engine waits for the data folder's lock
WORKERS = 48  # engine threads: more than the HTTP process's threads that send commands (service.py: 32 + 4 + 2 + 1)
CLOSE_WAIT = 120.0  # seconds "close" (snapshots of every collection) may take before the engine is killed
SMALL = 1 << 16  # frames up to this size go out in one send
BATCHES_IN_FLIGHT = 2  # batched searches per collection at once, each on 1 / BATCHES_IN_FLIGHT of the cores (docs/SERVER.md)


class Link:
    """Frames (8-byte little-endian length, then the bytes) over a stream socket: `send` from any
    thread (one frame at a time), `receive` from one reader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._sending = threading.Lock()

    def send(self, parts: list) -> None:
        """One frame of the concatenated parts (bytes-like, e.g. `messages.encode`'s)."""
        size = sum(memoryview(p).nbytes for p in parts)
        head = size.to_bytes(8, "little")
        with self._sending:
            if size <= SMALL:
                self.sock.sendall(b"".join([head, *parts]))
            else:
                self.sock.sendall(head)
                for p in parts:
                    self.sock.sendall(p)

    def receive(self) -> bytearray | None:
        """The next frame's bytes; None at end of file (the other side is gone)."""
        head = self._exactly(8)
        return None if head is None else self._exactly(int.from_bytes(head, "little"))

    def _exactly(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            try:
                r = self.sock.recv_into(view[got:])
            except OSError:  # reset or closed under us: the same as the end of the stream
                return None
            if r == 0:
                return None
            got += r
        return buf

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------- the HTTP process's side
class EngineStore(NamedCollections):
    """The store of collections in `data_dir`, held by an engine process that this starts (see the
    module): the methods of `collections.Store` that `service.Service` uses. RuntimeError when
    the engine cannot open the folder (e.g. another server holds it)."""

    batches_in_flight = BATCHES_IN_FLIGHT

    def __init__(self, data_dir, *, threads: int | None = None, log_level: str = "info", on_death: Callable[[], None] | None = None):
        """threads: torch threads of each command in the engine (default: a search gets torch's
        count / BATCHES_IN_FLIGHT, any other command all of them);
        on_death: called (from a thread of this) when the engine exits without being closed
        (`peakknn serve` stops itself). Construct this on a thread that outlives it: the engine is
        killed when the thread that started it ends (PR_SET_PDEATHSIG)."""
        self.root = Path(data_dir)
        self.on_death = on_death
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "peakknn.server.engine", "--data", str(self.root), "--fd", str(theirs.fileno()),
                   "--parent", str(os.getpid()), "--log-level", log_level]  # fmt: skip
        if threads:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()])
        theirs.close()
        self._link = Link(ours)
        first = self._link.receive()
        ready = {"error": {"message": "no answer"}} if first is None else messages.decode(first, copy=False)[0]
        if "error" in ready:
            code = self.process.wait()
            self._link.close()
            raise RuntimeError(ready["error"]["message"] if first is not None else f"the engine process exited with code {code} before opening {self.root}")
        self._collections = {name: EngineCollection(self, name, config) for name, config in ready["collections"].items()}
        self._lock = threading.Lock()  # the collections dict (held briefly: the event loop takes it)
        self._changing = threading.Lock()  # creates and deletes, one at a time
        self._calls_lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._numbers = itertools.count()
        self._lost: str | None = None  # why commands can no longer be answered
        self.closed = False
        self.died = False  # the engine exited without being closed
        self._reader = threading.Thread(target=self._read, name="peakknn-engine-replies", daemon=True)
        self._reader.start()
        log.info("peakknn serve: engine process %d holds %s", self.process.pid, self.root)

    # ----------------------------------------------------------------- commands
    def call(self, op: str, header: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        """(reply header, reply arrays) of one command; raises its error as an ApiError (503 when
        the engine is gone)."""
        future: Future = Future()
        with self._calls_lock:
            if self._lost is not None:
                raise Unavailable(self._lost)
            number = next(self._numbers)
            self._pending[number] = future
        try:
            self._link.send(messages.encode({"op": op, "call": number, **(header or {})}, arrays))
        except OSError:  # the engine is gone: the reader fails every pending command
            pass
        reply, out = future.result()
        error = reply.get("error")
        if error is not None:
            raise ApiError(error["message"], error["status"])
        return reply, out

    def _read(self) -> None:
        try:
            while (raw := self._link.receive()) is not None:
                reply, out = messages.decode(raw, copy=False)
                with self._calls_lock:
                    future = self._pending.pop(reply.pop("call"))
                future.set_result((reply, out))
        except Exception:  # a reply this cannot read: nothing more can be trusted
            log.exception("peakknn serve: a reply of the engine process could not be read: stopping it")
            self.process.kill()
        code = self.process.wait()
        with self._calls_lock:
            self._lost = f"the engine process exited (code {code})" + ("" if self.closed else ": the server is stopping")
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.set_result(({"error": {"status": 503, "message": self._lost}}, {}))
        if not self.closed:
            self.died = True
            log.error("peakknn serve: %s", self._lost)
            if self.on_death is not None:
                self.on_death()

    # ----------------------------------------------------------------- the methods of Store (and NamedCollections')
    def create(self, name: str, body: dict) -> tuple[EngineCollection, bool]:
        with self._changing:
            reply, _ = self.call("create", {"name": name, "body": body})
            with self._lock:
                c = self._collections.get(name)
                if c is None:
                    c = self._collections[name] = EngineCollection(self, name, reply["config"])
            return c, reply["created"]

    def delete(self, name: str) -> None:
        with self._changing:
            c = self.get(name)
            self.call("delete", {"name": name})
            with self._lock:
                self._collections.pop(name)
            c.closed = True

    def close(self) -> None:
        """The engine snapshots and closes every collection and exits (killed after CLOSE_WAIT
        seconds); a no-op the second time."""
        if self.closed:
            return
        self.closed = True
        for c in self.collections():
            c.closed = True
        try:
            self.call("close")
        except ApiError as e:
            log.error("peakknn serve: closing the engine: %s", e.message)
        try:
            self.process.wait(CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            log.error("peakknn serve: the engine did not exit within %.0f s: killed", CLOSE_WAIT)
            self.process.kill()
            self.process.wait()
        self._link.close()


class EngineCollection:
    """A collection held by the engine process: the methods of `collections.Collection` that
    `service.Service` uses, each one command."""

    def __init__(self, store: EngineStore, name: str, config: dict):
        self.store, self.name, self.config = store, name, config
        self.closed = False

    @property
    def partitioned(self) -> bool:
        return self.config["index"] == "partitioned"

    def _call(self, op: str, header: dict | None = None, arrays: dict | None = None) -> tuple[dict, dict]:
        return self.store.call(op, {"name": self.name, **(header or {})}, arrays)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: list | None) -> int:
        return self._call("upsert", {"payloads": payloads}, {"ids": ids, "vectors": vectors})[0]["seq"]

    def delete(self, ids: np.ndarray) -> int:
        return self._call("delete_points", arrays={"ids": ids})[0]["seq"]

    def calibrate(self, queries: np.ndarray) -> dict:
        return self._call("calibrate", arrays={"queries": queries})[0]["result"]

    def get(self, ids: np.ndarray, with_vectors: bool, with_payload: bool) -> list[dict]:
        return self._call("get", {"with_vectors": with_vectors, "with_payload": with_payload}, {"ids": ids})[0]["points"]

    def search_encoded(self, requests: list) -> list[bytes]:
        """`Collection.search_encoded`, run and encoded in the engine."""
        specs, queries = messages.search_specs(requests)
        reply, out = self._call("search", {"requests": specs}, {"queries": queries})
        data, answers, at = out["answers"].tobytes(), [], 0
        for size in reply["sizes"]:
            answers.append(data[at : at + size])
            at += size
        return answers

    def info(self) -> dict:
        return self._call("info")[0]["info"]

    def figures(self) -> dict:
        return self._call("figures")[0]["figures"]

    def snapshot_due(self, every: int, seconds: float, now: float) -> bool:
        """Asked of the engine, by its own clock (`now` is not sent)."""
        return not self.closed and self._call("snapshot_due", {"every": every, "seconds": seconds})[0]["due"]

    def snapshot(self) -> bool:
        return self._call("snapshot")[0]["snapshotted"]


# ----------------------------------------------------------------- the engine process
class Engine:
    """The engine's side: applies the commands read from `link` to `store`, each in a thread;
    searches run on `search_threads` torch threads each (BATCHES_IN_FLIGHT of them share the
    cores), every other command on `threads` (a bulk upsert has the cores to itself)."""

    def __init__(self, store, link: Link, threads: int, search_threads: int):
        self.store, self.link = store, link
        self.threads, self.search_threads = threads, search_threads

    def serve(self) -> None:
        """Answer commands until "close" (then return) or the end of the socket (then exit at once:
        the HTTP process is gone, and every acknowledged write is in the log)."""
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="peakknn-engine") as pool:
            while True:
                raw = self.link.receive()
                if raw is None:
                    log.warning("peakknn engine: the HTTP process is gone: exiting")
                    os._exit(1)
                header, arrays = messages.decode(raw, copy=False)
                if header["op"] == "close":
                    break
                pool.submit(self._answer, header, arrays)
        self._answer(header, arrays)  # after every command in flight finished

    def _answer(self, header: dict, arrays: dict) -> None:
        call, op = header.pop("call"), header.pop("op")
        threads = self.search_threads if op == "search" else self.threads
        if torch.get_num_threads() != threads:  # per thread of the pool (OpenMP keeps the count per calling thread)
            torch.set_num_threads(threads)
        try:
            reply, out = getattr(self, "_" + op)(header, arrays)
        except ApiError as e:
            reply, out = {"error": {"status": e.status, "message": e.message}}, {}
        except Exception as e:  # noqa: BLE001 - answered as a 500, logged with its traceback
            log.exception("peakknn engine: command %s", op)
            reply, out = {"error": {"status": 500, "message": fault_message(e)}}, {}
        try:
            message = messages.encode({"call": call, **reply}, out)
        except Exception as e:  # noqa: BLE001 - an answer that cannot be sent is a 500, never a call left waiting
            log.exception("peakknn engine: the answer of command %s", op)
            message = messages.encode({"call": call, "error": {"status": 500, "message": fault_message(e)}})
        try:
            self.link.send(message)
        except OSError:  # the HTTP process is gone; the reader sees the end of the socket
            pass

    def _create(self, header, arrays):
        c, created = self.store.create(header["name"], header["body"])
        return {"config": c.config, "created": created}, {}

    def _delete(self, header, arrays):
        self.store.delete(header["name"])
        return {}, {}

    def _info(self, header, arrays):
        return {"info": self.store.get(header["name"]).info()}, {}

    def _figures(self, header, arrays):
        return {"figures": self.store.get(header["name"]).figures()}, {}

    def _upsert(self, header, arrays):
        return {"seq": self.store.get(header["name"]).upsert(arrays["ids"], arrays["vectors"], header["payloads"])}, {}

    def _delete_points(self, header, arrays):
        return {"seq": self.store.get(header["name"]).delete(arrays["ids"])}, {}

    def _calibrate(self, header, arrays):
        return {"result": self.store.get(header["name"]).calibrate(arrays["queries"])}, {}

    def _get(self, header, arrays):
        return {"points": self.store.get(header["name"]).get(arrays["ids"], header["with_vectors"], header["with_payload"])}, {}

    def _search(self, header, arrays):
        answers = self.store.get(header["name"]).search_encoded(messages.searches(header["requests"], arrays["queries"]))
        return {"sizes": [len(a) for a in answers]}, {"answers": np.frombuffer(b"".join(answers), dtype=np.uint8)}

    def _snapshot_due(self, header, arrays):
        return {"due": self.store.get(header["name"]).snapshot_due(header["every"], header["seconds"], time.monotonic())}, {}

    def _snapshot(self, header, arrays):
        return {"snapshotted": self.store.get(header["name"]).snapshot()}, {}

    def _close(self, header, arrays):
        self.store.close()
        return {}, {}


def _die_with_parent(parent: int) -> None:
    """Be killed when the HTTP process dies (Linux); exit now if it died already."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl: the end of the socket still stops the engine
            pass
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """`python -m peakknn.server.engine --data DIR --fd N --parent PID` (started by EngineStore)."""
    parser = argparse.ArgumentParser(prog="python -m peakknn.server.engine", description="the engine process of peakknn serve (started by it)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--fd", type=int, required=True, help="this process's end of the socket pair")
    parser.add_argument("--parent", type=int, required=True, help="the HTTP process's pid")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from .run import configure_logging

    configure_logging(args.log_level)
    cores = torch.get_num_threads()  # torch's default: one per core
    threads = args.threads or cores
    search_threads = args.threads or max(1, cores // BATCHES_IN_FLIGHT)
    from .collections import Store

    link = Link(socket.socket(fileno=args.fd))
    try:
        store = Store(args.data, lock_wait=LOCK_WAIT)
    except Exception as e:  # noqa: BLE001 - the folder is in use, or a collection cannot be opened: the HTTP process says why
        if not isinstance(e, RuntimeError):
            log.exception("peakknn engine: opening %s", args.data)
        link.send(messages.encode({"error": {"status": 500, "message": str(e) if isinstance(e, RuntimeError) else fault_message(e)}}))
        return 1
    link.send(messages.encode({"collections": {c.name: c.config for c in store.collections()}}))
    Engine(store, link, threads, search_threads).serve()
    link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
