"""Fused Triton kernels, one per file, each with its launch shape, launcher and plain-torch
specification beside it:

    scan_winners.py  matrix product fused with the partial reduction (flat search on CUDA)
    bin_winners.py   the partial reduction alone (approx_topk on CUDA)

Importing this package imports nothing from triton; each kernel module does, so the engine loads
them only when a search or top-k runs on the "triton" backend (peakknn._backend). CI runs them on
CPU tensors in Triton's interpreter (TRITON_INTERPRET=1).
"""
