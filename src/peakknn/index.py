"""Index: vectors with int64 ids, instant add / upsert / remove, filtered search, save / load.

    index = Index(128, metric="ip")           # dtype "bf16" scans in bfloat16, re-scores in fp32
    ids = index.add(vectors)                  # f32[m, 128] -> i64[m] new ids 0, 1, ...
    index.upsert(vectors2, ids=[3, 1000])     # replace id 3, insert id 1000
    index.remove([5])
    result = index.search(queries, k=10, allowed_ids=subset)
    index.save("my.index"); index = Index.load("my.index")

Storage: rows live in "slots" of preallocated arrays (fp32 vectors, scan rows [x, bias, 0...]
in the scan dtype, slot -> id) whose capacity doubles when full, so adds copy nothing but the
new rows, and removes only mark the slot dead (bias -inf, so it can never score) and recycle it.

Recall guarantee and storage order: search bins are strided over slots (slot j -> bin j mod L).
New rows are not placed in arrival order but in a seeded random order inside blocks of
PLACEMENT_BLOCK slots, so whatever order rows arrive in (sorted, clustered, adversarially
periodic) their bins are random and the expected recall bound of `bins_for_recall` holds.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import _backend, _scan
from ._checks import as_id_set, as_ids, as_matrix, check_k, check_recall_target
from ._types import SearchResult, check_metric, precision_name, scan_dtype
from .search import finish, normalize_rows, rank_bias, run_search, scan_width

INITIAL_CAPACITY = 1024
PLACEMENT_BLOCK = 16384  # rows are placed at random inside blocks of this many slots


class Index:
    """A brute-force k-NN index (see module docstring).

    dim: vector dimension; metric: "ip" | "l2" | "cos" (cosine stores unit vectors);
    dtype: "bf16" (default; scan in bfloat16, exact fp32 re-scoring) or "fp32";
    device: where the arrays live ("cpu" or a CUDA device); recall_target: default for search;
    seed: seeds slot placement (results are reproducible for a given seed and history).
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "ip",
        dtype: str | torch.dtype = "bf16",
        device: str | torch.device = "cpu",
        recall_target: float = 0.95,
        seed: int = 0,
    ):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self.scan_dtype = scan_dtype(dtype)
        self.device = torch.device(device)
        self.recall_target = check_recall_target(recall_target)
        self.seed = int(seed)
        self._capacity = 0
        self._vectors = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        self._scan_rows = torch.empty(0, scan_width(self.dim), dtype=self.scan_dtype, device=self.device)
        self._bias = torch.empty(0, dtype=torch.float32, device=self.device)
        self._slot_ids = torch.empty(0, dtype=torch.int64, device=self.device)  # -1 = free
        self._id_to_slot: dict[int, int] = {}
        self._free = np.empty(0, dtype=np.int64)  # stack of free slots, next one last
        self._blocks = 0  # placement blocks generated so far (seeds the next permutation)
        self._high = 0  # 1 + highest slot ever used: the scan covers slots [0, _high)
        self._next_id = 0

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._id_to_slot)

    def __contains__(self, id_) -> bool:
        return int(id_) in self._id_to_slot

    def __repr__(self) -> str:
        return (
            f"Index(dim={self.dim}, metric={self.metric!r}, dtype={precision_name(self.scan_dtype)!r}, "
            f"device={str(self.device)!r}, size={len(self)}, capacity={self._capacity})"
        )

    @property
    def ids(self) -> torch.Tensor:
        """i64[len] ids currently stored, ascending."""
        return torch.tensor(sorted(self._id_to_slot), dtype=torch.int64)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (capacity included)."""
        tensors = (self._vectors, self._scan_rows, self._bias, self._slot_ids)
        return sum(t.numel() * t.element_size() for t in tensors) + self._free.nbytes

    # ----------------------------------------------------------------- updates
    def reserve(self, capacity: int) -> None:
        """Allocate room for `capacity` rows now (no doubling later while adds stay within it)."""
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
        if capacity > self._capacity:
            self._grow(int(capacity))

    def add(self, vectors, ids=None) -> torch.Tensor:
        """Insert rows f32[m, dim]; ids i64[m] (default: next free ids). Returns the ids.

        Raises ValueError (and stores nothing) if an id is already present: use `upsert`.
        """
        x = self._prepare(vectors)
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
        else:
            new_ids = as_ids("ids", ids, x.shape[0])
            present = [i for i in new_ids.tolist() if i in self._id_to_slot]
            if present:
                raise ValueError(f"id {present[0]} is already in the index; use upsert to replace it")
        self._write(self._take_slots(x.shape[0]), new_ids, x)
        return torch.from_numpy(new_ids)

    def upsert(self, vectors, ids) -> torch.Tensor:
        """Insert or replace rows: ids already present get the new vectors, others are added."""
        x = self._prepare(vectors)
        new_ids = as_ids("ids", ids, x.shape[0])
        existing = np.array([i in self._id_to_slot for i in new_ids.tolist()], dtype=bool)
        if existing.any():
            slots = np.array([self._id_to_slot[i] for i in new_ids[existing].tolist()], dtype=np.int64)
            self._write(slots, new_ids[existing], x[torch.from_numpy(existing).to(x.device)])
        if (~existing).any():
            fresh = torch.from_numpy(~existing).to(x.device)
            self._write(self._take_slots(int((~existing).sum())), new_ids[~existing], x[fresh])
        return torch.from_numpy(new_ids)

    def remove(self, ids) -> None:
        """Delete ids. Unknown ids raise ValueError and nothing is removed."""
        gone = as_ids("ids", ids)
        missing = [i for i in gone.tolist() if i not in self._id_to_slot]
        if missing:
            raise ValueError(f"id {missing[0]} is not in the index (nothing was removed)")
        slots = np.array([self._id_to_slot.pop(i) for i in gone.tolist()], dtype=np.int64)
        t = torch.from_numpy(slots).to(self.device)
        self._vectors[t] = 0.0
        self._scan_rows[t] = 0.0
        self._scan_rows[t, self.dim] = float("-inf")
        self._bias[t] = float("-inf")
        self._slot_ids[t] = -1
        self._free = np.concatenate([self._free, slots[::-1]])

    def get(self, ids) -> torch.Tensor:
        """f32[m, dim] stored vectors of ids (unit vectors for cosine); unknown ids raise ValueError."""
        wanted = as_ids("ids", ids)
        missing = [i for i in wanted.tolist() if i not in self._id_to_slot]
        if missing:
            raise ValueError(f"id {missing[0]} is not in the index")
        slots = torch.tensor([self._id_to_slot[i] for i in wanted.tolist()], dtype=torch.int64, device=self.device)
        return self._vectors[slots].clone()

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries,
        k: int,
        *,
        recall_target: float | None = None,
        allowed_ids=None,
        candidates: int | None = None,
        max_memory: int = _scan.DEFAULT_MEMORY,
        backend: str = "auto",
    ) -> SearchResult:
        """k nearest stored vectors of each query f32[nq, dim] (or [dim]).

        recall_target: None = the index's setting; 1.0 = exact. allowed_ids: only these ids may
        be returned (ids not in the index are ignored). backend: "auto" (fused Triton kernel on
        CUDA when triton is installed), "torch" or "triton" (see `peakknn.search`). Returns
        SearchResult with user ids, -1 (and -inf / +inf scores) where fewer than k rows qualify.
        """
        k = check_k(k)
        target = self.recall_target if recall_target is None else check_recall_target(recall_target)
        if len(self) == 0:
            raise ValueError("cannot search an empty index: add vectors first")
        q = as_matrix("queries", queries, self.dim).to(device=self.device, dtype=torch.float32)
        if self.metric == "cos":
            q = normalize_rows(q, "queries")
        backend = _backend.resolve(backend, self.device)
        if allowed_ids is None:
            table = _IndexTable(self)
        else:
            allowed = as_id_set("allowed_ids", allowed_ids)
            slots = sorted(self._id_to_slot[i] for i in allowed.tolist() if i in self._id_to_slot)
            slots = torch.tensor(slots, dtype=torch.int64, device=self.device)
            if backend == "triton":  # the kernel masks rows in place: no copy of the subset
                mask = torch.zeros(self._high, dtype=torch.bool, device=self.device)
                mask[slots] = True
                table = _IndexTable(self, mask=mask)
            else:
                table = _IndexTable(self, subset=slots)
        rank, rows = run_search(table, q.contiguous(), k, self.metric, target, candidates, max_memory, backend)
        result = finish(rank, table.ids_of(rows), self.metric)
        return SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu())

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory `path` atomically (see peakknn.io)."""
        from .io import save_index

        save_index(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "Index":
        """Read an index written by `save`; corrupt or mismatched files raise ValueError."""
        from .io import load_index

        return load_index(path, device=device)

    # ----------------------------------------------------------------- internals
    def _prepare(self, vectors) -> torch.Tensor:
        x = as_matrix("vectors", vectors, self.dim).to(device=self.device, dtype=torch.float32)
        if self.metric == "cos":
            x = normalize_rows(x, "vectors")
        return x

    def _take_slots(self, m: int) -> np.ndarray:
        """Pop m free slots (growing capacity by doubling when short)."""
        if m > self._free.size:
            self._grow(max(INITIAL_CAPACITY, 2 * self._capacity, self._capacity + m - self._free.size))
        taken = self._free[::-1][:m].copy()
        self._free = self._free[: self._free.size - m]
        return taken

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        self._extend_arrays(capacity)
        new_free = []
        for start in range(old, capacity, PLACEMENT_BLOCK):
            stop = min(start + PLACEMENT_BLOCK, capacity)
            rng = np.random.default_rng([self.seed, self._blocks])
            self._blocks += 1
            new_free.append(start + rng.permutation(stop - start))
        # The stack pops from its end: lower blocks first, each in its permuted order.
        order = np.concatenate(new_free)[::-1]
        self._free = np.concatenate([order, self._free])

    def _grow_to_saved(self, capacity: int, blocks: int) -> None:
        """Allocate a loaded index's arrays; its free stack and block count come from the file."""
        self._extend_arrays(capacity)
        self._blocks = blocks

    def _extend_arrays(self, capacity: int) -> None:
        old = self._capacity
        extra = capacity - old
        self._vectors = _extend(self._vectors, extra, 0.0)
        self._scan_rows = _extend(self._scan_rows, extra, 0.0)
        self._scan_rows[old:, self.dim] = float("-inf")
        self._bias = _extend(self._bias, extra, float("-inf"))
        self._slot_ids = _extend(self._slot_ids, extra, -1)
        self._capacity = capacity

    def _write(self, slots: np.ndarray, ids: np.ndarray, x: torch.Tensor) -> None:
        t = torch.from_numpy(slots).to(self.device)
        bias = rank_bias(x, self.metric)
        self._vectors[t] = x
        row = torch.zeros(x.shape[0], self._scan_rows.shape[1], dtype=self.scan_dtype, device=self.device)
        row[:, : self.dim] = x
        row[:, self.dim] = bias
        self._scan_rows[t] = row
        self._bias[t] = bias
        self._slot_ids[t] = torch.from_numpy(ids).to(self.device)
        self._id_to_slot.update(zip(ids.tolist(), slots.tolist()))
        if slots.size:
            self._high = max(self._high, int(slots.max()) + 1)
            self._next_id = max(self._next_id, int(ids.max()) + 1)


class _IndexTable:
    """Engine view of an Index: all slots [0, high), a subset of slots (copied, for the torch
    engine's allowed_ids) or all slots with a mask bool[high] (for the fused kernel)."""

    def __init__(self, index: Index, subset: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        self.index = index
        self.subset = subset
        self.mask = mask
        self.dim = index.dim
        self.scan_dtype = index.scan_dtype
        self.device = index.device
        if subset is None:
            self.n = index._high
            self._scan = index._scan_rows
        else:
            self.n = int(subset.numel())
            self._scan = index._scan_rows[subset]

    def _slots(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.subset is None else self.subset[rows]

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        return self._scan[start:stop]

    def exact_rows(self, rows: torch.Tensor) -> torch.Tensor:
        slots = self._slots(rows)
        return self.index._vectors.index_select(0, slots.reshape(-1)).view(*slots.shape, self.index._vectors.shape[1])

    def bias(self, start: int, stop: int) -> torch.Tensor:
        if self.subset is None:
            return self.index._bias[start:stop]
        return self.index._bias[self.subset[start:stop]]

    def alive(self, rows: torch.Tensor) -> torch.Tensor:
        alive = self.index._slot_ids[self._slots(rows)] >= 0
        return alive if self.mask is None else alive & self.mask[rows]

    def ids_of(self, rows: torch.Tensor) -> torch.Tensor:
        return self.index._slot_ids[self._slots(rows)]


def _extend(t: torch.Tensor, extra: int, fill: float) -> torch.Tensor:
    out = torch.empty((t.shape[0] + extra, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    out[t.shape[0] :] = fill
    return out
