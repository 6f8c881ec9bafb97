"""Request bodies -> checked values. Every function raises BadRequest naming the field and the
problem; nothing here touches a collection.

JSON bodies must be one object; NaN / Infinity literals, numbers beyond float32, bools where
numbers belong and unknown fields are refused. Vectors (norms up to MAX_NORM) come as "vectors" (a list of rows of
numbers) or "vectors_b64" (base64 of little-endian float32 rows, C order), or as a whole
`application/x-npy` body (any float dtype, [m, dim]); all become C-order float32 [m, dim].
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import numbers

import numpy as np
import orjson

from .errors import BadRequest
from .payloads import CompiledFilter, compile_filter

MAX_ID = 2**63 - 2  # as the library: next_id = max id + 1 stays an int64
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NORM = math.sqrt(FLOAT32_MAX) / 2  # 9.2e18: every ip / cos / l2 score of two such vectors fits in float32
MAX_K = 10_000
MAX_RESULTS = 1_000_000  # queries x k of one search request
MAX_PAYLOAD_DEPTH = 32  # nesting of a payload object (SQLite's JSON functions stop at 1000)


def json_object(raw: bytes, what: str = "body") -> dict:
    """The JSON object in `raw`. Read by orjson (ten times faster on numbers), except where its
    reading could differ from the standard library's: a body it refuses (the standard library
    then names the problem) and an integer beyond 64 bits outside "vectors" (orjson reads it as a
    float; "vectors" refuses such values either way)."""
    if not raw:
        raise BadRequest(f"{what} is empty: expected a JSON object")
    try:
        value = orjson.loads(raw)
        as_read = not _may_hold_long_integer(value)
    except orjson.JSONDecodeError:
        as_read = False
    if not as_read:
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except RecursionError:
            raise BadRequest(f"{what} is nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, our NaN refusal
            raise BadRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def _may_hold_long_integer(value) -> bool:
    """Whether orjson's reading holds a float of magnitude >= 2**63 (where an integer literal
    beyond 64 bits lands) outside a top-level "vectors"."""
    stack = [v for k, v in value.items() if k != "vectors"] if isinstance(value, dict) else [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if abs(v) >= 2.0**63:
                return True
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def check_fields(body: dict, allowed: set[str], what: str = "body") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"{what} has unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


# ----------------------------------------------------------------- scalars
def get_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {_show(value)}")
    return value


def get_int(body: dict, name: str, default=None, low: int = 1, high: int | None = None, *, required: str | None = None):
    """body[name] as an int in [low, high]; absent or null: `default`, or BadRequest saying
    `required` (what the field is) when it must be given."""
    value = body.get(name, default)
    if value is None:
        if required:
            raise BadRequest(f"body needs \"{name}\": {required}")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {_show(value)}")
    if value < low or (high is not None and value > high):
        raise BadRequest(f"{name} must be in [{low}, {high}], got {value}" if high is not None else f"{name} must be >= {low}, got {value}")
    return value


def get_fraction(body: dict, name: str, default=None):
    """A number in (0, 1] (recall targets)."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:  # exact for any int
        raise BadRequest(f"{name} must be a number in (0, 1], got {_show(value)}")
    return float(value)


# ----------------------------------------------------------------- ids
def ids_list(value, name: str = "ids", *, storable: bool = True) -> np.ndarray:
    """A JSON list of ints as i64[m] (unique, >= 0; storable: <= MAX_ID, else larger ids are
    dropped, as they can match nothing)."""
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of integers, got {_kind(value)}")
    bad = next((i for i, v in enumerate(value) if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise BadRequest(f"{name}[{bad}] must be an integer, got {_show(value[bad])}")
    if value and min(value) < 0:
        raise BadRequest(f"{name} must be non-negative, got {min(value)}")
    if value and max(value) > MAX_ID:
        if storable:
            raise BadRequest(f"{name} must be <= 2**63 - 2, got {max(value)}")
        value = [v for v in value if v <= MAX_ID]
    return np.array(value, dtype=np.int64)


def unique_ids(ids: np.ndarray, name: str = "ids") -> np.ndarray:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise BadRequest(f"{name} contains duplicates, e.g. {int(values[counts > 1][0])}")
    return ids


def ids_param(text: str | None) -> np.ndarray:
    """The `ids` query parameter of a .npy upload: comma-separated ints and half-open ranges
    "start:stop", e.g. "0:1000,5000,7000:7010"."""
    if not text:
        raise BadRequest("an application/x-npy upload needs the ids in the query parameter ids, e.g. ?ids=0:1000")
    parts = []
    for item in text.split(","):
        item = item.strip()
        try:
            if ":" in item:
                start, stop = (int(x) for x in item.split(":"))
                if not 0 <= start <= stop or stop - 1 > MAX_ID:
                    raise ValueError
                parts.append(np.arange(start, stop, dtype=np.int64))
            else:
                value = int(item)
                if not 0 <= value <= MAX_ID:
                    raise ValueError
                parts.append(np.array([value], dtype=np.int64))
        except ValueError:
            raise BadRequest(f"query parameter ids: {item!r} is not an id in [0, 2**63 - 2] nor a range start:stop") from None
    return unique_ids(np.concatenate(parts), "query parameter ids")


# ----------------------------------------------------------------- vectors
def vectors(body: dict, dim: int, count: int | None = None, name: str = "vectors") -> np.ndarray:
    """f32[m, dim] from body["vectors"] or body["vectors_b64"] (exactly one); count: the rows
    there must be (the ids' number)."""
    given = [f for f in ("vectors", "vectors_b64") if f in body]
    if len(given) != 1:
        raise BadRequest(f"give {name} as \"vectors\" (lists of numbers) or \"vectors_b64\" (base64 float32), exactly one of them")
    if given[0] == "vectors":
        x = _rows(body["vectors"], dim)
    else:
        x = _b64_rows(body["vectors_b64"], dim)
    if count is not None and x.shape[0] != count:
        raise BadRequest(f"{given[0]} has {x.shape[0]} rows but there are {count} ids")
    return x


def _rows(rows, dim: int) -> np.ndarray:
    if not isinstance(rows, list):
        raise BadRequest(f"vectors must be a list of rows (lists of {dim} numbers), got {_kind(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadRequest(f"vectors[{i}] must be a list of {dim} numbers, got {_kind(row)}")
        if len(row) != dim:
            raise BadRequest(f"vectors[{i}] has {len(row)} numbers; the collection's dim is {dim}")
        if not set(map(type, row)) <= {float, int}:
            j = next(j for j, v in enumerate(row) if type(v) not in (float, int))
            raise BadRequest(f"vectors[{i}][{j}] must be a number, got {_show(row[j])}")
    try:
        x = np.array(rows, dtype=np.float64).reshape(len(rows), dim)
    except OverflowError:
        raise BadRequest("vectors hold an integer beyond the float range") from None
    return _finite32(x, "vectors")


def _b64_rows(text, dim: int) -> np.ndarray:
    if not isinstance(text, str):
        raise BadRequest(f"vectors_b64 must be a base64 string, got {_kind(text)}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"vectors_b64 is not valid base64: {e}") from None
    if len(raw) % (4 * dim):
        raise BadRequest(f"vectors_b64 holds {len(raw)} bytes, not a whole number of rows of {dim} float32 ({4 * dim} bytes each)")
    return _finite32(np.frombuffer(raw, dtype="<f4").reshape(-1, dim), "vectors_b64")


def npy_rows(raw: bytes, dim: int) -> np.ndarray:
    """f32[m, dim] of an .npy file's bytes (a float array [m, dim]; never unpickled)."""
    try:
        x = _npy_view(raw)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError, SyntaxError, ... for broken files
        raise BadRequest(f"body is not a readable .npy file: {e}") from None
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise BadRequest(f"the .npy array must have a float dtype, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise BadRequest(f"the .npy array must have shape [m, {dim}] (the collection's dim), got {list(x.shape)}")
    return _finite32(x.astype(np.float64, copy=False) if x.dtype.itemsize > 8 else x, "the .npy array")


def _npy_view(raw: bytes) -> np.ndarray:
    """The array of .npy bytes as a read-only view of them (np.load would copy the data once more
    before _finite32's copy); format versions other than 1.0 / 2.0, and object arrays (refused
    there), go through np.load without pickles."""
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        return np.load(io.BytesIO(raw), allow_pickle=False)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(fp)
    if dtype.hasobject:
        return np.load(io.BytesIO(raw), allow_pickle=False)  # raises: object arrays need pickles
    count, offset = math.prod(shape), fp.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"the data holds {len(raw) - offset} bytes where shape {list(shape)} of {dtype} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran_order else "C")


CLEARLY_BELOW = 0.999  # float32 squared norms below this share of MAX_NORM^2 need no float64 check


def _clearly_within(x: np.ndarray) -> bool:
    """True for native float32 rows whose float32 squared norms are finite and below
    CLEARLY_BELOW * MAX_NORM^2 (binary bodies: then the float64 checks can find nothing)."""
    if x.dtype != np.float32:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.einsum("ij,ij->i", x, x)
    return bool(np.isfinite(squares).all()) and float(squares.max()) < CLEARLY_BELOW * MAX_NORM**2


def _finite32(x: np.ndarray, what: str) -> np.ndarray:
    """x as C-order native float32 after checking that it is finite and within float32."""
    if x.size and not _clearly_within(x):
        # Row norms in float64 without a float64 copy of x (einsum casts in small buffers: large
        # temporaries cost a page fault per 4 KiB when every request maps fresh memory).
        with np.errstate(over="ignore", invalid="ignore"):  # inf / nan rows are found below
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        if not np.isfinite(norms).all():  # a NaN / inf, or a float64 value whose square overflows
            finite = np.isfinite(x)  # never warns (nor do abs and max of finite values)
            if not finite.all():
                row, col = (int(v) for v in np.argwhere(~finite)[0])
                raise BadRequest(f"{what} holds {x[row, col]} at row {row}, column {col}; vectors must be finite")
        if x.dtype.itemsize > 4 and float(np.abs(x).max()) > FLOAT32_MAX:
            raise BadRequest(f"{what} holds values beyond the float32 range (|x| > {FLOAT32_MAX:.3g})")
        if norms.max() > MAX_NORM:
            row = int(norms.argmax())
            raise BadRequest(f"{what} row {row} has norm {norms[row]:.3g}; the server takes norms up to {MAX_NORM:.3g}, so that scores stay finite in float32")
    return x.astype(np.float32, order="C")  # a copy: nothing refers to the request's bytes


def zero_rows_for_cosine(x: np.ndarray, metric: str, what: str = "vectors") -> None:
    if metric == "cos" and x.size:
        zero = np.flatnonzero(~x.any(axis=1))
        if zero.size:
            raise BadRequest(f"{what}[{int(zero[0])}] is a zero vector; cosine needs a direction")


# ----------------------------------------------------------------- payloads
def payloads(body: dict, count: int) -> list | None:
    """body["payloads"]: count objects or nulls (None when absent or null)."""
    value = body.get("payloads")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest(f"payloads must be a list of objects or nulls, got {_kind(value)}")
    if len(value) != count:
        raise BadRequest(f"payloads has {len(value)} entries but there are {count} ids")
    for i, p in enumerate(value):
        if p is not None and not isinstance(p, dict):
            raise BadRequest(f"payloads[{i}] must be an object or null, got {_kind(p)}")
        if p is not None and _depth(p) > MAX_PAYLOAD_DEPTH:
            raise BadRequest(f"payloads[{i}] nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    return value


def _depth(value, level: int = 1) -> int:
    if level > MAX_PAYLOAD_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(c, level + 1) for c in children if isinstance(c, (dict, list))), default=level)


# ----------------------------------------------------------------- requests
@dataclasses.dataclass(frozen=True)
class Upsert:
    ids: np.ndarray
    vectors: np.ndarray
    payloads: list | None


def upsert_json(raw: bytes, dim: int, metric: str) -> Upsert:
    body = json_object(raw)
    check_fields(body, {"ids", "vectors", "vectors_b64", "payloads"})
    if "ids" not in body:
        raise BadRequest("body needs \"ids\": one integer per vector")
    ids = unique_ids(ids_list(body["ids"]))
    x = vectors(body, dim, count=ids.size)
    zero_rows_for_cosine(x, metric)
    return Upsert(ids, x, payloads(body, ids.size))


def upsert_npy(raw: bytes, ids_text: str | None, dim: int, metric: str) -> Upsert:
    ids = ids_param(ids_text)
    x = npy_rows(raw, dim)
    if x.shape[0] != ids.size:
        raise BadRequest(f"the .npy array has {x.shape[0]} rows but the query parameter ids names {ids.size} ids")
    zero_rows_for_cosine(x, metric, "the .npy array's row")
    return Upsert(ids, x, None)


def id_request(raw: bytes, extra: set[str] = frozenset()) -> tuple[np.ndarray, dict]:
    """(ids, body) of {"ids": [...], ...extra fields}."""
    body = json_object(raw)
    check_fields(body, {"ids", *extra})
    if "ids" not in body:
        raise BadRequest("body needs \"ids\": a list of integers")
    return body["ids"], body


@dataclasses.dataclass(frozen=True)
class Search:
    queries: np.ndarray  # f32[nq, dim]
    k: int
    recall_target: float | None
    probe: int | None
    filter: CompiledFilter | None
    with_payload: bool

    @property
    def group(self) -> tuple:
        """Requests with equal groups run as one index search (k included: the bins and the
        re-ranking depth of an approximate search follow k, so a larger k sliced is not the
        answer of a smaller one)."""
        return (self.k, self.recall_target, self.probe, None if self.filter is None else self.filter.key)


def calibration(raw: bytes, dim: int, metric: str) -> np.ndarray:
    """f32[m >= 1, dim]: the queries of a calibrate request {"vectors" | "vectors_b64"}."""
    body = json_object(raw)
    check_fields(body, {"vectors", "vectors_b64"})
    q = vectors(body, dim, name="queries")
    if q.shape[0] == 0:
        raise BadRequest("vectors holds no query")
    zero_rows_for_cosine(q, metric)
    return q


def search(raw: bytes, dim: int, metric: str, partitioned: bool) -> Search:
    body = json_object(raw)
    check_fields(body, {"vectors", "vectors_b64", "k", "recall_target", "probe", "filter", "with_payload"})
    q = vectors(body, dim, name="queries")
    if q.shape[0] == 0:
        raise BadRequest("vectors holds no query")
    zero_rows_for_cosine(q, metric)
    k = get_int(body, "k", low=1, high=MAX_K, required="the number of neighbours per query")
    if q.shape[0] * k > MAX_RESULTS:
        raise BadRequest(f"{q.shape[0]} queries x k={k} is more than {MAX_RESULTS} results: send fewer queries per request")
    recall_target = get_fraction(body, "recall_target")
    probe = get_int(body, "probe")
    if probe is not None and not partitioned:
        raise BadRequest("probe is an option of partitioned collections; this one is flat")
    if probe is not None and recall_target is not None:
        raise BadRequest("give probe or recall_target, not both")
    return Search(q, k, recall_target, probe, compile_filter(body.get("filter")), get_bool(body, "with_payload", False))


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
