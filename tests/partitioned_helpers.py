"""Data and checks shared by the PartitionedIndex tests (tests/partitioned/, tests/quant/).

Not a test module: the test files import it by name (tests/ is on sys.path in pytest's default
"prepend" import mode, because tests/conftest.py lives there).
"""

import numpy as np
import torch

from peakknn import PartitionedIndex, PartitionSettings
from peakknn.data import clustered
from peakknn.evaluation import recall
from peakknn.partitioned.settings import ADAPTIVE_SPREAD
from peakknn.search import search

METRICS = ("ip", "l2", "cos")
CODES = ("bf16", "int8", "pq4")


def data(n=4000, d=32, nq=60, seed=0, spread=0.3):
    ds = clustered(n, d, nq, clusters=40, spread=spread, seed=seed)
    return torch.from_numpy(ds.train), torch.from_numpy(ds.test)


def truth(x, q, k, metric):
    return search(q, x, k, metric=metric, recall_target=1.0).ids


def copies(index):
    """Partitions each row is stored in (spill stores every row twice)."""
    return 2 if index.settings.spill else 1


def check_recall_and_exact_scores(index, x, q, metric, probe):
    """Recall@10 >= 0.99 at `probe` against exact search, and the reported scores exact (fp32
    re-ranked) for the ids it gets right. Returns the exact ids i64[nq, 10]."""
    exact = search(q, x, 10, metric=metric, recall_target=1.0)
    result = index.search(q, 10, probe=probe)
    assert recall(result.ids, exact.ids) >= 0.99
    hit = result.ids == exact.ids
    torch.testing.assert_close(result.scores[hit], exact.scores[hit], rtol=1e-4, atol=1e-4)
    return exact.ids


def build(x, metric="ip", **settings):
    settings.setdefault("partitions", 32)
    index = PartitionedIndex(x.shape[1], metric=metric, settings=PartitionSettings(**settings))
    index.add(x)
    return index


def check_bookkeeping(index):
    """Every live row sits, once per copy, in distinct partitions at the recorded positions."""
    pages = index._entries.lists
    where = index._entries.where
    live = np.flatnonzero(index._slots.slot_ids.numpy() >= 0)
    assert int(index.partition_sizes.sum()) == live.size * copies(index)
    for slot in live.tolist():
        parts = where[slot, :, 0]
        assert (parts >= 0).all() and len(set(parts.tolist())) == parts.size
        for p, pos in where[slot].tolist():
            assert int(pages.rows(p)[1][pos]) == slot


def low_rank(n=3000, d=48, rank=12, nq=60, seed=0):
    """Rows near a rank-12 subspace of R^48 (what embeddings look like: a few directions hold
    most of the energy) with a little full-rank noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0]
    x = torch.randn(n + nq, rank, generator=g) @ basis.T + 0.05 * torch.randn(n + nq, d, generator=g)
    return x[:n].contiguous(), x[n:].contiguous()


def taken_partitions(index, q, probe):
    """i64[nq]: partitions an adaptive search takes per query, recomputed from the centres in
    float64 in the index's scan frame (s, m): every centre whose score <q', c'> (- |c'|^2/2 for
    L2) is within probe_gap * |q'| of the query's best, at most ADAPTIVE_SPREAD * probe, for
    c' = s (c - m) and q' = s (q - m) (L2) or s q."""
    frame = index._trained.frame
    m, s = frame.centre.double(), frame.scale
    c = (index._centres.double() - m) * s
    qd = q.double() / (q.double().norm(dim=1, keepdim=True) if index.metric == "cos" else 1.0)
    qd = (qd - m if index.metric == "l2" else qd) * s
    scores = qd @ c.T - (0.5 * (c * c).sum(1) if index.metric == "l2" else 0.0)
    top = torch.sort(scores, dim=1, descending=True).values[:, : min(c.shape[0], ADAPTIVE_SPREAD * probe)]
    return ((top[:, :1] - top) <= index.probe_gap(probe) * qd.norm(dim=1, keepdim=True)).sum(1)
