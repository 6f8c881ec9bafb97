"""The single-threaded worker threads of the CPU top-k paths (peakknn.topk._workers): workers
run torch with one thread while the caller keeps its count, results do not depend on where
blocks run, and concurrent callers share the pool."""

import threading

import pytest
import torch

from peakknn import approx_topk
from peakknn.topk import _workers, binned


def test_workers_run_one_torch_thread_and_leave_the_caller_alone():
    threads = torch.get_num_threads()
    if threads == 1 or not _workers.pooled(torch.device("cpu")):
        pytest.skip("no workers here (one torch thread, or no OpenMP runtime to set)")
    assert _workers.on_one_thread(torch.get_num_threads) == 1
    assert set(_workers.map_blocks(lambda _: torch.get_num_threads(), list(range(8)), torch.device("cpu"))) == {1}
    assert torch.get_num_threads() == threads
    assert not _workers.pooled(torch.device("meta"))


@pytest.mark.parametrize("per_bin", [1, 3])
def test_results_do_not_depend_on_the_workers(per_bin, monkeypatch):
    g = torch.Generator().manual_seed(per_bin)
    x = torch.randn(700, 5000, generator=g)
    monkeypatch.setattr(binned, "BLOCK_ELEMENTS", 1 << 16)  # many blocks
    monkeypatch.setattr(binned, "KEY_BLOCK_BYTES", 1 << 17)
    pooled = approx_topk(x, 20, recall_target=0.9, per_bin=per_bin)
    monkeypatch.setitem(_workers._POOL, "ok", False)
    monkeypatch.setitem(_workers._POOL, "pool", None)
    assert not _workers.pooled(x.device)
    alone = approx_topk(x, 20, recall_target=0.9, per_bin=per_bin)
    assert torch.equal(pooled.indices, alone.indices) and torch.equal(pooled.values, alone.values)
    assert _workers.on_one_thread(torch.get_num_threads) == 1 and torch.get_num_threads() >= 1


def test_concurrent_callers(monkeypatch):
    monkeypatch.setattr(binned, "KEY_BLOCK_BYTES", 1 << 17)
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(300, 4000, generator=g) for _ in range(4)]
    want = [approx_topk(x, 16, recall_target=0.9, per_bin=2).indices for x in xs]
    got = [None] * len(xs)

    def run(i):
        got[i] = approx_topk(xs[i], 16, recall_target=0.9, per_bin=2).indices

    callers = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_forked_child_forgets_the_parents_workers():
    """After fork the parent's worker threads do not exist in the child (a DataLoader worker): the
    child must not queue blocks for them. (DataLoader workers run torch with one thread, as here:
    OpenMP itself is not fork-safe once the parent used it.)"""
    import multiprocessing as mp

    x = torch.randn(400, 5000)
    want = approx_topk(x, 16, recall_target=0.9, per_bin=2).indices  # the parent's pool exists now
    with mp.get_context("fork").Pool(1) as pool:
        forgot, got = pool.apply_async(_child, (x,)).get(timeout=120)
    assert forgot and torch.equal(got, want)


def _child(x):
    forgot = _workers._POOL["pool"] is None and _workers._POOL["ok"] is None
    torch.set_num_threads(1)
    return forgot, approx_topk(x, 16, recall_target=0.9, per_bin=2).indices
