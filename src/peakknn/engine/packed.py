"""Scan rows packed once for the CPU's matrix kernel, chunk by chunk (`PackedRows`).

`torch.mm(q, rows.T)` on a CPU hands the rows to the matrix kernel (oneDNN for bf16, MKL for
fp32) as its weight operand, which is reordered into the kernel's blocked layout on every call: a
read and a write of every row per pass, which at few queries costs more than the product itself.
Measured on one Zen 4 core, 56,000 x 392 bf16 rows in chunks of 1,750 (docs/ALGORITHMS.md): 6.6 ms
a pass for 1 query plain, 3.8 ms packed; 9.8 / 5.8 ms at 16 queries; 18.9 / 15.5 ms at 64; from
128 queries on the plain product is as fast or faster. `PackedRows` keeps the full chunks of a
table's scan rows packed (`torch.ops.mkldnn._reorder_linear_weight`, the op that torch.compile's
freezing pass packs weights with) and multiplies with `torch.ops.mkldnn._linear_pointwise`. The
engine uses them for query blocks of up to `perfmodel.Ceilings.packed_queries` queries (measured
per machine and dtype: 0 where packing does not pay or the ops are missing).

The packed copy costs the memory of the scan rows once more; `Index(packed_scan=True)` asks for it.
"""

from __future__ import annotations

import threading

import torch


def pack(rows: torch.Tensor) -> torch.Tensor:
    """rows [c, d'] (CPU, bf16 or fp32) in the matrix kernel's layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(rows.contiguous(), None)


def product(q: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """q [m, d'] @ rows.T for `pack(rows)`: [m, c] in q's dtype (fp32 accumulation)."""
    return torch.ops.mkldnn._linear_pointwise(q, packed, None, "none", [], "")


def supported(dtype: torch.dtype) -> bool:
    """True when this torch can pack and multiply `dtype` rows on the CPU, checked on a tiny
    product against torch.mm (False where the ops are missing or refuse, e.g. bf16 on a CPU
    without AVX-512)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        rows = torch.arange(24 * 16, dtype=torch.float32).reshape(24, 16).remainder(7).sub(3).to(dtype)
        q = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 16).remainder(5).sub(2).to(dtype)
        return bool(torch.equal(product(q, pack(rows)).float(), torch.mm(q, rows.T).float()))  # small integers: exact either way
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


SWITCH_AFTER = 8  # searches in a row at another chunk height before the packs are made anew for it


class PackedRows:
    """The full chunks of a table's scan rows, packed (`pack`) at one chunk height; thread-safe.

    Writers report the slots they wrote (`changed`); `chunks` packs, before it answers, every
    chunk that changed or is new. A search plan's chunk height depends on k, the recall target
    and n: searches at another height get None (plain products) until SWITCH_AFTER of them came in
    a row, then the rows are packed anew at that height, so mixed traffic never repacks on every
    search. If packing fails (this torch or CPU cannot), every later call answers None."""

    def __init__(self):
        self._lock = threading.Lock()
        self._height = 0  # rows per packed chunk (0: nothing packed yet)
        self._chunks: list[torch.Tensor] = []
        self._stale: set[int] = set()  # chunks whose rows were written since they were packed
        self._other, self._asked = 0, 0  # another height asked for, and how many times in a row
        self.failed: str | None = None  # why packing was given up

    def changed(self, slots: torch.Tensor | None = None) -> None:
        """Rows at `slots` (i64, any shape; None: every row) were written."""
        with self._lock:
            if not self._chunks:
                return
            if slots is None:
                self._chunks, self._stale, self._height = [], set(), 0
            elif slots.numel():
                self._stale.update(torch.unique(slots.reshape(-1) // self._height).tolist())

    def chunks(self, rows: torch.Tensor, n: int, height: int) -> list[torch.Tensor] | None:
        """Chunk c (rows [c * height, (c + 1) * height) of rows[:n]) packed, for c < n // height;
        None where the packs are kept at another height (see the class) or packing failed."""
        with self._lock:
            if self.failed is not None:
                return None
            if height != self._height and self._height:
                self._asked = self._asked + 1 if height == self._other else 1
                self._other = height
                if self._asked < SWITCH_AFTER:
                    return None
            self._other, self._asked = 0, 0
            if height != self._height:
                self._chunks, self._stale, self._height = [], set(), height
            try:
                self._pack(rows, n, height)
            except (RuntimeError, NotImplementedError) as e:  # e.g. a cached ceiling from a CPU that could
                self.failed, self._chunks, self._stale = f"packing failed: {e}", [], set()
                return None
            return list(self._chunks)

    def _pack(self, rows: torch.Tensor, n: int, height: int) -> None:
        full = n // height
        del self._chunks[full:]
        for c in sorted(self._stale):
            if c < len(self._chunks):
                self._chunks[c] = pack(rows[c * height : (c + 1) * height])
        self._stale = set()
        while len(self._chunks) < full:
            c = len(self._chunks)
            self._chunks.append(pack(rows[c * height : (c + 1) * height]))

    @property
    def nbytes(self) -> int:
        """Bytes of the packed chunks (their elements; the kernel's padding is not counted)."""
        with self._lock:
            return sum(t.numel() * t.element_size() for t in self._chunks)
