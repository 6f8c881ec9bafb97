"""The custom op behind peakknn.nn: `peakknn::topk_indices`, the indices of approx_topk's k best
of each row, registered with torch.library (as torchao registers its Triton kernels) so that
torch.compile treats it as one opaque call with a shape-only (fake) implementation.

    topk_indices(rows: f[R, n], k, bins, per_bin) -> i64[R, k]     (unsorted; bins = 0: exact)

The indices carry no gradient; callers gather the values (which do).
"""

from __future__ import annotations

import torch

from .. import _backend
from ..topk.approx import binned_topk_indices


def _topk_indices(rows: torch.Tensor, k: int, bins: int, per_bin: int) -> torch.Tensor:
    if bins == 0 or rows.shape[0] == 0:
        return torch.topk(rows, k, dim=1, sorted=False).indices
    use_triton = _backend.resolve("auto", rows.device) == "triton"
    with torch.no_grad():
        return binned_topk_indices(rows, k, bins, per_bin, True, False, use_triton)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4

    @torch.library.custom_op("peakknn::topk_indices", mutates_args=())
    def topk_indices(rows: torch.Tensor, k: int, bins: int, per_bin: int) -> torch.Tensor:
        return _topk_indices(rows.contiguous(), k, bins, per_bin)

    @topk_indices.register_fake
    def _(rows: torch.Tensor, k: int, bins: int, per_bin: int) -> torch.Tensor:
        return rows.new_empty((rows.shape[0], k), dtype=torch.int64)

else:  # older torch: a plain function (torch.compile traces into it or breaks the graph)
    topk_indices = _topk_indices
