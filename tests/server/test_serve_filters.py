"""Payload filters: SQLite's answer equals a plain-Python evaluation of the same conditions on
random payloads (directly on the payload table, and through the server's search); SQL text never
holds a request's values; bad filters are refused with the part named."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import unique_name
from serve_helpers import filter_holds

from peakknn.server.errors import BadRequest
from peakknn.server import payloads as payloads_module
from peakknn.server.payloads import PayloadStore, compile_filter

LANGS = ["en", "de", "fr", "日本", "it's", "a\"b"]
TAGS = ["a", "b", "c", "d"]


def random_payload(rng):
    if rng.random() < 0.1:
        return None
    p = {}
    if rng.random() < 0.8:
        p["lang"] = str(rng.choice(LANGS))
    r = rng.random()
    if r < 0.4:
        p["year"] = int(rng.integers(2015, 2026))
    elif r < 0.6:
        p["year"] = float(rng.integers(2015, 2026)) + float(rng.choice([0.0, 0.5]))
    elif r < 0.7:
        p["year"] = str(int(rng.integers(2015, 2026)))  # a string, never a number
    r = rng.random()
    if r < 0.4:
        p["tag"] = [str(t) for t in rng.choice(TAGS, size=int(rng.integers(0, 3)), replace=False)]
    elif r < 0.7:
        p["tag"] = str(rng.choice(TAGS))
    if rng.random() < 0.5:
        p["flag"] = bool(rng.random() < 0.5)
    if rng.random() < 0.3:
        p["flag"] = int(rng.integers(0, 2))  # 0 / 1: numbers, not bools
    if rng.random() < 0.4:
        p["meta"] = {"score": float(rng.normal()), "n": [int(v) for v in rng.integers(0, 5, size=2)]}
    return p


def random_condition(rng, depth=0):
    r = rng.random()
    if r < 0.1 and depth < 2:
        return random_filter(rng, depth + 1)
    key = str(rng.choice(["lang", "year", "tag", "flag", "meta.score", "meta.n", "missing"]))
    kind = rng.random()
    if kind < 0.35:
        value = {"lang": lambda: str(rng.choice(LANGS)), "year": lambda: int(rng.integers(2015, 2026)), "tag": lambda: str(rng.choice(TAGS)),
                 "flag": lambda: bool(rng.random() < 0.5), "meta.n": lambda: int(rng.integers(0, 5))}.get(key, lambda: "x")()  # fmt: skip
        form = rng.random()
        return {"key": key, "match": value if form < 0.7 else {"value": value}}
    if kind < 0.6:
        values = [str(t) for t in rng.choice(TAGS + LANGS, size=int(rng.integers(0, 3)), replace=False)]
        if rng.random() < 0.3:
            values.append(int(rng.integers(2015, 2026)))
        return {"key": key, "any": values} if rng.random() < 0.7 else {"key": key, "match": {"any": values}}
    bounds = {}
    for op in rng.choice(["gt", "gte", "lt", "lte"], size=int(rng.integers(1, 3)), replace=False):
        bounds[str(op)] = float(rng.normal()) if key == "meta.score" else int(rng.integers(2014, 2027)) + float(rng.choice([0.0, 0.5]))
    return {"key": key, "range": bounds}


def random_filter(rng, depth=0):
    f = {}
    for clause in ("must", "should", "must_not"):
        if rng.random() < 0.5:
            f[clause] = [random_condition(rng, depth) for _ in range(int(rng.integers(0, 3)))]
    return f


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    payloads = [random_payload(rng) for _ in range(400)]
    store = PayloadStore(tmp_path_factory.mktemp("payloads") / "p.sqlite")
    store.upsert(np.arange(len(payloads), dtype=np.int64), payloads)
    yield store, payloads
    store.close()


def _python(payloads, spec):
    return np.array([i for i, p in enumerate(payloads) if filter_holds(p, spec, i)], dtype=np.int64)


def test_random_filters_match_python(table):
    store, payloads = table
    rng = np.random.default_rng(1)
    checked = nonempty = 0
    for _ in range(300):
        spec = random_filter(rng)
        if rng.random() < 0.2:
            spec["ids"] = [int(i) for i in rng.choice(500, size=40, replace=False)]
        compiled = compile_filter(spec)
        want = _python(payloads, spec)
        got = np.arange(len(payloads)) if compiled is None else compiled.allowed(store)
        got = np.intersect1d(got, np.arange(len(payloads)))  # an ids-only filter passes its ids, stored or not
        assert np.array_equal(got, want), spec
        checked += 1
        nonempty += 0 < want.size < len(payloads)
    assert checked == 300 and nonempty > 60  # most filters select something, but not everything


@pytest.mark.parametrize(
    "spec, ids",
    [
        ({"must": [{"key": "k", "match": "en"}]}, [0, 5]),
        ({"must": [{"key": "k", "any": ["en", "de"]}]}, [0, 1, 5]),
        ({"must": [{"key": "n", "range": {"gte": 2, "lt": 4}}]}, [2, 3, 4]),
        ({"must": [{"key": "tags", "match": "x"}]}, [0, 1]),
        ({"must_not": [{"key": "k", "match": "en"}]}, [1, 2, 3, 4, 6]),
        ({"should": [{"key": "b", "match": True}, {"key": "n", "match": 1}]}, [1, 3]),
        ({"should": []}, []),
        ({"must": [{"key": "b", "match": 1}]}, []),  # a bool is not a number
        ({"must": [{"key": "n", "match": 2}]}, [2, 4]),  # 2 == 2.0
        ({"must": [{"key": "deep.x", "match": "y"}]}, [6]),
        ({"ids": [0, 1, 2, 99], "must": [{"key": "k", "match": "en"}]}, [0]),
        ({"must": [{"must_not": [{"key": "k", "match": "en"}]}, {"key": "n", "range": {"gt": 0}}]}, [1, 2, 3, 4, 6]),
    ],
)
def test_filter_semantics(tmp_path, spec, ids):
    payloads = [{"k": "en", "tags": ["x", "y"], "n": 0}, {"k": "de", "tags": ["x"], "n": 1}, {"n": 2}, {"n": 3, "b": True},
                {"n": 2.0, "k": ["en"]}, {"k": "en", "n": -1}, {"deep": {"x": "y"}, "n": 9}]  # fmt: skip
    payloads[4]["k"] = "fr"
    payloads[5]["n"] = "5"
    payloads[6]["n"] = 9.5
    store = PayloadStore(tmp_path / "p.sqlite")
    store.upsert(np.arange(len(payloads), dtype=np.int64), payloads)
    want = _python(payloads, spec)
    assert want.tolist() == ids, "the reference disagrees with the documented semantics"
    compiled = compile_filter(spec)
    assert compile_filter(spec).allowed(store).tolist() == ids
    store.close()
    assert compiled.key == compile_filter(dict(reversed(list(spec.items())))).key  # canonical


@pytest.mark.parametrize("json_each", [True, False])
def test_upserts_without_payloads_clear_them(tmp_path, monkeypatch, json_each):
    """An upsert without payloads (one SQLite statement over the ids where JSON functions exist)
    leaves every id a row with no payload, as executemany does."""
    if json_each and not payloads_module.JSON_EACH:
        pytest.skip("this SQLite has no JSON functions")
    monkeypatch.setattr(payloads_module, "JSON_EACH", json_each)
    store = PayloadStore(tmp_path / "p.sqlite")
    ids = np.array([-(2**63), -1, 0, 7, 2**63 - 1], dtype=np.int64)
    store.upsert(ids, [{"n": i} for i in range(5)])
    store.upsert(ids[[1, 3, 4]], None)
    got = store.get(ids.tolist() + [8])
    assert got == {-(2**63): {"n": 0}, -1: None, 0: {"n": 2}, 7: None, 2**63 - 1: None}
    store.upsert(np.array([8, 9], dtype=np.int64), None)
    assert store.count() == 7 and compile_filter({"must": [{"key": "n", "range": {"gte": 0}}]}).allowed(store).tolist() == [-(2**63), 0]
    store.close()


def test_values_never_reach_the_sql_text(tmp_path):
    store = PayloadStore(tmp_path / "p.sqlite")
    store.upsert(np.arange(3, dtype=np.int64), [{"k": "x'; DROP TABLE points; --"}, {"k": "a"}, None])
    evil = "x'; DROP TABLE points; --"
    compiled = compile_filter({"must": [{"key": "k", "match": evil}, {"key": "k", "any": [evil, "1) OR (1=1"]}]})
    assert evil not in compiled.sql and "1=1" not in compiled.sql and "DROP" not in compiled.sql
    assert compiled.allowed(store).tolist() == [0]
    assert store.count() == 3
    with pytest.raises(BadRequest, match="quote"):
        compile_filter({"must": [{"key": 'k"); DROP TABLE points; --', "match": 1}]})
    store.close()


@pytest.mark.parametrize(
    "spec, message",
    [
        ([1], "filter must be an object"),
        ({"must": {"key": "a", "match": 1}}, "filter.must must be a list"),
        ({"mustt": []}, "unknown field 'mustt'"),
        ({"must": [{"key": "a"}]}, "exactly one of match, any, range"),
        ({"must": [{"key": "a", "match": 1, "range": {"gt": 1}}]}, "exactly one of"),
        ({"must": [{"key": "", "match": 1}]}, "non-empty"),
        ({"must": [{"key": 3, "match": 1}]}, "non-empty string"),
        ({"must": [{"key": "a..b", "match": 1}]}, "key segments"),
        ({"must": [{"key": "a", "match": 1.5}]}, "use range"),
        ({"must": [{"key": "a", "match": [1]}]}, "string, int or bool"),
        ({"must": [{"key": "a", "match": None}]}, "string, int or bool"),
        ({"must": [{"key": "a", "match": 2**70}]}, "int64"),
        ({"must": [{"key": "a", "match": {"val": 1}}]}, "match must be"),
        ({"must": [{"key": "a", "any": "x"}]}, "any must be a list"),
        ({"must": [{"key": "a", "range": {"gt": "1"}}]}, "finite number"),
        ({"must": [{"key": "a", "range": {"gt": True}}]}, "finite number"),
        ({"must": [{"key": "a", "range": {"above": 1}}]}, "unknown bound"),
        ({"must": [{"key": "a", "range": {}}]}, "object of bounds"),
        ({"must": [{"key": "a", "match": 1, "extra": 1}]}, "unknown field 'extra'"),
        ({"must": ["a"]}, "filter.must[0] must be an object"),
        ({"ids": "1"}, "filter.ids must be a list"),
        ({"ids": [1.5]}, "filter.ids must be ints"),
        ({"ids": [-1]}, "non-negative"),
        ({"must": [{"key": "a", "match": 1}] * 65}, "at most 64 conditions"),
        ({"must": [{"must": [{"must": [{"must": [{"must": [{"must": [{"must": [{"must": [{"must": [{"must": []}]}]}]}]}]}]}]}]}]}, "nest at most"),
        ({"must": [{"should": [{"key": "a", "match": 1}], "ids": [1]}]}, "unknown field 'ids'"),
    ],
)
def test_bad_filters_are_named(spec, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace("[", r"\[")):
        compile_filter(spec)


def test_filters_through_the_server(server_url):
    import httpx

    rng = np.random.default_rng(2)
    n, dim = 300, 8
    payloads = [random_payload(rng) for _ in range(n)]
    x = rng.standard_normal((n, dim)).astype(np.float32)
    name = unique_name("filters")
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.put(f"/collections/{name}", json={"dim": dim, "metric": "l2"}).status_code == 200
        r = http.put(f"/collections/{name}/points", json={"ids": list(range(n)), "vectors": x.tolist(), "payloads": payloads})
        assert r.status_code == 200, r.text
        q = rng.standard_normal((2, dim)).astype(np.float32)
        for _ in range(12):
            spec = random_filter(rng)
            if rng.random() < 0.3:
                spec["ids"] = [int(i) for i in rng.choice(n + 50, size=60, replace=False)]
            want = set(_python(payloads, spec).tolist())
            r = http.post(f"/collections/{name}/search", json={"vectors": q.tolist(), "k": n, "recall_target": 1.0, "filter": spec, "with_payload": True})
            assert r.status_code == 200, r.text
            for res in r.json()["results"]:
                assert set(res["ids"]) == want, spec
                assert res["payloads"] == [payloads[i] for i in res["ids"]]
                assert res["scores"] == sorted(res["scores"])  # squared L2 distances, nearest first
