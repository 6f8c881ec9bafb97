"""Bad input everywhere: each case answers a 4xx with {"error": "..."} naming the problem, the
collection is unchanged (count, seq, a stored point), and the server keeps answering."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from conftest import BODY_LIMIT_MB, unique_name

DIM = 8
ROW = [0.5] * DIM


@pytest.fixture(scope="module")
def target(server_url):
    """A collection with a few points; the cases must leave it exactly so."""
    name = unique_name("bad")
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.put(f"/collections/{name}", json={"dim": DIM, "metric": "cos"}).status_code == 200
        x = np.random.default_rng(0).standard_normal((10, DIM)).astype(np.float32)
        r = http.put(f"/collections/{name}/points", json={"ids": list(range(10)), "vectors": x.tolist(), "payloads": [{"n": i} for i in range(10)]})
        assert r.status_code == 200
    return name


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode()


NPY = {"content-type": "application/x-npy"}
P, S, G, D = "points", "search", "points/get", "points/delete"  # paths under the collection
# (path under /collections/{name} or an absolute path, method, body: dict -> JSON, bytes / str -> raw, kwargs, status, words in the error)
CASES = [
    (P, "PUT", b"{", {}, 400, "not valid JSON"),
    (P, "PUT", b"", {}, 400, "empty"),
    (P, "PUT", b"[1, 2]", {}, 400, "must be a JSON object"),
    (P, "PUT", b"\xff\xfe\x00garbage", {}, 400, "not valid JSON"),
    (P, "PUT", b"[" * 100_000, {}, 400, "nested too deeply"),
    (P, "PUT", {"ids": None, "vectors": [ROW]}, {}, 400, "ids must be a list"),
    (P, "PUT", b'{"ids": [1], "vectors": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', {}, 400, "NaN"),
    (P, "PUT", b'{"ids": [1], "vectors": [[Infinity, 0, 0, 0, 0, 0, 0, 0]]}', {}, 400, "Infinity"),
    (P, "PUT", b'{"ids": [1], "vectors": [[1e999, 0, 0, 0, 0, 0, 0, 0]]}', {}, 400, "finite"),
    (P, "PUT", {"ids": [1], "vectors": [[1e39] + [0] * 7]}, {}, 400, "float32 range"),
    (P, "PUT", {"ids": [1], "vectors": [[10**400] + [0] * 7]}, {}, 400, "float"),
    (P, "PUT", {"ids": [1], "vectors": [[1e30] * DIM]}, {}, 400, "norms up to"),
    (P, "PUT", {"ids": [1], "vectors": [[1.0] * 7]}, {}, 400, "dim is 8"),
    (P, "PUT", {"ids": [1], "vectors": [ROW, ROW]}, {}, 400, "2 rows but there are 1 ids"),
    (P, "PUT", {"ids": [1, 1], "vectors": [ROW, ROW]}, {}, 400, "duplicates"),
    (P, "PUT", {"ids": [-1], "vectors": [ROW]}, {}, 400, "non-negative"),
    (P, "PUT", {"ids": [2**63], "vectors": [ROW]}, {}, 400, "2**63 - 2"),
    (P, "PUT", {"ids": [1.5], "vectors": [ROW]}, {}, 400, "ids[0] must be an integer"),
    (P, "PUT", {"ids": ["1"], "vectors": [ROW]}, {}, 400, "ids[0] must be an integer"),
    (P, "PUT", {"ids": [True], "vectors": [ROW]}, {}, 400, "ids[0] must be an integer"),
    (P, "PUT", {"ids": 1, "vectors": [ROW]}, {}, 400, "ids must be a list"),
    (P, "PUT", {"vectors": [ROW]}, {}, 400, "needs \"ids\""),
    (P, "PUT", {"ids": [1]}, {}, 400, "vectors_b64"),
    (P, "PUT", {"ids": [1], "vectors": [ROW[:7] + ["x"]]}, {}, 400, "vectors[0][7] must be a number"),
    (P, "PUT", {"ids": [1], "vectors": [ROW[:7] + [True]]}, {}, 400, "must be a number"),
    (P, "PUT", {"ids": [1], "vectors": [ROW[:7] + [None]]}, {}, 400, "must be a number"),
    (P, "PUT", {"ids": [1], "vectors": [ROW[:7] + [[1]]]}, {}, 400, "must be a number"),
    (P, "PUT", {"ids": [1], "vectors": ROW}, {}, 400, "vectors[0] must be a list"),
    (P, "PUT", {"ids": [1], "vectors": "x"}, {}, 400, "vectors must be a list"),
    (P, "PUT", {"ids": [1], "vectors": [[0.0] * DIM]}, {}, 400, "zero vector"),
    (P, "PUT", {"ids": [1], "vectors_b64": "not base64!"}, {}, 400, "not valid base64"),
    (P, "PUT", {"ids": [1], "vectors_b64": base64.b64encode(b"abc").decode()}, {}, 400, "whole number of rows"),
    (P, "PUT", {"ids": [1], "vectors_b64": _b64([[np.nan] * DIM])}, {}, 400, "finite"),
    (P, "PUT", {"ids": [1, 2], "vectors_b64": _b64([ROW])}, {}, 400, "1 rows but there are 2 ids"),
    (P, "PUT", {"ids": [1], "vectors_b64": 5}, {}, 400, "base64 string"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "vectors_b64": _b64([ROW])}, {}, 400, "exactly one"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "payloads": [{"a": 1}, None]}, {}, 400, "payloads has 2 entries"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "payloads": ["x"]}, {}, 400, "payloads[0] must be an object"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "payloads": {"a": 1}}, {}, 400, "payloads must be a list"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "payloads": [json.loads('{"a":' * 40 + "1" + "}" * 40)]}, {}, 400, "deeper"),
    (P, "PUT", {"ids": [1], "vectors": [ROW], "extra": 1}, {}, 400, "unknown field 'extra'"),
    (P, "PUT", {"ids": [1], "vectors": [ROW]}, {"params": {"ids": "1"}}, 400, "query parameter ids is for application/x-npy"),
    (P, "PUT", b"garbage", {"headers": NPY, "params": {"ids": "1"}}, 400, "not a readable .npy"),
    (P, "PUT", _npy(np.ones((1, DIM), dtype=np.int32)), {"headers": NPY, "params": {"ids": "1"}}, 400, "float dtype"),
    (P, "PUT", _npy(np.ones((1, DIM - 1), dtype=np.float32)), {"headers": NPY, "params": {"ids": "1"}}, 400, "shape [m, 8]"),
    (P, "PUT", _npy(np.ones(DIM, dtype=np.float32)), {"headers": NPY, "params": {"ids": "1"}}, 400, "shape [m, 8]"),
    (P, "PUT", _npy(np.array([{"a": 1}], dtype=object)), {"headers": NPY, "params": {"ids": "1"}}, 400, ".npy"),
    (P, "PUT", _npy(np.ones((1, DIM), dtype=np.float32)), {"headers": NPY}, 400, "query parameter ids"),
    (P, "PUT", _npy(np.ones((1, DIM), dtype=np.float32)), {"headers": NPY, "params": {"ids": "a"}}, 400, "'a' is not an id"),
    (P, "PUT", _npy(np.ones((1, DIM), dtype=np.float32)), {"headers": NPY, "params": {"ids": "5:3"}}, 400, "not an id"),
    (P, "PUT", _npy(np.ones((2, DIM), dtype=np.float32)), {"headers": NPY, "params": {"ids": "1,1"}}, 400, "duplicates"),
    (P, "PUT", _npy(np.ones((2, DIM), dtype=np.float32)), {"headers": NPY, "params": {"ids": "1"}}, 400, "2 rows"),
    (P, "PUT", _npy(np.full((1, DIM), np.inf, dtype=np.float32)), {"headers": NPY, "params": {"ids": "1"}}, 400, "finite"),
    (S, "POST", {"vectors": [ROW], "k": 0}, {}, 400, "k must be in [1, 10000]"),
    (S, "POST", {"vectors": [ROW], "k": -3}, {}, 400, "k must be in"),
    (S, "POST", {"vectors": [ROW], "k": 10**9}, {}, 400, "k must be in"),
    (S, "POST", {"vectors": [ROW], "k": "10"}, {}, 400, "k must be an integer"),
    (S, "POST", {"vectors": [ROW], "k": 2.5}, {}, 400, "k must be an integer"),
    (S, "POST", {"vectors": [ROW], "k": True}, {}, 400, "k must be an integer"),
    (S, "POST", {"vectors": [ROW]}, {}, 400, "needs \"k\""),
    (S, "POST", {"vectors": [ROW], "k": None}, {}, 400, "needs \"k\""),
    (S, "POST", {"vectors": [ROW] * 200, "k": 10_000}, {}, 400, "results"),
    (S, "POST", {"vectors": [], "k": 1}, {}, 400, "no query"),
    (S, "POST", {"vectors": [ROW[:5]], "k": 1}, {}, 400, "dim is 8"),
    (S, "POST", b'{"vectors": [[NaN, 0, 0, 0, 0, 0, 0, 0]], "k": 1}', {}, 400, "NaN"),
    (S, "POST", {"vectors": [[0.0] * DIM], "k": 1}, {}, 400, "zero vector"),
    (S, "POST", {"vectors": [[3e19] + [0] * 7], "k": 1}, {}, 400, "norms up to"),
    (S, "POST", {"vectors": [ROW], "k": 1, "recall_target": 0}, {}, 400, "recall_target must be a number in (0, 1]"),
    (S, "POST", {"vectors": [ROW], "k": 1, "recall_target": 1.5}, {}, 400, "recall_target"),
    (S, "POST", {"vectors": [ROW], "k": 1, "recall_target": "high"}, {}, 400, "recall_target"),
    (S, "POST", {"vectors": [ROW], "k": 1, "recall_target": 10**400}, {}, 400, "recall_target"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"must": [{"key": "n", "range": {"gt": 10**400}}]}}, {}, 400, "int64"),
    (S, "POST", {"vectors": [ROW], "k": 1, "probe": 3}, {}, 400, "partitioned"),
    (S, "POST", {"vectors": [ROW], "k": 1, "with_payload": "yes"}, {}, 400, "with_payload must be true or false"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": [1]}, {}, 400, "filter must be an object"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"must": [{"key": "n", "match": 1.5}]}}, {}, 400, "use range"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"must": [{"key": 'n"', "match": 1}]}}, {}, 400, "quote"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"must": [{"key": "n", "range": {"gt": "x"}}]}}, {}, 400, "finite number"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"where": 1}}, {}, 400, "unknown field 'where'"),
    (S, "POST", {"vectors": [ROW], "k": 1, "filter": {"ids": [-4]}}, {}, 400, "non-negative"),
    (S, "POST", {"vectors": [ROW], "k": 1, "top": 3}, {}, 400, "unknown field 'top'"),
    (G, "POST", {"ids": "1"}, {}, 400, "ids must be a list"),
    (G, "POST", {"ids": [1], "with_vectors": 1}, {}, 400, "with_vectors must be true or false"),
    (G, "POST", {}, {}, 400, "needs \"ids\""),
    (G, "POST", {"ids": [1], "vector": True}, {}, 400, "unknown field 'vector'"),
    (D, "POST", {"ids": [1, 1]}, {}, 400, "duplicates"),
    (D, "POST", {"ids": [3, 12345]}, {}, 404, "12345"),
    (D, "POST", {"ids": [{"id": 1}]}, {}, 400, "must be an integer"),
    (D, "POST", b"nope", {}, 400, "not valid JSON"),
    ("/collections/no-such-thing/search", "POST", {"vectors": [ROW], "k": 1}, {}, 404, "no collection 'no-such-thing'"),
    ("/collections/no-such-thing/points", "PUT", {"ids": [1], "vectors": [ROW]}, {}, 404, "no collection"),
    ("/collections/no-such-thing/points/get", "POST", {"ids": [1]}, {}, 404, "no collection"),
    ("/collections/no-such-thing/points/delete", "POST", {"ids": [1]}, {}, 404, "no collection"),
    ("/collections/no-such-thing", "GET", None, {}, 404, "no collection"),
    ("/collections/no-such-thing", "DELETE", None, {}, 404, "no collection"),
    ("/collections/{name}", "PUT", {"dim": DIM, "metric": "l2"}, {}, 409, "metric \"cos\" (asked \"l2\")"),
    ("/collections/new-{name}", "PUT", {"dim": 0}, {}, 400, "dim must be in [1, 65536]"),
    ("/collections/new-{name}", "PUT", {"dim": "8"}, {}, 400, "dim must be an integer"),
    ("/collections/new-{name}", "PUT", {}, {}, 400, "needs \"dim\""),
    ("/collections/new-{name}", "PUT", {"dim": None}, {}, 400, "needs \"dim\""),
    ("/collections/new-{name}", "PUT", {"dim": 8, "metric": "euclid"}, {}, 400, "metric must be one of"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "hnsw"}, {}, 400, "index must be one of"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "dtype": "fp16"}, {}, 400, "dtype must be bf16 or fp32"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "size": 3}, {}, 400, "unknown field 'size'"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "partitions": 3}, {}, 400, "unknown field 'partitions'"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "dtype": "bf16"}, {}, 400, "unknown field 'dtype'"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "partitions": 0}, {}, 400, "partitions"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "codes": "zz"}, {}, 400, "codes"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "keep_vectors": "yes"}, {}, 400, "keep_vectors must be bool"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "seed": -1}, {}, 400, "seed"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "partitions": 10**9}, {}, 400, "partitions must be in"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "partitions": 64, "train_size": 10}, {}, 400, "train_size=10 is below"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "codes": "pq4", "partitions": 2, "train_size": 8}, {}, 400, "16 for pq4"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "probe": 1.5}, {}, 400, "probe must be int"),
    ("/collections/new-{name}", "PUT", {"dim": 8, "index": "partitioned", "codes": "pq4", "block_dims": 3}, {}, 400, "bad partitioned settings"),
    ("/collections/bad.name", "PUT", {"dim": 8}, {}, 400, "letters, digits"),
    ("/collections/" + "x" * 65, "PUT", {"dim": 8}, {}, 400, "1-64"),
    ("/collections/{name}", "POST", {"dim": 8}, {}, 405, "not allowed"),
    ("/collections/{name}/nothing", "GET", None, {}, 404, "no route"),
]


def _state(http, name):
    info = http.get(f"/collections/{name}").json()
    point = http.post(f"/collections/{name}/points/get", json={"ids": [1, 3], "with_vectors": True}).json()
    names = sorted(c["name"] for c in http.get("/collections").json()["collections"])
    return info["count"], info["seq"], point, names


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c[0].split('/')[-1]}-{c[5][:20]}" for i, c in enumerate(CASES)])
def test_bad_input_is_refused_and_changes_nothing(server_url, target, case):
    path, method, body, kwargs, status, words = case
    url = path.format(name=target) if path.startswith("/") else f"/collections/{target}/{path}"
    with httpx.Client(base_url=server_url, timeout=60) as http:
        before = _state(http, target)
        if isinstance(body, (bytes, str)):
            r = http.request(method, url, content=body, **kwargs)
        else:
            r = http.request(method, url, json=body, **kwargs)
        assert r.status_code == status, f"{r.status_code} {r.text[:300]}"
        assert r.headers["content-type"].startswith("application/json")
        error = r.json()["error"]
        assert isinstance(error, str) and words in error, error
        assert http.get("/healthz").json() == {"status": "ok"}
        assert _state(http, target) == before


def test_oversized_bodies_answer_413(server_url, target):
    limit = BODY_LIMIT_MB << 20
    big = {"ids": list(range(40_000)), "vectors": [ROW] * 40_000}
    raw = json.dumps(big).encode()
    assert len(raw) > limit
    with httpx.Client(base_url=server_url, timeout=60) as http:
        before = _state(http, target)
        r = http.put(f"/collections/{target}/points", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most" in r.json()["error"]

        def chunks():  # no Content-Length: counted while read
            for s in range(0, len(raw), 65536):
                yield raw[s : s + 65536]

        r = http.put(f"/collections/{target}/points", content=chunks())
        assert r.status_code == 413 and "at most" in r.json()["error"]
        assert _state(http, target) == before


def _mutate(value, rng, junk):
    """A copy of a JSON value with one randomly chosen node (at any depth) replaced by junk."""
    if isinstance(value, (dict, list)) and value and rng.random() < 0.7:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = keys[int(rng.integers(len(keys)))]
        copy = dict(value) if isinstance(value, dict) else list(value)
        copy[key] = _mutate(value[key], rng, junk)
        return copy
    return junk[int(rng.integers(len(junk)))]


def test_no_bad_input_ever_answers_500(server_url, target):
    """Random mutations, at any depth, of valid bodies of every endpoint: 2xx or 4xx, never 5xx."""
    rng = np.random.default_rng(0)
    scratch = unique_name("fuzz")
    search = {"ids": [1, 2, 3], "must": [{"key": "n", "range": {"gte": 2}}], "should": [{"key": "n", "any": [1, 2]}]}
    reads = {
        f"/collections/{target}/search": {"vectors": [ROW], "k": 3, "filter": search, "with_payload": True, "recall_target": 0.9},
        f"/collections/{target}/points/get": {"ids": [1, 2], "with_vectors": True},
    }
    writes = {
        f"/collections/{scratch}/points": ("PUT", {"ids": [1, 2], "vectors": [ROW, ROW], "payloads": [{"a": [1, {"b": 2}]}, None]}),
        f"/collections/{scratch}/points/delete": ("POST", {"ids": [1]}),
        f"/collections/{scratch}-x": ("PUT", {"dim": 4, "index": "partitioned", "partitions": 4, "codes": "int8", "probe": 2}),
    }
    junk = [None, True, -1, 0, 1.5, 2**64, -(2**70), 10**400, -(10**400), 1e308, "x", "", [], [None], {}, {"a": [1]}, [[1, 2]], float(2**70), "\u0000", [ROW], {"key": "n"}]
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.put(f"/collections/{scratch}", json={"dim": DIM}).status_code == 200
        before = _state(http, target)
        for i in range(300):
            if i % 2:
                path = list(reads)[int(rng.integers(len(reads)))]
                method, body = "POST", reads[path]
            else:
                path = list(writes)[int(rng.integers(len(writes)))]
                method, body = writes[path]
            r = http.request(method, path, json=_mutate(body, rng, junk))
            assert r.status_code < 500, (path, r.text)
            if r.status_code >= 400:
                assert isinstance(r.json()["error"], str)
            if path.endswith("-x") and r.status_code == 200:
                http.delete(path)
        assert _state(http, target) == before
        http.delete(f"/collections/{scratch}")
