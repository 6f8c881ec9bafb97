"""What the engine scans (peakknn.engine.table): scan rows [x, bias, 0...] and queries [q, 1, 0...]
whose product is the rank score, and the dense table of `search`."""

import math

import numpy as np
import pytest
import torch

from peakknn.engine.table import SCAN_ALIGN, DenseTable, normalize_rows, prepare_rows, rank_bias, scan_queries, scan_row_width, scan_side


@pytest.mark.parametrize("d", [1, 15, 16, 33, 100])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_scan_rows_times_scan_queries_is_the_rank_score(d, metric, offset):
    """Scan rows are [s (x - m), bias] for the data's mean m and a power-of-two scale s near
    1 / rms(x - m); with queries scanned as s (q - m) for L2, s q otherwise, the product is s^2
    times the rank score up to a constant per query (neither changes the ranking)."""
    g = torch.Generator().manual_seed(d)
    x, q = 3.0 * torch.randn(50, d, generator=g) + offset, 3.0 * torch.randn(7, d, generator=g) + offset
    width = scan_row_width(d)
    assert width % SCAN_ALIGN == 0 and d + 1 <= width < d + 1 + SCAN_ALIGN  # room for the bias, padded
    table = DenseTable(x, metric, torch.float32)
    m = x.double().mean(0)
    torch.testing.assert_close(table.frame.centre, m.float())
    s = table.frame.scale
    rms = float(((x.double() - m) ** 2).sum(1).mean().sqrt())
    assert math.frexp(s)[0] == 0.5 and 0.5 <= s * rms <= 2**0.5 + 1e-9  # a power of two near 1 / rms
    rows = table.scan_rows(0, 50).clone()
    qs = scan_queries(scan_side(q, table.frame, metric), torch.float32)
    assert rows.shape == (50, width) and qs.shape == (7, width)
    xc = (x.double() - m) * s
    half_norms = 0.5 * (xc**2).sum(1)
    want_bias = -half_norms if metric == "l2" else torch.zeros(50, dtype=torch.float64)
    torch.testing.assert_close(rows[:, :d].double(), xc, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rows[:, d].double(), want_bias, rtol=1e-5, atol=1e-3)
    assert bool((rows[:, d + 1 :] == 0).all()) and bool((qs[:, d] == 1).all()) and bool((qs[:, d + 1 :] == 0).all())
    true_rank = q.double() @ x.double().T - (0.5 * (x.double() ** 2).sum(1) if metric == "l2" else 0)
    got = (qs @ rows.T).double() / s**2
    shift = (got - true_rank)[:, :1]  # one constant per query
    torch.testing.assert_close(got - shift, true_rank, rtol=1e-5, atol=1e-3 * (1 + offset))
    torch.testing.assert_close(table.bias(10, 20).double(), want_bias[10:20], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(rank_bias(x, metric).double(), -(0.5 * (x.double() ** 2).sum(1)) if metric == "l2" else torch.zeros(50, dtype=torch.float64), rtol=1e-5, atol=1e-2)
    # a later chunk reuses the buffer and holds the rows it names
    torch.testing.assert_close(table.scan_rows(5, 9), rows[5:9])
    slots = torch.tensor([[3, 0], [49, 3]])
    assert torch.equal(table.exact_rows(slots), x[slots]) and bool(table.alive(slots).all())
    assert scan_queries(q, torch.bfloat16).dtype == torch.bfloat16


def test_normalize_rows_gives_unit_rows_and_rejects_zero_rows():
    x = torch.randn(6, 5) * torch.arange(1, 7).unsqueeze(1)
    unit = normalize_rows(x, "vectors")
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(unit * x.norm(dim=1, keepdim=True), x)
    x[4] = 0.0
    with pytest.raises(ValueError, match="vectors has a zero vector \\(row 4\\)"):
        normalize_rows(x, "vectors")


def test_prepare_rows_gives_f32_rows_on_the_device():
    x = np.arange(1, 7, dtype=np.float64).reshape(2, 3)
    got = prepare_rows(x, "vectors", 3, "ip", torch.device("cpu"))
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(x).float())
    one = prepare_rows(torch.tensor([3.0, 0.0, 4.0]).half(), "queries", 3, "cos", torch.device("cpu"))
    assert one.shape == (1, 3) and one.dtype == torch.float32
    torch.testing.assert_close(one, torch.tensor([[0.6, 0.0, 0.8]]))  # unit rows for cosine
    with pytest.raises(ValueError, match="queries must have dim 3"):
        prepare_rows(torch.ones(2, 4), "queries", 3, "ip", torch.device("cpu"))
    with pytest.raises(ValueError, match="vectors has a zero vector"):
        prepare_rows(torch.zeros(1, 3), "vectors", 3, "cos", torch.device("cpu"))
    listed = prepare_rows([[1, 2.0, 3.0]], "vectors", 3, "ip", torch.device("cpu"))  # nested lists of numbers
    assert listed.dtype == torch.float32 and listed.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(TypeError, match="vectors"):
        prepare_rows([[1.0, "2", 3.0]], "vectors", 3, "ip", torch.device("cpu"))
