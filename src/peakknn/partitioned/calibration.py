"""Recall curves of a PartitionedIndex: which probe reaches which recall on the index's own data.

`measure(index, x, row_ids, ks)`: QUERIES of the given rows (seeded) search the index as queries
with each probe of `probe_ladder` (adaptive, as searches run by default). A query's own row is
left out of its results and of its exact top-k, so the queries behave like new points near the
data rather than copies of stored rows. The curve for each k holds the mean recall@k per probe.

`probe_for(curve, target)`: the probe for a recall target, read off the curve by linear
interpolation between measured probes (recall rises concavely with the probe, so the chord lies
below the curve and the reading errs towards more probes), with two standard errors of the measurement
added to the target (stored rows as queries can find their neighbours more easily than new
queries do: on maximum inner product data with power-law norms, target 0.90 measured 0.890 with
one standard error).

The curve is measured by the first search with a recall target (or `calibrate()`), and again
once the index has grown CALIBRATE_GROWTH-fold since: more rows make neighbours closer, which
raises recall at a given probe, so an old curve errs towards more probes, never fewer.

Stored rows stand in for queries only where queries are distributed like the rows. Where they
are not (questions against passages; queries near other centres), the rows' curve can promise
too much (measured: 0.65-0.81 at target 0.95). So searches with a recall target feed a
`QuerySample` (a reservoir: a uniform sample of every query seen so far), and the curves are
measured on it once it is full (QUERIES queries) and again whenever the searches have sent
CALIBRATE_GROWTH times as many queries as at the last such measurement.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import torch

from ..evaluation import exact_search

QUERIES = 500  # sample queries per calibration
MIN_ROWS = 3  # a curve needs a query, its own row and a neighbour
KS = (10, 100)  # the k a curve is measured for (a search uses the curve of the nearest k >= its own)
CALIBRATE_GROWTH = 4  # re-measure once the index holds this many times the rows it was measured on
STOP_RECALL = 0.999  # the ladder stops once this recall is reached ...
FLAT_RISE = 0.001  # ... or once two more probes added less than this
MARGIN_ERRORS = 2  # the probe is read for target + this many standard errors of the curve


@dataclasses.dataclass(frozen=True)
class RecallCurve:
    """k; probes i64[m] ascending; recall f64[m] (mean recall@k at each probe); queries: how many
    queries measured it; rows: the index's size then."""

    k: int
    probes: np.ndarray
    recall: np.ndarray
    queries: int
    rows: int

    def as_array(self) -> torch.Tensor:
        """f64[m, 5] rows (k, probe, recall, queries, rows), for saving."""
        m = self.probes.size
        return torch.tensor(
            np.stack([np.full(m, self.k), self.probes, self.recall, np.full(m, self.queries), np.full(m, self.rows)], axis=1),
            dtype=torch.float64,
        )


def curves_from_array(a: torch.Tensor, where: str) -> dict[int, RecallCurve]:
    """Inverse of `RecallCurve.as_array` over the concatenated curves; ValueError when malformed."""
    if a.dtype != torch.float64 or a.ndim != 2 or a.shape[1] != 5 or not bool(torch.isfinite(a).all()):
        raise ValueError(f"{where}: array 'recall_curves' must be finite f64[m, 5]")
    out = {}
    v = a.numpy()
    for k in np.unique(v[:, 0]):
        rows = v[v[:, 0] == k]
        probes, recall = rows[:, 1].astype(np.int64), rows[:, 2]
        if k < 1 or (probes < 1).any() or (np.diff(probes) <= 0).any() or ((recall < 0) | (recall > 1)).any():
            raise ValueError(f"{where}: recall_curves must have k >= 1, rising probes >= 1 and recall in [0, 1]")
        out[int(k)] = RecallCurve(int(k), probes, recall, int(rows[0, 3]), int(rows[0, 4]))
    return out


def probe_ladder(partitions: int) -> list[int]:
    """Probes measured: 1, 2, 3, 4, 6, 8, 12, 16, ... (about sqrt(2) apart) up to `partitions`."""
    out, p = [], 1
    while p < partitions:
        out.append(p)
        p = p + 1 if p < 4 else (p * 3 // 2 if p & (p - 1) == 0 else p * 4 // 3)
    return out + [partitions]


def measure(index, x: torch.Tensor, row_ids: np.ndarray, ks=KS, queries: int = QUERIES, seed: int = 0,
            sample: torch.Tensor | None = None) -> dict[int, RecallCurve]:
    """Recall curves of `index` for each k in ks (module docstring).

    x: f32[n, dim] the rows stored in the index and row_ids i64[n] their ids (the exact top-k is
    computed over them). sample: f32[m, dim] queries to measure with (the caller's own, as its
    searches will ask; nothing is left out of their results), else `queries` of the rows (seeded).
    Probes are climbed until every curve reaches STOP_RECALL.
    """
    n = x.shape[0]
    if n < MIN_ROWS:
        return {}
    ks = [k for k in ks if k < n - 1] or [max(1, n - 2)]
    kmax = max(ks)
    if sample is not None:
        q = sample.to(x.device)
        truth_ids = row_ids[exact_search(x, q, kmax + 1, index.metric)]
        own = np.full(q.shape[0], -1, dtype=np.int64)  # no stored id is -1: nothing is left out
        pick = np.arange(q.shape[0])
    else:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, size=min(queries, n), replace=False))
        q = x[torch.from_numpy(pick).to(x.device)]
        truth = exact_search(x, q, kmax + 1, index.metric)  # row numbers, the query's own row among them
        truth_ids = row_ids[truth]
        own = row_ids[pick]
    curves = {k: ([], []) for k in ks}
    for probe in probe_ladder(index.settings.partitions):
        for k in ks:  # one search per k: the re-ranking depth follows k
            got = index._search(q, k + 1, probe=probe).ids.numpy()
            curves[k][0].append(probe)
            curves[k][1].append(float(np.mean([_recall_without(got[i], truth_ids[i], own[i], k) for i in range(pick.size)])))
        if all(_flat(curves[k][1]) for k in ks):
            break
    return {k: RecallCurve(k, np.array(p, dtype=np.int64), np.array(r), int(pick.size), n) for k, (p, r) in curves.items()}


def _flat(recall: list[float]) -> bool:
    """The curve has reached STOP_RECALL, or rose by less than FLAT_RISE over its last two probes."""
    return recall[-1] >= STOP_RECALL or (len(recall) >= 3 and recall[-1] - recall[-3] < FLAT_RISE)


def _recall_without(got: np.ndarray, truth: np.ndarray, own: int, k: int) -> float:
    """|got ∩ truth| / k over the best k of each once the query's own id is dropped."""
    g = got[got != own][:k]
    t = truth[truth != own][:k]
    return len(set(g.tolist()) & set(t.tolist())) / k


def curve_for(curves: dict[int, RecallCurve], k: int) -> RecallCurve:
    """The curve of the smallest calibrated k' >= k (recall@k is rarely below recall@k'), else the largest."""
    above = [c for c in curves if c >= k]
    return curves[min(above)] if above else curves[max(curves)]


def probe_for(curve: RecallCurve, target: float) -> int:
    """The probe whose recall on the curve reaches target plus MARGIN_ERRORS standard errors of
    the curve (module docstring); the largest measured probe when none does."""
    r, p = curve.recall, curve.probes
    need = target + MARGIN_ERRORS * math.sqrt(max(target * (1 - target), 1e-6) / (curve.queries * curve.k))
    above = np.flatnonzero(r >= need)
    if above.size == 0:
        return int(p[-1])
    i = int(above[0])
    if i == 0:
        return int(p[0])
    lo, hi = r[i - 1], r[i]
    frac = (need - lo) / (hi - lo) if hi > lo else 1.0
    return int(math.ceil(p[i - 1] + frac * (p[i] - p[i - 1])))


class QuerySample:
    """A uniform sample of up to `size` of the queries f32[dim] passed to `add` (reservoir
    sampling, Vitter's algorithm R, seeded), and when it is due to be measured on: once `size`
    queries have been seen, then each time CALIBRATE_GROWTH times as many as at the last `take`.
    Thread-safe (concurrent searches add to it)."""

    def __init__(self, dim: int, size: int = QUERIES, seed: int = 0):
        self.size = size
        self.seen = 0  # queries added so far
        self.next_due = size  # `due` once seen reaches this
        self._rows = torch.empty(size, dim, dtype=torch.float32)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def add(self, q: torch.Tensor) -> None:
        """Offer the queries f32[m, dim] (any device; kept on the CPU)."""
        m = q.shape[0]
        if m == 0:
            return
        with self._lock:
            t = self.seen + np.arange(m)  # each query's position in the stream
            slot = np.where(t < self.size, t, self._rng.integers(0, t + 1))  # algorithm R: keep with chance size / (t + 1)
            keep = np.flatnonzero(slot < self.size)
            if keep.size:
                # a later query wins a slot that an earlier one of the same call also drew, as in the serial algorithm
                last = {int(s): int(i) for s, i in zip(slot[keep], keep)}
                slots = torch.tensor(list(last.keys()), dtype=torch.int64)
                self._rows[slots] = q[torch.tensor(list(last.values()), dtype=torch.int64)].detach().to("cpu", torch.float32)
            self.seen += m

    def due(self) -> bool:
        return self.seen >= self.next_due

    def take(self) -> torch.Tensor:
        """f32[min(seen, size), dim]: a copy of the sample; the next `due` is CALIBRATE_GROWTH times further."""
        with self._lock:
            self.next_due = max(self.size, self.seen * CALIBRATE_GROWTH)
            return self._rows[: min(self.seen, self.size)].clone()
