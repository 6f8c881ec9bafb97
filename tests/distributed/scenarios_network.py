"""Scenarios for peakknn.perfmodel.network under gloo (as "scenarios_network:NAME"): the
collectives and bytes of a real ShardedIndex.search against `search_traffic`, and (world size 2)
`measure`."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from scenarios import _check, _data

from peakknn.distributed import ShardedIndex
from peakknn.partitioned import PartitionSettings
from peakknn.perfmodel import network

COUNTED = ("all_reduce", "all_gather_into_tensor", "all_gather_single", "all_to_all_single", "broadcast", "gather")


class Counter:
    """Wraps the torch.distributed collectives: counts calls and the bytes this rank receives
    (output bytes minus its own contribution)."""

    def __init__(self):
        self.calls, self.bytes, self.saved = 0, 0.0, {}

    def __enter__(self):
        world = dist.get_world_size()
        for name in COUNTED:
            fn = getattr(dist, name, None)
            if fn is None:
                continue
            self.saved[name] = fn

            def wrapped(*args, _fn=fn, _name=name, **kwargs):
                self.calls += 1
                first = args[0] if args else next(iter(kwargs.values()))
                if _name in ("all_gather_into_tensor", "all_gather_single"):
                    self.bytes += first.numel() * first.element_size() * (world - 1) / world
                elif _name == "all_to_all_single":
                    splits = args[2] if len(args) > 2 else kwargs.get("output_split_sizes")
                    width = first.element_size() * (first.numel() // max(1, sum(splits))) if splits else first.element_size()
                    own = splits[dist.get_rank()] if splits else first.numel() // world
                    self.bytes += first.numel() * first.element_size() - own * width
                elif _name == "all_reduce":
                    self.bytes += 2 * (world - 1) / world * first.numel() * first.element_size()
                return _fn(*args, **kwargs)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def counts(rank: int, world: int, out, **_) -> dict:
    res: dict = {}
    dim, k, per_rank = 48, 10, 40
    q = _data(per_rank, dim, 9 + rank)
    for kind, options in (("flat", {}), ("partitioned", {"settings": PartitionSettings(partitions=8)})):
        idx = ShardedIndex(dim, metric="ip", kind=kind, **options)
        idx.add(_data(400, dim, rank))
        target = 0.9 if kind == "partitioned" else None
        idx.search(q, k, recall_target=target)  # a partitioned index calibrates in its first such search
        with Counter() as c:
            idx.search(q, k, recall_target=target)
        model = network.search_traffic(per_rank * world, k, dim, world)
        _check(res, f"collectives:{kind}", c.calls == model.collectives, f"{c.calls} != {model.collectives}")
        _check(res, f"bulk_bytes:{kind}", model.bulk_bytes <= c.bytes <= model.bytes_per_rank * 1.01, f"counted {c.bytes}, model {model.bulk_bytes} + {model.small_bytes}")
    if world == 2:
        _measure(res, world)
    return res


def _measure(res: dict, world: int) -> None:
    """network.measure gives every rank the same finite link."""
    link = network.measure(sizes=(1 << 14, 1 << 18, 1 << 20), reps=3)
    _check(res, "finite", math.isfinite(link.bandwidth) and link.bandwidth > 1e6 and 0 < link.latency_s < 0.1, link)
    same = torch.tensor([link.bandwidth, link.latency_s], dtype=torch.float64)
    everyone = torch.empty(world * 2, dtype=torch.float64)
    dist.all_gather_into_tensor(everyone, same)
    _check(res, "same_on_all_ranks", bool((everyone.view(world, 2) == same).all()))
    res["_link"] = {"bandwidth": link.bandwidth, "latency_s": link.latency_s, "name": link.name}
