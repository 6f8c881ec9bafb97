"""Right answers on awkward data, for `search` and `Index`, every metric and precision: a large
common offset, all-positive integer descriptors (SIFT-like), one to four dimensions, tight
clusters, tiny and huge norms. Exact means exact (ties allowed); approximate searches meet their
recall target within MARGIN."""

import zlib

import numpy as np
import pytest
import torch

import peakknn
from peakknn.evaluation import exact_rank, recall_with_ties

K = 10
MARGIN = 0.03  # measured: the mean over PLACEMENTS bin placements of the recall over NQ queries
PLACEMENTS = 10  # the target is an expectation over bin placement, and with a large common offset
# every query has nearly the same neighbours: one placement is one sample, so average several
N, NQ = 4000, 300


def make(kind: str, d: int = 32):
    g = torch.Generator().manual_seed(zlib.crc32(kind.encode()))
    if kind.startswith("offset"):
        off = float(kind.split("-")[1])
        return torch.randn(N, d, generator=g) + off, torch.randn(NQ, d, generator=g) + off
    if kind == "sift":  # non-negative integers with many zeros and a large common part
        x = torch.clamp(torch.randn(N + NQ, d, generator=g) * 40 + 20, min=0).round()
        return x[:N], x[N:]
    if kind.startswith("dims"):
        d = int(kind.split("-")[1])
        return torch.randn(N, d, generator=g), torch.randn(NQ, d, generator=g)
    if kind == "clustered":  # unit vectors in 40 tight clusters
        centres = torch.nn.functional.normalize(torch.randn(40, d, generator=g), dim=1)
        pick = torch.randint(40, (N + NQ,), generator=g)
        x = torch.nn.functional.normalize(centres[pick] + 0.05 * torch.randn(N + NQ, d, generator=g), dim=1)
        return x[:N], x[N:]
    scale = {"tiny": 1e-20, "huge": 1e17}[kind]
    return torch.randn(N, d, generator=g) * scale, torch.randn(NQ, d, generator=g) * scale


KINDS = ["offset-10", "offset-1000", "sift", "dims-1", "dims-2", "dims-3", "dims-4", "clustered", "tiny", "huge"]


def measured(results, q, x, metric):
    """Recall of each result (SearchResult over queries q against x), ties allowed, after
    checking that every score is the exact score of its id."""
    rank = exact_rank(q, x, metric)
    tol = 1e-5 * float(rank.abs().max()) + 1e-30  # fp32 re-scoring of float64 ties
    recalls = []
    for res in results:
        assert (res.ids >= 0).all()
        reported = -res.scores.double() if metric == "l2" else res.scores.double()
        torch.testing.assert_close(reported, rank.gather(1, res.ids), rtol=1e-4, atol=tol)
        recalls.append(recall_with_ties(res.ids, rank, K, tol))
    return recalls


def check(results, q, x, metric, target):
    recalls = measured(results, q, x, metric)
    if target == 1.0:
        assert recalls == [1.0] * len(recalls), f"exact search missed: recalls {recalls}"
    else:
        mean = float(np.mean(recalls))
        assert mean >= target - MARGIN, f"mean recall {mean:.4f} < target {target} - {MARGIN} ({recalls})"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision,target", [("fp32", 1.0), ("fp32", 0.95), ("bf16", 0.95), ("bf16", 1.0)])
def test_search_on_awkward_data(kind, metric, precision, target):
    x, q = make(kind)
    g = torch.Generator().manual_seed(1)
    results = []
    for p in range(1 if target == 1.0 else PLACEMENTS):  # a random storage order is a random bin placement
        perm = torch.randperm(N, generator=g) if p else torch.arange(N)
        res = peakknn.search(q, x[perm], K, metric=metric, precision=precision, recall_target=target)
        results.append(peakknn.SearchResult(scores=res.scores, ids=perm[res.ids]))
    check(results, q, x, metric, target)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision,target", [("fp32", 1.0), ("bf16", 0.95), ("bf16", 1.0)])
def test_index_on_awkward_data(kind, metric, precision, target):
    x, q = make(kind)
    results = []
    for seed in range(1 if target == 1.0 else PLACEMENTS):  # the seed places rows in slots, hence bins
        index = peakknn.Index(x.shape[1], metric=metric, precision=precision, seed=seed)
        for chunk in x.split(1000):  # in batches, so the frame is set by the first and checked at growth
            index.add(chunk)
        results.append(index.search(q, K, recall_target=target))
    check(results, q, x, metric, target)


def test_index_recentres_when_the_data_moves():
    """Rows that arrive far from the first batch's mean move the frame at the next growth, and
    the search stays exact."""
    g = torch.Generator().manual_seed(5)
    first = torch.randn(1000, 16, generator=g)
    later = torch.randn(5000, 16, generator=g) + 500.0
    index = peakknn.Index(16, metric="l2", precision="bf16")
    index.add(first)
    centre_before = index._frame.centre.clone()
    index.add(later)
    x = torch.cat([first, later])
    assert float((index._frame.centre - centre_before).norm()) > 100  # followed the data
    torch.testing.assert_close(index._frame.centre.double(), x.double().mean(0), rtol=1e-4, atol=1e-2)
    q = torch.randn(100, 16, generator=g) + 500.0
    check([index.search(q, K, recall_target=1.0)], q, x, "l2", 1.0)
    check([index.search(q, K, recall_target=0.95)], q, x, "l2", 0.95)


def test_frame_survives_save_and_load(tmp_path):
    x, q = make("offset-1000")
    index = peakknn.Index(32, metric="ip")
    index.add(x)
    index.save(tmp_path / "i")
    loaded = peakknn.Index.load(tmp_path / "i")
    assert torch.equal(loaded._frame.centre, index._frame.centre) and loaded._frame.scale == index._frame.scale
    a, b = index.search(q, K), loaded.search(q, K)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    np.testing.assert_array_equal(loaded.get([0, 5]).numpy(), x[[0, 5]].numpy())  # vectors as given


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_frame_too_fine_for_later_rows_is_taken_anew(metric):
    """First rows that are (nearly) one point give a frame far too fine for what follows; rows
    outside it make the index take its frame anew at once, growth or not."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 64, generator=g)
    q = torch.randn(20, 64, generator=g)
    for first in (x[:1] * 1e-12, x[:100] * 1e-20):
        index = peakknn.Index(64, metric=metric, precision="fp32")
        index.reserve(1000)  # no growth below: only the range check can move the frame
        index.add(first)
        index.add(x[len(first):])
        rows = torch.cat([first, x[len(first):]])
        check([index.search(q, 3, recall_target=1.0)], q, rows, metric, 1.0)
        live = torch.from_numpy(index._slots.live_slots())
        assert torch.isfinite(index._scan_rows[live].float()).all()  # live rows: coordinates and bias


def test_one_row_has_no_spread_and_a_unit_scale():
    from peakknn.engine.table import ScanFrame

    frame = ScanFrame.of(torch.full((1, 8), 3.0))
    assert frame.scale == 1.0 and torch.equal(frame.centre, torch.full((8,), 3.0))
    frame = ScanFrame.of(torch.full((5, 8), 3.0))  # identical rows: no spread, not rounding noise
    assert frame.scale == 1.0


@pytest.mark.parametrize("size", [1e-25, 1e-12, 1.0, 1e5, 2e16, 5e16])
def test_the_frame_scale_is_the_power_of_two_of_the_float64_spread(size):
    """Huge rows (float32 squares overflow) and tiny ones (they underflow) get the scale a float64
    pass gives: the nearest power of two to 1 / rms, so later rows of that size stay in frame and
    writes do not re-centre the whole table."""
    import math

    from peakknn.engine.table import ScanFrame, power_of_two_scale

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40_000, 128, generator=g) * size + 3 * size
    x64 = x.double()
    want = power_of_two_scale(float(((x64 - x64.mean(0)) ** 2).sum()) / len(x))
    frame = ScanFrame.of(x)
    assert frame.scale == want and math.isfinite(frame.scale)
    assert frame.holds(torch.randn(10, 128, generator=g) * size)
    index = peakknn.Index(128)
    index.add(x[:20_000])
    before = index._frame
    index.upsert(x[20_000:20_010], ids=range(10))
    assert index._frame is before  # in frame: no re-centring
