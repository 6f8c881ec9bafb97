"""The flat scan through the fused Triton kernel (`peakknn.kernels.scan_winners`).

The kernel computes the scores and keeps the exact best row of every bin, so the candidates are
the best `rerank` bin winners themselves (cells of one row), re-scored like the torch scan's.
Nothing here imports triton until a kernel scan runs.
"""

from __future__ import annotations

import torch

from .._checks import ceil_div
from .plan import ScanPlan
from .table import Table

KERNEL_WAVES = 4  # the kernel's grid aims at this many programs per streaming multiprocessor


def kernel_splits(nq: int, n: int, bins: int, config, device: torch.device) -> int:
    """Database slices for the kernel grid: enough programs of launch shape `config`
    (`kernels.scan_winners.ScanConfig`) to fill the GPU, >= 16 tiles each."""
    units = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    programs = ceil_div(nq, config.block_m) * (bins // config.block_n)
    wanted = ceil_div(KERNEL_WAVES * units, programs)
    return int(max(1, min(wanted, n // (16 * bins))))


def kernel_operands(table: Table) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """What the fused kernel reads, built once per search: rows [n, d] (a column slice of the
    scan rows), rank corrections f32[n] (None when all are zero), and the table's optional mask
    bool[n]."""
    n = table.n
    bias = table.bias(0, n).contiguous()
    if not bool(bias.any()):  # ip / cos with no row deleted: the kernel skips the addition
        bias = None
    return table.scan_rows(0, n)[:, : table.dim], bias, getattr(table, "mask", None)


def kernel_cells(
    operands: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], q_scan: torch.Tensor, plan: ScanPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate slots i64[nq, c] and validity bool[nq, c] from the fused Triton scan.

    operands: `kernel_operands(table)`; q_scan: [nq, d] queries in the scan dtype. A mask hides
    rows inside the kernel. c = min(rerank, winners); fewer than k winners never happens
    because bins >= k whenever plan_kernel returns a plan for n >= 4 * bins.
    """
    from ..kernels import scan_winners as kernel

    x, bias, mask = operands
    config = kernel.scan_config(q_scan.shape[0], x.shape[1], plan.bins)
    splits = kernel_splits(q_scan.shape[0], x.shape[0], plan.bins, config, q_scan.device)
    best, rows = kernel.scan_winners(q_scan, x, bias, mask, plan.bins, splits, config)
    cell_best, pos = torch.topk(best, min(plan.rerank, best.shape[1]), dim=1)
    slots = rows.gather(1, pos).to(torch.int64)
    return slots.clamp_min(0), cell_best > float("-inf")
