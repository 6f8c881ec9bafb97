"""POST /collections/{name}/calibrate (and Client.calibrate): a partitioned collection measures
its recall curves on a sample of the queries, so its target holds for queries that are not
distributed like its points; runs on the plain and on the sharded server (server_url)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import unique_name

import peakknn

httpx = pytest.importorskip("httpx")


def _mixture(n: int, d: int, centres_seed: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(centres_seed).standard_normal((32, d)) * 3
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 32, n)] + rng.standard_normal((n, d)) + 5.0).astype(np.float32)


def test_calibrating_on_queries_from_elsewhere_meets_the_target(server_url):
    x = _mixture(4000, 16, centres_seed=3, seed=0)
    elsewhere = _mixture(600, 16, centres_seed=4, seed=1)
    sample, held_out = elsewhere[:400], elsewhere[400:]
    exact = peakknn.Index(16, metric="l2", precision="fp32")
    exact.add(torch.from_numpy(x))
    want = exact.search(torch.from_numpy(held_out), 10, recall_target=1.0).ids.numpy()
    with peakknn.Client(server_url) as client:
        c = client.create_collection(unique_name("cal"), 16, metric="l2", index="partitioned", train_size=2000, recall_target=0.95)
        c.upsert(x, ids=np.arange(4000))
        answer = c.calibrate(sample)
        assert answer["calibrated"] == 400 and answer["recall_curves"]["10"]["probes"]
        got = c.search(held_out, 10).ids
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist())])
    assert recall >= 0.94


def test_calibrate_refusals(server_url):
    with httpx.Client(base_url=server_url, timeout=60) as http:
        flat = unique_name("calflat")
        assert http.put(f"/collections/{flat}", json={"dim": 4}).status_code == 200
        r = http.post(f"/collections/{flat}/calibrate", json={"vectors": [[1, 0, 0, 0]]})
        assert r.status_code == 400 and "flat" in r.json()["error"]
        part = unique_name("calpart")
        assert http.put(f"/collections/{part}", json={"dim": 4, "index": "partitioned", "train_size": 1000}).status_code == 200
        r = http.post(f"/collections/{part}/calibrate", json={"vectors": [[1, 0, 0, 0]]})
        assert r.status_code == 400 and "not trained" in r.json()["error"]
        for body in ({"vectors": []}, {"vectors": [[1, 0, 0]]}, {"queries": [[1, 0, 0, 0]]}):
            assert http.post(f"/collections/{part}/calibrate", json=body).status_code == 400, body
        assert http.post("/collections/none-such/calibrate", json={"vectors": [[1, 0, 0, 0]]}).status_code == 404
