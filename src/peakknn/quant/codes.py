"""Compressed codes for vectors: int8 scalar codes and 4-bit product quantization (PQ).

Both decode to bfloat16 rows, so scoring compressed data is again a bf16 matrix product
(docs/ALGORITHMS.md: decoding to bf16 keeps the matrix unit in charge).

Int8Codes: x ~= scale * c with c = round(x / scale) in [-127, 127] and one scale per dimension
(max |x_d| / 127 over the training sample; larger values clamp). Integers of that range are
exact in bf16, so <q, x~> = <q * scale, c> is computed exactly from a bf16 cast of c.
Memory: d bytes per row (1/4 of fp32).

principal_directions: an orthonormal basis of the top principal directions (of the uncentred
second moment, which is what inner products see). Rows and queries projected on it keep their
inner products up to the energy of the dropped directions, so a first pass that is re-ranked
exactly can score fewer dimensions.

ProductQuantizer: the d dimensions are cut into B = d / block_dims blocks; each block has 16
centres, so a row costs B / 2 bytes (two 4-bit codes per byte; 1/16 of fp32 for block_dims = 2).
Training follows ScaNN's anisotropic quantization (Guo et al. 2020): codebooks start from plain
k-means per block; then codes are chosen by coordinate descent over blocks to minimise the
score-aware loss ||r||^2 + (eta - 1) (r . u)^2 of the whole residual r = x - x~ against the
direction u of the data point, and each centre is updated in closed form for that loss
(a block_dims x block_dims solve), alternating for a few rounds. eta = 1 is plain PQ.
"""

from __future__ import annotations

import torch

from .._checks import ceil_div, check_int

CENTRES = 16  # centres per PQ block (4-bit codes)
ENCODE_CHUNK = 8192  # rows encoded at once ([chunk, B, 16] temporaries)
DIMS_MULTIPLE = 16  # calibrated_dims tries widths in steps of this
CALIBRATION_SCORES = 1 << 23  # calibrated_dims scores at most this many (query, row) pairs at once


def principal_directions(x: torch.Tensor, dims: int) -> torch.Tensor:
    """f32[d, dims]: orthonormal columns spanning the `dims` leading eigenvectors of x^T x for
    rows x f32[n, d], most energy first (so x @ P keeps the most of every <q, x> on average)."""
    d = x.shape[1]
    dims = check_int("dims", dims, 1, d, type_error=ValueError)
    x64 = x.to(torch.float64)
    _, vectors = torch.linalg.eigh(x64.T @ x64)  # ascending eigenvalues
    return vectors[:, d - dims :].flip(1).to(torch.float32).contiguous()


def calibrated_dims(
    x: torch.Tensor,
    basis: torch.Tensor,
    k: int,
    candidates: int,
    target: float,
    *,
    bias: torch.Tensor | None = None,
    queries: int = 256,
    seed: int = 0,
    query_rows: torch.Tensor | None = None,
) -> int:
    """The fewest leading columns m of `basis` f32[d, d] (a multiple of DIMS_MULTIPLE, or d)
    such that, with up to `queries` rows of x f32[n, d] as queries against the other rows, the
    `candidates` best by projected inner product <q P_m, x P_m> (+ bias f32[n], e.g. -|x|^2/2
    for L2, in both rankings) hold at least `target` of each query's exact top-k on average.
    query_rows f32[n, d]: what row i looks like as a query (default x itself; e.g. uncentred
    rows against centred ones for inner product).
    Recall only grows with m (nearly), so m is bisected.
    Returns d when no smaller m reaches the target or x is too small to tell."""
    n, d = x.shape
    if n < 2 * queries or n <= candidates + 1:
        return d
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[:queries].to(x.device)
    extra = 0.0 if bias is None else bias.unsqueeze(0)
    block = max(1, CALIBRATION_SCORES // n)  # queries scored at once: bounded [block, n] temporaries

    def best(q: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
        """i64[queries, count]: each picked row's best other rows by <q, rows> + bias."""
        out = []
        for i in range(0, queries, block):
            scores = q[i : i + block] @ rows.T + extra
            scores[torch.arange(scores.shape[0], device=x.device), pick[i : i + block]] = float("-inf")  # not itself
            out.append(torch.topk(scores, count, dim=1).indices)
        return torch.cat(out)

    qrows = x if query_rows is None else query_rows
    truth = best(qrows[pick], x, k)
    xb, qb = x @ basis, qrows[pick] @ basis

    def reaches(m: int) -> bool:
        found = best(qb[:, :m], xb[:, :m], candidates)
        hit = (found.unsqueeze(2) == truth.unsqueeze(1)).any(1).float().mean()
        return float(hit) >= target

    lo, hi = 1, ceil_div(d, DIMS_MULTIPLE)  # in units of DIMS_MULTIPLE; hi * DIMS_MULTIPLE >= d
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(min(d, mid * DIMS_MULTIPLE)):
            hi = mid
        else:
            lo = mid + 1
    return min(d, lo * DIMS_MULTIPLE)


class Int8Codes:
    """Per-dimension symmetric int8 codes. scale: f32[d] > 0."""

    kind = "int8"

    def __init__(self, scale: torch.Tensor):
        self.scale = scale.to(torch.float32)

    @classmethod
    def train(cls, x: torch.Tensor) -> "Int8Codes":
        """Scales from f32[n, d] training rows (all-zero dimensions get scale 1)."""
        top = x.abs().amax(dim=0)
        return cls(torch.where(top > 0, top / 127.0, torch.ones_like(top)))

    @property
    def code_width(self) -> int:
        return self.scale.numel()

    def encode(self, x: torch.Tensor, directions: torch.Tensor | None = None) -> torch.Tensor:
        """i8[n, d] codes of f32[n, d] rows (directions are ignored: scalar codes are isotropic)."""
        return torch.round(x / self.scale).clamp_(-127, 127).to(torch.int8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """f32[n, d] reconstruction."""
        return codes.to(torch.float32) * self.scale

    def scan_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """bf16[n, d] rows whose product with `scan_queries(q)` gives <q, x~> (exact cast)."""
        return codes.to(torch.bfloat16)

    def scan_queries(self, q: torch.Tensor) -> torch.Tensor:
        return (q * self.scale).to(torch.bfloat16)

    def state(self) -> dict[str, torch.Tensor]:
        return {"int8_scale": self.scale}


class ProductQuantizer:
    """4-bit PQ. centres: f32[B, 16, block_dims]; codes are stored packed as u8[n, ceil(B / 2)]."""

    kind = "pq4"

    def __init__(self, centres: torch.Tensor):
        if centres.ndim != 3 or centres.shape[1] != CENTRES:
            raise ValueError(f"PQ centres must have shape [blocks, {CENTRES}, block_dims], got {tuple(centres.shape)}")
        self.centres = centres.to(torch.float32).contiguous()
        self.blocks, _, self.block_dims = self.centres.shape
        self.dim = self.blocks * self.block_dims

    @property
    def code_width(self) -> int:
        return (self.blocks + 1) // 2

    @classmethod
    def train(
        cls,
        residuals: torch.Tensor,
        block_dims: int,
        *,
        eta: float = 1.0,
        directions: torch.Tensor | None = None,
        rounds: int = 3,
        iters: int = 8,
        seed: int = 0,
    ) -> "ProductQuantizer":
        """Codebooks for f32[n, d] residuals (d divisible by block_dims).

        directions: f32[n, d] unit vectors of the data points whose residuals these are (needed
        when eta > 1). iters: k-means iterations of the initial codebooks; rounds: alternations
        of anisotropic encoding and closed-form centre updates.
        """
        n, d = residuals.shape
        check_block_dims(d, block_dims)
        if n < CENTRES:
            raise ValueError(f"PQ training needs at least {CENTRES} rows, got {n}")
        if eta > 1.0 and directions is None:
            raise ValueError("anisotropic PQ training (eta > 1) needs the data points' directions")
        blocks = d // block_dims
        r = residuals.to(torch.float32).view(n, blocks, block_dims)
        g = torch.Generator().manual_seed(seed)
        centres = r[torch.randperm(n, generator=g)[:CENTRES].to(r.device)].transpose(0, 1).contiguous()  # [B, 16, bd]
        for _ in range(iters):  # plain k-means in every block at once
            codes = _nearest(r, centres)
            centres = _block_means(r, codes, centres)
        pq = cls(centres)
        if eta > 1.0:
            u = directions.to(torch.float32).view(n, blocks, block_dims)
            for _ in range(rounds):
                codes = pq._encode_blocks(r, u, eta)
                pq = cls(_anisotropic_centres(r, u, codes, pq.centres, eta))
        return pq

    def encode(self, residuals: torch.Tensor, directions: torch.Tensor | None = None, eta: float = 1.0) -> torch.Tensor:
        """u8[n, ceil(B / 2)] packed codes of f32[n, d] residuals (anisotropic when eta > 1)."""
        n = residuals.shape[0]
        out = []
        for i in range(0, n, ENCODE_CHUNK):
            r = residuals[i : i + ENCODE_CHUNK].to(torch.float32).view(-1, self.blocks, self.block_dims)
            if eta > 1.0 and directions is not None:
                u = directions[i : i + ENCODE_CHUNK].to(torch.float32).view_as(r)
                codes = self._encode_blocks(r, u, eta)
            else:
                codes = _nearest(r, self.centres)
            out.append(pack(codes))
        return torch.cat(out) if out else torch.empty(0, self.code_width, dtype=torch.uint8, device=self.centres.device)

    def decode(self, packed: torch.Tensor) -> torch.Tensor:
        """f32[n, d] reconstruction of packed codes."""
        return self._gather(packed, self.centres)

    def scan_rows(self, packed: torch.Tensor) -> torch.Tensor:
        """bf16[n, d] decoded rows (to be multiplied by bf16 queries)."""
        return self._gather(packed, self._bf16_centres())

    def scan_queries(self, q: torch.Tensor) -> torch.Tensor:
        return q.to(torch.bfloat16)

    def state(self) -> dict[str, torch.Tensor]:
        return {"pq_centres": self.centres}

    def _bf16_centres(self) -> torch.Tensor:
        if getattr(self, "_bf16", None) is None:
            self._bf16 = self.centres.to(torch.bfloat16).view(-1, self.block_dims)
        return self._bf16

    def _gather(self, packed: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        codes = unpack(packed, self.blocks).to(torch.int64)  # [n, B]
        flat = codes + torch.arange(self.blocks, device=codes.device) * CENTRES
        table = centres.reshape(-1, self.block_dims)
        return table[flat].view(packed.shape[0], self.dim)

    def _encode_blocks(self, r: torch.Tensor, u: torch.Tensor, eta: float) -> torch.Tensor:
        """Coordinate descent on the anisotropic loss. r, u: f32[n, B, bd] -> codes i64[n, B]."""
        codes = _nearest(r, self.centres)
        err = r - self.centres[torch.arange(self.blocks, device=r.device), codes]  # [n, B, bd] residual of x - x~
        par = (err * u).sum(dim=(1, 2))  # [n] err . u
        rows = torch.arange(r.shape[0], device=r.device)
        for _ in range(2):
            for b in range(self.blocks):
                cand = r[:, b, None, :] - self.centres[b]  # [n, 16, bd] block error per choice
                rest = par - (err[:, b] * u[:, b]).sum(1)
                cand_par = rest[:, None] + (cand * u[:, b, None, :]).sum(-1)  # [n, 16]
                loss = (cand * cand).sum(-1) + (eta - 1.0) * cand_par * cand_par
                best = loss.argmin(dim=1)
                codes[:, b] = best
                err[:, b] = cand[rows, best]
                par = cand_par[rows, best]
        return codes


def check_block_dims(dim: int, block_dims: int) -> None:
    block_dims = check_int("block_dims", block_dims, type_error=ValueError)
    if dim % block_dims:
        raise ValueError(f"dim {dim} is not divisible by block_dims {block_dims}")


def pack(codes: torch.Tensor) -> torch.Tensor:
    """i64[n, B] codes in [0, 16) -> u8[n, ceil(B / 2)], two per byte (low nibble first)."""
    n, blocks = codes.shape
    if blocks % 2:
        codes = torch.cat([codes, codes.new_zeros(n, 1)], dim=1)
    c = codes.to(torch.uint8).view(n, -1, 2)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).contiguous()


def unpack(packed: torch.Tensor, blocks: int) -> torch.Tensor:
    """Inverse of `pack`: u8[n, ceil(B / 2)] -> u8[n, B]."""
    both = torch.stack([packed & 15, packed >> 4], dim=2).view(packed.shape[0], -1)
    return both[:, :blocks]


def _nearest(r: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """i64[n, B]: nearest centre (L2) of every block of r: f32[n, B, bd]."""
    out = []
    for i in range(0, r.shape[0], ENCODE_CHUNK):
        part = r[i : i + ENCODE_CHUNK]
        dist = (part.unsqueeze(2) - centres.unsqueeze(0)).pow(2).sum(-1)  # [m, B, 16]
        out.append(dist.argmin(dim=2))
    return torch.cat(out)


def _block_means(r: torch.Tensor, codes: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean of the rows assigned to each centre of each block; an empty centre keeps its value."""
    n, blocks, bd = r.shape
    flat = (codes + torch.arange(blocks, device=r.device) * CENTRES).view(-1)
    sums = torch.zeros(blocks * CENTRES, bd, device=r.device).index_add_(0, flat, r.reshape(-1, bd))
    counts = torch.bincount(flat, minlength=blocks * CENTRES).to(torch.float32).unsqueeze(1)
    means = sums / counts.clamp_min(1)
    return torch.where(counts > 0, means, old.reshape(-1, bd)).view(blocks, CENTRES, bd)


def _anisotropic_centres(r, u, codes, old, eta: float) -> torch.Tensor:
    """Closed-form centre update of every block for the anisotropic loss, others held fixed.

    For block b and centre j with rows i (codes[i, b] = j), the loss in c is
      sum_i ||r_ib - c||^2 + (eta - 1) (a_i - u_ib . c)^2,  a_i = err_i . u_i + u_ib . c_old,
    minimised by (m I + (eta - 1) sum u_ib u_ib^T) c = sum r_ib + (eta - 1) sum a_i u_ib.
    """
    n, blocks, bd = r.shape
    block = torch.arange(blocks, device=r.device)
    err = r - old[block, codes]
    par = (err * u).sum(dim=(1, 2))  # [n]
    a = par[:, None] + (u * old[block, codes]).sum(-1)  # [n, B]
    flat = (codes + block * CENTRES).view(-1)
    slots = blocks * CENTRES
    uu = (u.unsqueeze(3) * u.unsqueeze(2)).reshape(-1, bd * bd)  # [n * B, bd*bd]
    gram = torch.zeros(slots, bd * bd, device=r.device).index_add_(0, flat, uu).view(slots, bd, bd)
    rhs = torch.zeros(slots, bd, device=r.device).index_add_(0, flat, (r + (eta - 1.0) * a.unsqueeze(2) * u).reshape(-1, bd))
    counts = torch.bincount(flat, minlength=slots).to(torch.float32)
    lhs = counts.view(-1, 1, 1) * torch.eye(bd, device=r.device) + (eta - 1.0) * gram
    used = counts > 0
    new = old.reshape(-1, bd).clone()
    new[used] = torch.linalg.solve(lhs[used].double(), rhs[used].double()).to(torch.float32)
    return new.view(blocks, CENTRES, bd)
