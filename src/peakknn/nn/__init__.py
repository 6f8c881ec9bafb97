"""peakknn.nn: the approximate top-k inside models (top-k activations, top-k sparse autoencoders).

    from peakknn.nn import TopK
    block = nn.Sequential(nn.Linear(768, 3072), TopK(128, activation=nn.ReLU()), nn.Linear(3072, 768))
    h = peakknn.nn.functional.topk_mask(x, k=32)                       # f[..., n]: k kept per row
    values, indices = peakknn.nn.functional.topk_sparse(x, k=32)        # f[..., k], i64[..., k]

`TopK` keeps the (approximate) top k of each row along `dim` and zeroes the rest, optionally
applying an activation to the kept values; gradients flow only to the kept entries. The k are
`peakknn.approx_topk`'s (expected recall >= recall_target against torch.topk; recall_target=1.0
is torch.topk itself), chosen by a kernel registered as the custom op `peakknn::topk_indices`
with a shape-only (fake) implementation, so models using it run under torch.compile, and under
autocast (bf16 / fp16 rows are ranked in their own dtype).

Importing peakknn does not import this package; `peakknn.nn` does, on first use.
"""

from . import functional
from .modules import TopK

__all__ = ["TopK", "functional"]
