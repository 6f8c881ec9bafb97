"""bodies.json_object reads with orjson where that gives what the standard library gives, and
with the standard library elsewhere; service.encode the same way for answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("orjson")

from peakknn.server import bodies  # noqa: E402
from peakknn.server.errors import BadRequest  # noqa: E402
from peakknn.server.service import encode  # noqa: E402

SAME = [
    b'{"vectors": [[0.1, -2.5e-7, 3, 1e38]], "k": 10}',
    b'{"a": {"b": [1, 2, {"c": null}]}, "s": "\\u00e9\\n", "t": true}',
    b'{"ids": [18446744073709551615, 9223372036854775807, -9223372036854775808]}',  # 64-bit edges: ints in both
    b'{"ids": [123456789012345678901234567890], "p": {"x": -99999999999999999999999}}',  # beyond 64 bits
    b'{"x": 1e400}',  # inf: the standard library reads it, orjson refuses
    b'{"a": 1, "a": 2}',
    b'{"s": "\\ud800"}',  # a lone surrogate: orjson refuses
    "{\"ü\": \"日本\"}".encode(),
]


@pytest.mark.parametrize("raw", SAME)
def test_values_are_those_of_the_standard_library(raw):
    got, want = bodies.json_object(raw), json.loads(raw)
    assert repr(got) == repr(want)  # repr: int stays int, float stays float, inf stays inf


@pytest.mark.parametrize("raw,message", [
    (b'{"x": NaN}', "not valid JSON"), (b'{"x": Infinity}', "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
    (b"null", "must be a JSON object"), (b"", "is empty"), (b'{"x": ', "not valid JSON"), (b"[" * 100_000, "nested too deeply|not valid JSON"),
])  # fmt: skip
def test_bad_bodies_are_named(raw, message):
    with pytest.raises(BadRequest, match=message):
        bodies.json_object(raw)


def test_a_search_body_reads_the_same_either_way():
    q = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    raw = json.dumps({"vectors": q.tolist(), "k": 7, "recall_target": 0.9}).encode()
    s = bodies.search(raw, 8, "l2", False)
    np.testing.assert_array_equal(s.queries, q)  # float32 -> JSON -> float32 is exact
    assert (s.k, s.recall_target) == (7, 0.9)
    with pytest.raises(BadRequest, match="k must be in"):
        bodies.search(json.dumps({"vectors": q.tolist(), "k": 2**70}).encode(), 8, "l2", False)


@pytest.mark.parametrize("value", [
    {"results": [{"ids": [1, 2], "scores": [0.5, None]}]},
    {"points": [{"id": 3, "payload": {"big": 2**70, "s": "é", "f": 1e-45}}]},
])  # fmt: skip
def test_answers_encode_as_the_standard_library_reads_them(value):
    assert json.loads(encode(value)) == value
