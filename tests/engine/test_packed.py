"""Packed scan rows (engine.packed): the packed product against torch.mm, PackedRows' re-packing
of changed chunks, and Index(packed_scan=True) against the plain Index over awkward data."""

import dataclasses

import numpy as np
import pytest
import torch

from peakknn import Index, perfmodel
from peakknn.engine import driver, packed
from peakknn.engine.packed import PackedRows

DTYPES = [d for d in (torch.float32, torch.bfloat16) if packed.supported(d)]
pytestmark = pytest.mark.skipif(not DTYPES, reason="this torch cannot pack rows (no oneDNN)")


def small_integers(*shape, seed=0):
    """Entries in -3..3: exact in bf16, and every sum of their products is exact in fp32, so the
    packed and plain products must agree bit for bit whatever order they sum in."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).float()


@pytest.fixture
def always_packed(monkeypatch):
    """Ceilings that send every query block through the packed rows."""
    real = perfmodel.ceilings("cpu")
    forced = dataclasses.replace(real, packed_queries={"fp32": 1 << 20, "bf16": 1 << 20})
    monkeypatch.setattr(driver.perfmodel, "ceilings", lambda device="cpu", **_: forced)
    return forced


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, c, d", [(1, 16, 8), (5, 100, 392), (64, 2048, 136), (3, 7, 24)])
def test_packed_product_is_the_plain_product(dtype, m, c, d):
    rows, q = small_integers(c, d).to(dtype), small_integers(m, d, seed=1).to(dtype)
    got = packed.product(q, packed.pack(rows))
    assert got.dtype == dtype and got.shape == (m, c)
    assert torch.equal(got, torch.mm(q, rows.T))
    x = torch.randn(c, d).to(dtype)
    err = (packed.product(q, packed.pack(x)).float() - (q.float() @ x.float().T)).abs().max()
    assert err <= 2 * torch.finfo(dtype).eps * max(1.0, float((q.float().abs() @ x.float().abs().T).max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_rows_repack_what_changed(dtype):
    rows = small_integers(100, 16).to(dtype)
    p = PackedRows()
    assert p.chunks(rows, 100, 30) and p.nbytes == 90 * 16 * dtype.itemsize  # 3 full chunks; 10 rows left over
    q = small_integers(4, 16, seed=2).to(dtype)

    def agree(n, height):
        chunks = p.chunks(rows, n, height)
        assert len(chunks) == n // height
        for c, w in enumerate(chunks):
            assert torch.equal(packed.product(q, w), torch.mm(q, rows[c * height : (c + 1) * height].T)), (c, height)

    agree(100, 30)
    rows[31] = 3  # chunk 1
    rows[95] = -3  # beyond the full chunks
    p.changed(torch.tensor([31, 95]))
    agree(100, 30)
    for _ in range(packed.SWITCH_AFTER - 1):  # another height: plain products, the packs stay
        assert p.chunks(rows, 100, 25) is None
        agree(100, 30)  # (which also breaks the run of requests at 25)
    for _ in range(packed.SWITCH_AFTER - 1):
        assert p.chunks(rows, 100, 25) is None
    agree(100, 25)  # SWITCH_AFTER in a row: everything packed anew at that height
    rows[:] = small_integers(100, 16, seed=3).to(dtype)
    p.changed(None)
    agree(100, 25)
    agree(60, 25)  # fewer rows: the chunks beyond are dropped
    agree(100, 25)  # and packed again when the rows come back


def test_packing_that_fails_is_given_up(monkeypatch):
    p = PackedRows()

    def refuse(rows):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(packed, "pack", refuse)
    assert p.chunks(torch.zeros(40, 8), 40, 10) is None and "no oneDNN" in p.failed
    monkeypatch.undo()
    assert p.chunks(torch.zeros(40, 8), 40, 10) is None  # for good


def test_turning_packed_scan_off_frees_the_packs(always_packed):
    index = Index(16, packed_scan=True)
    index.add(small_integers(5000, 16))
    index.search(small_integers(3, 16, seed=1), 5)
    assert index._packed.nbytes > 0
    index.packed_scan = False
    assert index._packed.nbytes == 0 and index.packed_scan is False
    with pytest.raises(TypeError, match="packed_scan"):
        index.packed_scan = "yes"


def _searches(a, b, queries, k):
    """The same scores; the same ids but for the order of ties and which of the rows tied at the
    k-th score made it in."""
    for q in queries:
        ra, rb = a.search(q, k), b.search(q, k)
        sa, sb = np.asarray(ra.scores), np.asarray(rb.scores)
        assert np.array_equal(sa, sb)
        for ids_a, ids_b, s in zip(np.asarray(ra.ids), np.asarray(rb.ids), sa):
            inside = s != s[-1]
            assert set(ids_a[inside]) == set(ids_b[inside])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("n, d", [(3000, 24), (10_007, 40), (700, 16)])
def test_packed_index_finds_what_the_plain_one_finds(always_packed, precision, metric, n, d):
    """Integer data with a large offset (the scan frame shifts it), a count that leaves a partial
    last chunk, then removes and upserts between searches: the packed chunks must follow."""
    if scan := {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]:
        if scan not in DTYPES:
            pytest.skip(f"this torch cannot pack {precision} rows")
    x = small_integers(n, d) + 40.0 * (metric != "cos")
    queries = [small_integers(m, d, seed=10 + m) + 40.0 * (metric != "cos") for m in (1, 7, 33)]
    a = Index(d, metric=metric, precision=precision, recall_target=0.9)
    b = Index(d, metric=metric, precision=precision, recall_target=0.9, packed_scan=True)
    for index in (a, b):
        index.add(x)
    _searches(a, b, queries, 10)
    assert b.memory_bytes > a.memory_bytes  # the packed copy is counted
    gone = np.arange(0, n, 3)
    for index in (a, b):
        index.remove(gone)
        index.upsert(small_integers(50, d, seed=5) + 1.0, ids=np.arange(1, 150, 3))
        index.add(small_integers(n // 2, d, seed=6))  # grows the capacity
    _searches(a, b, queries, 10)
    assert not np.isin(np.asarray(b.search(queries[2], 10).ids), gone).any()


def test_packed_index_recall_on_gaussian_data(always_packed):
    torch.manual_seed(0)
    x, q = torch.randn(20_000, 64), torch.randn(200, 64)
    exact = torch.topk(q @ x.T, 10).indices.numpy()
    for precision in ("bf16", "fp32"):
        b = Index(64, precision=precision, packed_scan=True, recall_target=0.95)
        b.add(x)
        got = np.asarray(b.search(q, 10).ids)
        recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)])
        assert recall >= 0.93, (precision, recall)


def test_packed_scan_is_a_bool_and_off_by_default():
    assert Index(8).packed_scan is False
    with pytest.raises(TypeError, match="packed_scan"):
        Index(8, packed_scan=1)


def test_the_measured_packed_ceiling_is_a_probed_count():
    c = perfmodel.ceilings("cpu")
    assert set(c.packed_queries) == set(perfmodel.DTYPES)
    assert all(m in (0, *perfmodel.machine.PACKED_QUERIES) for m in c.packed_queries.values())
