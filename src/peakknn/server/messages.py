"""Messages between the server's processes (the engine process, the sharded server's ranks): a
JSON header plus raw numpy arrays in one byte string; nothing is pickled.

    message = 8-byte little-endian length of meta | meta | each array's bytes (C order)
    meta    = JSON {"header": {...}, "arrays": [[name, dtype.str, shape], ...]}

meta and each array are padded (spaces, zero bytes) to a multiple of 8 bytes.

Searches travel as (specs, queries): one spec per request ({"n", "k", "recall_target", "probe",
"filter", "with_payload"}, the filter as its canonical JSON) and every request's queries in one
float32 array, so the receiver rebuilds exactly the `bodies.Search` requests (`searches`).
"""

from __future__ import annotations

import json
import math

import numpy as np

try:
    import orjson
except ImportError:  # the [server] extra installs it; the standard library reads and writes the same
    orjson = None

from .bodies import Search
from .payloads import compile_filter

ALIGN = 8  # bytes every part of a message is padded to


def json_bytes(value) -> bytes:
    """Compact JSON bytes (orjson; the standard library where orjson cannot, e.g. integers beyond
    64 bits in payloads)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_value(raw):
    """The value of JSON bytes made by `json_bytes`."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # integers beyond 64 bits
            pass
    return json.loads(raw)


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list:
    """The message of a header (JSON-able) and named arrays as a list of buffers to send one after
    the other (see the module; `b"".join` makes it one bytes object). Every part is padded to a
    multiple of 8 bytes, so that the arrays `decode` reads in place are aligned."""
    arrays = {name: a if a.flags.c_contiguous else a.copy(order="C") for name, a in ((n, np.asarray(a)) for n, a in (arrays or {}).items())}
    meta = json_bytes({"header": header, "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in arrays.items()]})
    meta += b" " * (-len(meta) % ALIGN)
    parts = [len(meta).to_bytes(8, "little"), meta]
    for a in arrays.values():
        parts.append(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
        if a.nbytes % ALIGN:
            parts.append(bytes(-a.nbytes % ALIGN))
    return parts


def decode(raw, copy: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of an `encode`d message (bytes, bytearray or memoryview). copy=False: the
    arrays are views of raw (writable when raw is a bytearray), which they keep alive."""
    raw = memoryview(raw).cast("B")
    size = int.from_bytes(raw[:8], "little")
    meta = json_value(bytes(raw[8 : 8 + size]))
    arrays, at = {}, 8 + size
    for name, dtype, shape in meta["arrays"]:
        dtype = np.dtype(dtype)
        if dtype.hasobject:  # raw bytes of objects would be pointers
            raise ValueError(f"array {name!r} of the message has dtype {dtype}: object arrays are never sent")
        count = math.prod(shape)
        a = np.frombuffer(raw, dtype=dtype, count=count, offset=at).reshape(shape)
        arrays[name] = a.copy() if copy else a
        at += count * dtype.itemsize
        at += -at % ALIGN
    return meta["header"], arrays


def search_specs(requests: list[Search]) -> tuple[list[dict], np.ndarray]:
    """(specs, queries) of search requests (see the module)."""
    specs = [{"n": int(r.queries.shape[0]), "k": r.k, "recall_target": r.recall_target, "probe": r.probe,
              "filter": None if r.filter is None else r.filter.key, "with_payload": r.with_payload} for r in requests]  # fmt: skip
    queries = requests[0].queries if len(requests) == 1 else np.concatenate([r.queries for r in requests])
    return specs, queries


def searches(specs: list[dict], queries: np.ndarray) -> list[Search]:
    """The requests of `search_specs`."""
    out, at = [], 0
    for s in specs:
        spec = None if s["filter"] is None else json.loads(s["filter"])
        out.append(Search(queries[at : at + s["n"]], s["k"], s["recall_target"], s["probe"], compile_filter(spec), s["with_payload"]))
        at += s["n"]
    return out
