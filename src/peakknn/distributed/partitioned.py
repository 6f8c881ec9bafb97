"""ShardedIndex(kind="partitioned"): a `PartitionedIndex` shard per rank, trained together
(`distributed.training.fit`) and calibrated over the union of the shards.

Why the union meets the recall target. Every shard holds the same centres, frame, projection,
codec and probe gaps, so a query picks the same partitions on every shard (partition choice,
adaptive gaps included, depends on the query and the centres alone). Each shard keeps its best
`rerank` candidates by code score among its rows of those partitions, re-scores them exactly and
returns its exact top k; the merge keeps the exact top k of the W * k. A row that one index of
all the rows (same centres, same probe) would return is among the best `rerank` code scores of
all rows, hence of its own shard, and fewer than k rows beat it exactly, so its shard returns it
and the merge keeps it: at the same probe the sharded result holds everything the single index
finds (the union's candidate set is a superset of the single index's).

Which probe reaches recall_target is read off recall curves measured on the sharded index
itself (`measure`: `partitioned.calibration` over the union): QUERIES rows drawn from every rank
(each its share), their exact top k + 1 over the union (each shard's exact fp32 scan, merged),
then the sharded search at each probe of the ladder; hits are integer sums all-reduced, so every
rank holds the same curve and picks the same probe. The curves are stored in every shard (saved
with it) and measured again, like PartitionedIndex's, after a training or a CALIBRATE_GROWTH-fold
growth of the global row count. recall_target=1.0 scans the shards' stored vectors exactly in
fp32 (every probe of a compressed first pass can miss a row); a compressed-only index
(keep_vectors=False) probes every partition instead.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import torch

from ..engine.plan import DEFAULT_MEMORY
from ..engine.rescore import empty_result
from ..engine.table import prepare_rows
from ..partitioned import PartitionedIndex, PartitionSettings, calibration
from ..partitioned.settings import partitions_for
from . import training
from ._comm import agree, gather_ints, shares, world

OPTIONS = ("settings", "search_settings", "quantized_training", "device")


def build(dim: int, metric: str, options: dict) -> tuple[PartitionedIndex, PartitionSettings, bool]:
    """(the shard, the index's settings, quantized_training) from ShardedIndex's index_options.
    The shard itself never trains alone (train_size=None): the ShardedIndex trains every shard
    together once the global row count reaches settings.train_size."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"kind='partitioned' takes the options {OPTIONS}, got {unknown}")
    settings = options.get("settings")
    settings = PartitionSettings() if settings is None else settings
    if not isinstance(settings, PartitionSettings):
        raise TypeError(f"settings must be a PartitionSettings, got {type(settings).__name__}")
    quantized = options.get("quantized_training", False)
    if not isinstance(quantized, bool):
        raise TypeError(f"quantized_training must be a bool, got {type(quantized).__name__}")
    shard = PartitionedIndex(dim, metric=metric, settings=dataclasses.replace(settings, train_size=None), search_settings=options.get("search_settings"))
    return shard, settings, quantized


def signature(sharded) -> int:
    s = sharded.shard
    """crc32 of what must agree on every rank: dim, metric, settings, search settings, quantized_training."""
    return zlib.crc32(repr(("partitioned", s.dim, s.metric, sharded.settings, s.search_settings, sharded.quantized_training)).encode())


def trained_signature(shard: PartitionedIndex) -> int:
    """crc32 of the trained state's bytes (centres, frame, projection, codec, gaps); 0 untrained."""
    if not shard.is_trained:
        return 0
    t = shard._trained
    parts = [t.centres, t.frame.centre, torch.tensor([t.frame.scale], dtype=torch.float64)]
    parts += [p for p in (t.projection, t.probe_gaps) if p is not None]
    parts += list(t.codec.state().values()) if t.codec is not None else []
    crc = 0
    for p in parts:
        crc = zlib.crc32(p.contiguous().numpy().tobytes(), crc)
    return crc + 1


def train(sharded, sample=None) -> None:
    """Collective. Train every shard together on the ranks' samples (default: each shard's
    stored rows; module docstring of distributed.training), then place every shard's rows."""
    train_together(sharded.shard, sharded.settings, sharded.group, sample=sample, quantized=sharded.quantized_training,
                   calibrate=lambda: calibrate(sharded))  # fmt: skip


def train_together(shard: PartitionedIndex, settings: PartitionSettings | None = None, group=None, *, sample=None, quantized: bool = False,
                   calibrate=None) -> None:  # fmt: skip
    """Collective: every rank passes its own `shard` (a PartitionedIndex; any number of rows,
    none included) and all are trained together on their samples (default: each shard's stored
    rows) by `training.fit`, then each places its rows: every rank ends with the same centres,
    frame, projection, codec and gaps. settings: the training's (default: the shard's, with
    partitions=None where the shard chose its partition count itself); partitions None: from
    the rows of all ranks. calibrate: what a compressed-only shard runs before dropping its
    vectors (default: its own calibration). ValueError on every rank when the ranks hold too
    few rows, or a compressed-only shard is trained already. (ShardedIndex trains through this;
    so does `peakknn serve --sharded`, every shard a collection's.)"""
    if settings is None:
        settings = dataclasses.replace(shard.settings, partitions=None) if shard._auto_partitions else shard.settings

    def check():
        if shard.is_trained and not shard.settings.keep_vectors:
            raise ValueError("a compressed-only index (keep_vectors=False) cannot be retrained")
        if sample is not None:
            return prepare_rows(sample, "sample", shard.dim, shard.metric, torch.device("cpu"))
        return stored_rows(shard, shard._slots.ids())

    x = agree(group, check)
    total = int(gather_ints([x.shape[0]], group).sum())
    if settings.partitions is None:
        rows = int(gather_ints([len(shard)], group).sum())
        settings = dataclasses.replace(settings, partitions=partitions_for(max(rows, total)))
    agree(group, lambda: _trainable(total, settings))
    trained = training.fit(x, settings, shard.metric, shard.search_settings.probe, group=group, quantized=quantized)
    with shard._lock.write():
        shard._install(trained, dataclasses.replace(settings, train_size=None), calibrate or shard._calibrate)


def _trainable(total: int, settings: PartitionSettings) -> None:
    if total == 0:
        raise ValueError("no rows to train on: pass a sample or add vectors first")
    if settings.partitions > total:
        raise ValueError(f"partitions={settings.partitions} is more than the {total} training rows of all ranks")


def stored_rows(shard: PartitionedIndex, ids: np.ndarray) -> torch.Tensor:
    """f32[m, dim] stored vectors of ids. Here and below the shard is read without its lock:
    a compressed-only index is calibrated while `train` holds the write lock, and otherwise
    the ShardedIndex, whose collective calls run one at a time, is the shard's only user."""
    return shard._vectors[torch.from_numpy(shard._slots.lookup(ids))].clone() if ids.size else torch.empty(0, shard.dim)


def calibration_due(sharded) -> bool:
    """As PartitionedIndex._calibration_due, with the global row count (the same on every rank)."""
    shard = sharded.shard
    if not shard.is_trained or not shard.settings.keep_vectors or len(sharded) < calibration.MIN_ROWS:
        return False
    if not shard._curves or shard._curves_stale:
        return True
    return len(sharded) >= calibration.CALIBRATE_GROWTH * max(c.rows for c in shard._curves.values())


def calibrate(sharded) -> None:
    """Collective. Measure the recall curves over the union (module docstring) and store them
    in every shard."""
    shard, group = sharded.shard, sharded.group
    rank, _ = world(group)
    n = len(sharded)
    if n < calibration.MIN_ROWS:
        shard._curves, shard._curves_stale = {}, False
        return
    ks = [k for k in calibration.KS if k < n - 1] or [max(1, n - 2)]
    counts = gather_ints([len(shard)], group)[:, 0].tolist()
    picks = shares(counts, min(calibration.QUERIES, n))
    rng = np.random.default_rng([shard.settings.seed, rank])
    own = np.sort(rng.choice(shard._slots.ids(), size=picks[rank], replace=False)) if picks[rank] else np.zeros(0, dtype=np.int64)
    q = stored_rows(shard, own)
    kmax = max(ks)
    truth = sharded._exchange(q, kmax + 1, lambda qs: [exact(shard, torch.cat(qs), kmax + 1, None)])[1].numpy()
    curves = {k: ([], []) for k in ks}
    for probe in calibration.probe_ladder(shard.settings.partitions):
        for k in ks:
            got = sharded._exchange(q, k + 1, lambda qs, k=k, probe=probe: [_probed(shard, torch.cat(qs), k + 1, probe)])[1].numpy()
            hits = sum(_hits(got[i], truth[i], own[i], k) for i in range(own.size))
            total = int(gather_ints([hits], group).sum())
            curves[k][0].append(probe)
            curves[k][1].append(total / (sum(picks) * k))
        if all(calibration._flat(curves[k][1]) for k in ks):
            break
    shard._curves = {k: calibration.RecallCurve(k, np.array(p, dtype=np.int64), np.array(r), sum(picks), n) for k, (p, r) in curves.items()}
    shard._curves_stale = False


def _hits(got: np.ndarray, truth: np.ndarray, own: int, k: int) -> int:
    """|got ∩ truth| over the best k of each once the query's own id is dropped (calibration's)."""
    g, t = got[got != own][:k], truth[truth != own][:k]
    return len(set(g.tolist()) & set(t.tolist()))


def _probed(shard: PartitionedIndex, q: torch.Tensor, k: int, probe: int):
    """(scores, ids) of the shard's search at this probe (no lock: see `stored_rows`)."""
    r = shard._search(q, k, probe=probe) if len(shard) else empty_result(q.shape[0], k, shard.metric)
    return r.scores, r.ids


def exact(shard: PartitionedIndex, q: torch.Tensor, k: int, allowed) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids) of the exact fp32 top k over the shard's stored vectors (allowed: ids or None)."""
    slots = None
    if allowed is not None:
        slots = shard._slots.lookup(np.asarray(allowed, dtype=np.int64).reshape(-1)) if len(allowed) else np.zeros(0, dtype=np.int64)
        slots = slots[slots >= 0]
    r = shard._exact_search(q, k, slots, DEFAULT_MEMORY)
    return r.scores, r.ids


def local_search(sharded, q: torch.Tensor, k: int, target: float, allowed) -> tuple[torch.Tensor, torch.Tensor]:
    """This shard's (scores, ids) for queries q: target < 0 = the default probe; 1.0 = exact;
    else the probe the union's curves give (the same on every rank)."""
    shard = sharded.shard
    if shard.is_trained and target >= 1.0 and shard.settings.keep_vectors and len(shard):
        return exact(shard, q, k, allowed)
    probe = None
    if shard.is_trained and target >= 1.0:
        probe = shard.settings.partitions
    elif shard.is_trained and target > 0:
        probe = probe_for(sharded, target, k)
    r = shard.search(q, k, probe=probe, allowed_ids=allowed)
    return r.scores, r.ids


def probe_for(sharded, target: float, k: int) -> int:
    """The probe for recall_target on the union's curves (PartitionedIndex.probe_for, globally)."""
    shard = sharded.shard
    if not shard._curves:
        if len(sharded) < calibration.MIN_ROWS:
            return shard.settings.partitions
        raise ValueError("the index has no recall calibration (compressed-only and trained before its rows were added): pass recall_target=None")
    return calibration.probe_for(calibration.curve_for(shard._curves, k), target)

