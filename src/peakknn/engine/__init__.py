"""The brute-force engine that `search`, `Index` and `PartitionedIndex` share.

    table.py        what gets scanned: the `Table` protocol, `DenseTable`, scan rows and queries
    plan.py         bins, cells and re-scoring depth of a search (`ScanPlan`), query blocks
    torch_scan.py   the torch scan: chunked matrix products reduced to the best per bin
    kernel_scan.py  the same through the fused Triton kernel (peakknn.kernels.scan_winners)
    packed.py       scan rows packed once for the CPU's matrix kernel (`PackedRows`, Index(packed_scan=True))
    rescore.py      exact fp32 re-scoring of candidates, and reported scores (`finish`)
    driver.py       one loop over query blocks (`run_blocks`) and the flat search (`run_search`)

docs/ARCHITECTURE.md follows one search through these layers; docs/ALGORITHMS.md has the math.
"""
