"""A collection's snapshot / replay protocol without a server: crashes (objects dropped without
closing) at each step of a snapshot, failures that leave the collection unavailable until a
restart, and replays onto tables and indexes that already hold part of the log."""

from __future__ import annotations

import numpy as np
import pytest

from peakknn.server import collections, wal
from peakknn.server.collections import Collection, Store
from peakknn.server.errors import NotFound, Unavailable

DIM = 6


def _create(tmp_path, config=None) -> Collection:
    store = Store(tmp_path / "data")
    c, created = store.create("c", config or {"dim": DIM, "metric": "l2", "dtype": "fp32"})
    assert created
    store._lockfile.close()  # these tests reopen the folder without closing (a crash): release it
    return c


def _crash(c: Collection) -> None:
    """What a SIGKILL leaves: the log as written, the payload table rolled back to its commit."""
    c.payloads.close()  # uncommitted writes dropped, as SQLite's recovery drops them
    c.wal._fd = -1  # the log file stays as it is (written, no more)


def _state(c: Collection) -> dict:
    ids = np.asarray(c.index.ids)
    return {p["id"]: (p["vector"], p["payload"]) for p in c.get(ids, True, True)}


def _writes(c: Collection, rng, rounds: int, start: int = 0) -> None:
    for r in range(rounds):
        ids = np.arange(start + 10 * r, start + 10 * r + 10, dtype=np.int64)
        c.upsert(ids, rng.standard_normal((10, DIM)).astype(np.float32), [{"r": r, "i": int(i)} if i % 3 else None for i in ids])
        c.upsert(ids[:2], rng.standard_normal((2, DIM)).astype(np.float32), None)  # replaced, payload cleared
        c.delete(ids[2:4])


def _reopen(c: Collection) -> Collection:
    return Collection.open(c.folder)


def test_replay_after_a_crash_restores_every_write(tmp_path):
    c = _create(tmp_path)
    _writes(c, np.random.default_rng(0), 5)
    want = _state(c)
    assert len(want) == 40
    _crash(c)
    again = _reopen(c)
    assert _state(again) == want and again.snapshot_seq == 15  # replayed, then snapshotted
    again.close()


@pytest.mark.parametrize("step", ["after_commit", "after_save", "after_snapshot_json"])
def test_a_crash_at_any_step_of_a_snapshot_loses_nothing(tmp_path, monkeypatch, step):
    c = _create(tmp_path)
    rng = np.random.default_rng(1)
    _writes(c, rng, 3)
    assert c.snapshot()
    _writes(c, rng, 3, start=100)
    want = _state(c)

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    if step == "after_commit":  # the table is committed at the new seq, the index not saved
        monkeypatch.setattr(c.index, "save", crash)
    elif step == "after_save":  # saved, but snapshot.json still names the old snapshot
        monkeypatch.setattr(collections, "write_json", crash)
    else:  # snapshot.json replaced, older segments and snapshots not yet deleted
        monkeypatch.setattr(c.wal, "drop_before", crash)
    with pytest.raises(Crash):
        c.snapshot()
    monkeypatch.undo()
    _crash(c)
    again = _reopen(c)
    assert _state(again) == want
    assert len(list(again.folder.glob("snap-*"))) == 1 and len(wal.segments(again.folder)) == 1
    again.close()


def test_replaying_onto_a_newer_table_is_idempotent(tmp_path):
    c = _create(tmp_path)
    rng = np.random.default_rng(2)
    _writes(c, rng, 2)
    assert c.snapshot()
    _writes(c, rng, 2, start=50)
    want = _state(c)
    c.payloads.commit(c.wal.last_seq)  # the table ahead of the snapshot (a crash after its commit)
    _crash(c)
    again = _reopen(c)
    assert _state(again) == want
    again.close()


def test_an_upsert_that_fails_half_way_leaves_the_collection_unavailable(tmp_path, monkeypatch):
    c = _create(tmp_path)
    rng = np.random.default_rng(3)
    _writes(c, rng, 1)
    want = _state(c)
    real = c.index.upsert

    def half(vectors, ids):  # stores the rows, then refuses (as a failed auto-training would)
        real(vectors, ids=ids)
        raise ValueError("training failed")

    monkeypatch.setattr(c.index, "upsert", half)
    with pytest.raises(Unavailable, match="restarting the server recovers"):
        c.upsert(np.array([500], dtype=np.int64), np.ones((1, DIM), dtype=np.float32), None)
    monkeypatch.undo()
    assert c.failed is not None and c.info()["failed"]
    with pytest.raises(Unavailable):
        c.get(np.array([1]), True, True)
    _crash(c)
    again = _reopen(c)
    assert _state(again) == want and again.failed is None  # the refused write is not in the log
    again.close()


def test_a_failed_fsync_is_never_acknowledged(tmp_path, monkeypatch):
    c = _create(tmp_path)

    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal, "_fdatasync", fail)
    with pytest.raises(Unavailable, match="write-ahead log failed"):
        c.upsert(np.array([1], dtype=np.int64), np.ones((1, DIM), dtype=np.float32), None)
    with pytest.raises(Unavailable):
        c.upsert(np.array([2], dtype=np.int64), np.ones((1, DIM), dtype=np.float32), None)
    monkeypatch.undo()
    c.close()


def test_a_deleted_collection_answers_not_found(tmp_path):
    store = Store(tmp_path / "data")
    c, _ = store.create("c", {"dim": DIM})
    store.delete("c")
    with pytest.raises(NotFound, match="was deleted"):
        c.get(np.array([1]), True, True)
    with pytest.raises(NotFound):
        store.get("c")
    assert not (tmp_path / "data" / "collections" / "c").exists()
    store.close()
    reopened = Store(tmp_path / "data")
    assert reopened.names() == []
    reopened.close()


def test_partitioned_collections_snapshot_and_replay(tmp_path):
    c = _create(tmp_path, {"dim": DIM, "metric": "ip", "index": "partitioned", "partitions": 4, "train_size": 40, "codes": "int8"})
    rng = np.random.default_rng(4)
    _writes(c, rng, 6)
    assert c.index.is_trained
    assert c.snapshot()
    _writes(c, rng, 2, start=200)
    want = _state(c)
    _crash(c)
    again = _reopen(c)
    assert _state(again) == want and again.index.is_trained
    again.close()
