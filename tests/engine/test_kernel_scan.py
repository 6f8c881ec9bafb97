"""The flat scan through the fused kernel (peakknn.engine.kernel_scan): what the kernel reads, its
grid, and candidates = the best bin winners of the kernel's specification.

Runs in Triton's interpreter without a GPU (conftest sets TRITON_INTERPRET=1); skipped when
triton is not installed."""

import pytest
import torch

pytest.importorskip("triton")

from peakknn.engine.kernel_scan import kernel_cells, kernel_operands, kernel_splits  # noqa: E402
from peakknn.engine.plan import ScanPlan  # noqa: E402
from peakknn.engine.table import DenseTable, scan_side  # noqa: E402
from peakknn.kernels.scan_winners import scan_config, scan_winners_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_kernel_operands_are_the_scan_rows_and_rank_corrections():
    x = torch.randn(300, 20, device=DEVICE)
    table = DenseTable(x, "ip", torch.bfloat16)
    rows, bias, mask = kernel_operands(table)
    assert bias is None and mask is None  # all-zero corrections are skipped
    assert rows.shape == (300, 20) and rows.dtype == torch.bfloat16 and rows.stride(1) == 1
    torch.testing.assert_close(rows.float(), table.frame.rows(x).bfloat16().float(), rtol=0, atol=0)  # rows relative to the mean
    table = DenseTable(x, "l2", torch.float32)
    _, bias, _ = kernel_operands(table)
    torch.testing.assert_close(bias, -0.5 * (table.frame.rows(x) ** 2).sum(1))


def test_kernel_splits_keep_slices_of_at_least_16_tiles():
    for nq, n, bins in ((1, 10**6, 128), (5000, 10**6, 128), (3, 1000, 64), (10, 10**7, 16)):
        config = scan_config(nq, 64, bins)
        splits = kernel_splits(nq, n, bins, config, DEVICE)
        assert splits >= 1
        assert splits == 1 or n // splits >= 16 * bins


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("rerank", [5, 64])
def test_kernel_cells_are_the_best_bin_winners(metric, rerank):
    g = torch.Generator().manual_seed(rerank)
    x, q = torch.randn(3000, 16, generator=g).to(DEVICE), torch.randn(6, 16, generator=g).to(DEVICE)
    table = DenseTable(x, metric, torch.float32)
    plan = ScanPlan(bins=48, groups=1, rerank=rerank)
    qs = scan_side(q, table.frame, metric)  # queries as the scan sees them
    slots, valid = kernel_cells(kernel_operands(table), qs, plan)
    assert slots.shape == valid.shape == (6, rerank) and slots.dtype == torch.int64 and bool(valid.all())
    splits = kernel_splits(6, 3000, 48, scan_config(6, 16, 48), q.device)
    best, rows = scan_winners_reference(qs, table.frame.rows(x), table.bias(0, 3000), None, 48, splits)
    want = rows.gather(1, torch.topk(best, rerank, dim=1).indices).long()
    assert [sorted(r) for r in slots.tolist()] == [sorted(r) for r in want.tolist()]
