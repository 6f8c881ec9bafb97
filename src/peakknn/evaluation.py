"""How peakknn is judged: one timer, recall (with and without ties) and exact references.

Used by `peakknn bench`, the scripts in benchmarks/ and the tests, so every number is measured
the same way.

    result, seconds = timed(lambda: index.search(q, 10), repeat=5)       # median of 5 calls
    rank = exact_rank(q, x, "l2")             # f64[nq, n] larger-is-better reference scores
    ids = exact_search(x, q, 10, "cos")       # the PyTorch user's exact search (matmul + topk)
    recall(ids, truth)                        # |ids ∩ truth[:, :k]| / k, no ties
    recall_with_ties(ids, rank, k=10, tol=1e-4)            # ties with the k-th best count
    recall_at_k(ids, neighbors, train, test, "cos")        # the same against a file's ground truth
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def timed(fn, repeat: int, *, warmup: int = 0, reduce=statistics.median, device: torch.device | str | None = None):
    """(last result, reduce(seconds)) of `repeat` calls of fn() after `warmup` uncounted calls.

    reduce: statistics.median (default) or min; device: a CUDA device is synchronised before each
    clock reading (CPU work is synchronous anyway)."""
    dev = torch.device(device) if device is not None else None

    def sync():
        if dev is not None and dev.type == "cuda":
            torch.cuda.synchronize(dev)

    result = None
    for _ in range(warmup):
        result = fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return result, reduce(times)


def exact_rank(queries: torch.Tensor, database: torch.Tensor, metric: str) -> torch.Tensor:
    """f64[nq, n] larger-is-better scores in float64: <q, x>, cosine, or -|q - x|^2 for L2."""
    q, x = torch.as_tensor(queries).double(), torch.as_tensor(database).double()
    if metric == "cos":
        q = q / q.norm(dim=1, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True)
    if metric == "l2":
        return -torch.cdist(q, x) ** 2
    return q @ x.T


def exact_search(train: torch.Tensor, test: torch.Tensor, k: int, metric: str, block: int = 64, progress=None) -> np.ndarray:
    """The PyTorch user's exact search: fp32 matmul + topk over query blocks, on the tensors'
    device. Returns host ids i64[nq, k]. progress: optional wrapper of the block iterator."""
    x, q = train, test
    if metric == "cos":
        x = torch.nn.functional.normalize(x, dim=1)
        q = torch.nn.functional.normalize(q, dim=1)
    half_norms = 0.5 * (x * x).sum(1) if metric == "l2" else None
    blocks = range(0, q.shape[0], block)
    out = []
    for i in progress(blocks) if progress is not None else blocks:
        s = q[i : i + block] @ x.T
        if half_norms is not None:
            s -= half_norms
        out.append(torch.topk(s, k, dim=1).indices)
    return torch.cat(out).cpu().numpy()


def recall(ids, truth) -> float:
    """Mean over queries of |ids[q] ∩ truth[q, :k]| / k (k = ids.shape[-1]; ids -1 never count).

    ids: i64[..., k] (torch or numpy); truth: i64[..., >= k], best first, same leading shape."""
    ids = torch.as_tensor(ids)
    truth = torch.as_tensor(truth)
    k = ids.shape[-1]
    if truth.shape[:-1] != ids.shape[:-1] or truth.shape[-1] < k:
        raise ValueError(f"expected must have shape [{', '.join(map(str, ids.shape[:-1]))}, >={k}], got {tuple(truth.shape)}")
    truth = truth[..., :k].to(device=ids.device, dtype=torch.int64)
    hits = (ids.unsqueeze(-1) == truth.unsqueeze(-2)) & (ids.unsqueeze(-1) >= 0)
    return float(hits.any(-1).sum()) / float(truth.numel())


def recall_with_ties(ids: torch.Tensor, rank: torch.Tensor, k: int, tol: float) -> float:
    """Fraction of returned ids i64[nq, k] whose reference score (rank f64[nq, n], from
    `exact_rank`) is at least the k-th best true score minus tol; -1 never counts."""
    kth = torch.topk(rank, k, dim=1).values[:, -1:]
    got = rank.gather(1, ids.clamp_min(0))
    hit = (got >= kth - tol) & (ids >= 0)
    return float(hit.double().mean())


def exact_scores(train: np.ndarray, test: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """f64[nq, m] larger-is-better scores of rows `ids` (i64[nq, m], -1 allowed: -inf there)."""
    x = train[np.clip(ids, 0, None)].astype(np.float64)  # [nq, m, d]
    q = test.astype(np.float64)[:, None, :]
    if metric == "cos":
        x = x / np.linalg.norm(x, axis=2, keepdims=True)
        q = q / np.linalg.norm(q, axis=2, keepdims=True)
    s = -((x - q) ** 2).sum(2) if metric == "l2" else (x * q).sum(2)
    return np.where(ids >= 0, s, -np.inf)


def recall_at_k(ids: np.ndarray, neighbors: np.ndarray, train: np.ndarray, test: np.ndarray, metric: str) -> float:
    """Mean recall@k allowing ties, against a ground-truth list: a returned id counts when it is
    one of the true k nearest, or scores (in float64) at least as well as the k-th true
    neighbour, up to 1e-6 relative. Raises ValueError when a query got the same id twice."""
    k = ids.shape[1]
    truth = neighbors[:, :k]
    kth = exact_scores(train, test, truth[:, -1:], metric)  # [nq, 1]
    got = exact_scores(train, test, ids, metric)
    tol = 1e-6 * np.maximum(1.0, np.abs(kth))
    hit = (got >= kth - tol) | (ids[:, :, None] == truth[:, None, :]).any(2)
    hit &= ids >= 0
    unique = np.array([len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in ids])
    if not unique.all():
        raise ValueError("a method returned the same id twice for one query")
    return float(hit.sum()) / float(ids.size)
