"""Payloads of one collection in SQLite (stdlib sqlite3, WAL journal) and filters compiled to SQL.

Table `points(id INTEGER PRIMARY KEY, payload TEXT)`: one row per stored point (payload NULL
where it has none) and `meta(key, value)` with the seq the committed state holds. Writes go into
one open transaction that `commit(seq)` makes durable (synchronous=FULL), which the collection
does at each snapshot; reads on the same connection see the uncommitted writes, so the table
always matches the index. A crash rolls the table back to the last snapshot, and the log replays
the rest. One connection, used by one thread at a time (a lock).

Filters (JSON; every part optional, all parts must hold; {} matches every point):

    {"ids": [int, ...],                     the point's id is one of these
     "must": [cond, ...],                   every condition holds
     "should": [cond, ...],                 at least one holds (when the list is given)
     "must_not": [cond, ...]}               none holds

    cond = {"key": K, "match": V}           V: a string, int or bool (or {"value": V} / {"any": [V, ...]})
         | {"key": K, "any": [V, ...]}      matches one of the values (an empty list: none)
         | {"key": K, "range": {"gt"|"gte"|"lt"|"lte": number, ...}}   a number within every bound
         | a nested filter                  {"must": ..., "should": ..., "must_not": ...}

K is a key of the payload object, or a dotted path into nested objects ("meta.lang"); a key
segment may not be empty nor hold '"' or '\\'. The value there satisfies a condition when it does
itself or, for an array, when one of its elements does. Equality is exact and typed: strings
equal strings, bools bools, numbers numbers (2020 matches 2020.0; a bool is not a number). A
point without the key, or without a payload, satisfies no condition (so it satisfies must_not).

Compilation (`compile_filter`) checks the structure and builds one SQL expression over
json_type / json_extract / json_each whose values, paths included, are all bound parameters:
nothing from a request is ever formatted into the SQL text.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path

import numpy as np

from .errors import BadRequest

MAX_CONDITIONS = 64  # conditions per filter, nested ones included (SQLite's expression depth)
MAX_NESTING = 8
MAX_ANY = 1024  # values in one "any"
INT64 = (-(2**63), 2**63 - 1)
CHUNK = 500  # ids per IN (...) query: below SQLite's parameter limit


def _has_json_each() -> bool:
    """Whether this SQLite has its JSON functions (built in by default from 3.38; older builds
    may lack them)."""
    try:
        with contextlib.closing(sqlite3.connect(":memory:")) as db:
            return db.execute("SELECT value FROM json_each('[7]')").fetchone() == (7,)
    except sqlite3.Error:
        return False


JSON_EACH = _has_json_each()  # upserts without payloads: one statement over json_each


class PayloadStore:
    """The payload table of one collection, in the SQLite file `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY, payload TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        self._in_txn = False

    @property
    def committed_seq(self) -> int:
        """The log seq that the last commit holds (0 before the first)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0]) if row else 0

    def upsert(self, ids: np.ndarray, payloads: list | None) -> None:
        """Set the payloads of ids (None: none), inserting rows for new ids."""
        if payloads is None and JSON_EACH:  # one statement: SQLite walks the ids (5x faster than executemany)
            with self._lock:
                self._begin()
                self._db.execute(
                    "INSERT INTO points (id, payload) SELECT value, NULL FROM json_each(?) WHERE true "
                    "ON CONFLICT(id) DO UPDATE SET payload = excluded.payload",
                    (json.dumps(ids.tolist()),),
                )
            return
        texts = [None] * len(ids) if payloads is None else [None if p is None else json.dumps(p, separators=(",", ":"), ensure_ascii=False) for p in payloads]
        with self._lock:
            self._begin()
            self._db.executemany(
                "INSERT INTO points (id, payload) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET payload = excluded.payload",
                zip(ids.tolist(), texts),
            )

    def delete(self, ids: np.ndarray) -> None:
        with self._lock:
            self._begin()
            self._db.executemany("DELETE FROM points WHERE id = ?", ((i,) for i in ids.tolist()))

    def get(self, ids) -> dict[int, dict | None]:
        """{id: payload} of those ids that have a row."""
        ids = [int(i) for i in ids]
        found: dict[int, dict | None] = {}
        with self._lock:
            for s in range(0, len(ids), CHUNK):
                chunk = ids[s : s + CHUNK]
                rows = self._db.execute(f"SELECT id, payload FROM points WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                found.update((i, None if p is None else json.loads(p)) for i, p in rows)
        return found

    def select(self, sql: str, params: dict) -> np.ndarray:
        """Sorted i64 ids of the points where the compiled expression `sql` holds."""
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM points WHERE {sql} ORDER BY id", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def commit(self, seq: int) -> None:
        """Make every write so far durable, recorded as the state at log seq `seq`."""
        with self._lock:
            self._begin()
            self._db.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (seq,))
            self._db.execute("COMMIT")
            self._in_txn = False

    def close(self) -> None:
        """Close; uncommitted writes are dropped (the log still holds them)."""
        with self._lock:
            self._db.close()

    def _begin(self) -> None:
        if not self._in_txn:
            self._db.execute("BEGIN")
            self._in_txn = True


# ----------------------------------------------------------------- filters
class CompiledFilter:
    """A checked filter: `ids` (sorted unique i64, or None: any id) and `sql` with its named
    `params` (None: no payload condition). `key` is its canonical JSON (requests with equal keys
    share one evaluation)."""

    def __init__(self, ids: np.ndarray | None, sql: str | None, params: dict, key: str):
        self.ids, self.sql, self.params, self.key = ids, sql, params, key

    def allowed(self, store: PayloadStore) -> np.ndarray | None:
        """The ids that pass (sorted i64; with no payload condition: the filter's ids, stored
        or not, which the index ignores where it holds none)."""
        if self.sql is None:
            return self.ids
        ids = store.select(self.sql, self.params)
        return ids if self.ids is None else np.intersect1d(ids, self.ids, assume_unique=True)


def compile_filter(spec) -> CompiledFilter | None:
    """The CompiledFilter of a request's "filter" value (None / {}: None); BadRequest naming the
    part that is wrong."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BadRequest(f"filter must be an object, got {_kind(spec)}")
    key = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    ids = None
    if "ids" in spec:
        ids = _filter_ids(spec["ids"])
    compiler = _Compiler()
    sql = compiler.filter({k: v for k, v in spec.items() if k != "ids"}, "filter", 0, top=True)
    if ids is None and sql is None:
        return None
    return CompiledFilter(ids, sql, compiler.params, key)


def _filter_ids(value) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRequest(f"filter.ids must be a list of ints, got {_kind(value)}")
    bad = next((v for v in value if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise BadRequest(f"filter.ids must be ints, got {bad!r}")
    if any(v < 0 for v in value):
        raise BadRequest(f"filter.ids must be non-negative, got {min(value)}")
    return np.unique(np.array([v for v in value if v <= INT64[1]], dtype=np.int64))


class _Compiler:
    """Builds SQL text from fixed fragments; every value becomes a named parameter :pN."""

    def __init__(self):
        self.params: dict[str, object] = {}
        self.conditions = 0

    def _param(self, value) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def filter(self, spec: dict, where: str, depth: int, top: bool = False) -> str | None:
        allowed = {"must", "should", "must_not"} | ({"ids"} if top else set())
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise BadRequest(f"{where} has unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        if depth > MAX_NESTING:
            raise BadRequest(f"{where}: filters nest at most {MAX_NESTING} deep")
        parts = []
        for clause in ("must", "should", "must_not"):
            if clause not in spec:
                continue
            conds = spec[clause]
            if not isinstance(conds, list):
                raise BadRequest(f"{where}.{clause} must be a list of conditions, got {_kind(conds)}")
            sqls = [self.condition(c, f"{where}.{clause}[{i}]", depth) for i, c in enumerate(conds)]
            if clause == "must" and sqls:
                parts.append(" AND ".join(sqls))
            elif clause == "should":
                parts.append(" OR ".join(sqls) if sqls else "0")
            elif clause == "must_not" and sqls:
                parts.append("NOT (" + " OR ".join(sqls) + ")")
        if not parts:
            return None if top else "1"
        return "(" + ") AND (".join(parts) + ")"

    def condition(self, cond, where: str, depth: int) -> str:
        if not isinstance(cond, dict):
            raise BadRequest(f"{where} must be an object, got {_kind(cond)}")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise BadRequest(f"a filter holds at most {MAX_CONDITIONS} conditions")
        if "key" not in cond:
            if set(cond) & {"must", "should", "must_not"} or not cond:
                return "(" + (self.filter(cond, where, depth + 1) or "1") + ")"
            raise BadRequest(f"{where} needs a \"key\" (or must / should / must_not: a nested filter)")
        tests = [t for t in ("match", "any", "range") if t in cond]
        unknown = sorted(set(cond) - {"key", "match", "any", "range"})
        if unknown:
            raise BadRequest(f"{where} has unknown field {unknown[0]!r} (a condition has key and one of match, any, range)")
        if len(tests) != 1:
            raise BadRequest(f"{where} needs exactly one of match, any, range (got {', '.join(tests) or 'none'})")
        path = self._param(_json_path(cond["key"], f"{where}.key"))
        test, value = tests[0], cond[tests[0]]
        if test == "match" and isinstance(value, dict):
            if set(value) == {"value"}:
                value = value["value"]
            elif set(value) == {"any"}:
                test, value = "any", value["any"]
            else:
                raise BadRequest(f"{where}.match must be a value, {{\"value\": v}} or {{\"any\": [...]}}")
        if test == "match":
            return self._any_of(path, [_match_value(value, f"{where}.match")])
        if test == "any":
            if not isinstance(value, list):
                raise BadRequest(f"{where}.any must be a list of values, got {_kind(value)}")
            if len(value) > MAX_ANY:
                raise BadRequest(f"{where}.any holds at most {MAX_ANY} values, got {len(value)}")
            values = [_match_value(v, f"{where}.any[{i}]") for i, v in enumerate(value)]
            return self._any_of(path, values) if values else "0"
        return self._range(path, value, f"{where}.range")

    def _any_of(self, path: str, values: list) -> str:
        """The value at path, or an element of an array there, equals one of `values`."""
        tests = []
        for v in values:
            if isinstance(v, bool):
                tests.append("{t} = 'true'" if v else "{t} = 'false'")
            elif isinstance(v, str):
                tests.append("{t} = 'text' AND {v} = " + self._param(v))
            else:
                tests.append("{t} IN ('integer', 'real') AND {v} = " + self._param(v))
        return self._either(path, tests)

    def _range(self, path: str, spec, where: str) -> str:
        if not isinstance(spec, dict) or not spec:
            raise BadRequest(f"{where} must be an object of bounds gt / gte / lt / lte")
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        unknown = sorted(set(spec) - set(ops))
        if unknown:
            raise BadRequest(f"{where} has unknown bound {unknown[0]!r} (allowed: gt, gte, lt, lte)")
        bounds = []
        for name, bound in spec.items():
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or (isinstance(bound, float) and not np.isfinite(bound)):
                raise BadRequest(f"{where}.{name} must be a finite number, got {_kind(bound)}")
            if isinstance(bound, int) and not INT64[0] <= bound <= INT64[1]:
                raise BadRequest(f"{where}.{name} must fit in int64, got {bound}")
            bounds.append(f"{{v}} {ops[name]} {self._param(bound)}")
        return self._either(path, ["{t} IN ('integer', 'real') AND " + " AND ".join(bounds)])

    @staticmethod
    def _either(path: str, tests: list[str]) -> str:
        """SQL that is 1 when the value at `path` passes one of `tests`, or an element of an
        array at `path` does, else 0. A test is SQL over {t} (the JSON type) and {v} (the value)."""
        own = " OR ".join("(" + t.format(t=f"json_type(payload, {path})", v=f"json_extract(payload, {path})") + ")" for t in tests)
        each = " OR ".join("(" + t.format(t="type", v="value") + ")" for t in tests)
        return (
            f"COALESCE(({own}) OR (json_type(payload, {path}) = 'array' AND "
            f"EXISTS (SELECT 1 FROM json_each(payload, {path}) WHERE {each})), 0)"
        )


def _json_path(key, where: str) -> str:
    """The SQLite JSON path of a dotted key: $."a"."b"."""
    if not isinstance(key, str) or not key:
        raise BadRequest(f"{where} must be a non-empty string, got {key!r}")
    segments = key.split(".")
    for s in segments:
        if not s or '"' in s or "\\" in s or any(ord(c) < 32 for c in s):
            raise BadRequest(f"{where} {key!r}: key segments must be non-empty and hold no quote, backslash or control character")
    return "$" + "".join(f'."{s}"' for s in segments)


def _match_value(value, where: str):
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise BadRequest(f"{where} must fit in int64, got {value}")
        return value
    raise BadRequest(f"{where} must be a string, int or bool (use range for other numbers), got {_kind(value)}")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(type(value), type(value).__name__)
