"""`peakknn.load(path)`: open a saved index folder of either kind, whichever its manifest names.

The kind is the manifest's "format" field ("peakknn.index": `Index`, "peakknn.partitioned":
`PartitionedIndex`); the class's own `load` then reads and checks everything else
(`index_persist`, `partitioned.persist`), so nothing here parses more than that one field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import index_persist
from .index import Index
from .io import MANIFEST
from .partitioned import PartitionedIndex
from .partitioned import persist as partitioned_persist

KINDS = {index_persist.FORMAT: Index, partitioned_persist.FORMAT: PartitionedIndex}


def saved_format(path: str | os.PathLike) -> str:
    """The "format" field of `path`/manifest.json. Raises ValueError naming `path` and what was
    found there instead: no such folder, a file, a folder without manifest.json, a manifest
    that is not JSON, or one without a "format" (returned as a string); TypeError for a path
    that is not a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    manifest = path / MANIFEST
    if not path.exists():
        raise ValueError(f"{path} is not a saved peakknn index: there is no such folder")
    if not path.is_dir():
        raise ValueError(f"{path} is not a saved peakknn index: it is a file, not a folder")
    if not manifest.is_file():
        raise ValueError(f"{path} is not a saved peakknn index: the folder has no {MANIFEST}")
    try:
        fields = json.loads(manifest.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # a save replaces the manifest atomically: this is never a partial one
        raise ValueError(f"{manifest} is not valid JSON: {e}") from None
    if not isinstance(fields, dict) or "format" not in fields:
        raise ValueError(f"{manifest} has no \"format\" field naming an index kind")
    return str(fields["format"])


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Index | PartitionedIndex:
    """The index saved in folder `path`: an `Index` or a `PartitionedIndex`, as its manifest says
    (files of every version those classes read, peakknn 0.1.0's included), on `device`. A folder
    that holds neither raises ValueError naming the path and what it holds; a corrupt index of
    a known kind raises that class's ValueError."""
    fmt = saved_format(path)
    cls = KINDS.get(fmt)
    if cls is None:
        raise ValueError(f"{Path(path) / MANIFEST} has format {fmt!r}; peakknn.load reads {', '.join(map(repr, KINDS))}")
    return cls.load(path, device=device)
