"""Every endpoint of the real server, without a key: collections (create, same config again,
conflict, list, info, delete), points in all three upload forms, get, delete, search (results as
the library gives them, payloads, filters by id), /metrics, /stats and the dashboard files."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from conftest import unique_name

import peakknn
import peakknn.server.app


@pytest.fixture
def http(server_url):
    with httpx.Client(base_url=server_url, timeout=60) as client:
        yield client


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, f"{r.status_code}: {r.text}"
    return r.json()


def test_healthz(http):
    assert _ok(http.get("/healthz")) == {"status": "ok"}


def test_collection_lifecycle(http):
    name = unique_name("life")
    info = _ok(http.put(f"/collections/{name}", json={"dim": 16, "metric": "cos"}))
    assert info["created"] is True and info["name"] == name and info["count"] == 0
    assert (info["dim"], info["metric"], info["index"]) == (16, "cos", "flat")
    assert info["settings"] == {"dtype": "bf16", "recall_target": 0.95}
    # the same config again, spelled with its defaults: no change
    again = _ok(http.put(f"/collections/{name}", json={"dim": 16, "metric": "cos", "index": "flat", "dtype": "bf16", "recall_target": 0.95}))
    assert again["created"] is False
    r = http.put(f"/collections/{name}", json={"dim": 8, "metric": "cos"})
    assert r.status_code == 409 and "dim 16 (asked 8)" in r.json()["error"]
    listed = _ok(http.get("/collections"))["collections"]
    assert name in [c["name"] for c in listed]
    assert _ok(http.get(f"/collections/{name}"))["dim"] == 16
    assert _ok(http.delete(f"/collections/{name}")) == {"deleted": True}
    assert http.get(f"/collections/{name}").status_code == 404
    assert http.delete(f"/collections/{name}").status_code == 404
    assert name not in [c["name"] for c in _ok(http.get("/collections"))["collections"]]
    # the name is free again, with any config
    assert _ok(http.put(f"/collections/{name}", json={"dim": 8}))["created"] is True
    _ok(http.delete(f"/collections/{name}"))


def test_partitioned_collection(http):
    name = unique_name("part")
    body = {"dim": 16, "metric": "l2", "index": "partitioned", "partitions": 8, "train_size": 400, "codes": "int8", "probe": 3}
    info = _ok(http.put(f"/collections/{name}", json=body))
    assert info["index"] == "partitioned" and info["trained"] is False and info["settings"]["partitions"] == 8
    assert _ok(http.put(f"/collections/{name}", json=body))["created"] is False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    _ok(http.put(f"/collections/{name}/points", json={"ids": list(range(600)), "vectors_b64": base64.b64encode(x.tobytes()).decode()}))
    info = _ok(http.get(f"/collections/{name}"))
    assert info["trained"] is True and info["count"] == 600
    local = peakknn.PartitionedIndex(16, metric="l2", settings=peakknn.PartitionSettings(partitions=8, train_size=400, codes="int8"),
                                     search_settings=peakknn.SearchSettings(probe=3))  # fmt: skip
    local.upsert(x, ids=np.arange(600))
    q = rng.standard_normal((3, 16)).astype(np.float32)
    for options in ({}, {"probe": 8}):
        res = _ok(http.post(f"/collections/{name}/search", json={"vectors": q.tolist(), "k": 5, **options}))["results"]
        want = local.search(q, 5, **options)
        assert [r["ids"] for r in res] == want.ids.tolist()
        assert np.allclose([r["scores"] for r in res], want.scores, rtol=1e-6)
    r = http.post(f"/collections/{name}/search", json={"vectors": q.tolist(), "k": 5, "probe": 2, "recall_target": 0.9})
    assert r.status_code == 400 and "not both" in r.json()["error"]
    _ok(http.delete(f"/collections/{name}"))


def test_points_in_every_form_and_search_equal_to_the_library(http):
    name = unique_name("pts")
    dim, rng = 12, np.random.default_rng(1)
    _ok(http.put(f"/collections/{name}", json={"dim": dim, "metric": "ip", "dtype": "fp32"}))
    x = rng.standard_normal((90, dim)).astype(np.float32)
    payloads = [{"i": i, "even": i % 2 == 0} if i % 3 else None for i in range(30)]
    up = _ok(http.put(f"/collections/{name}/points", json={"ids": list(range(30)), "vectors": x[:30].tolist(), "payloads": payloads}))
    assert up["upserted"] == 30 and up["seq"] >= 1
    b64 = base64.b64encode(x[30:60].astype("<f4").tobytes()).decode()
    up2 = _ok(http.put(f"/collections/{name}/points", json={"ids": list(range(30, 60)), "vectors_b64": b64}))
    assert up2["seq"] == up["seq"] + 1
    buf = io.BytesIO()
    np.save(buf, x[60:90].astype(np.float64))  # any float dtype
    r = http.put(f"/collections/{name}/points", params={"ids": "60:80,80,81:90"}, content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert _ok(r)["upserted"] == 30
    got = _ok(http.post(f"/collections/{name}/points/get", json={"ids": [5, 45, 75, 999, 5], "with_vectors": True}))["points"]
    assert [p["id"] for p in got] == [5, 45, 75]  # order kept, repeat once, unknown left out
    assert np.array_equal(np.array([p["vector"] for p in got], dtype=np.float32), x[[5, 45, 75]])
    assert [p["payload"] for p in got] == [payloads[5], None, None]
    bare = _ok(http.post(f"/collections/{name}/points/get", json={"ids": [4]}))["points"]
    assert bare == [{"id": 4, "payload": payloads[4]}]  # defaults: payload, no vector
    assert _ok(http.post(f"/collections/{name}/points/get", json={"ids": [4], "with_payload": False}))["points"] == [{"id": 4}]
    # search: what an Index with the same rows answers
    local = peakknn.Index(dim, metric="ip", precision="fp32")
    local.upsert(x, ids=np.arange(90))
    q = rng.standard_normal((4, dim)).astype(np.float32)
    res = _ok(http.post(f"/collections/{name}/search", json={"vectors": q.tolist(), "k": 7, "with_payload": True}))["results"]
    want = local.search(q, 7)
    assert [r["ids"] for r in res] == want.ids.tolist()
    assert np.array_equal(np.array([r["scores"] for r in res], dtype=np.float32), want.scores)
    assert [r["payloads"] for r in res] == [[payloads[i] if i < 30 else None for i in row] for row in want.ids.tolist()]
    # filters by id, fewer than k qualify: shorter lists, no fillers
    res = _ok(http.post(f"/collections/{name}/search", json={"vectors": q[:1].tolist(), "k": 5, "filter": {"ids": [3, 50, 1000]}}))["results"]
    assert sorted(res[0]["ids"]) == [3, 50] and len(res[0]["scores"]) == 2
    res = _ok(http.post(f"/collections/{name}/search", json={"vectors": q[:1].tolist(), "k": 5, "filter": {"ids": []}}))["results"]
    assert res == [{"ids": [], "scores": []}]
    # replace and delete
    _ok(http.put(f"/collections/{name}/points", json={"ids": [5], "vectors": [x[6].tolist()], "payloads": [{"new": True}]}))
    got = _ok(http.post(f"/collections/{name}/points/get", json={"ids": [5], "with_vectors": True}))["points"]
    assert got == [{"id": 5, "vector": x[6].tolist(), "payload": {"new": True}}]
    d = _ok(http.post(f"/collections/{name}/points/delete", json={"ids": [5, 6, 7]}))
    assert d["deleted"] == 3 and d["seq"] > up2["seq"]
    assert _ok(http.get(f"/collections/{name}"))["count"] == 87
    assert _ok(http.post(f"/collections/{name}/points/get", json={"ids": [5, 6, 7, 8]}))["points"] == [{"id": 8, "payload": payloads[8]}]
    r = http.post(f"/collections/{name}/points/delete", json={"ids": [8, 5]})
    assert r.status_code == 404 and "5" in r.json()["error"]
    assert _ok(http.get(f"/collections/{name}"))["count"] == 87  # nothing deleted
    empty = _ok(http.put(f"/collections/{name}/points", json={"ids": [], "vectors": []}))
    assert empty["upserted"] == 0
    _ok(http.delete(f"/collections/{name}"))


def test_cosine_stores_unit_vectors(http):
    name = unique_name("cos")
    _ok(http.put(f"/collections/{name}", json={"dim": 3, "metric": "cos"}))
    _ok(http.put(f"/collections/{name}/points", json={"ids": [1], "vectors": [[3.0, 0.0, 4.0]]}))
    (p,) = _ok(http.post(f"/collections/{name}/points/get", json={"ids": [1], "with_vectors": True}))["points"]
    assert np.allclose(p["vector"], [0.6, 0.0, 0.8])
    res = _ok(http.post(f"/collections/{name}/search", json={"vectors": [[1.0, 0.0, 0.0]], "k": 1}))["results"]
    assert res[0]["ids"] == [1] and abs(res[0]["scores"][0] - 0.6) < 1e-6
    _ok(http.delete(f"/collections/{name}"))


def test_metrics_and_stats(http):
    name = unique_name("stats")
    _ok(http.put(f"/collections/{name}", json={"dim": 4}))
    _ok(http.put(f"/collections/{name}/points", json={"ids": [1, 2], "vectors": [[1, 0, 0, 0], [0, 1, 0, 0]]}))
    _ok(http.post(f"/collections/{name}/search", json={"vectors": [[1, 0, 0, 0]], "k": 1}))
    http.post(f"/collections/{name}/search", json={"k": 1})  # a 400, counted as an error
    text = http.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    body = text.text
    for metric in ("peakknn_http_requests_total", "peakknn_http_errors_total", "peakknn_http_request_duration_seconds_bucket",
                   "peakknn_search_batch_queries_bucket", "peakknn_search_queue_depth", "peakknn_wal_bytes", "peakknn_points",
                   "peakknn_search_latency_seconds_bucket", "peakknn_wal_fsyncs_total"):  # fmt: skip
        assert metric in body, metric
    assert f'peakknn_points{{collection="{name}"}} 2.0' in body
    assert 'route="/collections/{name}/search",status="400"' in body
    stats = _ok(http.get("/stats"))
    assert stats["collections"][name] == {"dim": 4, "metric": "ip", "index": "flat", "count": 2, "memory_bytes": stats["collections"][name]["memory_bytes"]}
    assert stats["collections"][name]["memory_bytes"] > 0
    b = stats["batcher"]
    assert set(b) >= {"queue_depth", "batch_sizes", "latency_ms", "batches", "requests"} and b["queue_depth"] == 0
    assert list(b["batch_sizes"])[:3] == ["1", "2-3", "4-7"] and b["batch_sizes"]["1"] >= 1
    assert b["latency_ms"]["p50"] > 0 and b["latency_ms"]["p99"] >= b["latency_ms"]["p50"]
    w = stats["wal"][name]
    assert w["seq"] == 1 and w["bytes"] > 0 and w["last_snapshot"] is None
    _ok(http.delete(f"/collections/{name}"))
    assert name not in _ok(http.get("/stats"))["collections"]
    assert f'collection="{name}"' not in http.get("/metrics").text


def test_dashboard_is_served(http):
    r = http.get("/dashboard/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "<html" in r.text.lower()
    assert http.get("/dashboard", follow_redirects=True).status_code == 200
    for asset in ("app.js", "style.css"):
        if (peakknn.server.app.DASHBOARD / asset).exists():
            assert http.get(f"/dashboard/{asset}").status_code == 200
    assert http.get("/dashboard/missing.js").status_code == 404


def test_unknown_routes_and_methods_answer_json(http):
    r = http.get("/nowhere")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = http.post("/collections")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


def test_searches_never_see_half_a_write(http, server_url):
    """A writer rewrites all 40 points (vector [v, i, 0, 0], payload {"v": v}) in one upsert per
    version v; concurrent searches must see one version only: every score (the ip with [1, 0, 0,
    0] is v) and every payload of an answer from the same write."""
    import threading

    name = unique_name("atomic")
    _ok(http.put(f"/collections/{name}", json={"dim": 4, "dtype": "fp32"}))
    ids = list(range(40))

    def version(v):
        return {"ids": ids, "vectors": [[float(v), float(i), 0.0, 0.0] for i in ids], "payloads": [{"v": v}] * len(ids)}

    _ok(http.put(f"/collections/{name}/points", json=version(1)))
    _ok(http.post(f"/collections/{name}/search", json={"vectors": [[1.0, 0, 0, 0]], "k": 1}))  # a first search may measure the machine
    stop, problems, seen = threading.Event(), [], set()

    def writer():
        with httpx.Client(base_url=server_url, timeout=60) as w:
            v = 1
            while not stop.is_set():
                v += 1
                r = w.put(f"/collections/{name}/points", json=version(v))
                if r.status_code != 200:
                    problems.append(r.text)

    def reader():
        with httpx.Client(base_url=server_url, timeout=60) as r:
            while not stop.is_set():
                (res,) = r.post(f"/collections/{name}/search", json={"vectors": [[1.0, 0, 0, 0]], "k": 40, "recall_target": 1.0,
                                                                      "with_payload": True}).json()["results"]  # fmt: skip
                versions = {p["v"] for p in res["payloads"]} | set(res["scores"])
                seen.update(versions)
                if len(versions) != 1 or len(res["ids"]) != 40:
                    problems.append(res)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    import time

    deadline = time.monotonic() + 10
    while len(seen) < 20 and time.monotonic() < deadline and not problems:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    assert not problems, problems[:2]
    assert len(seen) >= 20  # the readers did see many versions
    _ok(http.delete(f"/collections/{name}"))


def test_deleting_a_collection_under_load_answers_404_not_500(http, server_url):
    import asyncio

    name = unique_name("gone")
    _ok(http.put(f"/collections/{name}", json={"dim": 4}))
    _ok(http.put(f"/collections/{name}/points", json={"ids": [1, 2], "vectors": [[1, 0, 0, 0], [0, 1, 0, 0]]}))

    async def storm():
        async with httpx.AsyncClient(base_url=server_url, timeout=60) as client:
            searches = [client.post(f"/collections/{name}/search", json={"vectors": [[1, 0, 0, 0]], "k": 1}) for _ in range(40)]
            writes = [client.put(f"/collections/{name}/points", json={"ids": [i], "vectors": [[1, i, 0, 0]]}) for i in range(3, 13)]
            return await asyncio.gather(*searches[:20], client.delete(f"/collections/{name}"), *searches[20:], *writes)

    answers = asyncio.run(storm())
    assert {a.status_code for a in answers} <= {200, 404}, [a.text for a in answers if a.status_code not in (200, 404)]
    assert http.get(f"/collections/{name}").status_code == 404


def test_the_search_path_answers_as_every_route_does(http):
    """POST .../search is answered before FastAPI's routing (middleware.SearchRoute): its edges
    must read as the other routes' do."""
    name = unique_name("searchpath")
    _ok(http.put(f"/collections/{name}", json={"dim": 4, "dtype": "fp32"}))
    _ok(http.put(f"/collections/{name}/points", json={"ids": [1, 2], "vectors": [[1, 0, 0, 0], [0, 1, 0, 0]]}))
    r = http.get(f"/collections/{name}/search")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]
    r = http.post(f"/collections/{unique_name('absent')}/search", json={"vectors": [[1, 0, 0, 0]], "k": 1})
    assert r.status_code == 404 and "no collection" in r.json()["error"]
    r = http.post(f"/collections/{name}/search/", json={"vectors": [[1, 0, 0, 0]], "k": 1})
    assert r.status_code in (307, 404, 405)  # not a search: routed as FastAPI routes it
    body = b'{"vectors": [[0, 1, 0, 0]], "k": 1}'
    chunked = http.post(f"/collections/{name}/search", content=iter([body[:7], body[7:20], body[20:]]))  # no Content-Length
    assert _ok(chunked)["results"][0]["ids"] == [2]
    r = http.post(f"/collections/{name}/search", content=b'{"vectors": [[0, 1, 0, 0]], "k": 1')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    _ok(http.delete(f"/collections/{name}"))
