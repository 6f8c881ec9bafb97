"""SlotStore: which storage slot holds which id, for both index kinds.

An index keeps its rows in "slots" of preallocated arrays. The store owns the bookkeeping:
ids <-> slots (`IdMap`, 16 bytes per id), slot -> id (`slot_ids`, i64[capacity] on the index's
device, -1 = free), the free slots (a stack, next slot last), capacity growth (doubling, so adds
copy nothing but the new rows) and placement:

- placement_seed=None: new slots are handed out in order (PartitionedIndex, whose pages do not
  depend on slot numbers);
- placement_seed=s: each new block of PLACEMENT_BLOCK slots is handed out in a seeded random
  order (flat Index: search bins are strided over slots, slot j -> bin j mod L, so whatever
  order rows arrive in, their bins are random and the expected-recall bound holds).

The index owns its arrays: when `capacity_for(m)` exceeds `capacity`, it extends them to that
capacity and calls `grow`; then `take(m)` pops m free slots and `assign` records their ids.
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import MAX_ID, as_ids
from ._idmap import IdMap

INITIAL_CAPACITY = 1024
PLACEMENT_BLOCK = 16384  # seeded placement permutes slots inside blocks of this many


class SlotStore:
    def __init__(self, device: torch.device, placement_seed: int | None = None):
        self.device = torch.device(device)
        self.placement_seed = placement_seed
        self.slot_ids = torch.empty(0, dtype=torch.int64, device=self.device)  # -1 = free
        self.free = np.empty(0, dtype=np.int64)  # stack of free slots, next one last
        self.blocks = 0  # placement blocks generated so far (seeds the next permutation)
        self.high = 0  # 1 + highest slot ever used: a scan covers slots [0, high)
        self.next_id = 0  # the first id `new_ids` hands out
        self._ids = IdMap()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def capacity(self) -> int:
        return self.slot_ids.shape[0]

    @property
    def nbytes(self) -> int:
        return self.slot_ids.numel() * 8 + self.free.nbytes + self._ids.nbytes

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """i64 slots of ids (-1 where absent)."""
        return self._ids.lookup(ids)

    def contains(self, id_) -> bool:
        """True when the int `id_` is stored (False for anything that is not an int id)."""
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)) or not 0 <= id_ <= MAX_ID:
            return False
        return bool(self.lookup(np.array([int(id_)], dtype=np.int64))[0] >= 0)

    def ids(self) -> np.ndarray:
        """i64 ids stored, ascending."""
        return self._ids.items()[0]

    def live_slots(self) -> np.ndarray:
        """i64 slots holding a row, ascending."""
        return np.flatnonzero(self.slot_ids.cpu().numpy() >= 0)

    def new_ids(self, m: int) -> np.ndarray:
        """The next m unused ids: next_id, next_id + 1, ... (ValueError once int64 runs out)."""
        if self.next_id + m - 1 > MAX_ID:
            raise ValueError(f"no {m} automatic ids are left after {self.next_id - 1}: pass ids= explicitly")
        return np.arange(self.next_id, self.next_id + m, dtype=np.int64)

    def ids_to_add(self, ids, count: int) -> np.ndarray:
        """i64[count] ids for new rows: the next unused ones (ids None), or `ids` checked (count of
        them, integers, unique, none stored yet; ValueError otherwise: use upsert)."""
        if ids is None:
            return self.new_ids(count)
        new_ids = as_ids("ids", ids, count)
        present = new_ids[self.lookup(new_ids) >= 0]
        if present.size:
            raise ValueError(f"id {int(present[0])} is already in the index; use upsert to replace it")
        return new_ids

    def stored(self, ids, consequence: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(ids i64[m], their slots i64[m]) for ids that must all be stored: ValueError naming the
        first missing one (followed by `consequence`, e.g. " (nothing was removed)")."""
        wanted = as_ids("ids", ids)
        slots = self.lookup(wanted)
        if (slots < 0).any():
            raise ValueError(f"id {int(wanted[slots < 0][0])} is not in the index{consequence}")
        return wanted, slots

    def capacity_for(self, m: int) -> int:
        """The capacity that taking m more slots needs (the current one while enough are free;
        else at least double, and at least INITIAL_CAPACITY)."""
        if m <= self.free.size:
            return self.capacity
        return max(INITIAL_CAPACITY, 2 * self.capacity, self.capacity + m - self.free.size)

    def grow(self, capacity: int) -> None:
        """Add slots up to `capacity` (free; the older free slots are handed out first)."""
        old = self.capacity
        if capacity <= old:
            return
        self.slot_ids = torch.cat([self.slot_ids, torch.full((capacity - old,), -1, dtype=torch.int64, device=self.device)])
        if self.placement_seed is None:
            order = np.arange(capacity - 1, old - 1, -1, dtype=np.int64)
        else:
            blocks = []
            for start in range(old, capacity, PLACEMENT_BLOCK):
                stop = min(start + PLACEMENT_BLOCK, capacity)
                rng = np.random.default_rng([self.placement_seed, self.blocks])
                self.blocks += 1
                blocks.append(start + rng.permutation(stop - start))
            # The stack pops from its end: lower blocks first, each in its permuted order.
            order = np.concatenate(blocks)[::-1]
        self.free = np.concatenate([order, self.free])

    def take(self, m: int) -> np.ndarray:
        """Pop m free slots (the caller has grown the store to `capacity_for(m)`)."""
        if m > self.free.size:
            raise RuntimeError(f"SlotStore.take({m}) with {self.free.size} free slots: grow first")
        taken = self.free[::-1][:m].copy()
        self.free = self.free[: self.free.size - m]
        return taken

    def assign(self, slots: np.ndarray, ids: np.ndarray) -> None:
        """Record that slots hold ids (unique, not stored elsewhere)."""
        if not slots.size:
            return
        self.slot_ids[torch.from_numpy(slots).to(self.device)] = torch.from_numpy(ids).to(self.device)
        self._ids.set(ids, slots)
        self.high = max(self.high, int(slots.max()) + 1)
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    def release(self, ids: np.ndarray) -> np.ndarray:
        """Forget stored ids; their slots become free (reused last-released first). Returns them."""
        slots = self._ids.lookup(ids)
        self.slot_ids[torch.from_numpy(slots).to(self.device)] = -1
        self._ids.set(ids, np.full(ids.size, -1, dtype=np.int64))
        self.free = np.concatenate([self.free, slots[::-1]])
        return slots

    def restore(self, capacity: int, blocks: int, free: np.ndarray) -> None:
        """Set a fresh store to a saved capacity, placement block count and free stack (then
        `assign` the saved rows)."""
        self.slot_ids = torch.full((capacity,), -1, dtype=torch.int64, device=self.device)
        self.blocks = blocks
        self.free = free
