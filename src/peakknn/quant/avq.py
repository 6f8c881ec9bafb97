"""Anisotropic vector quantization (Guo et al., ICML 2020; DESIGN.md section 2).

For maximum inner product search the error that matters is <q, x> - <q, x~> on the queries
that score high, which is dominated by the residual r = x - x~ *parallel* to x. The score-aware
loss weighs the two parts of r separately,
    loss(x, x~) = h_par ||r_par||^2 + h_perp ||r_perp||^2,   r_par = (r . x/|x|) x/|x|,
and only the ratio eta = h_par / h_perp matters for the minimiser. For a threshold T on the
inner products of interest,
    eta = (d - 1) (T^2 / |x|^2) / (1 - T^2 / |x|^2)          (T = 0.2, |x| = 1, d = 100: 4.125).
eta = 1 is plain reconstruction (k-means) loss.

`avq_kmeans` is Lloyd's algorithm under that loss (divided by h_perp): assignment picks the
centre with the least anisotropic loss, and the centre of a cluster X (rows x_i, unit
directions u_i) is the closed-form minimiser
    c = (n I + (eta - 1) sum u_i u_i^T)^-1 (sum x_i + (eta - 1) sum u_i u_i^T x_i),
which for unit vectors is eta (n I + (eta - 1) X^T X)^-1 sum x_i.
"""

from __future__ import annotations

import torch

from .._checks import as_matrix


def eta_from_threshold(threshold: float, dim: int, norm: float = 1.0) -> float:
    """eta = h_par / h_perp for inner-product threshold T on vectors of norm `norm` in `dim` dims."""
    if not 0 < threshold < norm:
        raise ValueError(f"threshold must be in (0, norm={norm}), got {threshold}")
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    t2 = (threshold / norm) ** 2
    return (dim - 1) * t2 / (1 - t2)


def anisotropic_loss(x: torch.Tensor, x_hat: torch.Tensor, eta: float) -> torch.Tensor:
    """f32[n]: ||r||^2 + (eta - 1) (r . x/|x|)^2 for r = x - x_hat (the loss over h_perp)."""
    r = x - x_hat
    u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    par = (r * u).sum(1)
    return (r * r).sum(1) + (eta - 1.0) * par * par


def assignment_loss(x: torch.Tensor, centres: torch.Tensor, eta: float) -> torch.Tensor:
    """f32[n, c]: anisotropic_loss(x_i, centre_j) for every pair, from one matrix product."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)  # [n, 1]
    dots = x @ centres.T  # [n, c]
    sq = (x * x).sum(1, keepdim=True) - 2 * dots + (centres * centres).sum(1)
    par = norms - dots / norms  # (x - c) . x/|x|
    return sq.clamp_min(0) + (eta - 1.0) * par * par


def anisotropic_centre(x: torch.Tensor, eta: float) -> torch.Tensor:
    """f32[d]: the minimiser of sum_i anisotropic_loss(x_i, c) over c (module docstring)."""
    n, d = x.shape
    u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    gram = u.T @ u  # sum u u^T
    a = n * torch.eye(d, dtype=x.dtype, device=x.device) + (eta - 1.0) * gram
    b = x.sum(0) + (eta - 1.0) * (u * (u * x).sum(1, keepdim=True)).sum(0)
    return torch.linalg.solve(a.double(), b.double()).to(x.dtype)


def avq_kmeans(
    x, clusters: int, *, eta: float, iters: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partition rows of x: f32[n, d] into `clusters` by the anisotropic loss.

    Returns (centres f32[clusters, d], assignment i64[n]). Initial centres are distinct rows
    chosen at random (seeded); an emptied cluster is re-seeded with the row of largest loss.
    """
    x = as_matrix("x", x, allow_1d=False).to(torch.float32)
    n = x.shape[0]
    if isinstance(clusters, bool) or not isinstance(clusters, int) or not 1 <= clusters <= n:
        raise ValueError(f"clusters must be an int in [1, n={n}], got {clusters!r}")
    if not eta >= 1.0:
        raise ValueError(f"eta must be >= 1 (1 = plain k-means), got {eta}")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(n, generator=g)[:clusters].to(x.device)].clone()
    assign = torch.zeros(n, dtype=torch.int64, device=x.device)
    for _ in range(iters):
        loss = _blocked_assignment(x, centres, eta)
        best, assign = loss.min(dim=1)
        order = torch.argsort(assign)
        counts = torch.bincount(assign, minlength=clusters).tolist()
        start = 0
        for j, count in enumerate(counts):
            if count == 0:
                worst = int(best.argmax())
                centres[j] = x[worst]
                best[worst] = 0.0
            else:
                centres[j] = anisotropic_centre(x[order[start : start + count]], eta)
            start += count
    assign = _blocked_assignment(x, centres, eta).argmin(dim=1)
    return centres, assign


def _blocked_assignment(x: torch.Tensor, centres: torch.Tensor, eta: float, block: int = 65536) -> torch.Tensor:
    return torch.cat([assignment_loss(x[i : i + block], centres, eta) for i in range(0, x.shape[0], block)])
