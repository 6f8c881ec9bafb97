"""The torch fast paths of approx_topk: indices of the two-stage top-k of each row of rows: [R, n].

Both compute exactly what `reference.approx_topk_reference` specifies for L = `bins` strided
bins (element j -> bin j mod L), each keeping its best `per_bin` (the first index among equal
values), and an exact top-k over the winners. Rows are processed in blocks (bounded memory,
cache-sized working sets), on single-threaded worker threads where possible (`_workers`). A
row holding a NaN is reported in the returned mask; approx_topk answers such rows with
torch.topk.

per_bin == 1 (`bin_max_indices`): one strided max over a [r, tiles, T, L] view gives the best
of each bin inside each tile with no index bookkeeping (T = `tile_groups(n / L)`); an exact
top-k picks the winning bins and only their winning tiles (T elements each) are revisited for
the index.

per_bin > 1 (`bin_keys_indices`): each element becomes one integer key that orders like its
value, with its group (j // L) in the low bits so that equal values rank the earlier element
first: int64 = (ordered fp32 bits << 32) | (G - 1 - group) for fp32, int32 with 16-bit halves
for fp16 / bf16. Keys are distinct within a bin, so the best per_bin of every bin is a network
of elementwise max / min over the group axis (the only elementwise ops that are fast on CPU;
torch.where with a bool mask is ~20x slower), with no index to carry: S parallel streams insert
each group into their sorted lists, then the streams are merged pairwise. The top-k over the
L * per_bin winning keys decodes to indices (group from the low bits, bin from the position).
fp64 has no such key and runs the reference.
"""

from __future__ import annotations

import math
import threading

import torch

from .._checks import ceil_div
from . import _workers

TILE_GROUPS = (4, 16)  # per_bin == 1: the range of groups per tile (index recovery revisits that many elements per winner)
BLOCK_ELEMENTS = 1 << 21  # per_bin == 1: rows are processed in blocks of at least about this many elements
KEY_BLOCK_BYTES = 1 << 21  # per_bin > 1: blocks of rows whose keys take at least about this many bytes (cache-sized)
MAX_BLOCKS = 8  # ... and, where blocks run on the calling thread with torch's threads (no workers),
# at most this many blocks per call: each torch call is then a parallel region, which on a CPU
# shared with other processes waits milliseconds for a descheduled thread
STREAM_STEPS = 8  # per_bin > 1: groups each stream inserts one at a time (more streams, fewer steps)
_ORDER = {torch.float32: (torch.int32, torch.int64, 32), torch.float16: (torch.int16, torch.int32, 16), torch.bfloat16: (torch.int16, torch.int32, 16)}


def tile_groups(groups: int) -> int:
    """Groups per tile of the per_bin = 1 path: the power of two nearest sqrt(G), within
    TILE_GROUPS. The revisit reads one cache line per element of a winning tile (T per winner),
    and finding the winning tile reads G / T tile maxima per winner."""
    low, high = TILE_GROUPS
    return min(high, max(low, 1 << round(math.log2(max(1.0, math.sqrt(groups))))))


def has_keys(dtype: torch.dtype) -> bool:
    """True for the dtypes `bin_keys_indices` handles (fp32, fp16, bf16)."""
    return dtype in _ORDER


def streams(groups: int) -> int:
    """Parallel streams of the per_bin > 1 network: a power of two, so that each stream inserts
    at most STREAM_STEPS groups (fewer, larger elementwise ops)."""
    return 1 << max(0, math.ceil(math.log2(ceil_div(groups, STREAM_STEPS))))


def block_rows(rows: int, row_size: int, block_size: int, pooled: bool = True) -> int:
    """Rows per block: blocks of about block_size (the unit of row_size: elements or bytes);
    without workers, at most MAX_BLOCKS of them."""
    per = max(1, block_size // row_size)
    return per if pooled else max(per, ceil_div(rows, MAX_BLOCKS))


def key_block_rows(rows: int, padded: int, key_dtype: torch.dtype, pooled: bool = True) -> int:
    """Rows per block of the per_bin > 1 path for rows of `padded` keys (G * L)."""
    return block_rows(rows, padded * key_dtype.itemsize, KEY_BLOCK_BYTES, pooled)


def network_ops(groups: int, per_bin: int) -> tuple[int, int]:
    """(elementwise ops, elements they touch) per block and per row of the per_bin > 1 network
    over `groups` groups of L = 1 bins (multiply the elements by L): S streams insert G/S - 1
    groups each (2 * per_bin - 1 ops over S columns), then log2(S) merges insert per_bin lists of
    S/2, S/4, ..., 1 columns. The counts of the cost model (peakknn.topk.costs)."""
    s = streams(groups)
    insert = 2 * per_bin - 1
    steps = ceil_div(groups, s) - 1
    ops = insert * (steps + per_bin * int(math.log2(s)))
    return ops, insert * (steps * s + per_bin * (s - 1))


def ordered(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """Signed integers with the bit width of values that order like them (largest first; for
    largest=False, smallest first): torch.topk runs ~1.5x faster on integers than on floats
    (no NaN-aware comparison). -0.0 orders below +0.0; NaN rows are answered elsewhere."""
    bits = values.element_size() * 8
    ints = values.view({16: torch.int16, 32: torch.int32, 64: torch.int64}[bits])
    mask = torch.bitwise_right_shift(ints, bits - 1).bitwise_and_(torch.iinfo(ints.dtype).max)
    if not largest:
        mask.bitwise_not_()
    return mask.bitwise_xor_(ints)


# ------------------------------------------------------------------------------ per_bin == 1


def bin_max_indices(rows: torch.Tensor, k: int, bins: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(i64[R, k] indices sorted best first, bool[R] rows holding a NaN) for per_bin = 1."""
    r, n = rows.shape
    block = block_rows(r, n, BLOCK_ELEMENTS, _workers.pooled(rows.device))
    parts = _workers.map_blocks(lambda i: _bin_max_block(rows[i : i + block], k, bins, largest), list(range(0, r, block)), rows.device)
    return _cat(parts)


def _bin_max_block(rows: torch.Tensor, k: int, bins: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r, n = rows.shape
    reduce, pair = (torch.amax, torch.maximum) if largest else (torch.amin, torch.minimum)
    t_groups = tile_groups(n // bins)
    tile = t_groups * bins
    full = n // tile
    tail = _tail_best(rows[:, full * tile :], bins, largest)  # [r, bins] or None: the partial tile
    tile_best = reduce(rows[:, : full * tile].view(r, full, t_groups, bins), dim=2) if full else None  # [r, full, bins]
    if tile_best is None:
        bin_best = tail
    else:
        bin_best = reduce(tile_best, dim=1)
        if tail is not None:
            bin_best = pair(bin_best, tail)
    has_nan = torch.isnan(bin_best).any(1)  # max / min propagate NaN into the bin's best
    top_bins = torch.topk(ordered(bin_best, largest), k, dim=1, sorted=True).indices  # [r, k]
    # the winning tile of each chosen bin: the first tile reaching the bin's best (the partial
    # tile, last, only when no whole tile does)
    best = bin_best.gather(1, top_bins)  # [r, k]
    if tile_best is None:
        win_tile = torch.zeros_like(top_bins)
    else:
        hit = tile_best.gather(2, top_bins.unsqueeze(1).expand(r, full, k)) == best.unsqueeze(1)  # [r, full, k]
        win_tile = first_true(hit, 1)  # `full` where no whole tile reaches the best
        if tail is None:
            win_tile.clamp_max_(full - 1)  # (no hit only in NaN rows, answered elsewhere)
    # revisit the T elements of (win_tile, bin): positions t * tile + g * bins + b, laid out
    # [r, T, k] so that every search below runs across the k winners (vectorised)
    pos = (win_tile * tile + top_bins).unsqueeze(1) + (torch.arange(t_groups, device=rows.device) * bins).unsqueeze(1)  # [r, T, k]
    if n % tile:  # a partial tile: positions past n are never the answer
        hit = rows.gather(1, pos.clamp_max(n - 1).view(r, -1)).view(r, t_groups, k) == best.unsqueeze(1)
        hit &= pos < n
    else:
        hit = rows.gather(1, pos.view(r, -1)).view(r, t_groups, k) == best.unsqueeze(1)
    first = first_true(hit, 1).clamp_max_(t_groups - 1)  # (no hit only in NaN rows, answered elsewhere)
    return pos.gather(1, first.unsqueeze(1)).squeeze(1), has_nan


def first_true(hit: torch.Tensor, dim: int) -> torch.Tensor:
    """i64: the first index along dim where hit is True, hit.shape[dim] where none is. A max
    over descending weights: torch.argmax is ~20x slower than amax on CPU for short dims."""
    m = hit.shape[dim]
    dtype = torch.uint8 if m < 256 else torch.int32
    shape = [1] * hit.ndim
    shape[dim] = m
    weights = torch.arange(m, 0, -1, dtype=dtype, device=hit.device).view(shape)
    return m - (hit.to(dtype) * weights).amax(dim).long()


def _tail_best(tail: torch.Tensor, bins: int, largest: bool) -> torch.Tensor | None:
    """f[r, bins]: the best of each bin over the last partial tile (whole groups, then the last
    partial group, whose missing bins read the worst value), or None when there is none."""
    r, m = tail.shape
    if m == 0:
        return None
    reduce, pair = (torch.amax, torch.maximum) if largest else (torch.amin, torch.minimum)
    whole = m // bins
    rest = m - whole * bins
    if whole:
        best = reduce(tail[:, : whole * bins].view(r, whole, bins), dim=1)
    else:
        best = tail.new_full((r, bins), float("-inf") if largest else float("inf"))
    if rest:
        best[:, :rest] = pair(best[:, :rest], tail[:, whole * bins :]) if whole else tail[:, whole * bins :]
    return best


# ------------------------------------------------------------------------------ per_bin > 1


def bin_keys_indices(rows: torch.Tensor, k: int, bins: int, per_bin: int, largest: bool, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(i64[R, k] indices, bool[R] rows holding a NaN) for per_bin > 1 and fp32 / fp16 / bf16
    rows (others: see has_keys). sorted=False leaves the k in an unspecified order."""
    r, n = rows.shape
    half_dtype, key_dtype, bits = _ORDER[rows.dtype]
    groups = ceil_div(n, bins)
    if bits == 16 and groups > 1 << 16:  # the group does not fit 16 bits: widen to fp32 keys
        return bin_keys_indices(rows.float(), k, bins, per_bin, largest, sorted)
    s = streams(groups)
    groups = ceil_div(groups, s) * s  # whole steps for every stream (the extra groups are padding)
    block = key_block_rows(r, groups * bins, key_dtype, _workers.pooled(rows.device))
    shape = (min(block, r), groups, bins, n, per_bin, s, half_dtype, key_dtype, rows.device)
    buffers = threading.local()  # one set of buffers per thread that runs blocks

    def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        work = getattr(buffers, "work", None)
        if work is None:
            work = buffers.work = _KeyWork(*shape)
        part = rows[i : i + block]
        keys = work.fill(part, largest)
        winners = _network(keys, per_bin, s, work)  # [b, per_bin * bins] keys
        top = torch.topk(winners, k, dim=1, sorted=sorted)
        group = (groups - 1) - (top.values & ((1 << bits) - 1))
        return group * bins + top.indices.remainder_(bins), torch.isnan(part.amax(1))

    return _cat(_workers.map_blocks(one, list(range(0, r, block)), rows.device))


class _KeyWork:
    """Buffers reused by every block: the keys [b, G, L] (their group halves written once), the
    ordering scratch [b, n] and the network's lists [per_bin, b, S, L]."""

    def __init__(self, b, groups, bins, n, per_bin, s, half_dtype, key_dtype, device):
        self.groups, self.bins, self.n = groups, bins, n
        self.half_dtype, self.bits = half_dtype, torch.iinfo(half_dtype).bits
        self.halves = torch.empty((b, groups * bins, 2), dtype=half_dtype, device=device)
        code = torch.arange(groups - 1, -1, -1, device=device).repeat_interleave(bins)  # G - 1 - group
        if self.bits == 16:
            code = torch.where(code >= 1 << 15, code - (1 << 16), code)  # the low half's bits, as int16
        self.halves[:, :, 0] = code.to(half_dtype)
        self.halves[:, n:, 1] = torch.iinfo(half_dtype).min  # padding ranks below every element
        self.scratch = torch.empty((b, n), dtype=half_dtype, device=device)
        self.lists = torch.empty((per_bin, b, s, bins), dtype=key_dtype, device=device)
        self.spill = torch.empty((2, b, s, bins), dtype=key_dtype, device=device)
        self.key_dtype = key_dtype

    def fill(self, part: torch.Tensor, largest: bool) -> torch.Tensor:
        """The keys of part [b, n] as [b, G, L]: ordered bits in the high half. Ordered bits of a
        float's pattern i: i ^ ((i >> (bits-1)) & MAX), a signed int that orders like the value
        (-0 below +0); for the smallest, its complement i ^ ~((i >> (bits-1)) & MAX)."""
        b = part.shape[0]
        i = part.view(self.half_dtype)
        t = self.scratch[:b]
        torch.bitwise_right_shift(i, self.bits - 1, out=t)
        t.bitwise_and_(torch.iinfo(self.half_dtype).max)
        if not largest:
            t.bitwise_not_()
        t.bitwise_xor_(i)
        halves = self.halves[:b]
        halves[:, : self.n, 1] = t  # (faster than an xor into the strided half)
        return halves.view(self.key_dtype).view(b, self.groups, self.bins)


def _network(keys: torch.Tensor, per_bin: int, s: int, work: _KeyWork) -> torch.Tensor:
    """[b, per_bin * L]: the best per_bin keys of each column of keys [b, G, L] (G a multiple of s)."""
    b, groups, bins = keys.shape
    lists = work.lists[:, :b]
    lists[0] = keys[:, :s]
    lists[1:] = torch.iinfo(work.key_dtype).min
    slots = list(lists.unbind(0))
    spill = list(work.spill[:, :b].unbind(0))
    for g in range(s, groups, s):
        _insert(slots, keys[:, g : g + s], spill)
    while s > 1:  # merge the upper half of the streams into the lower half
        s //= 2
        upper = [slot[:, s : 2 * s] for slot in slots]
        slots = [slot[:, :s] for slot in slots]
        spill = [buf[:, :s] for buf in spill]
        for new in upper:
            _insert(slots, new, spill)
    return torch.stack([slot[:, 0] for slot in slots], 1).view(b, per_bin * bins)


def _insert(slots: list[torch.Tensor], new: torch.Tensor, spill: list[torch.Tensor]) -> None:
    """Insert `new` [b, s, L] into the sorted lists `slots` (per_bin tensors [b, s, L], best
    first), in place: at each slot the larger stays and the smaller moves on (2 * per_bin - 1
    elementwise max / min)."""
    for j in range(len(slots) - 1):
        moved = spill[j % 2]
        torch.minimum(slots[j], new, out=moved)
        torch.maximum(slots[j], new, out=slots[j])
        new = moved
    torch.maximum(slots[-1], new, out=slots[-1])


def _cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
