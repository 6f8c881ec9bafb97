"""Saving and loading indexes: a directory with a JSON manifest and one safetensors file.

`write_bundle` / `read_bundle` hold the layout, atomicity and integrity checks; `save_index` /
`load_index` (the flat Index) and `peakknn.quant.partitioned` (format "peakknn.partitioned")
add their own fields and array checks on top. The flat index's layout:

    path/
      manifest.json                 {"format": "peakknn.index", "version": 1, settings...,
                                     "arrays": "arrays-<random>.safetensors", "sha256": ...}
      arrays-<random>.safetensors   vectors f32[m, d], slots i64[m], ids i64[m], free i64[f]

Atomic: a save writes a new arrays file under a fresh name, fsyncs it, then replaces
manifest.json through os.replace (atomic on POSIX), and only then deletes older arrays files.
A crash at any point leaves a manifest that names a complete arrays file.

Safe: nothing is unpickled. Loading checks the format and version, every field's type, the
arrays file's SHA-256 and the arrays' names, dtypes, shapes and consistency (unique ids and
slots, in range, finite vectors) and raises ValueError naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np
import torch

FORMAT = "peakknn.index"
VERSION = 1
MANIFEST = "manifest.json"


def save_index(index, path) -> None:
    """Write `index` to directory `path` (created if needed), atomically."""
    slots = torch.tensor(sorted(index._id_to_slot.values()), dtype=torch.int64)
    dev_slots = slots.to(index.device)
    arrays = {
        "vectors": index._vectors[dev_slots].cpu().contiguous(),
        "slots": slots,
        "ids": index._slot_ids[dev_slots].cpu().contiguous(),
        "free": torch.from_numpy(index._free.copy()),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dim": index.dim,
        "metric": index.metric,
        "dtype": "bf16" if index.scan_dtype == torch.bfloat16 else "fp32",
        "recall_target": index.recall_target,
        "seed": index.seed,
        "capacity": index._capacity,
        "high": index._high,
        "blocks": index._blocks,
        "next_id": index._next_id,
        "count": len(index),
    }
    write_bundle(path, manifest, arrays)


def write_bundle(path: Path, manifest: dict, arrays: dict[str, torch.Tensor]) -> None:
    """Write arrays as a fresh safetensors file, then the manifest naming it (atomically)."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    blob = save({name: t.cpu().contiguous() for name, t in arrays.items()})
    name = f"arrays-{secrets.token_hex(8)}.safetensors"
    _write_durably(path / name, blob)
    manifest = {**manifest, "arrays": name, "sha256": hashlib.sha256(blob).hexdigest()}
    tmp = path / f"{MANIFEST}.tmp-{secrets.token_hex(4)}"
    _write_durably(tmp, json.dumps(manifest, indent=1).encode())
    os.replace(tmp, path / MANIFEST)
    _fsync_dir(path)
    for old in path.glob("arrays-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_bundle(path, fmt: str, version: int) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(manifest, arrays, arrays file path) of a bundle written by `write_bundle`, after checking
    the format, version, the arrays file's name and SHA-256. Raises ValueError."""
    from safetensors.torch import load

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{path} is not a saved peakknn index (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ValueError(f"{manifest_path} is not a {fmt} manifest")
    if manifest.get("version") != version:
        raise ValueError(f"{manifest_path} has format version {manifest.get('version')!r}; this peakknn reads {version}")
    name, digest = manifest.get("arrays"), manifest.get("sha256")
    if not isinstance(name, str) or not isinstance(digest, str):
        raise ValueError(f"{manifest_path}: fields 'arrays' and 'sha256' must be strings")
    arrays_path = path / name
    if Path(name).name != name or not arrays_path.is_file():
        raise ValueError(f"{manifest_path} names arrays file {name!r}, which is missing")
    blob = arrays_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != digest:
        raise ValueError(f"{arrays_path} is corrupt or truncated (SHA-256 mismatch)")
    try:
        arrays = load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{arrays_path} is not a valid safetensors file: {e}") from None
    return manifest, arrays, arrays_path


def load_index(path, *, device="cpu"):
    """Read an index saved by `save_index`; raises ValueError on anything inconsistent."""
    from .index import Index

    manifest, arrays, arrays_path = read_bundle(path, FORMAT, VERSION)
    m = _fields(manifest, Path(path) / MANIFEST)
    vectors, slots, ids, free = _arrays(arrays, m, arrays_path)

    index = Index(m["dim"], metric=m["metric"], dtype=m["dtype"], device=device, recall_target=m["recall_target"], seed=m["seed"])
    index._grow_to_saved(m["capacity"], m["blocks"])
    index._free = free
    index._write(slots, ids, vectors.to(device))
    index._high = m["high"]
    index._next_id = m["next_id"]
    return index


def _fields(manifest: dict, where: Path) -> dict:
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


def _arrays(arrays: dict, m: dict, where: Path):
    expected = {
        "vectors": (torch.float32, (m["count"], m["dim"])),
        "slots": (torch.int64, (m["count"],)),
        "ids": (torch.int64, (m["count"],)),
        "free": (torch.int64, None),
    }
    if set(arrays) != set(expected):
        raise ValueError(f"{where}: arrays {sorted(arrays)} do not match {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        t = arrays[name]
        if t.dtype != dtype or (shape is not None and tuple(t.shape) != shape) or (shape is None and t.ndim != 1):
            raise ValueError(f"{where}: array {name!r} has {t.dtype}{list(t.shape)}, expected {dtype}{list(shape or ['?'])}")
    vectors = arrays["vectors"]
    slots, ids, free = (arrays[k].numpy().astype(np.int64) for k in ("slots", "ids", "free"))
    if vectors.numel() and not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"{where}: vectors contain NaN or inf")
    if ids.size and (ids.min() < 0 or np.unique(ids).size != ids.size):
        raise ValueError(f"{where}: ids must be unique and non-negative")
    used = np.concatenate([slots, free])
    if used.size and (used.min() < 0 or used.max() >= m["capacity"] or np.unique(used).size != used.size):
        raise ValueError(f"{where}: slots must be unique and inside the capacity {m['capacity']}")
    if slots.size and slots.max() >= m["high"]:
        raise ValueError(f"{where}: a slot lies beyond the scanned range {m['high']}")
    if ids.size and ids.max() >= m["next_id"]:
        raise ValueError(f"{where}: next_id {m['next_id']} must exceed every id")
    return vectors, slots, ids, free


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
