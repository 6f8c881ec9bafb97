"""Index: vectors with int64 ids, instant add / upsert / remove, filtered search, save / load.

    index = Index(128, metric="ip")           # precision "bf16" scans in bfloat16, re-scores in fp32
    ids = index.add(vectors)                  # f32[m, 128] -> i64[m] new ids 0, 1, ...
    index.upsert(vectors2, ids=[3, 1000])     # replace id 3, insert id 1000
    index.remove([5])
    result = index.search(queries, k=10, allowed_ids=subset)
    index.save("my.index"); index = Index.load("my.index")

Storage: rows live in slots of preallocated arrays (fp32 vectors, scan rows [x, bias, 0...]
in the scan dtype, and the `SlotStore`'s slot -> id) whose capacity doubles when full, so adds
copy nothing but the new rows, and removes only mark the slot dead (bias -inf, so it can never
score) and recycle it.

Recall guarantee and storage order: search bins are strided over slots (slot j -> bin j mod L).
New rows are placed in a seeded random order inside blocks of slots (`SlotStore` with a
placement seed), so whatever order rows arrive in (sorted, clustered, adversarially periodic)
their bins are random and the expected recall bound of `bins_for_recall` holds.

Saved format: `peakknn.index_persist`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from . import _backend, index_persist
from ._locks import RWLock, reads, writes
from ._checks import as_id_set, as_ids, check_device, check_int, check_k, check_recall_target, check_search_options, positive_int, renamed
from ._slots import SlotStore
from ._types import MetricLike, PrecisionLike, SearchResult, check_metric, precision_name, scan_dtype
from .engine.driver import run_search
from .engine.packed import PackedRows
from .engine.plan import DEFAULT_MEMORY
from .engine.rescore import answer, empty_result, finish
from .engine.table import ScanFrame, prepare_rows, rank_bias, scan_dtype_for, scan_row_width

RECENTRE_SHIFT = 0.25  # re-centre when the mean moved by this share of the rows' rms spread
FRAME_SAMPLE = 16384  # rows a frame check measures at most (the mean then within 1% of the spread: 1 / sqrt(16384))

class Index:
    """A brute-force k-NN index: vectors with int64 ids, exact fp32 re-scoring of a bf16 or fp32
    scan, with add / upsert / remove / get, `len`, `in`, `ids`, `memory_bytes`, filtered search
    and save / load (storage details: the `peakknn.index` module).

        index = Index(128, metric="cos"); ids = index.add(vectors)       # -> i64 ids 0, 1, ...
        result = index.search(queries, k=10, allowed_ids={3, 7})        # SearchResult(scores, ids)

    dim: vector dimension; metric: "ip" | "l2" | "cos" (cosine stores unit vectors);
    precision: "bf16" (default; scan in bfloat16, exact fp32 re-scoring) or "fp32" (the former
    keyword `dtype` still works, with a DeprecationWarning); device: where the arrays live ("cpu"
    or a CUDA device); recall_target: default for search; seed: seeds slot placement (results are
    reproducible for a given seed and history); packed_scan: also keep the scan rows packed for
    the CPU's matrix kernel (`peakknn.engine.packed`: searches of few queries run up to 1.6x faster,
    for the scan rows' memory once more; a settable attribute, not saved; no effect on CUDA).
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: MetricLike = "ip",
        precision: PrecisionLike | torch.dtype = "bf16",
        device: str | torch.device = "cpu",
        recall_target: float = 0.95,
        seed: int = 0,
        dtype: PrecisionLike | torch.dtype | None = None,
        packed_scan: bool = False,
    ):
        if dtype is not None:  # the former name: warns (or TypeError with both)
            precision = renamed("dtype", dtype, "precision", precision, default="bf16")
        asked = scan_dtype(precision, "dtype" if dtype is not None else "precision")
        self.dim = positive_int("dim", dim)
        self.metric = check_metric(metric)
        self._precision = precision_name(asked)  # as asked: what save records
        self.scan_dtype = scan_dtype_for(asked, self.dim)
        self.device = check_device(device)
        self.recall_target = check_recall_target(recall_target)
        self.seed = check_int("seed", seed, 0)
        self._packed = PackedRows()  # filled at the first search that uses it
        self.packed_scan = packed_scan
        self._lock = RWLock()  # searches and saves read, updates write (peakknn._locks)
        self._slots = SlotStore(self.device, placement_seed=self.seed)
        self._vectors = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        self._scan_rows = torch.empty(0, scan_row_width(self.dim), dtype=self.scan_dtype, device=self.device)
        self._frame: ScanFrame | None = None  # how the scan rows are shifted and scaled: see _recentre
        self._centred_at = 0  # capacity when the frame was last checked

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._slots)

    @reads
    def __contains__(self, id_) -> bool:
        return self._slots.contains(id_)

    def __repr__(self) -> str:
        return (
            f"Index(dim={self.dim}, metric={self.metric!r}, precision={self.precision!r}, "
            f"device={str(self.device)!r}, size={len(self)}, capacity={self._slots.capacity})"
        )

    @property
    def packed_scan(self) -> bool:
        """Whether small query batches scan packed rows (see the class); setting False frees them."""
        return self._packed_scan

    @packed_scan.setter
    def packed_scan(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise TypeError(f"packed_scan must be True or False, got {on!r}")
        self._packed_scan = on
        if not on:
            self._packed.changed(None)

    @property
    def precision(self) -> str:
        """"bf16" or "fp32": the precision asked for the first scan (results are re-scored in
        fp32; below 16 dims the scan runs in fp32 whatever is asked: `scan_dtype` says)."""
        return self._precision

    @property
    @reads
    def ids(self) -> torch.Tensor:
        """i64[len] ids currently stored, ascending."""
        return torch.from_numpy(self._slots.ids())

    @property
    @reads
    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (capacity included) and its id bookkeeping."""
        tensors = (self._vectors, self._scan_rows)
        return sum(t.numel() * t.element_size() for t in tensors) + self._slots.nbytes + self._packed.nbytes

    # ----------------------------------------------------------------- updates
    @writes
    def reserve(self, capacity: int) -> None:
        """Allocate room for `capacity` rows now (no doubling later while adds stay within it)."""
        capacity = check_int("capacity", capacity, 0, type_error=ValueError)
        if capacity > self._slots.capacity:
            self._grow(capacity)

    @writes
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Insert rows f32[m, dim]; ids i64[m] (default: next free ids). Returns the ids.

        Raises ValueError (and stores nothing) if an id is already present: use `upsert`.
        """
        x = self._prepare(vectors)
        new_ids = self._slots.ids_to_add(ids, x.shape[0])
        self._write(self._take_slots(x.shape[0]), new_ids, x)
        self._recentre()
        return torch.from_numpy(new_ids)

    @writes
    def upsert(self, vectors, ids) -> torch.Tensor:
        """Insert or replace rows: ids already present get the new vectors, others are added."""
        x = self._prepare(vectors)
        new_ids = as_ids("ids", ids, x.shape[0])
        slots = self._slots.lookup(new_ids)
        existing = slots >= 0
        if existing.any():
            self._write(slots[existing], new_ids[existing], x[torch.from_numpy(existing).to(x.device)])
        if (~existing).any():
            fresh = torch.from_numpy(~existing).to(x.device)
            self._write(self._take_slots(int((~existing).sum())), new_ids[~existing], x[fresh])
        self._recentre()
        return torch.from_numpy(new_ids)

    @writes
    def remove(self, ids) -> None:
        """Delete ids. Unknown ids raise ValueError and nothing is removed."""
        gone, _ = self._slots.stored(ids, " (nothing was removed)")
        t = torch.from_numpy(self._slots.release(gone)).to(self.device)
        self._vectors[t] = 0.0
        self._scan_rows[t] = 0.0
        self._scan_rows[t, self.dim] = float("-inf")
        self._packed.changed(t)

    @reads
    def get(self, ids) -> torch.Tensor:
        """f32[m, dim] stored vectors of ids (unit vectors for cosine); unknown ids raise ValueError."""
        _, slots = self._slots.stored(ids)
        return self._vectors[torch.from_numpy(slots).to(self.device)].clone()

    # ----------------------------------------------------------------- search
    @reads
    def search(
        self,
        queries,
        k: int,
        *,
        recall_target: float | None = None,
        allowed_ids=None,
        rerank: int | None = None,
        max_memory: int = DEFAULT_MEMORY,
        backend: str = "auto",
        candidates: int | None = None,
    ) -> SearchResult:
        """k nearest stored vectors of each query f32[nq, dim] (or [dim]).

        recall_target: None = the index's setting; 1.0 = exact. allowed_ids: only these ids may
        be returned (ids not in the index are ignored). rerank: bin winners re-scored exactly
        (default k for fp32, 2k for bf16; former name `candidates`). backend: "auto" (fused
        Triton kernel on CUDA when triton is installed), "torch" or "triton" (see
        `peakknn.search`). Returns SearchResult on the CPU with user ids, -1 (and -inf / +inf
        scores) where fewer than k rows qualify.
        """
        rerank = renamed("candidates", candidates, "rerank", rerank)
        k = check_k(k)
        target = self.recall_target if recall_target is None else check_recall_target(recall_target)
        check_search_options(rerank, max_memory)
        allowed = None if allowed_ids is None else as_id_set("allowed_ids", allowed_ids)
        q = self._prepare(queries, "queries")
        backend = _backend.resolve(backend, self.device)
        if len(self) == 0:  # like `search` on a 0-row database: fillers only
            return answer(queries, empty_result(q.shape[0], k, self.metric))
        if allowed_ids is None:
            table = _IndexTable(self)
        else:
            slots = self._slots.lookup(allowed)
            slots = torch.from_numpy(np.sort(slots[slots >= 0])).to(self.device)
            if backend == "triton":  # the kernel masks rows in place: no copy of the subset
                mask = torch.zeros(self._slots.high, dtype=torch.bool, device=self.device)
                mask[slots] = True
                table = _IndexTable(self, mask=mask)
            else:
                table = _IndexTable(self, subset=slots)
        rank, rows = run_search(table, q.contiguous(), k, self.metric, target, rerank, max_memory, backend)
        result = finish(rank, table.ids_of(rows), self.metric)
        return answer(queries, SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu()))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory `path` atomically (a `peakknn.io` bundle, never pickle)."""
        index_persist.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "Index":
        """Read an index written by `save`; corrupt or mismatched files raise ValueError."""
        return index_persist.load(cls, path, device)

    # ----------------------------------------------------------------- internals
    def _prepare(self, vectors, name: str = "vectors") -> torch.Tensor:
        return prepare_rows(vectors, name, self.dim, self.metric, self.device)

    def _take_slots(self, m: int) -> np.ndarray:
        """Pop m free slots (growing capacity by doubling when short)."""
        capacity = self._slots.capacity_for(m)
        if capacity > self._slots.capacity:
            self._grow(capacity)
        return self._slots.take(m)

    def _grow(self, capacity: int) -> None:
        self._extend_arrays(capacity)
        self._slots.grow(capacity)

    def _extend_arrays(self, capacity: int) -> None:
        old = self._vectors.shape[0]
        extra = capacity - old
        self._vectors = _extend(self._vectors, extra, 0.0)
        self._scan_rows = _extend(self._scan_rows, extra, 0.0)
        self._scan_rows[old:, self.dim] = float("-inf")

    def _write(self, slots: np.ndarray, ids: np.ndarray, x: torch.Tensor) -> None:
        t = torch.from_numpy(slots).to(self.device)
        if self._frame is None:  # the first rows set the frame
            self._frame = ScanFrame.of(x)
        self._vectors[t] = x
        self._slots.assign(slots, ids)
        if self._frame.holds(x):
            self._write_scan_rows(t, x)
        else:  # rows far outside the frame (tiny first rows, then normal ones): take it anew
            self._recentre(force=True)

    def _write_scan_rows(self, t: torch.Tensor, x: torch.Tensor) -> None:
        """Scan rows [frame.rows(x), bias] and biases of slots t for their vectors x."""
        xc = self._frame.rows(x)
        bias = rank_bias(xc, self.metric)
        row = torch.zeros(x.shape[0], self._scan_rows.shape[1], dtype=self.scan_dtype, device=self.device)
        row[:, : self.dim] = xc
        row[:, self.dim] = bias
        self._scan_rows[t] = row
        self._packed.changed(t)

    def _recentre(self, force: bool = False) -> None:
        """Once per capacity growth (or when forced): measure the live rows' frame (at a growth on
        at most FRAME_SAMPLE of them, evenly spread over the slots: the mean's error is then below
        1% of the spread; forced, on all); when its centre has moved from the current one by more
        than RECENTRE_SHIFT of the rows' rms spread, or its scale by more than a factor 2, adopt
        it and rewrite the scan rows. A centre off by f of the spread costs bf16 and the L2 trick
        at most a factor sqrt(1 + f^2) of the digits a perfect centre keeps."""
        n = len(self)
        if n == 0 or (self._slots.capacity == self._centred_at and not force):
            return
        self._centred_at = self._slots.capacity
        live = torch.from_numpy(self._slots.live_slots()).to(self.device)
        stride = 1 if force else max(1, live.numel() // FRAME_SAMPLE)  # forced: rows out of range may be few
        frame = ScanFrame.of(self._vectors[live[::stride]])
        shift = float(((frame.centre - self._frame.centre).double() ** 2).sum()) * frame.scale**2  # in spreads^2
        if not force and shift <= RECENTRE_SHIFT**2 and 0.5 <= frame.scale / self._frame.scale <= 2.0:
            return
        self._frame = frame
        self._write_scan_rows(live, self._vectors[live])


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
        self.frame = index._frame
        self._slot_ids = index._slots.slot_ids
        self._packed = index._packed if index.packed_scan and subset is None and mask is None and index.device.type == "cpu" else None
        if subset is None:
            self.n = index._slots.high
            self._scan = index._scan_rows
            self.live = len(index) if mask is None else int(mask.sum())  # a mask holds live slots only
        else:
            self.n = int(subset.numel())
            self._scan = index._scan_rows[subset]
            self.live = self.n  # the slots of stored allowed ids

    def _slots(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.subset is None else self.subset[rows]

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        return self._scan[start:stop]

    def packed_chunks(self, height: int) -> list[torch.Tensor] | None:
        """The full chunks of `height` scan rows packed (`engine.packed`), or None when this index
        keeps none (packed_scan off, a subset, CUDA)."""
        return None if self._packed is None else self._packed.chunks(self._scan, self.n, height)

    def exact_rows(self, rows: torch.Tensor) -> torch.Tensor:
        slots = self._slots(rows)
        return self.index._vectors.index_select(0, slots.reshape(-1)).view(*slots.shape, self.index._vectors.shape[1])

    def bias(self, start: int, stop: int) -> torch.Tensor:
        """f32[stop - start] exact rank corrections (from the fp32 vectors, in the frame; -inf for free slots)."""
        slots = torch.arange(start, stop, device=self.device) if self.subset is None else self.subset[start:stop]
        if self.index.metric == "l2":
            bias = rank_bias(self.frame.rows(self.index._vectors[slots]), "l2")
        else:
            bias = torch.zeros(slots.numel(), dtype=torch.float32, device=self.device)
        return bias.masked_fill(self._slot_ids[slots] < 0, float("-inf"))

    def alive(self, rows: torch.Tensor) -> torch.Tensor:
        alive = self._slot_ids[self._slots(rows)] >= 0
        return alive if self.mask is None else alive & self.mask[rows]

    def ids_of(self, rows: torch.Tensor) -> torch.Tensor:
        if self.subset is not None and self.subset.numel() == 0:  # no allowed id is stored
            return torch.full_like(rows, -1)
        return self._slot_ids[self._slots(rows)]


def _extend(t: torch.Tensor, extra: int, fill: float) -> torch.Tensor:
    out = torch.empty((t.shape[0] + extra, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    out[t.shape[0] :] = fill
    return out
