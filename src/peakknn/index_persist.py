"""Saving and loading a flat Index: format "peakknn.index", version 2, a `peakknn.io` bundle
(version 1, written by peakknn 0.1.0, is the same without the manifest checksum, and loads).

Manifest fields: dim, metric, dtype (the precision's name), recall_target, seed, capacity, high,
blocks, next_id, count. Arrays: vectors f32[count, dim], slots i64[count] (each row's slot),
ids i64[count], free i64[f] (the free-slot stack, next slot last), so a loaded index places new
rows exactly where the saved one would have, and the scan frame: centre f32[dim] and scale
f64[1] (version 1 files scanned rows as they are: centre 0, scale 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._checks import check_array
from .engine.table import ScanFrame
from .io import MANIFEST, read_bundle, write_bundle

FORMAT = "peakknn.index"
VERSION = 2
UNCHECKED_VERSIONS = (1,)  # peakknn 0.1.0: no manifest checksum


def save(index, path) -> None:
    """Write `index` (an Index) to directory `path` atomically: a consistent snapshot taken
    under the index's read lock (searches go on, updates wait), written after it is released."""
    with index._lock.read():
        manifest, arrays = _snapshot(index)
    write_bundle(path, manifest, arrays)


def _snapshot(index) -> tuple[dict, dict[str, torch.Tensor]]:
    slots = torch.from_numpy(index._slots.live_slots())
    dev_slots = slots.to(index.device)
    arrays = {
        "vectors": index._vectors[dev_slots].cpu().contiguous(),
        "slots": slots,
        "ids": index._slots.slot_ids[dev_slots].cpu().contiguous(),
        "free": torch.from_numpy(index._slots.free.copy()),
        **(index._frame or ScanFrame.identity(index.dim)).arrays(),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dim": index.dim,
        "metric": index.metric,
        "dtype": index.precision,
        "recall_target": index.recall_target,
        "seed": index.seed,
        "capacity": index._slots.capacity,
        "high": index._slots.high,
        "blocks": index._slots.blocks,
        "next_id": index._slots.next_id,
        "count": len(index),
    }
    return manifest, arrays


def load(cls, path, device):
    """A `cls` (Index) read from `path`; corrupt or mismatched files raise ValueError."""
    manifest, arrays, arrays_path = read_bundle(path, FORMAT, VERSION, unchecked=UNCHECKED_VERSIONS)
    m = _manifest_fields(manifest, Path(path) / MANIFEST)
    vectors, slots, ids, free = _saved_arrays(arrays, m, arrays_path, manifest["version"])
    index = cls(m["dim"], metric=m["metric"], precision=m["dtype"], device=device, recall_target=m["recall_target"], seed=m["seed"])
    index._centred_at = m["capacity"]  # the saved centre stands until the index grows
    # version 1 (peakknn 0.1.0) scanned rows as they are
    index._frame = ScanFrame.from_arrays(arrays, "", m["dim"], arrays_path, device) if manifest["version"] >= 2 else ScanFrame.identity(m["dim"], device)
    index._extend_arrays(m["capacity"])
    index._slots.restore(m["capacity"], m["blocks"], free)
    index._write(slots, ids, vectors.to(device))
    index._slots.high = m["high"]
    index._slots.next_id = m["next_id"]
    return index


def _manifest_fields(manifest: dict, where: Path) -> dict:
    spec = {
        "dim": int, "metric": str, "dtype": str, "recall_target": float, "seed": int, "capacity": int,
        "high": int, "blocks": int, "next_id": int, "count": int, "arrays": str, "sha256": str,
    }  # fmt: skip
    out = {}
    for key, kind in spec.items():
        value = manifest.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")
        out[key] = value
    if min(out["dim"], out["capacity"] + 1, out["high"] + 1, out["count"] + 1, out["next_id"] + 1) < 1:
        raise ValueError(f"{where}: negative sizes in manifest")
    if not out["count"] <= out["high"] <= out["capacity"]:
        raise ValueError(f"{where}: inconsistent count/high/capacity {out['count']}/{out['high']}/{out['capacity']}")
    return out


def _saved_arrays(arrays: dict, m: dict, where: Path, version: int):
    expected = {
        "vectors": (torch.float32, (m["count"], m["dim"])),
        "slots": (torch.int64, (m["count"],)),
        "ids": (torch.int64, (m["count"],)),
        "free": (torch.int64, None),
    }
    names = set(expected) | ({"centre", "scale"} if version >= 2 else set())  # the frame: ScanFrame.from_arrays
    if set(arrays) != names:
        raise ValueError(f"{where}: arrays {sorted(arrays)} do not match {sorted(names)}")
    for name, (dtype, shape) in expected.items():
        check_array(arrays, name, dtype, shape, where)
    vectors = arrays["vectors"]
    slots, ids, free = (arrays[k].numpy().astype(np.int64) for k in ("slots", "ids", "free"))
    if vectors.numel() and not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"{where}: vectors contain NaN or inf")
    if ids.size and (ids.min() < 0 or np.unique(ids).size != ids.size):
        raise ValueError(f"{where}: ids must be unique and non-negative")
    used = np.concatenate([slots, free])
    if used.size != m["capacity"]:  # every slot is used or free: the capacity is bounded by the arrays
        raise ValueError(f"{where}: capacity {m['capacity']} is not the {used.size} used and free slots")
    if used.size and (used.min() < 0 or used.max() >= m["capacity"] or np.unique(used).size != used.size):
        raise ValueError(f"{where}: slots must be unique and inside the capacity {m['capacity']}")
    if slots.size and slots.max() >= m["high"]:
        raise ValueError(f"{where}: a slot lies beyond the scanned range {m['high']}")
    if ids.size and ids.max() >= m["next_id"]:
        raise ValueError(f"{where}: next_id {m['next_id']} must exceed every id")
    return vectors, slots, ids, free
