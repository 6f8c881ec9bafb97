"""Anisotropic vector quantization (Guo et al., ICML 2020; docs/ALGORITHMS.md).

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

from collections.abc import Callable

import torch

from .._checks import as_matrix, check_int

Reduce = Callable[[torch.Tensor, str], torch.Tensor]
"""reduce(t, op) -> t combined element-wise over every holder of a part of the rows (a holder may
hold none): op "sum" sums exactly, "lossy_sum" sums and may round (a quantized all-reduce),
"max" takes the maximum. Used by `avq_kmeans` when the rows are spread over processes."""

ANISOTROPIC_SUM_BYTES = 32 << 20  # distributed anisotropic k-means: per-cluster sums reduced in pieces of this size


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
    x, clusters: int, *, eta: float, iters: int = 10, seed: int = 0, reduce: Reduce | None = None, init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partition rows of x: f32[n, d] into `clusters` by the anisotropic loss.

    Returns (centres f32[clusters, d], assignment i64[n]). Initial centres are distinct rows
    chosen at random (seeded), or `init` f32[clusters, d]; an emptied cluster is re-seeded with
    the row of largest loss.

    reduce (`Reduce`, default None: x is every row): x is one holder's part of the rows, and
    every holder calls this with the same clusters, eta, iters and `init` (required then), in
    step. Each iteration reduces the clusters' counts ("sum") and the sums of the residuals
    x - c to their current centres ("lossy_sum": a rounding reduce errs in proportion to how
    far the centres still move, not to the size of the sums); with eta != 1 the per-cluster
    sums of the closed form (module docstring; "sum", a clusters x d x d reduce per iteration,
    in pieces of ANISOTROPIC_SUM_BYTES). An emptied cluster takes the row of largest loss over
    all holders (a "max", then a "sum" of that row; rows tied for it give their mean). Every
    holder then computes the same centres from the same reduced values.
    """
    x = as_matrix("x", x, allow_1d=False).to(torch.float32)
    n = x.shape[0]
    if reduce is None:
        clusters = check_int("clusters", clusters, 1, n, type_error=ValueError)
    else:
        clusters = check_int("clusters", clusters, 1, type_error=ValueError)
        if init is None:
            raise ValueError("avq_kmeans with reduce= needs init= (the same initial centres on every holder)")
    if not eta >= 1.0:
        raise ValueError(f"eta must be >= 1 (1 = plain k-means), got {eta}")
    if init is not None:
        if tuple(init.shape) != (clusters, x.shape[1]):
            raise ValueError(f"init must have shape ({clusters}, {x.shape[1]}), got {tuple(init.shape)}")
        centres = init.to(device=x.device, dtype=torch.float32).clone()
    else:
        g = torch.Generator().manual_seed(seed)
        centres = x[torch.randperm(n, generator=g)[:clusters].to(x.device)].clone()
    for _ in range(iters):
        best, assign = _nearest(x, centres, eta)
        counts = torch.bincount(assign, minlength=clusters)
        if reduce is not None:
            local_counts, counts = counts, reduce(counts.clone(), "sum")
            if eta == 1.0:
                _reduced_means(x, assign, centres, counts, reduce)
            else:
                _reduced_anisotropic(x, assign, local_counts, centres, counts, eta, reduce)
        elif eta == 1.0:  # plain k-means: the closed form is the mean
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        else:
            order = torch.argsort(assign)
            start = 0
            for j, count in enumerate(counts.tolist()):
                if count:
                    centres[j] = anisotropic_centre(x[order[start : start + count]], eta)
                start += count
        for j in torch.nonzero(counts == 0).flatten().tolist():  # re-seed: the row of largest loss
            if reduce is not None:
                centres[j] = _worst_row(x, best, reduce)
                continue
            worst = int(best.argmax())
            centres[j] = x[worst]
            best[worst] = 0.0
    return centres, _nearest(x, centres, eta)[1]


def _reduced_means(x: torch.Tensor, assign: torch.Tensor, centres: torch.Tensor, counts: torch.Tensor, reduce: Reduce) -> None:
    """centres (in place) = the means of their clusters over every holder, as c + sum(x - c) / count."""
    shift = torch.zeros_like(centres).index_add_(0, assign, x - centres[assign])
    shift = reduce(shift, "lossy_sum")
    filled = counts > 0
    centres[filled] += shift[filled] / counts[filled].unsqueeze(1).to(x.dtype)


def _reduced_anisotropic(x, assign, local_counts, centres, counts, eta: float, reduce: Reduce) -> None:
    """centres (in place) = `anisotropic_centre` of their clusters over every holder: the sums
    sum u u^T and sum x + (eta - 1) sum u (u . x) reduced ("sum", float64), then one solve each."""
    d = x.shape[1]
    u = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    order = torch.argsort(assign)
    ends = torch.cumsum(local_counts, 0).tolist()
    piece = max(1, ANISOTROPIC_SUM_BYTES // (8 * d * (d + 1)))
    eye = torch.eye(d, dtype=torch.float64, device=x.device)
    for lo in range(0, centres.shape[0], piece):
        hi = min(lo + piece, centres.shape[0])
        gram = torch.zeros(hi - lo, d, d, dtype=torch.float64, device=x.device)
        b = torch.zeros(hi - lo, d, dtype=torch.float64, device=x.device)
        for j in range(lo, hi):
            rows = order[ends[j] - int(local_counts[j]) : ends[j]]
            if rows.numel():
                xs, us = x[rows].double(), u[rows].double()
                gram[j - lo] = us.T @ us
                b[j - lo] = xs.sum(0) + (eta - 1.0) * (us * (us * xs).sum(1, keepdim=True)).sum(0)
        gram, b = reduce(gram, "sum"), reduce(b, "sum")
        filled = torch.nonzero(counts[lo:hi] > 0).flatten()
        if filled.numel():
            a = counts[lo:hi][filled].to(torch.float64)[:, None, None] * eye + (eta - 1.0) * gram[filled]
            centres[lo + filled] = torch.linalg.solve(a, b[filled].unsqueeze(2)).squeeze(2).to(x.dtype)


def _worst_row(x: torch.Tensor, best: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """f32[d]: the row of largest loss over every holder (the mean of tied ones); its loss is set
    to 0 on its holder so that the next re-seed takes another row."""
    mine = float(best.max()) if best.numel() else float("-inf")
    top = float(reduce(torch.tensor([mine], dtype=torch.float64), "max")[0])
    row = torch.zeros(x.shape[1] + 1, dtype=torch.float64, device=x.device)
    if best.numel() and mine == top:
        worst = int(best.argmax())
        row[:-1], row[-1] = x[worst].double(), 1.0
        best[worst] = 0.0
    row = reduce(row, "sum")
    return (row[:-1] / row[-1]).to(x.dtype)


def _nearest(x: torch.Tensor, centres: torch.Tensor, eta: float, block: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """(least loss f32[n], its centre i64[n]) per row, a block of rows at a time (bounded memory).
    eta = 1 ranks by |c|^2 - 2 <x, c> (one fused product) and adds |x|^2 to the minimum."""
    c2 = (centres * centres).sum(1)
    values, indices = [], []
    for i in range(0, x.shape[0], block):
        xb = x[i : i + block]
        if eta == 1.0:
            best, at = torch.addmm(c2, xb, centres.T, alpha=-2.0).min(dim=1)
            best = (best + (xb * xb).sum(1)).clamp_min(0)
        else:
            best, at = assignment_loss(xb, centres, eta).min(dim=1)
        values.append(best)
        indices.append(at)
    if not values:
        return x.new_empty(0), torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat(values), torch.cat(indices)
