"""peakknn.Client against the real server (`python -m peakknn serve` in a subprocess, from the
fixtures of tests/server/conftest.py): every method, numpy in and out, results equal to a local
`Index` holding the same data, the binary bulk form in several batches, splitting on 413, the
documented error mapping, and auth."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
from serve_helpers import free_port

import peakknn
from peakknn.client import BINARY_MIN_ROWS, UPLOAD_IN_FLIGHT, Client, PayloadTooLarge, RemoteSearchResult


@pytest.fixture
def client(server_url):  # conftest.py: a session-wide server without a key
    with Client(server_url, progress=False) as c:
        yield c


def unique() -> str:
    """A collection name of its own (the session-wide servers are shared with other tests)."""
    return f"client-{uuid.uuid4().hex[:10]}"


def fresh(client: Client, dim: int, **config):
    return client.create_collection(unique(), dim, **config)


def data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def test_import_peakknn_does_not_load_httpx():
    code = "import sys, peakknn; assert 'httpx' not in sys.modules, 'httpx imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_peakknn_client_is_lazy_export():
    assert peakknn.Client is Client


def test_health_and_collection_lifecycle(client):
    assert client.health() == {"status": "ok"}
    h = fresh(client, 8, metric="l2", dtype="fp32")
    info = h.info()
    assert (info["dim"], info["metric"], info["index"], info["count"]) == (8, "l2", "flat", 0)
    assert len(h) == 0 and h.dim == 8 and h.metric == "l2"
    assert h.name in client.collections()
    assert client.collections()[h.name]["dim"] == 8
    assert client.collection(h.name).info()["dim"] == 8
    again = client.create_collection(h.name, 8, metric="l2", dtype="fp32")  # same config: opens it
    assert len(again) == 0
    client.delete_collection(h.name)
    assert h.name not in client.collections()
    with pytest.raises(KeyError, match=h.name):
        client.collection(h.name)
    with pytest.raises(KeyError):
        client.delete_collection(h.name)


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
def test_search_equals_local_index(client, metric):
    x, q = data(500, 24, seed=1), data(7, 24, seed=2)
    ids = np.random.default_rng(3).permutation(10_000)[:500]
    h = fresh(client, 24, metric=metric, dtype="fp32")
    assert np.array_equal(h.upsert(x, ids), ids)
    local = peakknn.Index(24, metric=metric, precision="fp32")
    local.add(x, ids=ids)
    for k in (1, 10, 30):
        got = h.search(q, k=k, recall_target=1.0)
        want = local.search(q, k, recall_target=1.0)
        assert isinstance(got, RemoteSearchResult) and isinstance(got.ids, np.ndarray)
        assert got.ids.dtype == np.int64 and got.scores.dtype == np.float32 and got.ids.shape == (7, k)
        assert got.payloads is None
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    one = h.search(q[0], k=5, recall_target=1.0)  # a single vector: one row of results
    np.testing.assert_array_equal(one.ids, local.search(q[:1], 5, recall_target=1.0).ids)
    scores, found = h.search(q, k=3, recall_target=1.0)  # unpacks like SearchResult
    assert found.shape == scores.shape == (7, 3)


def test_many_queries_go_in_several_requests(server_url):
    x, q = data(100, 8, seed=10), data(7, 8, seed=11)
    with Client(server_url, batch_size=3, progress=False) as c:
        searches = []
        c._http.event_hooks["request"].append(lambda r: searches.append(r) if r.url.path.endswith("/search") else None)
        h = fresh(c, 8, dtype="fp32")
        h.upsert(x, np.arange(100))
        res = h.search(q, k=4, recall_target=1.0)
    assert len(searches) == 3  # 3 + 3 + 1 queries
    local = peakknn.Index(8, precision="fp32")
    local.add(x)
    np.testing.assert_array_equal(res.ids, local.search(q, 4, recall_target=1.0).ids)


def test_fewer_points_than_k_are_filled(client):
    h = fresh(client, 4, metric="l2", dtype="fp32")
    h.upsert(np.eye(4, dtype=np.float32)[:2], [7, 9])
    res = h.search(np.ones(4, dtype=np.float32), k=4, recall_target=1.0)
    assert sorted(res.ids[0, :2].tolist()) == [7, 9]
    assert res.ids[0, 2:].tolist() == [-1, -1] and np.isposinf(res.scores[0, 2:]).all()


def test_binary_bulk_upload_in_batches(client, capsys):
    n, dim, batch = 3000, 32, 700
    x = data(n, dim, seed=4)
    sent = []

    def kind(r):  # the body's form: a .npy file (ids in the query) or the JSON keys
        if r.headers.get("content-type") == "application/x-npy":
            return {"npy", r.url.params["ids"]}
        return set(json.loads(r.content))

    client._http.event_hooks["request"].append(lambda r: sent.append(kind(r)) if r.url.path.endswith("/points") else None)
    h = fresh(client, dim, metric="ip", dtype="fp32")
    ids = np.arange(10, 10 + n)
    h.upsert(x, ids, batch_size=batch, progress=True)  # runs of ids, no payloads: raw .npy bodies
    assert {"npy", "10:710"} in sent and len(sent) == -(-n // batch) and all("npy" in s for s in sent)  # two at a time: any order
    assert "upsert" in capsys.readouterr().err  # the tqdm bar
    assert len(h) == n
    got = h.get(ids[::7])
    np.testing.assert_array_equal(got.ids, ids[::7])
    np.testing.assert_array_equal(got.vectors, x[::7])  # float32 travels exactly
    sent.clear()
    scattered = np.random.default_rng(0).permutation(ids)[:600]  # too many runs for the URL: vectors_b64
    h.upsert(x[:600], scattered)
    np.testing.assert_array_equal(h.get(scattered[:50]).vectors, x[:50])
    with_payloads = ids[:100]
    h.upsert(x[:100], with_payloads, payloads=[{"i": int(i)} for i in with_payloads])  # payloads: JSON
    assert sent == [{"ids", "vectors_b64"}, {"ids", "vectors_b64", "payloads"}]
    assert h.get([10]).payloads == [{"i": 10}]
    h.upsert(x, ids)  # back to the original rows
    sent.clear()
    h.upsert(x[:5], ids[:5], progress=True)  # a small write: JSON lists, one request, no bar
    assert sent == [{"ids", "vectors"}] and 5 < BINARY_MIN_ROWS
    assert "upsert" not in capsys.readouterr().err
    local = peakknn.Index(dim, precision="fp32")
    local.add(x, ids=ids)
    q = data(100, dim, seed=5)  # many queries: also the binary form
    sent.clear()
    client._http.event_hooks["request"].append(
        lambda r: sent.append(set(json.loads(r.content))) if r.url.path.endswith("/search") else None
    )
    np.testing.assert_array_equal(h.search(q, k=10, recall_target=1.0).ids, local.search(q, 10, recall_target=1.0).ids)
    assert len(sent) == 1 and "vectors_b64" in sent[0] and "vectors" not in sent[0]


def test_uploads_keep_two_batches_in_flight(client):
    n, dim, batch = 4000, 16, 200
    x = data(n, dim, seed=20)
    in_flight, most, lock = [0], [0], threading.Lock()

    def sent(r):
        if r.url.path.endswith("/points"):
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])

    def answered(r):
        if r.request.url.path.endswith("/points"):
            with lock:
                in_flight[0] -= 1

    client._http.event_hooks["request"].append(sent)
    client._http.event_hooks["response"].append(answered)
    h = fresh(client, dim, dtype="fp32")
    h.upsert(x, np.arange(n), batch_size=batch)
    assert most[0] == UPLOAD_IN_FLIGHT == 2  # 20 batches: they overlapped, never more than two
    np.testing.assert_array_equal(h.get(np.arange(0, n, 7)).vectors, x[::7])
    with pytest.raises(ValueError, match="duplicates"):  # so the order batches are stored in cannot matter
        h.upsert(x[:2], [5, 5])


def test_no_upload_is_sent_after_one_failed():
    """Batch 1 fails while batch 0 is still in flight: batch 2 is never sent, and the error of
    batch 1 is raised (a fake server: httpx.MockTransport)."""
    import time

    import httpx

    sent, lock = [], threading.Lock()

    def handler(request):
        if request.method == "GET":  # the collection's info
            return httpx.Response(200, json={"name": "c", "dim": 4, "metric": "ip", "count": 0})
        start = int(request.url.params["ids"].split(":")[0])
        with lock:
            sent.append(start)
        if start == 0:
            time.sleep(0.3)
            return httpx.Response(200, json={"upserted": 100, "seq": 1})
        return httpx.Response(500, json={"error": "disk full"})

    with Client("http://fake", progress=False) as c:
        c._http = httpx.Client(base_url="http://fake", transport=httpx.MockTransport(handler))
        h = c.collection("c")
        with pytest.raises(RuntimeError, match="disk full"):
            h.upsert(np.ones((500, 4), dtype=np.float32), np.arange(500), batch_size=100)
    assert sorted(sent) == [0, 100]


def test_too_large_bodies_are_split(serve):
    server = serve(args=("--max-body-mb", "0.25"))  # 256 KiB: 2,000 x 64 float32 rows are 683 KiB as base64
    n, dim = 2000, 64
    x, q = data(n, dim, seed=12), data(1500, dim, seed=13)
    puts, searches = [], []
    with Client(server.url, progress=False) as c:
        c._http.event_hooks["request"].append(
            lambda r: (puts if r.url.path.endswith("/points") else searches).append(len(r.content)))
        h = fresh(c, dim, dtype="fp32")
        h.upsert(x, np.arange(n))  # one 8 MiB batch by default: refused, halved until it fits
        assert len(h) == n and len(puts) > 2 and min(puts) < 256 << 10
        np.testing.assert_array_equal(h.get(np.arange(0, n, 9)).vectors, x[::9])
        res = h.search(q, k=3, recall_target=1.0)  # 1,500 queries: split the same way
        local = peakknn.Index(dim, precision="fp32")
        local.add(x)
        np.testing.assert_array_equal(res.ids, local.search(q, 3, recall_target=1.0).ids)
        assert len(searches) > 1
        wide = c.create_collection(unique(), 65_536, dtype="fp32")  # one row (320 KiB as JSON) is over the limit
        with pytest.raises(PayloadTooLarge, match="413"):
            wide.upsert(np.ones((1, 65_536), dtype=np.float32), [1])


def test_add_assigns_or_refuses_ids(client):
    h = fresh(client, 6, dtype="fp32")
    x = data(20, 6, seed=6)
    np.testing.assert_array_equal(h.add(x[:10]), np.arange(10))  # next ids from the count
    np.testing.assert_array_equal(h.add(x[10:15]), np.arange(10, 15))
    with pytest.raises(ValueError, match="already stored"):
        h.add(x[15:17], ids=[3, 100])  # 3 exists: nothing added, 100 included
    assert len(h) == 15 and h.get([100]).ids.size == 0
    h.remove([2])
    with pytest.raises(ValueError, match="pass ids"):  # count 14 -> id 14 is taken
        h.add(x[15:16])
    np.testing.assert_array_equal(h.add(x[15:17], ids=[2, 50]), [2, 50])
    np.testing.assert_array_equal(h.get([2, 50]).vectors, x[15:17])
    import torch  # any float input, as Index takes it: a bf16 tensor here

    t = torch.from_numpy(x[17:18]).to(torch.bfloat16)
    h.add(t, ids=[60])
    np.testing.assert_array_equal(h.get([60]).vectors, t.float().numpy())


def test_upsert_replaces_remove_and_get(client):
    h = fresh(client, 5, metric="l2", dtype="fp32")
    x = data(10, 5, seed=7)
    h.upsert(x, range(10), payloads=[{"n": i} if i % 2 else None for i in range(10)])
    h.upsert(x[:1] + 1, [4], payloads=[{"n": 40}])
    got = h.get([4, 1, 999, 0])  # order kept, unknown left out
    np.testing.assert_array_equal(got.ids, [4, 1, 0])
    np.testing.assert_array_equal(got.vectors, np.stack([x[0] + 1, x[1], x[0]]))
    assert got.payloads == [{"n": 40}, {"n": 1}, None]
    bare = h.get([4], with_vectors=False)
    assert bare.vectors is None and bare.payloads == [{"n": 40}]
    with pytest.raises(KeyError, match="77"):  # an id that is not stored: nothing removed
        h.remove([1, 77])
    assert len(h) == 10
    h.remove({1, 3})
    assert len(h) == 8 and h.get([1, 3]).ids.size == 0
    res = h.search(x, k=10, recall_target=1.0)
    assert not np.isin(res.ids, [1, 3]).any()
    assert (res.ids[:, 8:] == -1).all()


def test_cosine_get_returns_unit_vectors(client):
    h = fresh(client, 3, metric="cos", dtype="fp32")
    h.upsert(np.array([[3.0, 0, 4.0]], dtype=np.float32), [1])
    np.testing.assert_allclose(h.get([1]).vectors, [[0.6, 0, 0.8]], rtol=1e-6)


def test_filters_and_payloads(client):
    n, dim = 300, 12
    x, q = data(n, dim, seed=8), data(4, dim, seed=9)
    payloads = [{"lang": ["en", "de", "fr"][i % 3], "year": 2015 + i % 10} for i in range(n)]
    h = fresh(client, dim, dtype="fp32")
    h.upsert(x, np.arange(n), payloads=payloads)
    local = peakknn.Index(dim, precision="fp32")
    local.add(x)
    cond = {"must": [{"key": "lang", "match": "en"}, {"key": "year", "range": {"gte": 2020}}]}
    allowed = [i for i, p in enumerate(payloads) if p["lang"] == "en" and p["year"] >= 2020]
    res = h.search(q, k=5, recall_target=1.0, filter=cond, with_payload=True)
    np.testing.assert_array_equal(res.ids, local.search(q, 5, recall_target=1.0, allowed_ids=allowed).ids)
    assert [[p["lang"] for p in row] for row in res.payloads] == [["en"] * 5] * 4
    assert res.payloads[0][0] == payloads[res.ids[0, 0]]
    subset = range(0, n, 4)
    res = h.search(q, k=5, recall_target=1.0, allowed_ids=subset)
    np.testing.assert_array_equal(res.ids, local.search(q, 5, recall_target=1.0, allowed_ids=subset).ids)
    with pytest.raises(ValueError, match="not both"):
        h.search(q, k=5, filter={"ids": [1]}, allowed_ids=[2])


def test_errors_are_mapped(client):
    h = fresh(client, 4, dtype="fp32")
    with pytest.raises(ValueError, match="dim 4"):  # checked here: nothing sent
        h.upsert(np.zeros((2, 5), dtype=np.float32), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        h.upsert(np.full((1, 4), np.nan, dtype=np.float32), [0])
    with pytest.raises(ValueError, match="duplicates"):
        h.upsert(np.zeros((2, 4), dtype=np.float32), [1, 1])
    with pytest.raises(ValueError, match="payloads"):
        h.upsert(np.zeros((2, 4), dtype=np.float32), [1, 2], payloads=[{}])
    with pytest.raises(ValueError, match="k must"):
        h.search(np.zeros(4, dtype=np.float32), k=0)
    assert len(h) == 0
    with pytest.raises(ValueError, match="HTTP 409"):  # the server: same name, other config
        client.create_collection(h.name, 8, dtype="fp32")
    with pytest.raises(ValueError, match="HTTP 4"):  # the server: an unknown metric
        client.create_collection("bad-metric", 4, metric="hamming")
    with pytest.raises(ValueError, match="HTTP 4"):  # the server: a malformed filter
        h.search(np.ones(4, dtype=np.float32), k=1, filter={"must": [{"key": "a", "nonsense": 1}]})
    with pytest.raises(KeyError, match="no-such"):
        client.collection("no-such")
    gone = fresh(client, 4, dtype="fp32")
    client.delete_collection(gone.name)
    with pytest.raises(KeyError, match=gone.name):  # a handle whose collection was deleted
        gone.upsert(np.ones((1, 4), dtype=np.float32), [1])


def test_connection_errors_name_the_url():
    port = free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", timeout=2.0) as c, pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        c.health()


def test_auth(auth_server):
    keyed_url, key = auth_server.url, auth_server.api_key
    name = unique()
    with Client(keyed_url) as c:
        assert c.health() == {"status": "ok"}  # /healthz needs no key
    for bad in (None, "wrong"):
        with Client(keyed_url, api_key=bad) as c:
            with pytest.raises(PermissionError, match="401"):
                c.collections()
            with pytest.raises(PermissionError):
                c.create_collection(name, 4)
    with Client(keyed_url, api_key=key) as c:
        h = c.create_collection(name, 4, dtype="fp32")
        h.upsert(np.eye(4, dtype=np.float32), [1, 2, 3, 4])
        assert h.search(np.eye(4, dtype=np.float32)[2], k=1, recall_target=1.0).ids.tolist() == [[3]]
        assert name in c.collections()
