"""What the engine scans: a table of n rows, each stored twice.

  - scan rows  s_j = [x_j, bias_j, 0...]  in the scan dtype (bf16 or fp32), width d' >= d + 1
    (`scan_row_width`),
  - exact rows x_j in fp32 for re-scoring,

where bias_j is the metric's rank correction (-|x|^2/2 for L2, 0 otherwise) or -inf for a dead
row. With the query written as [q, 1, 0...] (`scan_queries`), one matrix product gives the rank
score <q, x_j> + bias_j of every row: L2 and deletions cost no extra pass.

Centring: a table may scan its rows relative to a centre m (`Table.centre`, the data's mean):
scan rows hold x - m and the L2 bias is -|x - m|^2/2, L2 queries are scanned as q - m
(`scan_side`). Ranks change by a constant per query only (<q, x - m> = <q, x> - <q, m>;
|q - x| = |(q - m) - (x - m)|), but the digits that bf16 and the L2 trick keep are those of the
rows' spread, not of a large common offset (docs/ALGORITHMS.md section 3).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .._checks import as_matrix, round_up

SCAN_ALIGN = 16  # scan rows are padded to a multiple of this width (faster matrix kernels)


class Table(Protocol):
    """What the engine scans. Row numbers ("slots") are 0..n-1."""

    n: int
    live: int  # rows that may be returned (n minus dead and masked rows)
    centre: torch.Tensor | None  # f32[d] the scan rows are relative to (None: 0)
    dim: int  # d, the vectors' dimension
    scan_dtype: torch.dtype
    device: torch.device

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        """[stop-start, d'] scan rows [x, bias, 0...] in scan_dtype (may reuse one buffer)."""

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """f32[..., d] vectors of the given slots (any shape of int64 slots in [0, n))."""

    def bias(self, start: int, stop: int) -> torch.Tensor:
        """f32[stop-start] rank corrections (-inf for dead rows)."""

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        """bool, same shape as slots: which slots hold a live row."""


def scan_dtype_for(dtype: torch.dtype, dim: int) -> torch.dtype:
    """The dtype a scan of `dim`-dimensional rows runs in when `dtype` is asked for: below
    SCAN_ALIGN dims a scan row is one padded vector whatever its dtype and the product is not
    what bounds the scan, while bf16's 8-bit mantissa cannot order the near-equal scores of
    low-dimensional neighbours (cosine on a circle): fp32 there."""
    return torch.float32 if dim < SCAN_ALIGN else dtype


def data_centre(x32: torch.Tensor) -> torch.Tensor:
    """f32[d] mean of the rows f32[n, d] (accumulated in float64; zeros for no rows)."""
    if x32.shape[0] == 0:
        return torch.zeros(x32.shape[1], dtype=torch.float32, device=x32.device)
    return x32.double().mean(0).to(torch.float32)


def scan_side(q32: torch.Tensor, centre: torch.Tensor | None, metric: str) -> torch.Tensor:
    """The queries as the scan sees them: q - centre for L2 (both sides shift), q otherwise."""
    return q32 - centre if centre is not None and metric == "l2" else q32


def centred(x32: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """x - centre (x itself when there is no centre)."""
    return x32 if centre is None else x32 - centre


def scan_row_width(dim: int) -> int:
    """Width d' of a scan row [x, bias, 0...] for vectors of dimension dim."""
    return round_up(dim + 1, SCAN_ALIGN)


def normalize_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows have no direction and are rejected."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} has a zero vector (row {int((norms[:, 0] == 0).nonzero()[0])}); cosine needs a direction")
    return x / norms


def prepare_rows(value, name: str, dim: int, metric: str, device: torch.device) -> torch.Tensor:
    """`value` (vectors or queries: [m, dim] or [dim], torch or numpy, any float dtype) as
    f32[m, dim] on `device`, unit rows for cosine; bad input raises ValueError/TypeError naming
    `name` (`_checks.as_matrix`)."""
    x = as_matrix(name, value, dim).to(device=device, dtype=torch.float32)
    return normalize_rows(x, name) if metric == "cos" else x


def rank_bias(x32: torch.Tensor, metric: str) -> torch.Tensor:
    """f32[n] rank correction of each row: -|x|^2/2 for L2, else 0."""
    if metric == "l2":
        return -0.5 * (x32 * x32).sum(1)
    return torch.zeros(x32.shape[0], dtype=torch.float32, device=x32.device)


def scan_queries(q32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[nq, d'] queries [q, 1, 0...] in the scan dtype."""
    out = torch.zeros(q32.shape[0], scan_row_width(q32.shape[1]), dtype=dtype, device=q32.device)
    out[:, : q32.shape[1]] = q32
    out[:, q32.shape[1]] = 1.0
    return out


class DenseTable:
    """A plain fp32 matrix as an engine table, scanned relative to its mean; scan rows are built
    chunk by chunk into a buffer."""

    mask = None  # every row may be returned

    def __init__(self, x32: torch.Tensor, metric: str, dtype: torch.dtype):
        self.x = x32
        self.n, self.dim = x32.shape
        self.live = self.n
        self.centre = data_centre(x32)
        self.scan_dtype = dtype
        self.device = x32.device
        self.metric = metric
        self._buf: torch.Tensor | None = None

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        rows = stop - start
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = torch.zeros(rows, scan_row_width(self.dim), dtype=self.scan_dtype, device=self.device)
        buf = self._buf[:rows]
        chunk = self.x[start:stop] - self.centre
        buf[:, : self.dim] = chunk
        buf[:, self.dim] = rank_bias(chunk, self.metric)
        return buf

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.x.index_select(0, slots.reshape(-1)).view(*slots.shape, self.x.shape[1])

    def bias(self, start: int, stop: int) -> torch.Tensor:
        return rank_bias(self.x[start:stop] - self.centre, self.metric)

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(slots, dtype=torch.bool)
