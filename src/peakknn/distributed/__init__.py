"""peakknn over torch.distributed: a sharded index (flat or partitioned shards) and a
block-quantized all-reduce.

Not imported by `import peakknn`; import it explicitly after `torch.distributed.init_process_group`
(gloo on CPU; pass `timeout=` there: every collective here inherits it):

    import peakknn.distributed as pd
    index = pd.ShardedIndex(384, metric="cos")          # on every rank (SPMD, like DDP)
    index = pd.ShardedIndex(384, metric="cos", kind="partitioned", settings=PartitionSettings(...))
    ids = index.add(my_rows)                            # each rank its own rows (any count)
    result = index.search(my_queries, k=10, recall_target=0.95)   # each rank its own queries' results
    pd.all_reduce_quantized(grad, op="avg")             # int8 blocks, fp32 scales (EQuARX)

Every method of ShardedIndex is collective: all ranks call it, in the same order.

    sharded.py       ShardedIndex: routing (id % world size), updates, search, save / load
    partitioned.py   kind="partitioned": shards, calibration over the union, why it meets the target
    training.py      the shards' training together (partitioned.training.fit over ranks)
    quantized.py     all_reduce_quantized and its error bound
    _comm.py         small collective helpers (agree, padded gathers, broadcast, Reducer)
"""

from .quantized import all_reduce_quantized, quantized_error_bound
from .sharded import ShardedIndex

__all__ = ["ShardedIndex", "all_reduce_quantized", "quantized_error_bound"]
