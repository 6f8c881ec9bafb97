"""The saved-index format shared by every index kind: a directory with a JSON manifest and one
safetensors file (the bundle).

    path/
      manifest.json                 {"format": ..., "version": ..., the index's own fields...,
                                     "arrays": "arrays-<random>.safetensors", "sha256": ...}
      arrays-<random>.safetensors   the index's named arrays

`write_bundle` / `read_bundle` hold the layout, atomicity and integrity checks; each index kind
writes its own manifest fields and arrays and checks them on load (`Index` in peakknn.index,
format "peakknn.index"; `PartitionedIndex` in peakknn.partitioned.persist, "peakknn.partitioned").
docs/ARCHITECTURE.md lists the formats and their versions.

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

import torch

MANIFEST = "manifest.json"


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
