"""ShardedIndex: one shard per rank of a torch.distributed group, a flat `peakknn.Index`
(kind="flat") or a `PartitionedIndex` (kind="partitioned", `distributed.partitioned`).

Routing rule: the row with id i lives on rank i % world_size (`ROUTING`). Every method that
changes or reads the whole index is collective (SPMD: every rank calls it, in the same order, each
with its own data, any count including none), with the same signatures for both kinds:

    add(vectors, ids=None) -> ids   upsert(vectors, ids) -> ids   remove(ids)
    search(queries, k, recall_target=None, allowed_ids=None) -> SearchResult of this rank's queries
    save(path)   ShardedIndex.load(path)   train(sample=None) (kind="partitioned")

`len(index)` (global row count, kept after each collective update), `index.shard` (this rank's
index), `rank`, `world_size`, `kind`, `owner(ids)` are local. A partitioned index trains all its
shards together (`distributed.training`) inside the add / upsert that brings the global row
count to settings.train_size (or on `train()`); until then every shard scans exactly.

Search: the queries of all ranks are all-gathered (counts first, then one padded
`all_gather_single`, formerly all_gather_into_tensor); every rank searches them against its shard
(one `Index.search` when no rank filters and all ask the same recall_target, else one per origin
rank with that rank's recall_target and allowed_ids; k must agree); the [nq_j, k] candidates go
back to rank j with one all_to_all_single for scores and one for ids, and rank j keeps the exact
top-k of its W * k candidates. Recall: a shard's bins come from (k, recall_target) alone
(`topk.plan.plan_bins`; the row count only decides "exact below 4 * bins" and adds spare bins),
so each shard keeps >= L bins for the global target and the union of the shards holds >= W * L
bins: a global top-k row is lost only when a better row of the same shard shares its bin, no
more often than in one Index of all rows with L bins. So no `total_rows=` hook is needed (the
opposite of JAX's reduction_input_size_override, whose bin count grows with n). With random
routing a shard could use fewer bins (about L / W) for the same expected global recall; that
would need such a hook and is not done.
A partitioned shard searches the probe read off recall curves measured over the union (the
same on every rank; why the union meets the target: `distributed.partitioned`).

Errors: each rank validates its own arguments, then one small all_reduce (`_comm.agree`) tells
every rank whether all are valid before any data moves; a bad input on rank r raises its
ValueError / TypeError there and "rank r: <message>" of the same type on the others. Owner-side
checks (an added id already stored, a removed id unknown, duplicates across ranks) are agreed the
same way before anything is written, so a failed call changes no shard (a failure inside the
write itself, such as running out of memory, is reported on every rank but not rolled back).
Collectives inherit the timeout of `init_process_group(timeout=...)`; only tensor collectives
are used (never the pickling *_object calls).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from .._checks import MAX_ID, as_id_set, as_ids, check_k, check_recall_target
from .._types import SearchResult, check_metric
from ..engine.rescore import answer
from ..engine.table import prepare_rows
from ..index import Index
from ..io import write_json
from ..partitioned import PartitionedIndex, PartitionSettings
from . import partitioned
from ._comm import agree, gather_floats, gather_ints, gather_padded, route, world

ROUTING = "id % world_size"
FORMAT = "peakknn.sharded"
VERSION = 1
KINDS = ("flat", "partitioned")


def _shard_name(rank: int) -> str:
    return f"shard-{rank:05d}"


class ShardedIndex:
    """An index split over the ranks of `group` (default: the world); create it on every rank.

    dim, metric ("ip" | "l2" | "cos") and index_options must agree on every rank (checked).
    kind="flat": index_options precision, recall_target, seed as for `peakknn.Index`.
    kind="partitioned": settings (PartitionSettings; train_size counts the rows of all ranks),
    search_settings (SearchSettings), quantized_training (bool: the k-means sums go through
    `all_reduce_quantized`). device must be "cpu" (gloo).

    Collective (every rank calls them, in the same order): the constructor, add, upsert, remove,
    search, train, save, load. Local: len() (the global count, as of the last collective call),
    owner(), repr(), and the attributes shard, rank, world_size, kind, dim, metric.
    """

    def __init__(self, dim: int, *, metric: str = "ip", kind: str = "flat", group=None, **index_options):
        self.group = group
        self.rank, self.world_size = world(group)

        def build():
            if kind not in KINDS:
                raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
            if index_options.get("device", "cpu") not in ("cpu", torch.device("cpu")):
                raise ValueError("ShardedIndex keeps its shards on the CPU (gloo)")
            if kind == "partitioned":
                return partitioned.build(dim, check_metric(metric), index_options)
            return Index(dim, metric=metric, **index_options), None, False

        shard, settings, quantized = agree(group, build)
        self._init(shard, next_id=0, kind=kind, settings=settings, quantized=quantized)
        sigs = gather_ints([self._signature()], group)
        agree(group, lambda: _same_settings(sigs))

    def _init(self, shard, next_id: int, kind: str, settings: PartitionSettings | None = None, quantized: bool = False) -> None:
        self.shard = shard
        self.kind = kind
        self.settings = settings  # kind="partitioned": the index's PartitionSettings (else None)
        self.quantized_training = quantized
        self.dim = shard.dim
        self.metric = shard.metric
        self._next_id = next_id
        self._recount()

    def _signature(self) -> int:
        if self.kind == "partitioned":
            return partitioned.signature(self)
        s = self.shard
        return zlib.crc32(repr(("flat", s.dim, s.metric, s.precision, s.recall_target, s.seed)).encode())

    # ----------------------------------------------------------------- local
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ShardedIndex(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, rank={self.rank}/{self.world_size}, size={len(self)})"

    def owner(self, ids) -> np.ndarray:
        """Rank that owns each id (the routing rule: id % world_size)."""
        return np.asarray(ids, dtype=np.int64) % self.world_size

    def _recount(self) -> None:
        self._count = int(gather_ints([len(self.shard)], self.group).sum())

    def _route(self, ids: np.ndarray, *rows: torch.Tensor) -> list[torch.Tensor]:
        t = torch.from_numpy(ids)
        return route(t % self.world_size, [t, *rows], self.group)

    # ----------------------------------------------------------------- updates
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Collective. Insert this rank's rows f32[m, dim] (m may be 0, and differ per rank).

        ids: i64[m], or None for automatic ids: the next free ids, numbered across ranks in
        rank order from max(next id, every explicit id of this call + 1), so they never collide.
        Returns this rank's ids i64[m]. An id already stored or passed twice (on any ranks)
        raises ValueError on every rank and nothing is stored anywhere.
        """

        def check():
            x = prepare_rows(vectors, "vectors", self.dim, self.metric, torch.device("cpu"))
            own = None if ids is None else as_ids("ids", ids, x.shape[0])
            return x, own

        x, own = agree(self.group, check)
        m = x.shape[0]
        info = gather_ints([m, 0 if own is None else 1, int(own.max()) if own is not None and own.size else -1], self.group)
        base = max(self._next_id, int(info[:, 2].max()) + 1)
        auto = [int(c) if not e else 0 for c, e in info[:, :2].tolist()]
        top = base + sum(auto)
        agree(self.group, lambda: _fits(top))
        if own is None:
            start = base + sum(auto[: self.rank])
            own = np.arange(start, start + m, dtype=np.int64)
        got_ids, got_x = self._route(own, x)
        got = got_ids.numpy()

        def owner_check():
            as_ids("ids", got)  # duplicates across ranks
            present = self.shard._slots.lookup(got) >= 0 if got.size else np.zeros(0, dtype=bool)
            if present.any():
                raise ValueError(f"id {int(got[present][0])} is already present (nothing was added): use upsert")

        agree(self.group, owner_check)
        agree(self.group, lambda: self.shard.add(got_x, ids=got))
        self._next_id = max(top, self._next_id)
        self._recount()
        self._train_when_due()
        return torch.from_numpy(own)

    def upsert(self, vectors, ids) -> torch.Tensor:
        """Collective. Insert or replace this rank's rows (ids i64[m] required); an id passed on
        two ranks raises ValueError everywhere. Returns this rank's ids."""

        def check():
            x = prepare_rows(vectors, "vectors", self.dim, self.metric, torch.device("cpu"))
            return x, as_ids("ids", ids, x.shape[0])

        x, own = agree(self.group, check)
        top = int(gather_ints([int(own.max()) + 1 if own.size else 0], self.group).max())
        got_ids, got_x = self._route(own, x)
        got = got_ids.numpy()
        agree(self.group, lambda: as_ids("ids", got))
        agree(self.group, lambda: self.shard.upsert(got_x, ids=got))
        self._next_id = max(self._next_id, top)
        self._recount()
        self._train_when_due()
        return torch.from_numpy(own)

    def remove(self, ids) -> None:
        """Collective. Delete this rank's ids (any ids: each goes to its owner). An unknown id or
        one passed twice (on any ranks) raises ValueError everywhere and nothing is removed."""
        own = agree(self.group, lambda: as_ids("ids", ids, storable=False))
        (got_ids,) = self._route(own)
        got = got_ids.numpy()

        def owner_check():
            as_ids("ids", got, storable=False)
            missing = self.shard._slots.lookup(got) < 0 if got.size else np.zeros(0, dtype=bool)
            if missing.any():
                raise ValueError(f"id {int(got[missing][0])} is not in the index (nothing was removed)")

        agree(self.group, owner_check)
        agree(self.group, lambda: self.shard.remove(got) if got.size else None)
        self._recount()

    # ----------------------------------------------------------------- training
    @property
    def is_trained(self) -> bool:
        """kind="partitioned": whether the shards are trained (the same on every rank); flat: True."""
        return self.kind == "flat" or self.shard.is_trained

    def train(self, sample=None) -> None:
        """Collective (kind="partitioned"). Train every shard together on sample f32[m, dim]
        (each rank its own, any count; default: the rows each shard stores), then place every
        row (`distributed.training`). A flat index raises ValueError on every rank."""
        agree(self.group, lambda: _partitioned_only(self.kind, "train"))
        partitioned.train(self, sample)

    def _train_when_due(self) -> None:
        s = self.settings
        if self.kind == "partitioned" and not self.shard.is_trained and s.train_size is not None and len(self) >= s.train_size:
            partitioned.train(self)

    # ----------------------------------------------------------------- search
    def search(self, queries, k: int, *, recall_target: float | None = None, allowed_ids=None) -> SearchResult:
        """Collective. k nearest rows of the whole index for this rank's queries f32[nq, dim]
        (nq may be 0 and differ per rank; k must be the same on every rank). recall_target and
        allowed_ids (this rank's filter, applied to this rank's queries) as for `Index.search`.
        Returns SearchResult(scores f32[nq, k], ids i64[nq, k]) (numpy for numpy queries),
        ids -1 where fewer than k rows qualify."""

        def check():
            q = prepare_rows(queries, "queries", self.dim, self.metric, torch.device("cpu"))
            kk = check_k(k)
            target = -1.0 if recall_target is None else check_recall_target(recall_target)
            allowed = None if allowed_ids is None else as_id_set("allowed_ids", allowed_ids)
            return q, kk, target, allowed

        q, kk, target, allowed = agree(self.group, check)
        info = gather_ints([q.shape[0], kk, -1 if allowed is None else allowed.size], self.group)
        agree(self.group, lambda: _same_k(info[:, 1]))
        targets = gather_floats([target], self.group)[:, 0].tolist()
        allow_counts = [max(0, int(c)) for c in info[:, 2].tolist()]
        mine = torch.from_numpy(allowed) if allowed is not None else torch.empty(0, dtype=torch.int64)
        allows = gather_padded(mine, allow_counts, self.group) if max(allow_counts) else None
        if self.kind == "partitioned" and any(0 < t < 1 for t in targets) and partitioned.calibration_due(self):
            partitioned.calibrate(self)  # collective: the union's recall curves

        def local(qs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            if all(int(c) < 0 for c in info[:, 2]) and len(set(targets)) == 1:  # one search for all
                return [self._local_search(torch.cat(qs), kk, targets[0], None)]
            out = []
            for j in range(self.world_size):
                if qs[j].shape[0] == 0:
                    out.append((torch.empty((0, kk)), torch.empty((0, kk), dtype=torch.int64)))
                    continue
                filt = None if int(info[j, 2]) < 0 else allows[j] if allows is not None else []
                out.append(self._local_search(qs[j], kk, targets[j], filt))
            return out

        scores, ids = self._exchange(q, kk, local, counts=info[:, 0].tolist())
        return answer(queries, SearchResult(scores=scores, ids=ids))

    def _local_search(self, q: torch.Tensor, k: int, target: float, allowed) -> tuple[torch.Tensor, torch.Tensor]:
        """This shard's (scores, ids) of queries q (target < 0: the index's default)."""
        if self.kind == "partitioned":
            return partitioned.local_search(self, q, k, target, allowed)
        res = self.shard.search(q, k, recall_target=None if target < 0 else target, allowed_ids=allowed)
        return res.scores, res.ids

    def _exchange(self, q: torch.Tensor, k: int, local, counts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Collective. (scores f32[nq, k], ids i64[nq, k]) over every shard for this rank's
        queries q f32[nq, dim]: every rank's queries are all-gathered, local(qs) (qs: the
        queries of each origin rank) returns this shard's (scores, ids) for them in origin
        order (one pair or one per origin), they go back to their origins (all_to_all) and each
        rank keeps the exact top k of its W * k candidates. counts: every rank's nq, if known."""
        counts = gather_ints([q.shape[0]], self.group)[:, 0].tolist() if counts is None else counts
        qs = gather_padded(q, counts, self.group)
        parts = agree(self.group, lambda: local(qs))
        dest = torch.repeat_interleave(torch.arange(self.world_size), torch.tensor(counts, dtype=torch.int64))
        scores, ids = route(dest, [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])], self.group)
        nq = q.shape[0]
        scores = scores.view(self.world_size, nq, k).permute(1, 0, 2).reshape(nq, self.world_size * k)
        ids = ids.view(self.world_size, nq, k).permute(1, 0, 2).reshape(nq, self.world_size * k)
        best, at = torch.topk(scores, k, dim=1, largest=self.metric != "l2", sorted=True)
        return best.contiguous(), torch.gather(ids, 1, at)

    # ----------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Collective. Write `path`/shard-<rank>/ (each rank its shard's `save`) and, from rank 0,
        `path`/manifest.json {format, version, world_size, routing, kind, dim, metric, next_id,
        count, shards; kind="partitioned" also settings (the PartitionSettings as a dict) and
        quantized_training}. Assumes `path` is one folder every rank can write (one host or a
        shared file system)."""
        path = Path(path)
        agree(self.group, lambda: path.mkdir(parents=True, exist_ok=True) if self.rank == 0 else None)
        agree(self.group, lambda: self.shard.save(path / _shard_name(self.rank)))
        manifest = {
            "format": FORMAT, "version": VERSION, "world_size": self.world_size, "routing": ROUTING, "kind": self.kind,
            "dim": self.dim, "metric": self.metric, "next_id": self._next_id, "count": self._count,
            "shards": [_shard_name(r) for r in range(self.world_size)],
        }  # fmt: skip
        if self.kind == "partitioned":
            manifest.update(settings=dataclasses.asdict(self.settings), quantized_training=self.quantized_training)

        def write():
            if self.rank == 0:
                write_json(path / "manifest.json", manifest)

        agree(self.group, write)

    @classmethod
    def load(cls, path, *, group=None) -> ShardedIndex:
        """Collective. Read what `save` wrote; a different world size, a missing or corrupt shard,
        or a row on the wrong rank raises ValueError on every rank."""
        path = Path(path)
        rank, size = world(group)

        def read():
            try:
                with open(path / "manifest.json") as f:
                    m = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: no readable sharded manifest ({e})") from None
            if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
                raise ValueError(f"{path}: not a {FORMAT} v{VERSION} manifest")
            if m.get("routing") != ROUTING:
                raise ValueError(f"{path}: routing {m.get('routing')!r} is not {ROUTING!r}")
            if m.get("world_size") != size:
                raise ValueError(f"{path} was saved by {m.get('world_size')} ranks but this group has {size}: load it with {m.get('world_size')} processes")
            if m.get("kind") not in KINDS:
                raise ValueError(f"{path}: kind {m.get('kind')!r} is not one of {KINDS}")
            settings, quantized = None, False
            if m["kind"] == "partitioned":
                try:
                    settings, quantized = PartitionSettings(**m["settings"]), bool(m["quantized_training"])
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}: bad partitioned settings in the manifest: {e}") from None
            shard = (PartitionedIndex if m["kind"] == "partitioned" else Index).load(path / _shard_name(rank))
            if shard.dim != m["dim"] or shard.metric != check_metric(m["metric"]):
                raise ValueError(f"{path}/{_shard_name(rank)}: dim / metric differ from the manifest")
            stray = shard.ids.numpy() % size != rank
            if stray.any():
                raise ValueError(f"{path}/{_shard_name(rank)}: id {int(shard.ids.numpy()[stray][0])} does not belong to rank {rank}")
            return m, shard, settings, quantized

        m, shard, settings, quantized = agree(group, read)
        self = cls.__new__(cls)
        self.group, self.rank, self.world_size = group, rank, size
        self._init(shard, next_id=int(m["next_id"]), kind=m["kind"], settings=settings, quantized=quantized)
        if self.kind == "partitioned":  # the shards were trained together (or none is trained)
            sigs = gather_ints([partitioned.trained_signature(shard)], group)
            agree(group, lambda: _same_training(sigs, path))
        return self


def _same_settings(sigs: torch.Tensor) -> None:
    if not bool((sigs == sigs[0]).all()):
        raise ValueError("dim, metric and index options must be the same on every rank")


def _same_training(sigs: torch.Tensor, path) -> None:
    if not bool((sigs == sigs[0]).all()):
        raise ValueError(f"{path}: the shards hold different training (centres, codecs): they were not trained together")


def _partitioned_only(kind: str, what: str) -> None:
    if kind != "partitioned":
        raise ValueError(f"{what}() needs kind='partitioned' (a flat index has nothing to train)")


def _same_k(ks: torch.Tensor) -> None:
    if not bool((ks == ks[0]).all()):
        raise ValueError(f"k must be the same on every rank, got {ks.tolist()}")


def _fits(top: int) -> None:
    if top - 1 > MAX_ID:
        raise ValueError("automatic ids would pass 2**63 - 2")
