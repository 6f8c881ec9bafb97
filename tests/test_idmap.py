"""IdMap (peakknn._idmap) against a Python dict through random batches of sets and deletes,
with the merge thresholds at their defaults and small enough to merge all the time."""

import numpy as np
import pytest

from peakknn import _idmap
from peakknn._idmap import IdMap


def check(m: IdMap, model: dict, rng):
    assert len(m) == len(model)
    keys, values = m.items()
    assert keys.tolist() == sorted(model) and values.tolist() == [model[k] for k in sorted(model)]
    probe_ids = np.concatenate([keys, rng.integers(0, 5000, size=50), [-1, 10**12]])  # present and absent
    assert m.lookup(probe_ids).tolist() == [model.get(int(i), -1) for i in probe_ids]


@pytest.mark.parametrize("merge_at,merge_batch", [(_idmap.MERGE_AT, _idmap.MERGE_BATCH), (40, 8), (1, 1)])
def test_random_sets_and_deletes_match_a_dict(monkeypatch, merge_at, merge_batch):
    monkeypatch.setattr(_idmap, "MERGE_AT", merge_at)
    monkeypatch.setattr(_idmap, "MERGE_BATCH", merge_batch)
    rng = np.random.default_rng(merge_at)
    m, model = IdMap(), {}
    next_id = 0
    for step in range(300):
        op = rng.integers(5)
        if op == 0:  # append new ascending ids past the largest (the bulk-add path)
            size = int(rng.integers(1, 3 * merge_batch + 2))
            ids = np.arange(next_id, next_id + size)
            next_id += size + int(rng.integers(0, 3))
        elif op == 1 and model:  # overwrite some present ids with new values
            ids = rng.choice(sorted(model), min(len(model), int(rng.integers(1, 30))), replace=False)
        elif op == 2 and model:  # delete some present ids
            ids = rng.choice(sorted(model), min(len(model), int(rng.integers(1, 30))), replace=False)
            m.set(ids, np.full(ids.size, -1))
            for i in ids.tolist():
                del model[i]
            continue
        elif op == 3:  # delete ids that may or may not be present, mixed with sets of fresh ones
            ids = rng.choice(next_id + 50, size=int(rng.integers(1, 20)), replace=False)
            values = np.where(rng.random(ids.size) < 0.5, -1, rng.integers(0, 10**6, ids.size))
            m.set(ids, values)
            for i, v in zip(ids.tolist(), values.tolist()):
                if v < 0:
                    model.pop(i, None)
                else:
                    model[i] = v
            next_id = max(next_id, int(ids.max()) + 1)
            continue
        else:  # a lookup of many ids while recent changes are pending
            wanted = rng.integers(-5, next_id + 5, size=int(rng.integers(1, 200)))
            assert m.lookup(wanted).tolist() == [model.get(int(i), -1) for i in wanted]
            continue
        values = rng.integers(0, 10**6, ids.size)
        m.set(ids, values)
        model.update(zip(ids.tolist(), values.tolist()))
        if step % 20 == 0:
            check(m, model, rng)
    check(m, model, rng)


def test_lookups_see_pending_changes_both_ways():
    m = IdMap()
    m.set(np.arange(5000), np.arange(5000) * 2)  # merged straight into the arrays (a large batch)
    m.set(np.array([7, 9000, 3]), np.array([-1, 5, 1]))  # recent changes: a delete, a new id, an update
    assert len(m) == 5000
    few = np.array([7, 3, 9000, 8])  # fewer ids than recent changes... and more
    many = np.concatenate([few, np.arange(100, 200)])
    want = {7: -1, 3: 1, 9000: 5, 8: 16}
    assert m.lookup(few).tolist() == [want[i] for i in few.tolist()]
    assert m.lookup(many).tolist() == [want.get(i, 2 * i) for i in many.tolist()]
    keys, values = m.items()
    assert 7 not in keys.tolist() and keys[-1] == 9000 and values[-1] == 5 and np.all(np.diff(keys) > 0)
    m.set(np.arange(20_000, 30_000), np.arange(10_000))  # fast append after the merge
    assert m.lookup(np.array([29_999, 9000, 7])).tolist() == [9999, 5, -1] and len(m) == 15_000
    assert m.lookup(np.array([], dtype=np.int64)).shape == (0,) and IdMap().lookup(np.array([1, 2])).tolist() == [-1, -1]


def test_deletions_pending_at_a_fast_append_are_dropped():
    """A new id set and deleted again (still a recent change), then a bulk append of larger ids:
    the merge may append without sorting, but never keeps the deleted entry."""
    m = IdMap()
    m.set(np.arange(2000), np.arange(2000))
    m.set(np.array([3000]), np.array([1]))
    m.set(np.array([3000, 3001]), np.array([-1, -1]))  # 3001 was never stored
    m.set(np.arange(5000, 5000 + 2 * _idmap.MERGE_BATCH), np.arange(2 * _idmap.MERGE_BATCH))  # larger than MERGE_BATCH
    keys, values = m.items()
    assert keys.tolist() == list(range(2000)) + list(range(5000, 5000 + 2 * _idmap.MERGE_BATCH))
    assert (values >= 0).all() and len(m) == keys.size
    assert m.lookup(np.array([3000, 3001, 5000])).tolist() == [-1, -1, 0]
