"""The saved-index format shared by every index kind: a directory with a JSON manifest and one
safetensors file (the bundle).

    path/
      manifest.json                 {"format": ..., "version": ..., the index's own fields...,
                                     "arrays": "arrays-<random>.safetensors", "sha256": ...}
      arrays-<random>.safetensors   the index's named arrays

`write_bundle` / `read_bundle` hold the layout, atomicity and integrity checks; each index kind
writes its own manifest fields and arrays and checks them on load (`Index` in peakknn.index_persist,
format "peakknn.index"; `PartitionedIndex` in peakknn.partitioned.persist, "peakknn.partitioned").
docs/ARCHITECTURE.md lists the formats and their versions.

Atomic: a save writes a new arrays file under a fresh name, fsyncs it, then replaces
manifest.json through os.replace (atomic on POSIX), and only then deletes older arrays files.
A crash at any point leaves a manifest that names a complete arrays file.

Safe: nothing is unpickled. Loading checks the format and version, the manifest's own checksum
(`manifest_sha256`, so a hand-edited metric or size is refused; files from peakknn 0.1.0 have
none), the arrays file's SHA-256, and (in each index kind) every field's type and the arrays'
names, dtypes, shapes and consistency, before anything is allocated from a manifest's sizes,
and raises ValueError naming what is wrong. Saves to one directory take an exclusive lock
(`.peakknn-lock`), loads a shared one, so concurrent saves and loads never mix files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
from pathlib import Path

import torch

MANIFEST = "manifest.json"
CHECKSUM = "manifest_sha256"  # SHA-256 of the manifest's other fields (canonical JSON)
LOCK = ".peakknn-lock"  # flock'ed: shared while a bundle is read, exclusive while one is written
READ_ATTEMPTS = 3  # a load re-reads the manifest this often when concurrent saves replace it


class _ArraysReplaced(Exception):
    """The manifest named an arrays file that is gone: a save replaced both in between."""


def write_bundle(path: Path, manifest: dict, arrays: dict[str, torch.Tensor]) -> None:
    """Write arrays as a fresh safetensors file, then the manifest naming it (atomically), then
    delete older arrays files and temporary files left by interrupted saves. Saves to one
    directory, from threads or processes, run one at a time (an exclusive lock on LOCK)."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    blob = save({name: t.cpu().contiguous() for name, t in arrays.items()})
    with _locked(path, exclusive=True):
        name = f"arrays-{secrets.token_hex(8)}.safetensors"
        write_durably(path / name, blob)
        manifest = {**manifest, "arrays": name, "sha256": hashlib.sha256(blob).hexdigest()}
        manifest[CHECKSUM] = _manifest_digest(manifest)
        write_json(path / MANIFEST, manifest)
        for old in [*path.glob("arrays-*.safetensors"), *path.glob(f"{MANIFEST}.tmp-*")]:
            if old.name != name:
                old.unlink(missing_ok=True)


def read_bundle(path, fmt: str, version: int, *, unchecked: tuple[int, ...] = ()) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(manifest, arrays, arrays file path) of a bundle written by `write_bundle`, after checking
    the format, the version, the manifest's own checksum, the arrays file's name and SHA-256.
    Versions in `unchecked` (written before manifests carried a checksum) load without the
    manifest check. Raises ValueError."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{path} is not a saved peakknn index (no {MANIFEST})")
    for attempt in range(READ_ATTEMPTS):
        try:
            return _read_bundle_once(path, manifest_path, fmt, version, unchecked)
        except _ArraysReplaced:
            if attempt == READ_ATTEMPTS - 1:
                raise ValueError(f"{manifest_path} names an arrays file that a concurrent save keeps replacing") from None


def _read_bundle_once(path: Path, manifest_path: Path, fmt: str, version: int, unchecked: tuple[int, ...]):
    from safetensors.torch import load

    with _locked(path, exclusive=False):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{manifest_path} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != fmt:
            raise ValueError(f"{manifest_path} is not a {fmt} manifest")
        if manifest.get("version") != version and manifest.get("version") not in unchecked:
            raise ValueError(f"{manifest_path} has format version {manifest.get('version')!r}; this peakknn reads {version}")
        if manifest.get("version") == version and manifest.get(CHECKSUM) != _manifest_digest(manifest):
            raise ValueError(f"{manifest_path} was changed after it was written (its {CHECKSUM} does not match)")
        name, digest = manifest.get("arrays"), manifest.get("sha256")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise ValueError(f"{manifest_path}: fields 'arrays' and 'sha256' must be strings")
        arrays_path = path / name
        if Path(name).name != name:
            raise ValueError(f"{manifest_path} names arrays file {name!r}, which is missing")
        try:
            blob = arrays_path.read_bytes()
        except FileNotFoundError:
            if json.loads(manifest_path.read_text()).get("arrays") != name:  # a save moved on
                raise _ArraysReplaced() from None
            raise ValueError(f"{manifest_path} names arrays file {name!r}, which is missing") from None
        except OSError as e:  # a directory in its place, no permission, ...
            raise ValueError(f"{arrays_path} cannot be read: {e.strerror or e}") from None
    if hashlib.sha256(blob).hexdigest() != digest:
        raise ValueError(f"{arrays_path} is corrupt or truncated (SHA-256 mismatch)")
    try:
        arrays = load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{arrays_path} is not a valid safetensors file: {e}") from None
    return manifest, arrays, arrays_path


def _manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest without its CHECKSUM field, as canonical JSON (sorted keys)."""
    fields = {key: value for key, value in manifest.items() if key != CHECKSUM}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool):
    """Hold the directory's LOCK file: exclusive for a writer, shared for a reader (fcntl.flock,
    which also separates threads: each opens the file anew). Where flock is missing, writers in
    this process take turns on a per-directory thread lock. Readers never create the file: where
    it is missing (a directory no save of this version wrote), they read without a lock and
    `read_bundle` reads the manifest again if a concurrent save replaced the arrays."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None:  # readers and writers of this process take turns
        key = str(path.resolve())
        with _THREAD_LOCKS_GUARD:
            lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        with lock:
            yield
        return
    try:  # a shared lock needs only a readable lock file; a writer makes it
        handle = open(path / LOCK, "a+b" if exclusive else "rb")
    except OSError:
        if exclusive:
            raise
        yield  # never saved by this version, or unreadable: read_bundle re-reads if a save moves on
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_json(path: Path, value) -> None:
    """Write `value` as JSON to `path` atomically and durably: a temporary file beside it
    (NAME.tmp-*), fsync, rename over `path`, fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    write_durably(tmp, json.dumps(value, indent=1).encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the names created or removed in it are durable (no-op where
    a directory cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
