"""Small collective helpers: error agreement, size exchange, padded gathers (fixed-size tensors
only, never the pickling *_object calls)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

MESSAGE_BYTES = 480  # an error message travels as this many UTF-8 bytes (longer ones are cut)
_CODES = {1: ValueError, 2: TypeError}


def all_gather_tensor(out: torch.Tensor, inp: torch.Tensor, group=None) -> None:
    """out = every rank's inp concatenated (same size on each rank): `dist.all_gather_single`
    where torch has it (it deprecates all_gather_into_tensor), else all_gather_into_tensor."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def world(group) -> tuple[int, int]:
    """(rank, world size) in `group`; RuntimeError if torch.distributed is not initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("peakknn.distributed needs torch.distributed.init_process_group(...) first")
    return dist.get_rank(group), dist.get_world_size(group)


def agree(group, fn):
    """Run fn() on this rank and agree with every rank on whether all succeeded, in one small
    all_reduce (int32[world, 1 + MESSAGE_BYTES]: an error code and the message of each rank).

    Returns fn()'s value when no rank failed. Otherwise every rank raises: the rank that failed
    re-raises its own ValueError / TypeError; the others raise the same type with
    "rank r: <message>" of the lowest failing rank r. Errors other than ValueError / TypeError
    are reported as RuntimeError on the other ranks and re-raised unchanged on their own."""
    rank, size = world(group)
    err, value = None, None
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - every failure must reach the other ranks
        err = e
    flags = torch.zeros((size, 1 + MESSAGE_BYTES), dtype=torch.int32)
    if err is not None:
        code = 1 if isinstance(err, ValueError) else 2 if isinstance(err, TypeError) else 3
        msg = str(err).encode("utf-8")[:MESSAGE_BYTES]
        flags[rank, 0] = code
        flags[rank, 1 : 1 + len(msg)] = torch.tensor(list(msg), dtype=torch.int32)
    dist.all_reduce(flags, group=group)
    if err is not None:
        raise err
    failed = flags[:, 0].nonzero()
    if failed.numel():
        r = int(failed[0, 0])
        raw = bytes(int(b) for b in flags[r, 1:] if int(b) != 0).decode("utf-8", errors="replace")
        raise _CODES.get(int(flags[r, 0]), RuntimeError)(f"rank {r}: {raw}")
    return value


def gather_ints(values: list[int], group) -> torch.Tensor:
    """i64[world, len(values)]: every rank's `values` (all_gather_into_tensor)."""
    return _gather_values(values, torch.int64, group)


def gather_padded(t: torch.Tensor, counts: list[int], group) -> list[torch.Tensor]:
    """Every rank's rows of t ([counts[rank], ...]): pads to max(counts) rows, one
    all_gather_into_tensor, and returns the unpadded per-rank tensors (rank order)."""
    _, size = world(group)
    most = max(counts)
    if most == 0:
        return [t[:0].clone() for _ in range(size)]
    pad = torch.zeros((most, *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    out = torch.empty((size * most, *t.shape[1:]), dtype=t.dtype)
    all_gather_tensor(out, pad.contiguous(), group)
    return [out[r * most : r * most + counts[r]] for r in range(size)]


def gather_floats(values: list[float], group) -> torch.Tensor:
    """f64[world, len(values)]: every rank's `values`."""
    return _gather_values(values, torch.float64, group)


def _gather_values(values: list, dtype: torch.dtype, group) -> torch.Tensor:
    """[world, len(values)] of `dtype`: every rank's `values` (one all_gather_into_tensor)."""
    _, size = world(group)
    mine = torch.tensor(values, dtype=dtype)
    out = torch.empty((size, mine.numel()), dtype=dtype)
    all_gather_tensor(out.view(-1), mine, group)
    return out


def route(owner: torch.Tensor, tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send row i of every tensor in `tensors` (same number of rows) to rank owner[i]: rows are
    sorted by owner (stably), sizes exchanged once, then one all_to_all_single per tensor.
    Returns the received tensors, rows from rank 0 first, then rank 1, ..."""
    rank, size = world(group)
    order = torch.argsort(owner, stable=True)
    sends = torch.bincount(owner, minlength=size).tolist()
    sizes = gather_ints(sends, group)  # [src, dst]
    recv = [int(sizes[src, rank]) for src in range(size)]
    out = []
    for t in tensors:
        t = t[order].contiguous()
        width = math.prod(t.shape[1:])
        got = torch.empty((sum(recv), *t.shape[1:]), dtype=t.dtype)
        dist.all_to_all_single(got.view(-1), t.view(-1), [r * width for r in recv], [s * width for s in sends], group=group)
        out.append(got)
    return out


def shares(counts: list[int], total: int) -> list[int]:
    """How many of `total` rows each holder of counts[r] rows contributes: proportional to its
    count, largest remainders rounded up (so they add up to total), never more than its count
    (total <= sum(counts))."""
    have = sum(counts)
    if total >= have:
        return list(counts)
    exact = [c * total / have for c in counts]
    out = [int(e) for e in exact]
    for r in sorted(range(len(counts)), key=lambda r: (out[r] - exact[r], r))[: total - sum(out)]:
        out[r] += 1
    return out


def root_rank(group) -> int:
    """The global rank of the group's rank 0 (the `src` / `dst` of broadcast and gather)."""
    return 0 if group is None else dist.get_global_rank(group, 0)


_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.int8)
_HEADER = 6  # per tensor: present, dtype code, ndim (<= 4), dims


def broadcast_tensors(tensors: list[torch.Tensor | None] | None, count: int, group) -> list[torch.Tensor | None]:
    """Rank 0's `count` tensors (any of them None; dtypes of _DTYPES, at most 4 dims) on every
    rank: one broadcast of their shapes, then one per tensor. The other ranks pass None."""
    rank, _ = world(group)
    header = torch.zeros((count, _HEADER), dtype=torch.int64)
    if rank == 0:
        for i, t in enumerate(tensors):
            if t is not None:
                header[i, :3] = torch.tensor([1, _DTYPES.index(t.dtype), t.ndim])
                header[i, 3 : 3 + t.ndim] = torch.tensor(t.shape)
    dist.broadcast(header, src=root_rank(group), group=group)
    out = []
    for i, (present, code, ndim, *dims) in enumerate(header.tolist()):
        if not present:
            out.append(None)
            continue
        t = tensors[i].contiguous() if rank == 0 else torch.empty(dims[:ndim], dtype=_DTYPES[code])
        dist.broadcast(t, src=root_rank(group), group=group)
        out.append(t)
    return out


def gather_to_root(t: torch.Tensor, counts: list[int], group) -> torch.Tensor | None:
    """Every rank's rows of t ([counts[rank], ...]) concatenated on rank 0 (rank order; padded to
    max(counts) rows for one `dist.gather`); None on the other ranks."""
    rank, size = world(group)
    most = max(counts)
    if most == 0:
        return t[:0].clone() if rank == 0 else None
    pad = torch.zeros((most, *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    bufs = [torch.empty_like(pad) for _ in range(size)] if rank == 0 else None
    dist.gather(pad, bufs, dst=root_rank(group), group=group)
    return torch.cat([b[: counts[r]] for r, b in enumerate(bufs)]) if rank == 0 else None


class Reducer:
    """`quant.avq.Reduce` over the ranks of `group`: "sum" and "max" with `dist.all_reduce`;
    "lossy_sum" with `all_reduce_quantized` (int8 blocks) when `quantized` and the tensor is
    floating point, else exactly. The result replaces the tensor (returned too)."""

    def __init__(self, group, quantized: bool = False):
        self.group, self.quantized = group, quantized

    def __call__(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if op == "lossy_sum" and self.quantized and t.is_floating_point():
            from .quantized import all_reduce_quantized

            return all_reduce_quantized(t, op="sum", group=self.group)
        if op not in ("sum", "lossy_sum", "max"):
            raise ValueError(f"op must be 'sum', 'lossy_sum' or 'max', got {op!r}")
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)
        return t
