"""Scenarios of ShardedIndex(kind="partitioned") run on every rank by worker.py (as
"scenarios_partitioned:NAME"); each returns {check: None (passed) or a detail}. Every rank builds
the same global data from fixed seeds, so it can compute the reference alone."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from scenarios import _all_ids, _check, _data, _raise_everywhere, _raises, _same_as_single, _slices, _uneven

import peakknn
import peakknn.distributed.quantized as quantized_module
from peakknn.distributed import ShardedIndex
from peakknn.distributed.partitioned import probe_for, trained_signature
from peakknn.partitioned import PartitionSettings


def _gathered(t: torch.Tensor) -> torch.Tensor:
    """[world, *t.shape]: every rank's t (same shape everywhere)."""
    out = torch.empty((dist.get_world_size(), *t.shape), dtype=t.dtype)
    dist.all_gather_into_tensor(out.view(-1), t.contiguous().view(-1))
    return out


def _identical_training(res: dict, tag: str, idx: ShardedIndex) -> None:
    """Every rank holds bit-identical centres, frame, projection, codec and probe gaps."""
    t = idx.shard._trained
    _check(res, f"trained:{tag}", t is not None)
    if t is None:
        return
    sig = _gathered(torch.tensor([trained_signature(idx.shard)]))
    _check(res, f"same_training:{tag}", bool((sig == sig[0]).all()), sig.tolist())
    centres = _gathered(t.centres)
    _check(res, f"same_centres:{tag}", bool((centres == centres[0]).all()))
    if t.codec is not None:
        state = next(iter(t.codec.state().values()))
        _check(res, f"same_codec:{tag}", bool((_gathered(state) == state).all()))


def _recall(got: torch.Tensor, truth: torch.Tensor) -> tuple[int, int]:
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, truth)), truth.numel()


def _mean_over_ranks(hits: int, total: int) -> float:
    t = torch.tensor([hits, total], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def exact(rank: int, world: int, out, **_) -> dict:
    """Uneven inputs (rank 1 passes nothing), automatic training at train_size, results at
    recall_target=1.0 equal one flat Index of all rows (ties allowed), with and without a filter;
    then shards of very different sizes with the last one empty."""
    res: dict = {}
    n, dim, k = 2400, 16, 10
    x = _data(n, dim, 1)
    q = _data(60, dim, 2)
    mine = _slices(60, world, list(reversed(_uneven(world))))[rank]
    for metric, codes in (("l2", "int8"), ("cos", "bf16")):
        settings = PartitionSettings(partitions=16, codes=codes)
        idx = ShardedIndex(dim, metric=metric, kind="partitioned", settings=settings)
        add = _slices(n, world, _uneven(world))[rank]
        half = add.start + (add.stop - add.start) // 8
        idx.add(x[add.start : half], ids=torch.arange(add.start, half))  # 1/8 of the rows: below train_size, every shard scans exactly
        _check(res, f"untrained:{metric}", not idx.is_trained and len(idx) < settings.train_size, len(idx))
        single = peakknn.Index(dim, metric=metric)
        rows = _cat_slices(n, world, rank_fraction=8)
        single.add(x[rows], ids=rows)
        got = idx.search(q[mine], k, recall_target=0.95)
        _same_as_single(res, f"untrained_exact:{metric}", got, single.search(q[mine], k, recall_target=1.0), x, q[mine], metric)
        idx.add(x[half : add.stop], ids=torch.arange(half, add.stop))  # the global count passes train_size: every shard trains, together
        _check(res, f"len:{metric}", len(idx) == n and idx.is_trained, len(idx))
        _check(res, f"owner:{metric}", bool((idx.shard.ids % world == rank).all()))
        _identical_training(res, metric, idx)
        single = peakknn.Index(dim, metric=metric)
        single.add(x)
        _same_as_single(res, metric, idx.search(q[mine], k, recall_target=1.0), single.search(q[mine], k, recall_target=1.0), x, q[mine], metric)
        allowed = list(range(rank, n, 3))
        got = idx.search(q[mine], k, recall_target=1.0, allowed_ids=allowed)
        _same_as_single(res, f"allowed:{metric}", got, single.search(q[mine], k, recall_target=1.0, allowed_ids=allowed), x, q[mine], metric)
        _check(res, f"allowed_only:{metric}", bool(torch.isin(got.ids, torch.tensor(allowed)).all()))
        plain = idx.search(q[mine], k)  # the default probe
        _check(res, f"default_probe:{metric}", tuple(plain.ids.shape) == (mine.stop - mine.start, k) and bool((plain.ids >= 0).all()))
    # shards of sizes about 3 : 1 : 0 (the last rank's shard empty); each rank passes a third
    owner = torch.from_numpy(np.random.default_rng(5).choice(max(1, world - 1), size=n, p=_weights(world)))
    ids = torch.arange(n) * world + owner
    idx = ShardedIndex(dim, metric="ip", kind="partitioned", settings=PartitionSettings(partitions=16, codes="pq4"))
    add = _slices(n, world, [1] * world)[rank]
    idx.add(x[add], ids=ids[add])
    _check(res, "empty_shard", (len(idx.shard) == 0) == (rank == world - 1) and idx.is_trained, len(idx.shard))
    _identical_training(res, "uneven", idx)
    single = peakknn.Index(dim, metric="ip")
    single.add(x, ids=ids)
    got, want = idx.search(q[mine], k, recall_target=1.0), single.search(q[mine], k, recall_target=1.0)
    _check(res, "uneven:scores", torch.allclose(got.scores, want.scores, atol=2e-4), got.scores - want.scores)
    approx = idx.search(q[mine], k, recall_target=0.9)
    _check(res, "uneven:approx_runs", bool((approx.ids >= 0).all()))
    return res


def _weights(world: int) -> list[float]:
    w = [3.0, 1.0, 1.0][: max(1, world - 1)]
    return [v / sum(w) for v in w]


def _cat_slices(n: int, world: int, rank_fraction: int) -> torch.Tensor:
    """Rows every rank added in exact()'s first add (the first 1/rank_fraction of its slice)."""
    rows = []
    for s in _slices(n, world, _uneven(world)):
        rows.append(torch.arange(s.start, s.start + (s.stop - s.start) // rank_fraction))
    return torch.cat(rows)


def recall(rank: int, world: int, out, **_) -> dict:
    """Measured recall@10 over the union against exact >= target - 0.01 at 0.95 and 0.99
    (bf16 codes with the calibrated projection and spill; 4-bit PQ; quantized training)."""
    res: dict = {}
    n, dim, nq, k = 8000, 32, 300, 10
    x = _data(n, dim, 3)
    q = _data(nq, dim, 4)
    mine = _slices(nq, world, [1] * world)[rank]
    add = _slices(n, world, _uneven(world))[rank]
    calls = [0]
    original = quantized_module.all_reduce_quantized

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    quantized_module.all_reduce_quantized = counted
    try:
        for name, metric, codes, quantized, targets in (
            ("bf16", "ip", "bf16", False, (0.95, 0.99)),
            ("pq4", "l2", "pq4", False, (0.95,)),
            ("quantized", "ip", "bf16", True, (0.95, 0.99)),
        ):
            calls[0] = 0
            idx = ShardedIndex(dim, metric=metric, kind="partitioned", settings=PartitionSettings(partitions=64, codes=codes), quantized_training=quantized)
            idx.add(x[add])
            _identical_training(res, name, idx)
            _check(res, f"quantized_used:{name}", (calls[0] > 0) == quantized, calls[0])
            xx, qq = x.double(), q[mine].double()
            truth = torch.topk(qq @ xx.T if metric == "ip" else -torch.cdist(qq, xx), k, dim=1).indices
            for target in targets:
                got = idx.search(q[mine], k, recall_target=target)
                mean = _mean_over_ranks(*_recall(got.ids, truth))
                res.setdefault("_recall", {})[f"{name} target={target}"] = mean
                _check(res, f"recall:{name}:{target}", mean >= target - 0.01, f"recall {mean}")
            probe = probe_for(idx, 0.95, k)
            _check(res, f"approximate:{name}", probe < 64, probe)  # fewer than all partitions
    finally:
        quantized_module.all_reduce_quantized = original
    return res


def updates(rank: int, world: int, out, **_) -> dict:
    """add / upsert / remove routing on a trained partitioned index."""
    res: dict = {}
    dim = 8
    idx = ShardedIndex(dim, metric="ip", kind="partitioned", settings=PartitionSettings(partitions=4, train_size=20))
    counts = [30, 0, 25][:world]
    before = sum(counts[:rank])
    ids = idx.add(_data(counts[rank], dim, rank))
    _check(res, "auto_rank_order", ids.tolist() == list(range(before, before + counts[rank])), ids.tolist())
    total = sum(counts)
    _check(res, "trained", idx.is_trained and len(idx) == total, len(idx))
    _check(res, "routing", sorted(idx.shard.ids.tolist()) == [i for i in range(total) if i % world == rank])
    n_now = len(idx)
    d = _raises(lambda: idx.add(torch.ones(1, dim), ids=[5000]), ValueError)
    _check(res, "dup_across_ranks", d is None and len(idx) == n_now, d)
    v = torch.zeros(1, dim)
    v[0, 3] = 100.0
    idx.upsert(v if rank == world - 1 else torch.empty(0, dim), ids=[0] if rank == world - 1 else [])  # id 0 lives on rank 0
    got = idx.search(v if rank == 0 else torch.empty(0, dim), 1, recall_target=1.0)
    if rank == 0:
        _check(res, "upsert_moved", got.ids.tolist() == [[0]] and abs(float(got.scores[0, 0]) - 10000.0) < 1e-2, got)
    got = idx.search(v, 1, recall_target=0.9)  # through the partitions too
    _check(res, "upsert_found_by_probe", got.ids.tolist() == [[0]], got.ids.tolist())
    _check(res, "upsert_len", len(idx) == n_now)
    idx.upsert(torch.ones(1, dim), ids=[9000 + rank])
    _check(res, "upsert_insert", len(idx) == n_now + world)
    n_now = len(idx)
    d = _raises(lambda: idx.remove([9000 + rank, 123456] if rank == 1 else [9000 + rank]), ValueError)
    _check(res, "remove_unknown", d is None and len(idx) == n_now, d)
    idx.remove([9000 + r for r in range(world)] if rank == 0 else [])
    _check(res, "remove_routed", len(idx) == n_now - world and not any(9000 + r in _all_ids(idx) for r in range(world)))
    got = idx.search(_data(5, dim, 11), 3, recall_target=1.0)
    _check(res, "removed_not_found", not bool(torch.isin(got.ids, torch.arange(9000, 9000 + world)).any()))
    return res


def errors(rank: int, world: int, out, **_) -> dict:
    """A bad input on the last rank raises on every rank, and nothing changes."""
    res: dict = {}
    dim = 16
    idx = ShardedIndex(dim, metric="l2", kind="partitioned", settings=PartitionSettings(partitions=4, train_size=40))
    idx.add(_data(30, dim, rank))
    q = _data(4, dim, 7)
    bad = rank == world - 1
    prefix = None if bad else f"rank {world - 1}:"
    cases = {
        "wrong_dim_queries": (lambda: idx.search(q[:, :5] if bad else q, 3, recall_target=0.9), ValueError),
        "nan_queries": (lambda: idx.search(q * float("nan") if bad else q, 3), ValueError),
        "k_differs": (lambda: idx.search(q, 4 if bad else 3), ValueError, "k must be the same"),
        "bad_vectors": (lambda: idx.add(torch.ones(2, dim + 1) if bad else torch.ones(2, dim)), ValueError),
        "bad_sample": (lambda: idx.train(torch.ones(3, dim - 1) if bad else torch.ones(3, dim)), ValueError),
        "settings_type": (lambda: ShardedIndex(dim, kind="partitioned", settings="pq4" if bad else None), TypeError),
        "settings_differ": (lambda: ShardedIndex(dim, kind="partitioned", settings=PartitionSettings(partitions=8 if bad else 4)), ValueError, "dim, metric"),
        "quantized_type": (lambda: ShardedIndex(dim, kind="partitioned", quantized_training="yes" if bad else False), TypeError),
        "unknown_option": (lambda: ShardedIndex(dim, kind="partitioned", **({"precision": "bf16"} if bad else {})), TypeError),
        "too_many_partitions": (lambda: ShardedIndex(dim, kind="partitioned", settings=PartitionSettings(partitions=500, train_size=None)).train(torch.ones(10, dim)), ValueError, "partitions=500"),
    }
    _raise_everywhere(res, cases, prefix, idx, 30 * world)
    got = idx.search(q, 3, recall_target=0.9)  # still in step after all those errors
    _check(res, "still_works", tuple(got.ids.shape) == (4, 3) and bool((got.ids >= 0).all()) and idx.is_trained)
    return res


def persist(rank: int, world: int, out, path: str, mode: str, **_) -> dict:
    """save / load keeps the results (recall curves included); another world size is refused."""
    res: dict = {}
    dim = 12
    q = _data(6, dim, 5)
    if mode == "save":
        settings = PartitionSettings(partitions=4, train_size=100, codes="int8")
        idx = ShardedIndex(dim, metric="cos", kind="partitioned", settings=settings, quantized_training=True)
        idx.add(_data(40 + 30 * rank, dim, rank))
        idx.remove([1] if rank == 0 else [])
        before = [idx.search(q, 4, recall_target=t) for t in (1.0, 0.9)]
        idx.save(path)
        back = ShardedIndex.load(path)
        after = [back.search(q, 4, recall_target=t) for t in (1.0, 0.9)]
        same = all(bool((a.ids == b.ids).all()) and torch.equal(a.scores, b.scores) for a, b in zip(before, after))
        _check(res, "same_results", same)
        _check(res, "same_index", len(back) == len(idx) and back.kind == "partitioned" and back.settings == settings and back.quantized_training, back)
        _check(res, "same_curves", back.shard.recall_curves == idx.shard.recall_curves and bool(back.shard.recall_curves))
        _identical_training(res, "loaded", back)
        ids = back.add(torch.ones(1, dim))
        _check(res, "next_id_kept", int(ids[0]) >= 40 * world + 30 * sum(range(world)), ids)
    else:
        d = _raises(lambda: ShardedIndex.load(path), ValueError)
        _check(res, "world_size_differs", d is None, d)
    return res
