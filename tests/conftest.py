import os
import tempfile

import numpy as np
import pytest
import torch

# Triton kernels run in Triton's CPU interpreter where there is no GPU. The variable must be set
# before triton compiles anything, hence here, before any test module imports peakknn's kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Measured ceilings (peakknn.perfmodel) are cached in a fresh directory, not the user's cache.
os.environ.setdefault("PEAKKNN_CACHE_DIR", tempfile.mkdtemp(prefix="peakknn-test-cache-"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def exact_rank(queries: torch.Tensor, database: torch.Tensor, metric: str) -> torch.Tensor:
    """f64[nq, n] larger-is-better scores: the float64 reference every path is compared with."""
    q, x = queries.double(), database.double()
    if metric == "cos":
        q = q / q.norm(dim=1, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True)
    if metric == "l2":
        return -torch.cdist(q, x) ** 2
    return q @ x.T


def recall_with_ties(ids: torch.Tensor, rank: torch.Tensor, k: int, tol: float) -> float:
    """Fraction of returned ids scoring at least the k-th best true score (minus tol)."""
    kth = torch.topk(rank, k, dim=1).values[:, -1:]
    got = rank.gather(1, ids.clamp_min(0))
    hit = (got >= kth - tol) & (ids >= 0)
    return float(hit.double().mean())
