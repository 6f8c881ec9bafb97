"""Saving and loading a PartitionedIndex: format "peakknn.partitioned", version 3, a
`peakknn.io` bundle (version 2, written by peakknn 0.1.0, is the same without the manifest
checksum, and loads).

Manifest fields: dim, metric, settings and search_settings (the dataclasses as dicts), trained,
count, next_id. Arrays: ids i64[count], vectors f32[count, dim] (when kept, or untrained), and
for a trained index every partition's entries in position order (codes, entry_rows naming each
entry's row in `ids`, bias f32, partition_sizes i64[P]), centres f32[P, dim], the codec's state
(int8_scale or pq_centres), projection f32[dim, m] when the rows are projected, and probe_gaps
f32[min(P, GAP_COLUMNS)] (absent from files written before adaptive probing: such an index
searches with fixed probes), and the scan frame frame_centre f32[dim], frame_scale f64[1]
(version 2 files have none: their codes hold the rows as they are, the identity frame).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .. import io
from .._checks import check_array
from .._types import METRICS
from ..engine.table import ScanFrame
from ..quant.codes import Int8Codes, ProductQuantizer
from . import calibration
from .settings import GAP_COLUMNS, PartitionSettings, SearchSettings
from .training import Trained

FORMAT = "peakknn.partitioned"
VERSION = 3
UNCHECKED_VERSIONS = (2,)  # peakknn 0.1.0: no manifest checksum


def save(index, path) -> None:
    """Write `index` (a PartitionedIndex) to directory `path` atomically: a consistent snapshot
    taken under the index's read lock (searches go on, updates wait), written after it is released."""
    with index._lock.read():
        manifest, arrays = _snapshot(index)
    io.write_bundle(path, manifest, arrays)


def _snapshot(index) -> tuple[dict, dict[str, torch.Tensor]]:
    arrays = {}
    slots = torch.from_numpy(index._slots.live_slots())
    if index.is_trained:  # every partition's rows in position order, each naming its row in `ids`
        row_of = torch.full((index._slots.capacity,), -1, dtype=torch.int64)
        row_of[slots] = torch.arange(slots.numel())
        arrays.update(index._entries.saved(row_of))
        arrays["centres"] = index._centres
        if index._codec is not None:
            arrays.update(index._codec.state())
        if index._projection is not None:
            arrays["projection"] = index._projection
        if index._probe_gaps is not None:  # None: loaded from a file written before adaptive probing
            arrays["probe_gaps"] = index._probe_gaps
        arrays.update(index._trained.frame.arrays("frame_"))
        if index._curves:
            arrays["recall_curves"] = torch.cat([c.as_array() for c in index._curves.values()])
    if index._calibration_queries is not None:
        arrays["calibration_queries"] = index._calibration_queries
    arrays["ids"] = index._slots.slot_ids[slots]
    if index.settings.keep_vectors or not index.is_trained:  # an empty index saves f32[0, dim]
        arrays["vectors"] = index._vectors[slots.to(index.device)] if index._vectors.shape[0] else index._vectors[:0]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dim": index.dim,
        "metric": index.metric,
        "settings": dataclasses.asdict(index.settings),
        "search_settings": dataclasses.asdict(index.search_settings),
        "trained": index.is_trained,
        "auto_partitions": index._auto_partitions,
        "count": len(index),
        "next_id": index._slots.next_id,
        "calibration_from": index._calibration_from,  # who gave calibration_queries (None: none); the learn_queries sample itself is not saved
    }
    return manifest, arrays


def load(cls, path, device):
    """A `cls` (PartitionedIndex) read from `path`; corrupt or mismatched files raise ValueError."""
    manifest, arrays, where = io.read_bundle(path, FORMAT, VERSION, unchecked=UNCHECKED_VERSIONS)
    try:
        dim, metric, count, next_id = (manifest[key] for key in ("dim", "metric", "count", "next_id"))
        settings = PartitionSettings(**manifest["settings"])
        search_settings = SearchSettings(**manifest["search_settings"])
        trained = manifest["trained"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad manifest fields: {e}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dim, count, next_id)) or metric not in METRICS:
        raise ValueError(f"{where}: bad dim/count/next_id/metric in manifest")
    index = cls(dim, metric=metric, settings=settings, search_settings=search_settings, device=device)
    index._auto_partitions = bool(manifest.get("auto_partitions", settings.partitions is None))  # absent before 0.2
    ids = check_array(arrays, "ids", torch.int64, (count,), where).numpy()
    if ids.size and (ids.min() < 0 or np.unique(ids).size != ids.size or ids.max() >= next_id):
        raise ValueError(f"{where}: ids must be unique, non-negative and below next_id")
    vectors = arrays.get("vectors")
    if vectors is not None:
        vectors = check_array(arrays, "vectors", torch.float32, (count, dim), where)
        if vectors.numel() and not bool(torch.isfinite(vectors).all()):
            raise ValueError(f"{where}: vectors contain NaN or inf")
    elif settings.keep_vectors or not trained:
        raise ValueError(f"{where}: array 'vectors' is missing")
    index._slots.next_id = next_id
    if not trained:
        index._insert(ids, vectors.to(index.device), auto_train=False)
        return index
    _restore(index, arrays, ids, vectors, where, manifest["version"])
    if index._calibration_queries is not None:  # no calibration_from: calibrate(queries), the only source before learn_queries
        index._calibration_from = "searches" if manifest.get("calibration_from") == "searches" else "caller"
    return index


def _restore(index, arrays: dict, ids: np.ndarray, vectors: torch.Tensor | None, where, manifest_version: int) -> None:
    """Rebuild a trained index's partitions from saved arrays (entries in partition order)."""
    s, dim, count, copies = index.settings, index.dim, ids.size, index._copies
    centres = check_array(arrays, "centres", torch.float32, (s.partitions, dim), where)
    sizes = check_array(arrays, "partition_sizes", torch.int64, (s.partitions,), where).numpy()
    entries = count * copies
    if (sizes < 0).any() or int(sizes.sum()) != entries:
        raise ValueError(f"{where}: partition sizes do not add up to {entries} entries ({count} rows x {copies})")
    projection = arrays.get("projection")
    if isinstance(s.scan_dims, int) or (s.scan_dims == "auto" and projection is not None):  # "auto" may keep all dims
        m = s.scan_dims if isinstance(s.scan_dims, int) else (projection.shape[-1] if projection.ndim else 0)
        if not 1 <= m <= dim:
            raise ValueError(f"{where}: array 'projection' must be f32[{dim}, m], 1 <= m <= {dim}")
        projection = check_array(arrays, "projection", torch.float32, (dim, m), where).to(index.device)
    else:
        projection = None
    gaps = None
    if "probe_gaps" in arrays:  # absent from files written before adaptive probing
        gaps = check_array(arrays, "probe_gaps", torch.float32, (min(s.partitions, GAP_COLUMNS),), where)
        if bool(gaps.isnan().any()) or bool((gaps < 0).any()):
            raise ValueError(f"{where}: probe_gaps must be non-negative numbers")
        gaps = gaps.to(index.device)
    scan_width = projection.shape[1] if projection is not None else dim
    index._entries.reset(s, dim, scan_width, index.device)
    lists = index._entries.lists
    codes = check_array(arrays, "codes", lists.codes.dtype, (entries, lists.codes.shape[2]), where)
    rows = check_array(arrays, "entry_rows", torch.int64, (entries,), where)
    if entries and (rows.min() < 0 or rows.max() >= count or (torch.bincount(rows, minlength=count) != copies).any()):
        raise ValueError(f"{where}: entry_rows must name every row exactly {copies} time(s)")
    bias = check_array(arrays, "bias", torch.float32, (entries,), where)
    codec = None
    if s.codes == "int8":
        codec = Int8Codes(check_array(arrays, "int8_scale", torch.float32, (scan_width,), where).to(index.device))
    elif s.codes == "pq4":
        blocks = dim // s.block_dims
        codec = ProductQuantizer(check_array(arrays, "pq_centres", torch.float32, (blocks, 16, s.block_dims), where).to(index.device))
    tensors = [centres, bias] + list(codec.state().values() if codec else [])
    tensors += [projection] if projection is not None else []
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise ValueError(f"{where}: centres, biases, codec or projection contain NaN or inf")
    if manifest_version >= 3:
        frame = ScanFrame.from_arrays(arrays, "frame_", dim, where, index.device)
    else:  # version 2 (peakknn 0.1.0): rows were coded as they are
        frame = ScanFrame.identity(dim, index.device)
    index._set_trained(Trained(centres=centres.to(index.device), codec=codec, projection=projection, probe_gaps=gaps, frame=frame))
    if "recall_curves" in arrays:  # absent from files written before calibration
        index._curves = calibration.curves_from_array(arrays["recall_curves"], where)
        index._curves_stale = False
    if "calibration_queries" in arrays:  # calibrate(queries=...)
        q = arrays["calibration_queries"]
        if q.dtype != torch.float32 or q.ndim != 2 or q.shape[1] != dim or q.shape[0] == 0 or not bool(torch.isfinite(q).all()):
            raise ValueError(f"{where}: array 'calibration_queries' must be finite f32[m >= 1, {dim}]")
        index._calibration_queries = q.to(index.device)
    slots = index._take_slots(count)
    index._slots.assign(slots, ids)
    if vectors is not None:
        index._vectors = torch.zeros(index._slots.capacity, dim, device=index.device)
        index._vectors[torch.from_numpy(slots).to(index.device)] = vectors.to(index.device)
    else:
        index._vectors = index._vectors[:0]
    copy = np.empty(entries, dtype=np.int64)  # the n-th entry of a row is its copy n
    copy[np.argsort(rows.numpy(), kind="stable")] = np.arange(entries) % copies
    part = torch.repeat_interleave(torch.arange(s.partitions), torch.from_numpy(sizes))
    index._entries.append(part, codes.to(index.device), slots[rows.numpy()], copy, bias)
