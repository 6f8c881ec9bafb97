"""How a PartitionedIndex is built (`PartitionSettings`) and searched (`SearchSettings`).

Typed, frozen dataclasses, validated on construction; None means "the default for the other
settings" where a docstring says so. The search settings are the index's defaults: every search
may override probe, rerank and adaptive.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from .._checks import check_int, positive_int
from ..quant.codes import CENTRES as PQ_CENTRES

CODE_TYPES = ("bf16", "int8", "pq4")
SCAN_K, SCAN_RECALL = 10, 0.995  # scan_dims="auto": the first pass keeps this share of the top-10 in its best 20
GAP_COLUMNS = 256  # adaptive probe: the most partitions its calibration plans for
ADAPTIVE_SPREAD = 2  # adaptive probe: one query searches at most this many times `probe` partitions
PARTITIONS_PER_SQRT_N = 2  # partitions=None: about this many times sqrt(n) (docs/ALGORITHMS.md: the table over data sets)
MIN_PARTITION_ROWS = 32  # ... while each partition keeps at least this many rows
AUTO_TRAIN_SIZE = 10240  # partitions=None: train automatically at this many rows (or on a larger first add); 0.1.0 trained its 256 at 10,240


def partitions_for(n: int) -> int:
    """The partition count `PartitionSettings(partitions=None)` takes for n rows: the power of two
    nearest PARTITIONS_PER_SQRT_N * sqrt(n), at least 8 and at most n / MIN_PARTITION_ROWS."""
    want = PARTITIONS_PER_SQRT_N * math.sqrt(max(1, n))
    p = 1 << max(0, round(math.log2(want)))
    most = 1 << max(0, (max(1, n // MIN_PARTITION_ROWS)).bit_length() - 1)
    return max(1, min(max(8, p), most))


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """How an index is built (fixed at construction).

    partitions: k-means partitions (None, the default: `partitions_for(n)` of the n rows the
    index holds when it trains, about 2 sqrt(n)); codes: "bf16" (rows in bfloat16), "int8" (per-dimension
    scalar codes) or "pq4" (4-bit product quantization of residuals, `block_dims` dims per
    16-centre block); threshold: anisotropic threshold T for PQ training (None = plain PQ);
    anisotropic_partitions: partition with the anisotropic loss too; keep_vectors: keep fp32
    vectors for exact re-ranking (False = compressed-only); scan_dims: bf16/int8 codes hold each
    row projected on the leading principal directions of the training sample
    (`codes.principal_directions`): an int m keeps m of them; "auto" (the default) the fewest
    (a multiple of 16) whose first pass keeps SCAN_RECALL of the sample's own top-10 among its
    best 20 (`quant.codes.calibrated_dims`; all dims = no projection). The first pass then reads
    m / dim of the bytes and re-ranking restores exact scores (None = all dims, no projection;
    an int needs keep_vectors and bf16/int8 codes, "auto" becomes None without them); spill:
    also store every row in a second partition (SOAR; None = for bf16/int8 codes with
    keep_vectors: it doubles the codes, and two differing pq4 estimates of one row help less);
    train_size: train automatically when this many rows are in (None = only `train()`;
    default 40 * partitions, or AUTO_TRAIN_SIZE when partitions is None; one add of more rows
    trains on all of them); iters: k-means iterations; seed: seeds training.
    """

    partitions: int | None = None
    codes: str = "bf16"
    block_dims: int = 2
    threshold: float | None = 0.2
    anisotropic_partitions: bool = False
    keep_vectors: bool = True
    scan_dims: int | str | None = "auto"
    spill: bool | None = None
    train_size: int | None = -1
    iters: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.partitions is not None:
            positive_int("partitions", self.partitions)
        if self.codes not in CODE_TYPES:
            raise ValueError(f"codes must be one of {CODE_TYPES}, got {self.codes!r}")
        positive_int("block_dims", self.block_dims)
        if isinstance(self.scan_dims, str):
            if self.scan_dims != "auto":
                raise ValueError(f"scan_dims must be a positive int, 'auto' or None, got {self.scan_dims!r}")
            if self.codes == "pq4" or not self.keep_vectors:  # nothing to re-rank with: no projection
                object.__setattr__(self, "scan_dims", None)
        elif self.scan_dims is not None:
            positive_int("scan_dims", self.scan_dims)
            object.__setattr__(self, "scan_dims", int(self.scan_dims))
            if self.codes == "pq4" or not self.keep_vectors:
                raise ValueError(
                    f"scan_dims={self.scan_dims} needs codes 'bf16' or 'int8' and keep_vectors=True "
                    f"(the projected first pass is re-ranked exactly), got codes={self.codes!r}, keep_vectors={self.keep_vectors}"
                )
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, numbers.Real):
                raise TypeError(f"threshold must be a float in (0, 1) or None, got {type(self.threshold).__name__}")
            if not 0.0 < self.threshold < 1.0:
                raise ValueError(f"threshold must be in (0, 1) or None, got {self.threshold!r}")
            object.__setattr__(self, "threshold", float(self.threshold))
        if self.spill is None:
            object.__setattr__(self, "spill", bool(self.keep_vectors) and self.codes != "pq4")
        if not isinstance(self.spill, bool):
            raise ValueError(f"spill must be True, False or None, got {self.spill!r}")
        if self.train_size == -1:
            object.__setattr__(self, "train_size", AUTO_TRAIN_SIZE if self.partitions is None else 40 * self.partitions)
        if self.train_size is not None:
            positive_int("train_size", self.train_size)
        positive_int("iters", self.iters)
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, 2**63 - 1))
        least = max(self.partitions or 1, PQ_CENTRES if self.codes == "pq4" else 1)
        if self.train_size is not None and self.train_size < least:  # else the add reaching it fails to train
            raise ValueError(f"train_size={self.train_size} is below the rows training needs ({least}: one per partition, {PQ_CENTRES} for pq4 codes)")


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How a search runs (the index's defaults; each search may override).

    probe: partitions searched per query; rerank: candidates re-scored exactly in fp32
    (None = 2k for bf16/int8 codes, 10k for pq4; ignored when the index keeps no vectors);
    adaptive (default): probe becomes a mean. Each query searches the partitions whose centre
    score is within a gap g of its best centre's (gaps divided by |q|), at least 1 and at most
    ADAPTIVE_SPREAD * probe of them, where g is set so that the training sample's rows, as
    queries, search `probe` partitions on average (`PartitionedIndex.probe_gap`). Queries near
    partition borders search more partitions, and queries deep inside one search fewer. probe >=
    min(partitions, GAP_COLUMNS) searches that many partitions, as without adaptive. The tables
    behind the defaults are in docs/ALGORITHMS.md.

    learn_queries (default): searches with a recall_target keep a uniform sample of their
    queries, and the recall curves are measured on it once it holds calibration.QUERIES of them
    (and again each time the searches have sent CALIBRATE_GROWTH times more), so the target
    comes to hold for the queries actually asked, also where they are not distributed like the
    rows (`partitioned.calibration.QuerySample`). Not after calibrate(queries): the caller's
    sample stands.
    """

    probe: int = 16
    rerank: int | None = None
    adaptive: bool = True
    learn_queries: bool = True

    def __post_init__(self):
        positive_int("probe", self.probe)
        if self.rerank is not None:
            positive_int("rerank", self.rerank)
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(self.adaptive).__name__}")
        if not isinstance(self.learn_queries, bool):
            raise TypeError(f"learn_queries must be a bool, got {type(self.learn_queries).__name__}")
