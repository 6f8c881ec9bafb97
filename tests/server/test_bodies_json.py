"""bodies.json_object reads with orjson where that gives what the standard library gives, and
with the standard library elsewhere; messages.json_bytes the same way for answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("orjson")

from peakknn.server import bodies  # noqa: E402
from peakknn.server.errors import BadRequest  # noqa: E402
from peakknn.server.messages import json_bytes  # noqa: E402

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
    assert json.loads(json_bytes(value)) == value


# ----------------------------------------------------------------- .npy bodies and the row checks
def _npy(a: np.ndarray, version=None) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
def test_npy_bodies_read_as_np_load_reads_them(version):
    import io

    rng = np.random.default_rng(0)
    for a in [rng.standard_normal((5, 4)).astype(np.float32), np.asfortranarray(rng.standard_normal((5, 4))),
              rng.standard_normal((3, 4)).astype(">f4"), rng.standard_normal((2, 4)).astype(np.float16), np.zeros((0, 4), np.float32)]:  # fmt: skip
        raw = _npy(a, version)
        got = bodies.npy_rows(raw, 4)
        want = np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable and np.array_equal(got, want)
    raw = _npy(np.ones((3, 4), np.float32))
    for broken in (raw[:-4], raw + b"\0" * 4, raw[:20], b"not an npy file"):
        with pytest.raises(BadRequest, match="not a readable .npy file"):
            bodies.npy_rows(broken, 4)


def test_row_checks_name_the_first_bad_value():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    assert np.array_equal(bodies._finite32(x, "v"), x)
    for bad, value in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
        y = x.copy()
        y[4, 2], y[2, 3] = bad, bad  # the first in row order is reported
        with pytest.raises(BadRequest, match=f"holds {value} at row 2, column 3"):
            bodies._finite32(y, "v")
    big = x.astype(np.float64)
    big[1, 0] = 1e200  # finite, its square overflows float64
    with pytest.raises(BadRequest, match="beyond the float32 range"):
        bodies._finite32(big, "v")
    long = x.copy()
    long[3] = 3e38  # each value fits float32, the row's norm does not fit MAX_NORM
    with pytest.raises(BadRequest, match="row 3 has norm"):
        bodies._finite32(long, "v")
