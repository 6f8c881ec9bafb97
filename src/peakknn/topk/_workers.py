"""Blocks of rows on single-threaded worker threads: the CPU torch paths' parallelism.

    parts = map_blocks(work, starts)      # [work(s) for s in starts], run on the pool when it helps

The torch paths of approx_topk are ~40 torch calls per block of rows. Run on the calling
thread, each call is an OpenMP parallel region over torch's threads, and on a CPU shared with
other processes every region waits for its slowest thread, which the OS deschedules for up to
milliseconds: measured on 2 cores at load average 6, 8,192 x 3,072 rows took 1.7 s where
torch.topk (one region) took 0.68 s. Here each block runs on one worker thread whose OpenMP
thread count is 1, so its calls are sequential and never wait for another thread; the workers
(as many as torch's threads) take blocks from one queue, and torch releases the GIL inside each
call. The same rows then took 0.36 s, and on an idle machine the workers keep each block in one
core's cache.

The thread count of a worker is set by calling omp_set_num_threads(1) on that thread in the
OpenMP runtime torch loaded (found in /proc/self/maps), after torch's own per-thread
initialisation; the setting is per thread (an OpenMP ICV), so other threads keep theirs. Where
that is not possible (another parallel backend, no such runtime, not Linux) or not useful (one
thread, one block, a CUDA tensor, a call from a worker), blocks run on the calling thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

LOG = logging.getLogger(__name__)

_RUNTIMES = ("libgomp", "libiomp5", "libomp")
_LOCK = threading.Lock()
_SERIAL = threading.Lock()  # on_one_thread without workers: one thread-count change at a time
_POOL: dict = {"pool": None, "threads": 0, "ok": None}
_IN_WORKER = threading.local()


def _forget_after_fork() -> None:
    """A forked child (a DataLoader worker) has none of the parent's threads: start afresh."""
    global _LOCK, _SERIAL
    _LOCK, _SERIAL = threading.Lock(), threading.Lock()
    _POOL.update(pool=None, threads=0, ok=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _openmp_runtime():
    """The OpenMP runtime library torch loaded (ctypes handle), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        name = os.path.basename(path)
        if name.startswith(_RUNTIMES) and ".so" in name:
            try:
                lib = ctypes.CDLL(path)
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
                return lib
            except (OSError, AttributeError):
                continue
    return None


def _initialise(lib) -> None:
    torch.get_num_threads()  # torch's lazy per-thread setup first (it would undo ours)
    lib.omp_set_num_threads(1)
    _IN_WORKER.active = True


def _pool(threads: int):
    """The pool of `threads` single-threaded workers, or None where it cannot be had."""
    with _LOCK:
        if _POOL["ok"] is False:
            return None
        if _POOL["pool"] is not None and _POOL["threads"] == threads:
            return _POOL["pool"]
        if "OpenMP" not in torch.__config__.parallel_info():
            _POOL["ok"] = False
            return None
        lib = _openmp_runtime()
        if lib is None:
            _POOL["ok"] = False
            return None
        pool = ThreadPoolExecutor(threads, thread_name_prefix="peakknn-topk", initializer=_initialise, initargs=(lib,))
        counts = set(pool.map(lambda _: torch.get_num_threads(), range(4 * threads)))
        if counts != {1}:  # the setting did not reach torch: keep the calling thread's parallelism
            LOG.info("top-k workers not used: their torch thread counts are %s", sorted(counts))
            pool.shutdown(wait=False)
            _POOL["ok"] = False
            return None
        if _POOL["pool"] is not None:
            _POOL["pool"].shutdown(wait=False)
        _POOL.update(pool=pool, threads=threads, ok=True)
        return pool


def pooled(device: torch.device) -> bool:
    """True when blocks on `device` would run on the workers (so blocks should be cache-sized)."""
    threads = torch.get_num_threads()
    return device.type == "cpu" and threads > 1 and not getattr(_IN_WORKER, "active", False) and _pool(threads) is not None


def map_blocks(work, starts: list, device: torch.device) -> list:
    """[work(s) for s in starts], on the workers when `pooled(device)` and there are >= 2 blocks."""
    if len(starts) < 2 or not pooled(device):
        return [work(s) for s in starts]
    return list(_pool(torch.get_num_threads()).map(work, starts))


def on_one_thread(fn):
    """fn() run with a torch thread count of 1: on a worker where there are workers, else on the
    calling thread with torch.set_num_threads(1) for its duration (restored after)."""
    threads = torch.get_num_threads()
    if threads == 1 or getattr(_IN_WORKER, "active", False):
        return fn()
    pool = _pool(threads)
    if pool is not None:
        return pool.submit(fn).result()
    with _SERIAL:
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
