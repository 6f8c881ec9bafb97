"""Scenarios run on every rank by worker.py; each returns {check: None (passed) or a detail}.
Every rank builds the same global data from fixed seeds, so it can compute the reference alone."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

import peakknn
from peakknn.distributed import (
    ShardedIndex,
    all_reduce_quantized,
    quantized_error_bound,
)
from peakknn.engine.plan import SEARCH_CONFIDENCE
from peakknn.topk.plan import plan_bins


def _check(results: dict, name: str, ok: bool, detail="") -> None:
    results[name] = None if ok else str(detail) or "failed"


def _raises(fn, kind, prefix=None) -> str | None:
    """None when fn() raises `kind` (whose message starts with prefix, if given), else a detail."""
    try:
        fn()
    except kind as e:
        if prefix is not None and not str(e).startswith(prefix):
            return f"message {str(e)!r} does not start with {prefix!r}"
        return None
    except Exception as e:  # noqa: BLE001
        return f"raised {type(e).__name__}: {e}"
    return "did not raise"


# --------------------------------------------------------------------------- all_reduce_quantized
def _inputs(case: str, n: int, world: int) -> list[torch.Tensor]:
    out = []
    for r in range(world):
        g = torch.Generator().manual_seed(1000 * r + n + len(case))
        x = torch.randn(n, generator=g) * (1 + r)
        if case == "zeros":
            x.zero_()
        elif case == "zero_blocks":
            x.view(-1)[: (n // 2)] = 0.0
        elif case == "outlier":
            x[::256] = 1e6 * (r + 1)  # one huge value per 256-block
        elif case == "scaled":
            x *= 1e-30
        out.append(x)
    return out


CASES = [  # (case, n, op, block, bits)
    ("gauss", 10_001, "sum", 256, 8),
    ("gauss", 10_001, "avg", 256, 8),
    ("gauss", 1, "sum", 256, 8),
    ("gauss", 3, "avg", 256, 8),
    ("gauss", 257, "sum", 256, 8),
    ("gauss", 1000, "sum", 7, 8),
    ("gauss", 5000, "avg", 64, 4),
    ("zeros", 1000, "sum", 256, 8),
    ("zero_blocks", 4099, "avg", 128, 8),
    ("outlier", 4096, "sum", 256, 8),
    ("outlier", 3000, "avg", 256, 8),
    ("scaled", 2000, "sum", 256, 8),
]


def quantized(rank: int, world: int, out, **_) -> dict:
    res: dict = {}
    for case, n, op, block, bits in CASES:
        tag = f"{case}-{n}-{op}-b{block}-q{bits}"
        xs = _inputs(case, n, world)
        exact = torch.stack([x.double() for x in xs]).sum(0) / (world if op == "avg" else 1)
        t = xs[rank].clone().view(-1, 1)  # any shape: [n, 1]
        back = all_reduce_quantized(t, op=op, bits=bits, block=block)
        _check(res, f"inplace:{tag}", back is t and t.shape == (n, 1))
        got = t.view(-1).double()
        _check(res, f"finite:{tag}", bool(torch.isfinite(got).all()))
        bound = quantized_error_bound(xs, op=op, bits=bits, block=block)
        err = (got - exact).abs()
        slack = bound * 1e-5 + exact.abs() * world * 2**-23 + 1e-38
        worst = float((err - bound - slack).max())
        _check(res, f"bound:{tag}", worst <= 0, f"exceeds bound by {worst:g}")
        if case == "zeros":
            _check(res, f"exact_zero:{tag}", bool((got == 0).all()))
        if case == "zero_blocks":  # blocks zero on every rank stay exactly zero
            z = torch.zeros(n, dtype=torch.bool)
            z[: (n // 2) // block * block] = True
            _check(res, f"zero_blocks_exact:{tag}", bool((got[z] == 0).all()))
        same = torch.empty(world * n, dtype=torch.float64)
        dist.all_gather_into_tensor(same, got.contiguous())
        _check(res, f"same_on_all_ranks:{tag}", bool((same.view(world, n) == got).all()))
        ref = xs[rank].clone()
        dist.all_reduce(ref)
        if op == "avg":
            ref /= world
        rel = float((got - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))
        res[f"report:rel_l2:{tag}"] = None
        res.setdefault("_rel_l2", {})[tag] = rel
        if case == "gauss" and n > 1000 and bits == 8:
            _check(res, f"rel_l2_small:{tag}", 0 < rel < 0.02, f"relative L2 error {rel}")
    # errors agreed on every rank
    bad = torch.ones(300)
    if rank == world - 1:
        bad[5] = float("nan")
    d = _raises(lambda: all_reduce_quantized(bad), ValueError, None if rank == world - 1 else f"rank {world - 1}:")
    _check(res, "nan_on_one_rank", d is None, d)
    shape = torch.ones(300 + rank)
    d = _raises(lambda: all_reduce_quantized(shape), ValueError)
    _check(res, "shape_mismatch", d is None, d)
    op = "max" if rank == 0 else "sum"
    d = _raises(lambda: all_reduce_quantized(torch.ones(10), op=op), ValueError)  # the others see a mismatch
    _check(res, "bad_op_one_rank", d is None, d)
    d = _raises(lambda: all_reduce_quantized(torch.ones(10), op="avg" if rank == 1 else "sum"), ValueError, "all_reduce_quantized needs the same")
    _check(res, "op_differs", d is None, d)
    inf = torch.ones(700)
    if rank == 0:
        inf[-1] = float("inf")
    d = _raises(lambda: all_reduce_quantized(inf), ValueError, None if rank == 0 else "rank 0:")
    _check(res, "inf_on_one_rank", d is None, d)
    d = _raises(lambda: all_reduce_quantized(torch.ones(10, dtype=torch.int64) if rank == 1 else torch.ones(10)), TypeError)
    _check(res, "int_tensor_one_rank", d is None, d)
    return res


# --------------------------------------------------------------------------- sharded index
def _data(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g)


def _slices(n: int, world: int, weights) -> list[slice]:
    cuts = np.concatenate([[0], np.cumsum(weights)])
    cuts = (cuts / cuts[-1] * n).astype(int)
    return [slice(int(cuts[r]), int(cuts[r + 1])) for r in range(world)]


def _uneven(world: int) -> list[int]:
    return [5, 0, 2, 1][:world] if world > 1 else [1]  # rank 1 passes nothing


def _same_as_single(res: dict, tag: str, got, want, x: torch.Tensor, q: torch.Tensor, metric: str, tol=2e-4) -> None:
    """Scores equal the single Index's; every returned id's exact score equals its reported score
    (ties may swap ids)."""
    ok = torch.allclose(got.scores, want.scores, atol=tol, rtol=1e-4)
    _check(res, f"scores:{tag}", ok, f"max diff {float((got.scores - want.scores).abs().max()) if got.scores.numel() else 0}")
    if got.ids.numel():
        xx = x.double()
        qq = q.double()
        if metric == "cos":
            xx = xx / xx.norm(dim=1, keepdim=True)
            qq = qq / qq.norm(dim=1, keepdim=True)
        rows = xx[got.ids.clamp_min(0)]
        true = (rows * qq[:, None]).sum(-1) if metric != "l2" else ((rows - qq[:, None]) ** 2).sum(-1)
        _check(res, f"ids_score:{tag}", bool(torch.allclose(true.float(), got.scores, atol=tol, rtol=1e-4)) and bool((got.ids >= 0).all()))


def exact(rank: int, world: int, out, **_) -> dict:
    res: dict = {}
    n, dim, k = 1500, 24, 10
    x = _data(n, dim, 1)
    q = _data(90, dim, 2)
    for metric in ("ip", "l2", "cos"):
        sharded = ShardedIndex(dim, metric=metric, precision="bf16")
        add = _slices(n, world, _uneven(world))[rank]
        ids = sharded.add(x[add])
        _check(res, f"auto_ids:{metric}", bool((ids == torch.arange(add.start, add.stop)).all()), ids[:5])
        _check(res, f"len:{metric}", len(sharded) == n, len(sharded))
        _check(res, f"owner:{metric}", bool((sharded.shard.ids % world == rank).all()))
        single = peakknn.Index(dim, metric=metric)
        single.add(x)
        mine = _slices(90, world, list(reversed(_uneven(world))))[rank]
        got = sharded.search(q[mine], k, recall_target=1.0)
        want = single.search(q[mine], k, recall_target=1.0)
        _check(res, f"shape:{metric}", tuple(got.ids.shape) == (mine.stop - mine.start, k))
        _same_as_single(res, metric, got, want, x, q[mine], metric)
        allowed = list(range(rank, n, 3))  # this rank's own filter
        got = sharded.search(q[mine], k, recall_target=1.0, allowed_ids=allowed)
        want = single.search(q[mine], k, recall_target=1.0, allowed_ids=allowed)
        _same_as_single(res, f"allowed:{metric}", got, want, x, q[mine], metric)
        _check(res, f"allowed_only:{metric}", bool(torch.isin(got.ids, torch.tensor(allowed)).all()))
        few = sharded.search(q[mine], k, recall_target=1.0, allowed_ids=[0, 1, 2] if rank == 0 else None)
        if rank == 0 and few.ids.numel():
            _check(res, f"fillers:{metric}", bool((few.ids[:, 3:] == -1).all()) and bool((few.ids[:, :3] >= 0).all()))
        none = sharded.search(q[mine], k, recall_target=1.0, allowed_ids=[] if rank == 0 else None)
        if rank == 0:
            _check(res, f"empty_filter:{metric}", bool((none.ids == -1).all()))
        else:
            _same_as_single(res, f"empty_filter_others:{metric}", none, single.search(q[mine], k, recall_target=1.0), x, q[mine], metric)
        mixed = sharded.search(q[mine], k, recall_target=1.0 if rank == 0 else 0.9)  # targets differ per rank
        if rank == 0:
            _same_as_single(res, f"mixed_targets:{metric}", mixed, single.search(q[mine], k, recall_target=1.0), x, q[mine], metric)
        one = sharded.search(q[0], k, recall_target=1.0)  # a single [dim] query on every rank
        _same_as_single(res, f"one_query:{metric}", one, single.search(q[0], k, recall_target=1.0), x, q[:1], metric)
        npres = sharded.search(q[mine].numpy(), k, recall_target=1.0)
        _check(res, f"numpy:{metric}", isinstance(npres.ids, np.ndarray))
    # every row on rank 0 (ids multiples of world): the other shards are empty
    sharded = ShardedIndex(dim, metric="ip")
    add = _slices(n, world, [1] * world)[rank]
    sharded.add(x[add], ids=torch.arange(add.start, add.stop) * world)
    _check(res, "empty_shards", len(sharded.shard) == (n if rank == 0 else 0), len(sharded.shard))
    single = peakknn.Index(dim, metric="ip")
    single.add(x, ids=torch.arange(n) * world)
    qr = q[rank * 10 : rank * 10 + 10]
    got = sharded.search(qr, k, recall_target=1.0)
    want = single.search(qr, k, recall_target=1.0)
    _check(res, "empty_shards:scores", torch.allclose(got.scores, want.scores, atol=2e-4))
    _check(res, "empty_shards:ids", bool((got.ids == want.ids).all()) or torch.allclose(got.scores, want.scores, atol=2e-4))
    # an empty index: fillers only
    empty = ShardedIndex(dim, metric="l2")
    r = empty.search(qr, 3)
    _check(res, "empty_index", bool((r.ids == -1).all()) and bool(torch.isinf(r.scores).all()))
    return res


def recall(rank: int, world: int, out, per_shard: int = 4000, **_) -> dict:
    res: dict = {}
    dim, nq = 32, 150
    n = per_shard * world
    x = _data(n, dim, 3)
    q = _data(nq * world, dim, 4)
    sharded = ShardedIndex(dim, metric="ip")
    sharded.add(x[_slices(n, world, _uneven(world))[rank]])
    mine = q[rank * nq : (rank + 1) * nq]
    for k, target in ((10, 0.95), (10, 0.99), (20, 0.95)):
        truth = torch.topk(mine.double() @ x.double().T, k, dim=1).indices
        approx = plan_bins(len(sharded.shard), k, target, confidence=SEARCH_CONFIDENCE) is not None
        _check(res, f"shard_scan_is_approximate:{k}:{target}", approx)
        got = sharded.search(mine, k, recall_target=target)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got.ids, truth))
        mean = torch.tensor([hits / (nq * k)], dtype=torch.float64)
        dist.all_reduce(mean)
        mean = float(mean) / world
        res.setdefault("_recall", {})[f"k={k} target={target}"] = mean
        _check(res, f"recall:{k}:{target}", mean >= target - 0.01, f"recall {mean}")
    return res


def updates(rank: int, world: int, out, **_) -> dict:
    res: dict = {}
    dim = 8
    idx = ShardedIndex(dim, metric="ip", precision="fp32")
    counts = [3, 0, 5, 2][:world]
    before = sum(counts[:rank])
    ids = idx.add(_data(counts[rank], dim, rank))
    _check(res, "auto_rank_order", ids.tolist() == list(range(before, before + counts[rank])), ids.tolist())
    total = sum(counts)
    _check(res, "len", len(idx) == total)
    _check(res, "routing", sorted(idx.shard.ids.tolist()) == [i for i in range(total) if i % world == rank])
    # explicit ids (one rank passes one big id) move the automatic counter past them
    ids = idx.add(torch.ones(1, dim), ids=[1000 + rank]) if rank == 0 else idx.add(_data(2, dim, 9))
    if rank != 0:
        start = 1001 + 2 * (rank - 1)
        _check(res, "auto_after_explicit", ids.tolist() == [start, start + 1], ids.tolist())
    n_now = len(idx)
    # the same id from two ranks: ValueError everywhere, nothing stored
    d = _raises(lambda: idx.add(torch.ones(1, dim), ids=[5000]), ValueError)
    _check(res, "dup_across_ranks", d is None and len(idx) == n_now, d)
    # an id already stored (on another shard): ValueError everywhere, nothing stored
    d = _raises(lambda: idx.add(torch.ones(2, dim), ids=[7000 + rank, 1 if rank == world - 1 else 8000 + rank]), ValueError)
    _check(res, "present_elsewhere", d is None and len(idx) == n_now and 7000 + rank not in _all_ids(idx), d)
    # upsert from the last rank moves id 0's vector (owned by rank 0); search from rank 0 finds it
    v = torch.zeros(1, dim)
    v[0, 3] = 100.0
    if rank == world - 1:
        idx.upsert(v, ids=[0])
    else:
        idx.upsert(torch.empty(0, dim), ids=[])
    got = idx.search(v if rank == 0 else torch.empty(0, dim), 1, recall_target=1.0)
    if rank == 0:
        _check(res, "upsert_moved", got.ids.tolist() == [[0]] and abs(float(got.scores[0, 0]) - 10000.0) < 1e-2, got)
    _check(res, "upsert_len", len(idx) == n_now)
    idx.upsert(torch.ones(1, dim), ids=[9000 + rank])  # new ids insert
    _check(res, "upsert_insert", len(idx) == n_now + world)
    # remove from rank 0 ids owned by others; unknown id: ValueError everywhere, nothing removed
    n_now = len(idx)
    d = _raises(lambda: idx.remove([9000 + rank, 123456] if rank == 1 else [9000 + rank]), ValueError)
    _check(res, "remove_unknown", d is None and len(idx) == n_now, d)
    idx.remove([9000 + r for r in range(world)] if rank == 0 else [])
    _check(res, "remove_routed", len(idx) == n_now - world and not any(9000 + r in _all_ids(idx) for r in range(world)))
    return res


def _all_ids(idx: ShardedIndex) -> set:
    """Every rank's shard ids (collective; padded gather of counts then ids)."""
    mine = idx.shard.ids
    counts = torch.empty(idx.world_size, dtype=torch.int64)
    dist.all_gather_into_tensor(counts, torch.tensor([mine.numel()]))
    most = max(1, int(counts.max()))
    pad = torch.full((most,), -1, dtype=torch.int64)
    pad[: mine.numel()] = mine
    allv = torch.empty(most * idx.world_size, dtype=torch.int64)
    dist.all_gather_into_tensor(allv, pad)
    return set(allv[allv >= 0].tolist())


def _raise_everywhere(res: dict, cases: dict, prefix: str | None, idx, count: int) -> None:
    """Each case (fn, exception type[, message prefix]) raises on every rank (`_raises`: with the
    case's prefix, a group-wide check failing alike everywhere, else `prefix`), and idx keeps
    its `count` rows."""
    for name, (fn, kind, *group_wide) in cases.items():
        d = _raises(fn, kind, group_wide[0] if group_wide else prefix)
        _check(res, f"raises_everywhere:{name}", d is None, d)
        _check(res, f"unchanged:{name}", len(idx) == count, len(idx))


def errors(rank: int, world: int, out, **_) -> dict:
    res: dict = {}
    dim = 16
    idx = ShardedIndex(dim, metric="l2")
    idx.add(_data(50, dim, rank))
    q = _data(4, dim, 7)
    bad = rank == world - 1
    prefix = None if bad else f"rank {world - 1}:"
    cases = {
        "wrong_dim_queries": (lambda: idx.search(q[:, :5] if bad else q, 3), ValueError),
        "nan_queries": (lambda: idx.search(q * float("nan") if bad else q, 3), ValueError),
        "k_type": (lambda: idx.search(q, "3" if bad else 3), TypeError),
        "k_differs": (lambda: idx.search(q, 4 if bad else 3), ValueError, "k must be the same"),
        "bad_target": (lambda: idx.search(q, 3, recall_target=1.5 if bad else 0.9), ValueError),
        "bad_vectors": (lambda: idx.add(torch.ones(2, dim + 1) if bad else torch.ones(2, dim)), ValueError),
        "bad_ids_type": (lambda: idx.add(torch.ones(2, dim), ids=[0.5, 1.5] if bad else [10_000 + 2 * rank, 10_001 + 2 * rank]), TypeError),
        "remove_bad": (lambda: idx.remove([-1] if bad else []), ValueError),
        "dim_differs": (lambda: ShardedIndex(dim + bad, metric="l2"), ValueError, "dim, metric"),
        "bad_kind": (lambda: ShardedIndex(dim, kind="tree" if bad else "flat"), ValueError),
        "kind_differs": (lambda: ShardedIndex(dim, kind="partitioned" if bad else "flat"), ValueError, "dim, metric"),
        "train_flat": (lambda: idx.train(), ValueError, "train() needs kind='partitioned'"),
    }
    _raise_everywhere(res, cases, prefix, idx, 50 * world)
    got = idx.search(q, 3)  # still in step after all those errors
    _check(res, "still_works", tuple(got.ids.shape) == (4, 3) and bool((got.ids >= 0).all()))
    return res


def persist(rank: int, world: int, out, path: str, mode: str, **_) -> dict:
    res: dict = {}
    dim = 12
    q = _data(6, dim, 5)
    if mode == "save":
        idx = ShardedIndex(dim, metric="cos", recall_target=0.9)
        idx.add(_data(40 + 30 * rank, dim, rank))
        idx.remove([1] if rank == 0 else [])
        idx.save(path)
        before = idx.search(q, 4, recall_target=1.0)
        back = ShardedIndex.load(path)
        after = back.search(q, 4, recall_target=1.0)
        _check(res, "same_results", bool((before.ids == after.ids).all()) and torch.equal(before.scores, after.scores))
        _check(res, "same_len", len(back) == len(idx) and back.metric == "cos" and back.shard.recall_target == 0.9)
        ids = back.add(torch.ones(1, dim))
        _check(res, "next_id_kept", int(ids[0]) >= 40 * world + 30 * sum(range(world)), ids)
    else:
        d = _raises(lambda: ShardedIndex.load(path), ValueError)
        _check(res, "world_size_differs", d is None, d)
        if d is None:
            try:
                ShardedIndex.load(path)
            except ValueError as e:
                _check(res, "message_names_sizes", "ranks but this group has" in str(e), str(e))
    return res


def stalled(rank: int, world: int, out, **_) -> dict:
    """The last rank never joins the search (it sleeps, then leaves): the others' collective
    fails within the process group's timeout instead of waiting forever."""
    import time

    res: dict = {}
    idx = ShardedIndex(8, metric="ip")
    idx.add(_data(20, 8, rank))
    if rank == world - 1:
        time.sleep(7)
        res["sleeper"] = None
        return res
    t0 = time.perf_counter()
    try:
        idx.search(_data(2, 8, 0), 3)
        res["stalled_raises"] = "search returned although a rank never joined"
    except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError / DistBackendError
        took = time.perf_counter() - t0
        _check(res, "stalled_raises", took < 6, f"took {took:.1f}s ({type(e).__name__})")
    return res
