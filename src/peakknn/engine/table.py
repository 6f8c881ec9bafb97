"""What the engine scans: a table of n rows, each stored twice.

  - scan rows  s_j = [x_j, bias_j, 0...]  in the scan dtype (bf16 or fp32), width d' >= d + 1
    (`scan_row_width`),
  - exact rows x_j in fp32 for re-scoring,

where bias_j is the metric's rank correction (-|x|^2/2 for L2, 0 otherwise) or -inf for a dead
row. With the query written as [q, 1, 0...] (`scan_queries`), one matrix product gives the rank
score <q, x_j> + bias_j of every row: L2 and deletions cost no extra pass.

The scan's frame (`ScanFrame`, `Table.frame`): rows are scanned as s (x - m) for the data's mean
m and a power-of-two scale s near 1 / (their rms spread), with the L2 bias -|s (x - m)|^2/2, and
queries as s (q - m) for L2, s q otherwise (`ScanFrame.queries`). Ranks change by a positive
factor and a constant per query only (<q, x - m> = <q, x> - <q, m>; |q - x| = |(q - m) - (x - m)|),
but the digits that bf16 and the L2 trick keep are those of the rows' spread, not of a large
common offset, and scores of tiny or huge vectors stay in range (docs/ALGORITHMS.md section 3).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch

from .._checks import as_matrix, check_array, round_up

TINY_NORM = 1e-18  # below this a float32 norm loses digits (its square is near float32's smallest normal)

SCAN_ALIGN = 8  # scan rows are padded to a multiple of this width (16 bytes of bf16; docs/ALGORITHMS.md)
LOW_DIMS = 16  # below this many dims scans run in fp32 (`scan_dtype_for`)
FRAME_BLOCK_BYTES = 16 << 20  # float64 temporaries per block when a frame is measured
FRAME_RANGE = 2.0**24  # frame coordinates beyond this (2^24 rms spreads out) mean the frame is stale
SQUARES_SAFE = (1e-20, 1e30)  # a float32 sum of squares outside this may have lost squares to overflow or underflow


class Table(Protocol):
    """What the engine scans. Row numbers ("slots") are 0..n-1."""

    n: int
    live: int  # rows that may be returned (n minus dead and masked rows)
    frame: "ScanFrame | None"  # how rows and queries are shifted and scaled for the scan (None: not)
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
    LOW_DIMS dims a scan row is a short vector whatever its dtype and the product is not
    what bounds the scan, while bf16's 8-bit mantissa cannot order the near-equal scores of
    low-dimensional neighbours (cosine on a circle): fp32 there."""
    return torch.float32 if dim < LOW_DIMS else dtype


@dataclasses.dataclass(frozen=True)
class ScanFrame:
    """centre f32[d] and scale (a power of two): rows are scanned as scale * (x - centre)."""

    centre: torch.Tensor
    scale: float = 1.0

    @classmethod
    def of(cls, x32: torch.Tensor) -> "ScanFrame":
        """The frame of rows f32[n, d]: their mean and the power of two nearest 1 / their rms
        distance from it (1 for no rows or no spread), in two passes over blocks of rows
        (FRAME_BLOCK_BYTES of temporaries): a float64 sum, then float32 sums of squared differences
        from the float32 mean (a power of two needs no more digits) added in float64; a block
        whose float32 sum leaves SQUARES_SAFE (huge or tiny rows) is summed in float64."""
        n, d = x32.shape
        if n == 0:
            return cls(torch.zeros(d, dtype=torch.float32, device=x32.device))
        block = max(1, FRAME_BLOCK_BYTES // (8 * d))
        total = torch.zeros(d, dtype=torch.float64, device=x32.device)
        for i in range(0, n, block):
            total += x32[i : i + block].double().sum(0)  # (5x faster than sum(0, dtype=float64) on a CPU)
        mean64 = total / n
        mean = mean64.to(torch.float32)
        squares = 0.0
        for i in range(0, n, block):
            rows = x32[i : i + block]
            part = float(torch.square(rows - mean).sum())
            if not SQUARES_SAFE[0] <= part <= SQUARES_SAFE[1]:  # float32 squares overflowed or came near underflow
                part = float(((rows.double() - mean64) ** 2).sum())
            squares += part
        return cls(mean, power_of_two_scale(squares / n))

    @classmethod
    def identity(cls, dim: int, device: torch.device | str = "cpu") -> "ScanFrame":
        """Rows as they are (what files written before the frame existed scanned)."""
        return cls(torch.zeros(dim, dtype=torch.float32, device=device))

    def arrays(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The frame as saved arrays: {prefix}centre f32[d], {prefix}scale f64[1]."""
        return {f"{prefix}centre": self.centre.cpu(), f"{prefix}scale": torch.tensor([self.scale], dtype=torch.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str, dim: int, where, device) -> "ScanFrame":
        """The frame saved by `arrays(prefix)`, on `device`; ValueError naming `where` for a
        missing or misshaped array, a non-finite centre or a scale that is not a power of two."""
        centre = check_array(arrays, f"{prefix}centre", torch.float32, (dim,), where)
        scale = float(check_array(arrays, f"{prefix}scale", torch.float64, (1,), where)[0])
        if not bool(torch.isfinite(centre).all()):
            raise ValueError(f"{where}: array {prefix}centre contains NaN or inf")
        if not (scale > 0 and math.isfinite(scale) and math.frexp(scale)[0] == 0.5):
            raise ValueError(f"{where}: {prefix}scale must be a positive power of two, got {scale}")
        return cls(centre.to(device), scale)

    def holds(self, x32: torch.Tensor) -> bool:
        """True when rows x land within FRAME_RANGE of the centre in frame units (a frame taken
        from other rows can be far too fine for them: then it must be taken anew)."""
        if not x32.numel():
            return True
        high, low = torch.amax(x32, 0), torch.amin(x32, 0)  # no temporaries of x's size (aminmax(dim=0) is 5x slower)
        return float(torch.maximum(high - self.centre, self.centre - low).max()) * self.scale <= FRAME_RANGE

    @property
    def offset_matters(self) -> bool:
        """True when the centre lies farther from 0 than the rows' rms spread (|m| s > 1): then
        fp32 sums of <q, x> lose digits that <q, x - m> keeps; otherwise at most one bit."""
        return float(torch.linalg.vector_norm(self.centre)) * self.scale > 1.0

    def rows(self, x32: torch.Tensor) -> torch.Tensor:
        """scale * (x - centre)."""
        return (x32 - self.centre) * self.scale

    def queries(self, q32: torch.Tensor, metric: str) -> torch.Tensor:
        """The queries as the scan sees them: scale * (q - centre) for L2 (both sides shift),
        scale * q otherwise (an inner product's ranking ignores a shift of the rows)."""
        return (q32 - self.centre if metric == "l2" else q32) * self.scale


def power_of_two_scale(mean_square: float) -> float:
    """2^-round(log2(rms)) for a mean square (exact to apply in floating point); 1 where the
    mean square is 0 or not finite."""
    if not (mean_square > 0 and math.isfinite(mean_square)):
        return 1.0
    return 2.0 ** -round(0.5 * math.log2(mean_square))


def scan_side(q32: torch.Tensor, frame: ScanFrame | None, metric: str) -> torch.Tensor:
    """`frame.queries(q32, metric)`, or q32 for a table without a frame."""
    return q32 if frame is None else frame.queries(q32, metric)


def in_frame(x32: torch.Tensor, frame: ScanFrame | None) -> torch.Tensor:
    """`frame.rows(x32)`, or x32 for a table without a frame."""
    return x32 if frame is None else frame.rows(x32)


def scan_row_width(dim: int) -> int:
    """Width d' of a scan row [x, bias, 0...] for vectors of dimension dim."""
    return round_up(dim + 1, SCAN_ALIGN)


def normalize_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows have no direction and are rejected. Norms whose
    squares overflow or underflow in float32 (|x| beyond ~1e19 or below ~1e-19) are taken in
    float64, so huge and tiny rows keep their direction."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    odd = ~torch.isfinite(norms[:, 0]) | (norms[:, 0] < TINY_NORM)
    if bool(odd.any()):  # scaled in float64 here; their norms become 1 (0 for zero rows)
        rows = x[odd].double()
        n64 = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        x, norms = x.clone(), norms.clone()
        x[odd] = (rows / n64.clamp_min(torch.finfo(torch.float64).tiny)).to(x.dtype)
        norms[odd] = (n64 > 0).to(norms.dtype)
    if bool((norms == 0).any()):
        raise ValueError(f"{name} has a zero vector (row {int((norms[:, 0] == 0).nonzero()[0])}); cosine needs a direction")
    return x / norms


def check_scorable(x: torch.Tensor, name: str) -> None:
    """ValueError naming `name` when rows are so large that inner products or squared distances
    of such rows overflow float32: every |entry| must stay below sqrt(float32 max / (4 d))
    (8e17 at d = 128), so that |q||x| and |q - x|^2 stay finite."""
    if x.numel() == 0:
        return
    limit = math.sqrt(torch.finfo(torch.float32).max / (4 * x.shape[1]))
    low, high = torch.aminmax(x)  # one pass, no |x| copy
    biggest = max(-float(low), float(high))
    if biggest > limit:
        raise ValueError(f"{name} has entries up to {biggest:.3g}: their inner products overflow float32 (at dim {x.shape[1]} entries must stay below {limit:.3g}; cosine has no such limit)")


def prepare_rows(value, name: str, dim: int, metric: str, device: torch.device) -> torch.Tensor:
    """`value` (vectors or queries: [m, dim] or [dim], torch or numpy, any float dtype) as
    f32[m, dim] on `device`, unit rows for cosine; bad input raises ValueError/TypeError naming
    `name` (`_checks.as_matrix`)."""
    x = as_matrix(name, value, dim).to(device=device, dtype=torch.float32)
    if metric != "cos":
        check_scorable(x, name)
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
        self.frame = ScanFrame.of(x32)
        self.scan_dtype = dtype
        self.device = x32.device
        self.metric = metric
        self._buf: torch.Tensor | None = None

    def scan_rows(self, start: int, stop: int) -> torch.Tensor:
        rows = stop - start
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = torch.zeros(rows, scan_row_width(self.dim), dtype=self.scan_dtype, device=self.device)
        buf = self._buf[:rows]
        chunk = self.frame.rows(self.x[start:stop])
        buf[:, : self.dim] = chunk
        buf[:, self.dim] = rank_bias(chunk, self.metric)
        return buf

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.x.index_select(0, slots.reshape(-1)).view(*slots.shape, self.x.shape[1])

    def bias(self, start: int, stop: int) -> torch.Tensor:
        return rank_bias(self.frame.rows(self.x[start:stop]), self.metric)

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(slots, dtype=torch.bool)
