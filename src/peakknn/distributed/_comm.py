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
