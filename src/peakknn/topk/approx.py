"""approx_topk: a drop-in for torch.topk built on the two-stage (binned) top-k.

    values, indices = approx_topk(x, k, dim=-1, recall_target=0.95)                # per_bin chosen
    values, indices = approx_topk(x, k, recall_target=0.95, per_bin=4, sorted=False)

x: float[..., n, ...] (fp32/fp16/bf16/fp64, any rank, any dim, any strides).
Semantics (exactly those of `reference.approx_topk_reference`): with L bins from
`plan.topk_bins(n, k, recall_target, per_bin)` (a prime), element j of `dim` goes to bin j mod L, each bin keeps
its best `per_bin` (the earlier element among equal values), and the result is the exact top-k
over the winners. The expected recall against torch.topk is >= recall_target when the true
top-k fall into bins at random (strided bins keep contiguous runs of large values apart, and
a prime L spreads the peaks of periodic rows).
recall_target=1.0 is torch.topk. per_bin=None (the default) takes the per_bin and L (or the
exact torch.topk) that the cost model (`costs`) predicts fastest for the rows, n, k, dtype and
device; `plan.plan_topk` tells which. Values are gathered from x, so gradients flow to the
selected entries as with torch.topk. A row holding NaN is answered by torch.topk itself (NaN
ranks above +inf, as there) on the torch path; the Triton kernels rank NaN as +inf (first when
largest, last when smallest). -0.0 ranks just below +0.0 on the per_bin > 1 torch path.

Paths (binned.py, kernels/bin_winners.py): per_bin == 1 on torch, a strided max over tiles and
a revisit of the winning tiles; per_bin > 1 on torch (fp32/fp16/bf16), a max / min network over
packed integer keys; fp64 with per_bin > 1 runs the reference; CUDA tensors with triton
installed run `bin_winners` / `bin_top`, which keep each lane's best per_bin in registers.
"""

from __future__ import annotations

import math
import threading

import torch

from .. import _backend
from .._checks import check_k, check_per_bin, check_recall_target
from . import binned
from .plan import TopkPlan, plan_topk
from .reference import reference_rows


def approx_topk(
    x: torch.Tensor,
    k: int,
    dim: int = -1,
    largest: bool = True,
    sorted: bool = True,
    *,
    recall_target: float = 0.95,
    per_bin: int | None = None,
    backend: str = "auto",
) -> torch.return_types.topk:
    """Approximate top-k of x along dim: `torch.return_types.topk(values, indices)`, shaped as
    torch.topk's, with the same positional arguments (x, k, dim, largest, sorted).

    sorted=True returns the k best first; sorted=False leaves them in an unspecified order (as
    torch.topk may), which saves a sort. per_bin: the winners each bin keeps (an int >= 1), or
    None to let the cost model choose. Gradients flow to the selected entries of x. backend:
    "auto" (Triton kernels for CUDA tensors when triton is installed), "torch" or "triton"
    (CUDA, or CPU under TRITON_INTERPRET=1); see peakknn._backend.
    """
    if not isinstance(largest, bool) or not isinstance(sorted, bool):
        raise TypeError(f"largest and sorted must be bools, got largest={largest!r}, sorted={sorted!r}")
    values, indices = _approx_topk(x, k, dim, largest, sorted, recall_target, per_bin, backend)
    return torch.return_types.topk((values, indices))


def check_topk_args(x, k, dim, recall_target, per_bin, backend) -> tuple[int, int, float, int | None, bool]:
    """Validated (dim, k, recall_target, per_bin, use_triton) of an approx_topk call."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}], got {dim}")
    k = check_k(k, limit=x.shape[dim])
    recall_target = check_recall_target(recall_target)
    if per_bin is not None:
        per_bin = check_per_bin(per_bin)
    use_triton = _backend.resolve(backend, x.device) == "triton"
    return dim % x.ndim, k, recall_target, per_bin, use_triton


def _approx_topk(x, k, dim, largest, sorted, recall_target, per_bin, backend) -> tuple[torch.Tensor, torch.Tensor]:
    dim, k, recall_target, per_bin, use_triton = check_topk_args(x, k, dim, recall_target, per_bin, backend)
    n = x.shape[dim]
    rows_count = x.numel() // n if n else 0
    plan = choose_plan(rows_count, n, k, recall_target, per_bin, x.dtype, x.device, use_triton, sorted)
    if plan.exact or x.numel() == 0:  # exact, or no rows at all (an empty batch dimension)
        return torch.topk(x, k, dim=dim, largest=largest, sorted=True)
    moved = x.movedim(dim, -1)
    batch = moved.shape[:-1]
    rows = moved.reshape(-1, n)  # a view when x is contiguous along dim; a copy otherwise
    with torch.no_grad():
        indices = binned_topk_indices(rows.detach(), k, plan.bins, plan.per_bin, largest, sorted, use_triton)
    values = rows.gather(1, indices)
    return values.reshape(*batch, k).movedim(-1, dim), indices.reshape(*batch, k).movedim(-1, dim)


TIMED_MIN_ELEMENTS = 1 << 20  # CPU calls of this many elements (rows x n) or more time the model's shortlist
SAMPLE_ELEMENTS = 1 << 22  # elements of the random rows a CPU shortlist is timed on (at least one row)


def choose_plan(rows: int, n: int, k: int, recall_target: float, per_bin: int | None, dtype: torch.dtype, device, use_triton: bool, sorted: bool) -> TopkPlan:
    """The plan of one call: per_bin given, its bins; None, the cost model's choice, or where it
    is timed (`_timed_plan`: on CUDA with Triton, and on a CPU for calls of TIMED_MIN_ELEMENTS
    or more) the fastest plan on random rows of the same n and dtype. A pure function of its
    arguments, kept per shape: torch.compile may call it once while tracing."""
    device = torch.device(device)
    if per_bin is None and recall_target < 1.0 and k < n and rows:
        triton = use_triton and device.type == "cuda"
        if triton or (device.type == "cpu" and rows * n >= TIMED_MIN_ELEMENTS):
            return _timed_plan(rows, n, k, recall_target, dtype, device, sorted, triton)
    return plan_topk(rows, n, k, recall_target, per_bin, dtype=dtype, device=device, sorted=sorted)


_TIMED: dict[tuple, TopkPlan] = {}
_TIMED_LOCK = threading.Lock()


def _timed_plan(rows, n, k, recall_target, dtype, device, sorted, triton) -> TopkPlan:
    """torch.topk against the binned plans, timed on random rows (kept per shape and power of
    two of rows): with Triton every per_bin (the kernel's costs are not modelled), 256 rows; on
    a CPU the cost model's best costs.SHORTLIST, SAMPLE_ELEMENTS elements."""
    from . import costs

    key = (1 << max(0, math.ceil(math.log2(rows))), n, k, recall_target, dtype, str(device), sorted)
    with _TIMED_LOCK:
        if key not in _TIMED:
            if triton:
                plans, sample_rows = costs.every_plan(n, k, recall_target), min(rows, 256)
            else:
                found = costs.candidates(key[0], n, k, recall_target, dtype, device, sorted=sorted)
                binned_plans = [c for c in found if c.bins is not None]
                binned_plans.sort(key=lambda c: c.seconds)
                plans, sample_rows = [found[0], *binned_plans[: costs.SHORTLIST]], min(rows, max(1, SAMPLE_ELEMENTS // n))
            if len(plans) == 1:  # torch.topk alone
                _TIMED[key] = TopkPlan(None, None, plans[0].seconds or None)  # the model's seconds; every_plan's are 0: none
            else:
                g = torch.Generator(device=device).manual_seed(n)
                sample = torch.randn(sample_rows, n, generator=g, device=device).to(dtype)
                run = lambda r, kk, p, b: binned_topk_indices(r, kk, b, p, True, sorted, triton)  # noqa: E731
                best = costs.fastest(run, sample, k, plans, rows=rows, sorted=sorted)
                _TIMED[key] = TopkPlan(best.per_bin, best.bins, best.seconds)
        return _TIMED[key]


def binned_topk_indices(rows: torch.Tensor, k: int, bins: int, per_bin: int, largest: bool, sorted: bool, use_triton: bool) -> torch.Tensor:
    """i64[R, k]: the indices of the two-stage top-k of each row of rows: [R, n] (module doc),
    sorted best first when `sorted`. No gradient (the caller gathers the values)."""
    if use_triton and rows.dtype != torch.float64:
        from ..kernels.bin_winners import bin_top

        win_values, win_index = bin_top(rows, bins, per_bin, largest)
        return win_index.gather(1, torch.topk(win_values, k, dim=1, sorted=sorted).indices)
    if per_bin == 1:
        indices, has_nan = binned.bin_max_indices(rows, k, bins, largest)
    elif binned.has_keys(rows.dtype):
        indices, has_nan = binned.bin_keys_indices(rows, k, bins, per_bin, largest, sorted)
    else:  # fp64 with per_bin > 1: the reference
        indices = reference_rows(rows, k, bins, per_bin, largest)[1]
        has_nan = torch.isnan(rows).any(1)
    if bool(has_nan.any()):  # NaN propagates into its bin: such rows take torch.topk's NaN order
        indices[has_nan] = torch.topk(rows[has_nan], k, dim=1, largest=largest, sorted=True).indices
    return indices
