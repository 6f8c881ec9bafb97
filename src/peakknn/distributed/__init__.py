"""peakknn over torch.distributed: a sharded flat index and a block-quantized all-reduce.

Not imported by `import peakknn`; import it explicitly after `torch.distributed.init_process_group`
(gloo on CPU; pass `timeout=` there: every collective here inherits it):

    import peakknn.distributed as pd
    index = pd.ShardedIndex(384, metric="cos")          # on every rank (SPMD, like DDP)
    ids = index.add(my_rows)                            # each rank its own rows (any count)
    result = index.search(my_queries, k=10)             # each rank gets its own queries' results
    pd.all_reduce_quantized(grad, op="avg")             # int8 blocks, fp32 scales (EQuARX)

Every method of ShardedIndex is collective: all ranks call it, in the same order.
"""

from .quantized import all_reduce_quantized, quantized_error_bound
from .sharded import ShardedIndex

__all__ = ["ShardedIndex", "all_reduce_quantized", "quantized_error_bound"]
