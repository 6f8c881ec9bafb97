"""SlotStore (peakknn._slots): taking, releasing and growing slots, and where new rows go:
in order without a placement seed, permuted inside blocks (reproducibly) with one."""

import numpy as np
import pytest
import torch

from peakknn._slots import INITIAL_CAPACITY, PLACEMENT_BLOCK, SlotStore


def take_grown(store: SlotStore, m: int) -> np.ndarray:
    """What an index does to store m new rows: grow to capacity_for(m), then take."""
    store.grow(store.capacity_for(m))
    return store.take(m)


def test_unseeded_slots_are_handed_out_in_order():
    store = SlotStore("cpu")
    assert store.capacity == 0 and len(store) == 0
    assert take_grown(store, 10).tolist() == list(range(10))
    assert store.capacity == INITIAL_CAPACITY
    assert take_grown(store, INITIAL_CAPACITY).tolist() == list(range(10, INITIAL_CAPACITY + 10))
    assert store.capacity == 2 * INITIAL_CAPACITY  # doubling


def test_capacity_grows_by_doubling_and_at_least_enough():
    store = SlotStore("cpu")
    assert store.capacity_for(0) == 0 and store.capacity_for(1) == INITIAL_CAPACITY
    assert store.capacity_for(5000) == 5000  # more than double: exactly enough
    store.grow(3000)
    assert store.capacity_for(3000) == 3000 and store.capacity_for(3001) == 6000
    store.grow(100)  # never shrinks
    assert store.capacity == 3000 and store.slot_ids.shape == (3000,) and bool((store.slot_ids == -1).all())
    with pytest.raises(RuntimeError, match="grow first"):
        store.take(3001)


def test_assign_release_and_reuse():
    store = SlotStore("cpu")
    slots = take_grown(store, 6)
    ids = np.array([10, 11, 12, 13, 14, 99])
    store.assign(slots, ids)
    assert len(store) == 6 and store.ids().tolist() == ids.tolist() and store.next_id == 100 and store.high == 6
    assert store.lookup(np.array([12, 5, 99])).tolist() == [2, -1, 5]
    assert store.slot_ids.tolist()[:7] == [10, 11, 12, 13, 14, 99, -1]
    assert store.new_ids(3).tolist() == [100, 101, 102]
    freed = store.release(np.array([11, 13]))
    assert freed.tolist() == [1, 3] and len(store) == 4 and store.lookup(np.array([11, 13])).tolist() == [-1, -1]
    assert store.live_slots().tolist() == [0, 2, 4, 5]
    store.release(np.array([99]))
    assert set(store.take(1).tolist()) == {5}  # the last released slot is reused first
    assert set(store.take(2).tolist()) == {1, 3}
    assert store.high == 6 and store.next_id == 100  # neither goes back


def test_older_free_slots_are_taken_before_newly_grown_ones():
    """As peakknn 0.1.0's Index did: after a grow, the slots freed earlier are taken first."""
    store = SlotStore("cpu")
    store.assign(take_grown(store, INITIAL_CAPACITY), np.arange(INITIAL_CAPACITY))
    store.release(np.array([4, 8]))
    store.grow(2 * INITIAL_CAPACITY)  # e.g. Index.reserve while slots are free
    assert set(store.take(2).tolist()) == {4, 8}
    assert store.take(1)[0] >= INITIAL_CAPACITY


def test_seeded_placement_permutes_inside_blocks():
    store = SlotStore("cpu", placement_seed=3)
    first = take_grown(store, INITIAL_CAPACITY)
    assert sorted(first.tolist()) == list(range(INITIAL_CAPACITY)) and first.tolist() != list(range(INITIAL_CAPACITY))
    store.grow(INITIAL_CAPACITY + 2 * PLACEMENT_BLOCK + 5)  # two full blocks and a partial one
    start = INITIAL_CAPACITY
    for size in (PLACEMENT_BLOCK, PLACEMENT_BLOCK, 5):
        block = store.take(size)
        assert sorted(block.tolist()) == list(range(start, start + size))  # a block at a time, in order of blocks
        assert size < 3 or block.tolist() != list(range(start, start + size))  # ... permuted inside
        start += size
    assert store.free.size == 0 and store.blocks == 4


def test_seeded_placement_is_reproducible_and_survives_a_restore():
    def history(store, sizes):
        out = []
        for m in sizes:
            slots = take_grown(store, m)
            store.assign(slots, store.new_ids(m))
            out.append(slots)
        return np.concatenate(out)

    sizes = [700, 500, 3000, 20_000]
    a, b = SlotStore("cpu", placement_seed=5), SlotStore("cpu", placement_seed=5)
    assert np.array_equal(history(a, sizes), history(b, sizes))
    c = SlotStore("cpu", placement_seed=6)
    assert not np.array_equal(history(c, sizes), history(SlotStore("cpu", placement_seed=5), sizes))
    # a store restored from a's saved state (capacity, blocks, free stack, rows) continues as a does
    restored = SlotStore("cpu", placement_seed=5)
    restored.restore(a.capacity, a.blocks, a.free.copy())
    live = a.live_slots()
    restored.assign(live, a.slot_ids[torch.from_numpy(live)].numpy())
    restored.next_id = a.next_id
    assert np.array_equal(history(restored, [9000, 40_000]), history(a, [9000, 40_000]))
    assert np.array_equal(restored.ids(), a.ids())


def test_ids_to_add_and_stored_check_ids_and_name_the_offender():
    store = SlotStore("cpu")
    store.assign(take_grown(store, 3), np.array([5, 6, 40]))
    assert store.ids_to_add(None, 2).tolist() == [41, 42]  # the next unused ids
    assert store.ids_to_add([7, 3], 2).tolist() == [7, 3]
    with pytest.raises(ValueError, match="id 6 is already in the index; use upsert"):
        store.ids_to_add([1, 6, 40], 3)
    with pytest.raises(ValueError, match="3 vectors"):
        store.ids_to_add([1, 2], 3)
    with pytest.raises(ValueError, match="duplicates"):
        store.ids_to_add([8, 8], 2)
    ids, slots = store.stored([40, 5])
    assert ids.tolist() == [40, 5] and slots.tolist() == store.lookup(np.array([40, 5])).tolist()
    with pytest.raises(ValueError, match=r"id 9 is not in the index \(nothing was removed\)"):
        store.stored([5, 9, 10], " (nothing was removed)")
    with pytest.raises(TypeError, match="integers"):
        store.stored([5.0])
