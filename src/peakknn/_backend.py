"""Which implementation runs: the plain-torch engine or the fused Triton kernels.

backend="auto" picks Triton for CUDA tensors when the `triton` package is installed, torch
otherwise. backend="triton" forces the kernels: on CUDA tensors, or on CPU tensors under
Triton's interpreter (environment variable TRITON_INTERPRET=1 set before triton is imported),
which is how CI checks the kernels without a GPU. backend="torch" forces the torch engine.

Nothing here imports triton; the kernels in peakknn.kernels are imported where they run.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve(backend: str, device: torch.device) -> str:
    """"torch" or "triton" for data on `device`; raises ValueError for an unusable request."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_installed() else "torch"
    if not triton_installed():
        raise ValueError("backend='triton' needs the triton package: pip install triton")
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return "triton"
    raise ValueError(f"backend='triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {device}")

