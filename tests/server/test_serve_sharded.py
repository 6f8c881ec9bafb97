"""`serve --sharded` under torchrun with 2 processes: where points live, exactness against one
index, recall, partitioned training over the shards, deletes that change nothing on a miss,
restarts and the start-up sync. (The API tests on `server_url` run against such a server too.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import peakknn

SHARDS = 2


def _ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, d)) * 3
    return (centres[rng.integers(0, 32, n)] + rng.standard_normal((n, d)) + 5.0).astype(np.float32)  # an offset too


def _split(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(stored rows, queries): queries drawn like the rows (the recall target is a statement about
    queries distributed as the rows; probes are calibrated on rows)."""
    return rows[:n], rows[n:]


def _search(http, name, q, k, **body):
    res = _ok(http.post(f"/collections/{name}/search", json={"vectors": q.tolist(), "k": k, **body}))["results"]
    return [r["ids"] for r in res], [r["scores"] for r in res]


def _recall(got: list[list[int]], want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w.tolist())) / len(w) for g, w in zip(got, want)]))


def test_points_live_on_their_owner_and_survive_a_restart(serve, tmp_path):
    server = serve(shards=SHARDS)
    x = _clustered(300, 12, 0)
    with server.client() as http:
        _ok(http.put("/collections/a", json={"dim": 12, "metric": "l2", "dtype": "fp32"}))
        _ok(http.put("/collections/a/points", json={"ids": list(range(300)), "vectors": x.tolist(), "payloads": [{"i": i} for i in range(300)]}))
        deleted = _ok(http.post("/collections/a/points/delete", json={"ids": [3, 4]}))
        assert deleted["seq"] == 2  # every shard logs every write: their seqs move in step
        assert _ok(http.get("/collections/a"))["count"] == 298
    server.stop()
    for rank in range(SHARDS):  # each shard's snapshot holds exactly its ids (id % 2 == rank)
        folder = server.data / f"shard-{rank:05d}" / "collections" / "a"
        snap = next(folder.glob("snap-*"))
        ids = np.sort(np.asarray(peakknn.load(snap).ids))
        want = np.array([i for i in range(300) if i % SHARDS == rank and i not in (3, 4)])
        np.testing.assert_array_equal(ids, want)
    server.start()
    with server.client() as http:
        assert _ok(http.get("/collections/a"))["count"] == 298
        points = _ok(http.post("/collections/a/points/get", json={"ids": [7, 3, 2, 9], "with_vectors": True}))["points"]
        assert [p["id"] for p in points] == [7, 2, 9]  # the request's order, unknown ids left out
        assert [p["payload"] for p in points] == [{"i": 7}, {"i": 2}, {"i": 9}]
        np.testing.assert_array_equal(np.array([p["vector"] for p in points], dtype=np.float32), x[[7, 2, 9]])


@pytest.mark.parametrize("metric", ["l2", "cos", "ip"])
def test_exact_search_equals_one_index_and_recall_meets_the_target(serve, metric):
    server = serve(shards=SHARDS)
    x, q = _split(_clustered(3040, 24, 1), 3000)
    index = peakknn.Index(24, metric=metric, precision="fp32")
    index.add(torch.from_numpy(x), ids=torch.arange(3000))
    want = index.search(torch.from_numpy(q), 10, recall_target=1.0)
    with server.client() as http:
        _ok(http.put("/collections/e", json={"dim": 24, "metric": metric, "dtype": "fp32"}))
        _ok(http.put("/collections/e/points", json={"ids": list(range(3000)), "vectors": x.tolist()}))
        ids, scores = _search(http, "e", q, 10, recall_target=1.0)
        got = np.array(scores, dtype=np.float32)
        np.testing.assert_allclose(got, want.scores.numpy(), rtol=1e-5, atol=1e-4)  # ties may order differently
        agree = np.array(ids) == want.ids.numpy()
        assert agree.mean() > 0.97
        ids, _ = _search(http, "e", q, 10, recall_target=0.95)
        assert _recall(ids, want.ids.numpy()) >= 0.94


def test_partitioned_collection_trains_every_shard_together_and_meets_its_target(serve):
    server = serve(shards=SHARDS)
    x, q = _split(_clustered(4050, 16, 3), 4000)
    exact = peakknn.Index(16, metric="l2", precision="fp32")
    exact.add(torch.from_numpy(x))
    want = exact.search(torch.from_numpy(q), 10, recall_target=1.0).ids.numpy()
    with server.client() as http:
        _ok(http.put("/collections/p", json={"dim": 16, "metric": "l2", "index": "partitioned", "train_size": 2000, "recall_target": 0.95}))
        _ok(http.put("/collections/p/points", json={"ids": list(range(1000)), "vectors": x[:1000].tolist()}))
        assert _ok(http.get("/collections/p"))["trained"] is False  # 1,000 of 2,000 points in all
        _ok(http.put("/collections/p/points", json={"ids": list(range(1000, 4000)), "vectors": x[1000:].tolist()}))
        assert _ok(http.get("/collections/p"))["trained"] is True  # both shards, once 4,000 >= 2,000 points are in
        ids, _ = _search(http, "p", q, 10)
        assert _recall(ids, want) >= 0.94
    server.stop()
    shards = [peakknn.load(next((server.data / f"shard-{rank:05d}" / "collections" / "p").glob("snap-*"))) for rank in range(SHARDS)]
    assert all(s.is_trained and s.settings.train_size is None for s in shards)  # trained together, never alone
    assert sum(len(s) for s in shards) == 4000 and all(len(s) == 2000 for s in shards)
    for s in shards[1:]:  # the same centres, frame and gaps on every shard
        torch.testing.assert_close(s._trained.centres, shards[0]._trained.centres, rtol=0, atol=0)
        torch.testing.assert_close(s._trained.frame.centre, shards[0]._trained.frame.centre, rtol=0, atol=0)
        torch.testing.assert_close(s._trained.probe_gaps, shards[0]._trained.probe_gaps, rtol=0, atol=0)
    server.start()  # snapshots hold the trained shards
    with server.client() as http:
        assert _ok(http.get("/collections/p"))["trained"] is True
        ids, _ = _search(http, "p", q, 10)
        assert _recall(ids, want) >= 0.94


def test_a_delete_missing_on_one_shard_deletes_nothing_and_sync_at_start(serve):
    server = serve(shards=SHARDS)
    with server.client() as http:
        for name in ("keep", "gone"):
            _ok(http.put(f"/collections/{name}", json={"dim": 2}))
            _ok(http.put(f"/collections/{name}/points", json={"ids": [0, 1, 2, 3], "vectors": [[1, 0], [0, 1], [1, 1], [1, -1]]}))
        r = http.post("/collections/keep/points/delete", json={"ids": [0, 2, 5]})  # 5 would be on shard 1
        assert r.status_code == 404 and "5" in r.json()["error"] and "nothing was deleted" in r.json()["error"]
        assert _ok(http.get("/collections/keep"))["count"] == 4
    server.stop()
    # rank 0's store decides: a collection it lacks is dropped on the other shards, one it has is
    # created empty where missing (as after a crash between two shards' create / delete)
    import shutil

    shutil.rmtree(server.data / "shard-00000" / "collections" / "gone")
    shutil.rmtree(server.data / "shard-00001" / "collections" / "keep")
    server.start()
    with server.client() as http:
        assert http.get("/collections/gone").status_code == 404
        info = _ok(http.get("/collections/keep"))
        assert info["count"] == 2 and info["shards"] == SHARDS  # shard 0's ids 0 and 2 only
    assert not (server.data / "shard-00001" / "collections" / "gone").exists()


def test_sharded_needs_torchrun(tmp_path):
    env_free = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "peakknn", "serve", "--sharded", "--data", str(tmp_path / "d")],
                          capture_output=True, text=True, env=env_free, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "torchrun" in done.stderr
