"""RWLock (peakknn._locks), and both index kinds driven by concurrent readers, writers and saves
for a bounded time: every result seen is whole, and afterwards every invariant holds."""

import threading
import time

import numpy as np
import pytest
import torch

from peakknn import Index, PartitionedIndex, PartitionSettings, SearchSettings
from peakknn._locks import RWLock

SECONDS = 2.0  # how long each stress test runs its threads


def test_readers_share_and_writers_exclude():
    lock, seen = RWLock(), []
    counter = {"readers": 0, "writers": 0}
    guard = threading.Lock()

    def holder(hold, role, seconds):
        """Hold the lock through `hold` (lock.read or lock.write) for `seconds`, counted as `role`."""

        def run():
            with hold():
                with guard:
                    counter[role] += 1
                    seen.append((role[0], counter["readers"], counter["writers"]))
                time.sleep(seconds)
                with guard:
                    counter[role] -= 1

        return run

    reader, writer = holder(lock.read, "readers", 0.02), holder(lock.write, "writers", 0.01)

    threads = [threading.Thread(target=reader) for _ in range(6)] + [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert all(w == 0 for kind, _, w in seen if kind == "r")  # no reader beside a writer
    assert all(r == 0 and w == 1 for kind, r, w in seen if kind == "w")  # a writer is alone
    assert max(r for kind, r, _ in seen if kind == "r") >= 2  # readers did overlap


def test_a_waiting_writer_is_not_starved_by_readers():
    lock = RWLock()
    stop, wrote = threading.Event(), threading.Event()

    def reader():
        while not stop.is_set():
            with lock.read():
                time.sleep(0.005)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    time.sleep(0.05)

    def writer():
        with lock.write():
            wrote.set()

    w = threading.Thread(target=writer)
    w.start()
    assert wrote.wait(5), "the writer never got in"
    stop.set()
    for t in readers + [w]:
        t.join(5)


def run_threads(targets, seconds=SECONDS):
    """Run each target(stop_event) in a thread for `seconds`; re-raise the first failure."""
    stop, errors = threading.Event(), []

    def wrap(fn):
        def body():
            try:
                fn(stop)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                stop.set()

        return body

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def check_state(index, model: dict):
    """The index holds exactly `model` (id -> vector), and exact searches agree with it."""
    ids = sorted(model)
    assert len(index) == len(ids) and index.ids.tolist() == ids
    vectors = torch.stack([model[i] for i in ids])
    torch.testing.assert_close(index.get(ids), vectors)
    live = index._slots.live_slots()
    assert live.size == len(ids)
    assert set(live.tolist()).isdisjoint(index._slots.free.tolist())
    assert sorted(index._slots.slot_ids[torch.from_numpy(live)].tolist()) == ids
    slots = index._slots.lookup(np.array(ids))
    assert index._slots.slot_ids[torch.from_numpy(slots)].tolist() == ids  # ids <-> slots agree both ways


@pytest.mark.parametrize("kind", ["flat", "partitioned"])
def test_concurrent_readers_writers_and_saves(kind, tmp_path):
    d, base = 16, 1500
    g = torch.Generator().manual_seed(7)
    x = torch.randn(base, d, generator=g)
    if kind == "flat":
        index = Index(d, metric="l2", precision="fp32")
        search = lambda qq, k: index.search(qq, k, recall_target=1.0)  # noqa: E731
    else:
        index = PartitionedIndex(d, metric="l2", settings=PartitionSettings(partitions=8, train_size=None), search_settings=SearchSettings(probe=8, adaptive=False))
        search = lambda qq, k: index.search(qq, k, probe=8)  # noqa: E731 - every partition: exact
    index.add(x)  # ids 0..base-1: present throughout, never changed
    if kind == "partitioned":
        index.train()
    models = [dict() for _ in range(2)]

    def writer(w):
        def body(stop):
            rng = np.random.default_rng(w)
            model, next_id = models[w], 10_000 * (w + 1)
            while not stop.is_set():
                op = rng.integers(3)
                if op == 0 or len(model) < 5:  # add a few new ids
                    new = np.arange(next_id, next_id + 4)
                    next_id += 4
                    v = torch.from_numpy(rng.standard_normal((4, d)).astype(np.float32))
                    index.add(v, ids=new)
                    model.update(zip(new.tolist(), v))
                elif op == 1:  # replace some of its own
                    some = rng.choice(sorted(model), 3, replace=False)
                    v = torch.from_numpy(rng.standard_normal((3, d)).astype(np.float32))
                    index.upsert(v, ids=some)
                    model.update(zip(some.tolist(), v))
                else:  # remove some of its own
                    some = rng.choice(sorted(model), 2, replace=False)
                    index.remove(some)
                    for i in some.tolist():
                        del model[i]

        return body

    def reader(stop):
        rng = np.random.default_rng(99)
        while not stop.is_set():
            rows = rng.choice(base, 8, replace=False)
            res = search(x[rows], 5)
            assert (res.ids >= 0).all(), "a short result"
            assert res.ids[:, 0].tolist() == rows.tolist(), "a row present throughout was missed"
            assert torch.allclose(res.scores[:, 0], torch.zeros(8), atol=1e-3)
            assert all(len(set(r)) == 5 for r in res.ids.tolist()), "an id returned twice"
            assert bool((res.scores[:, 1:] >= res.scores[:, :-1] - 1e-4).all()), "scores out of order"

    loads = []

    def saver(stop):
        n = 0
        while not stop.is_set():
            path = tmp_path / f"s{n % 2}"
            index.save(path)
            loaded = type(index).load(path)
            assert len(loaded) >= base and set(range(base)) <= set(loaded.ids.tolist())
            torch.testing.assert_close(loaded.get(np.arange(0, base, 97)), x[::97])
            loads.append(len(loaded))
            n += 1

    def shared_saver(stop):  # two threads saving to one directory must not break each other
        while not stop.is_set():
            index.save(tmp_path / "shared")

    run_threads([writer(0), writer(1), reader, reader, saver, shared_saver, shared_saver])
    assert loads, "no save completed"
    model = {i: x[i] for i in range(base)}
    for m in models:
        model.update(m)
    check_state(index, model)
    loaded = type(index).load(tmp_path / "shared")
    assert set(range(base)) <= set(loaded.ids.tolist())
    # exact results after the storm agree with a fresh index built from the model
    ids = sorted(model)
    q = torch.randn(20, d, generator=g)
    got = search(q, 10)
    truth = torch.cdist(q.double(), torch.stack([model[i] for i in ids]).double()).topk(10, largest=False).indices
    assert got.ids.tolist() == torch.tensor(ids)[truth].tolist()
