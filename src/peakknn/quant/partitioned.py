"""PartitionedIndex: partitioned, optionally compressed k-NN search (the ScaNN pipeline).

    index = PartitionedIndex(384, metric="cos", settings=PartitionSettings(partitions=256, codes="pq4"))
    index.add(vectors)                      # trains itself once `train_size` rows are in
    result = index.search(queries, k=10, probe=32)   # probe / rerank: None = the index's setting
    index.remove([3]); index.upsert(v, ids=[7]); index.save("dir"); PartitionedIndex.load("dir")

Storage: each partition's code rows live in fixed-size pages (`_paged.PagedLists`), so any run
of consecutive pages is one tensor view. With `spill` (SOAR, Sun et al. 2023) every row is also
stored in a second partition, chosen so that its residual there is nearly orthogonal to the
first one; a query then finds a neighbour through either partition, which needs far fewer
probed partitions for the same recall (candidates found twice are counted once).

Pipeline of one search (a block of queries at a time):
 1. partition scores: one matrix product queries x centres; each query probes its best
    partitions (<q, c>; <q, c> - |c|^2/2 for L2): `probe` of them, or by default (adaptive)
    those within a calibrated score gap of its best, `probe` on average (`SearchSettings`);
 2. grouped scoring: the (query, page) pairs of the probed partitions are sorted by page; each
    run of consecutive probed pages (up to GROUP_BYTES of bf16 rows, GROUP_GAP unprobed pages
    skipped inside it) is scored by one batched bf16 matrix product
    [pages, page rows, d'] x [pages, d', their queries (padded)] (codes are decoded to bf16
    rows first: `codes.Int8Codes`, `codes.ProductQuantizer`; d' = d, or fewer with
    `scan_dims`, where rows and queries are projected on the sample's leading principal
    directions), and each pair's scores are copied as a row into a per-query buffer that
    concatenates the query's pages;
 3. candidates: the exact `rerank` best of every query's buffer (`topk.exact_topk_rows`);
 4. re-ranking: exact fp32 scores of the candidates from the stored vectors, then the top k.
    With keep_vectors=False (compressed-only) there is no step 4: the top k by code score is
    returned and the reported scores are those estimates.

Training: partitions are k-means centres of a sample (anisotropic k-means when
`anisotropic_partitions`), numbered from the most to the least often probed by the sample (so
neighbouring pages get similar numbers of queries and the padded products waste little). PQ
codes are trained on the residuals x - centre with the anisotropic loss at threshold T
(eta = (d - 1) T^2 / (1 - T^2) for T relative to each row's norm; L2 uses eta = 1). bf16/int8
codes are stored projected when the sample's energy sits in few directions (scan_dims="auto":
as few dims as keep 99.5% of the sample's own top-10 among its best 20 by projected score).
The adaptive probe's gap for every probe value is calibrated on the sample too (`probe_gap`).
After training, new rows are assigned to the partition with the least loss (and spilled to a
second one) and encoded on insert; removals move the partition's last row into the hole, so
add / upsert / remove cost O(batch) and show in the next search; nothing is rebuilt.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading

import numpy as np
import torch

from .. import _scan
from .._checks import as_id_set, as_ids, as_matrix, check_k
from .._idmap import IdMap
from .._types import METRICS, SearchResult, check_metric
from ..search import finish, normalize_rows, rank_bias
from ..topk import exact_topk_rows
from ._paged import PagedLists
from .avq import assignment_loss, avq_kmeans, eta_from_threshold
from .codes import Int8Codes, ProductQuantizer, calibrated_dims, check_block_dims, principal_directions

CODE_TYPES = ("bf16", "int8", "pq4")
ASSIGN_BLOCK = 8192  # rows assigned to partitions at once (bounds the [rows, partitions] temporaries)
MAX_TRAIN_PER_PARTITION = 128  # k-means sample: at most this many rows per partition
PQ_TRAIN_ROWS = 16384  # PQ codebooks are trained on at most this many residuals
SOAR_LAMBDA = 2.0  # weight of the residual-parallel term when choosing the spill partition
GROUP_BYTES = 16 << 20  # bf16 page rows scored by one batched matrix product (few large products)
GROUP_GAP = 32  # a run of probed pages spans gaps of up to this many unprobed pages (scored, ignored):
# fewer, larger products beat skipping pages when most pages are probed (1M x 128, probe 2: -30%)
GROUP_SCORES = 4 << 20  # most scores (page rows x padded queries) one such product returns
REUSE_SCRATCH = True  # CPU searches reuse their large scratch tensors (see _Scratch)
SCAN_K, SCAN_RECALL = 10, 0.995  # scan_dims="auto": the first pass keeps this share of the top-10 in its best 20
PQ_PAGE_ROWS = 32  # rows per page of pq4 codes (bf16/int8 use _paged.PAGE_ROWS)
GAP_SAMPLE, GAP_COLUMNS = 1024, 256  # adaptive probe: calibration rows, and the most partitions it plans for
ADAPTIVE_SPREAD = 2  # adaptive probe: one query searches at most this many times `probe` partitions
# (debian, 512 partitions: spread 2 at probe 4 gave recall 0.913 at 44.5k q/s, spread 4 0.910 at 38.7k)
FORMAT = "peakknn.partitioned"
VERSION = 2


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """How an index is built (fixed at construction).

    partitions: k-means partitions; codes: "bf16" (rows in bfloat16), "int8" (per-dimension
    scalar codes) or "pq4" (4-bit product quantization of residuals, `block_dims` dims per
    16-centre block); threshold: anisotropic threshold T for PQ training (None = plain PQ);
    anisotropic_partitions: partition with the anisotropic loss too; keep_vectors: keep fp32
    vectors for exact re-ranking (False = compressed-only); scan_dims: bf16/int8 codes hold each
    row projected on the leading principal directions of the training sample
    (`codes.principal_directions`): an int m keeps m of them; "auto" (the default) the fewest
    (a multiple of 16) whose first pass keeps SCAN_RECALL of the sample's own top-10 among its
    best 20 (`codes.calibrated_dims`; all dims = no projection). The first pass then reads
    m / dim of the bytes and re-ranking restores exact scores (None = all dims, no projection;
    an int needs keep_vectors and bf16/int8 codes, "auto" becomes None without them); spill:
    also store every row in a second partition (SOAR; None = for bf16/int8 codes with
    keep_vectors: it doubles the codes, and two differing pq4 estimates of one row help less);
    train_size: train automatically when this many rows are in (None = only `train()`;
    default 40 * partitions); iters: k-means iterations; seed: seeds training.
    """

    partitions: int = 256
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
        _positive_int("partitions", self.partitions)
        if self.codes not in CODE_TYPES:
            raise ValueError(f"codes must be one of {CODE_TYPES}, got {self.codes!r}")
        _positive_int("block_dims", self.block_dims)
        if isinstance(self.scan_dims, str):
            if self.scan_dims != "auto":
                raise ValueError(f"scan_dims must be a positive int, 'auto' or None, got {self.scan_dims!r}")
            if self.codes == "pq4" or not self.keep_vectors:  # nothing to re-rank with: no projection
                object.__setattr__(self, "scan_dims", None)
        elif self.scan_dims is not None:
            _positive_int("scan_dims", self.scan_dims)
            object.__setattr__(self, "scan_dims", int(self.scan_dims))
            if self.codes == "pq4" or not self.keep_vectors:
                raise ValueError(
                    f"scan_dims={self.scan_dims} needs codes 'bf16' or 'int8' and keep_vectors=True "
                    f"(the projected first pass is re-ranked exactly), got codes={self.codes!r}, keep_vectors={self.keep_vectors}"
                )
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) or None, got {self.threshold!r}")
        if self.spill is None:
            object.__setattr__(self, "spill", bool(self.keep_vectors) and self.codes != "pq4")
        if not isinstance(self.spill, bool):
            raise ValueError(f"spill must be True, False or None, got {self.spill!r}")
        if self.train_size == -1:
            object.__setattr__(self, "train_size", 40 * self.partitions)
        if self.train_size is not None:
            _positive_int("train_size", self.train_size)
        _positive_int("iters", self.iters)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How a search runs (the index's defaults; each search may override).

    probe: partitions searched per query; rerank: candidates re-scored exactly in fp32
    (None = 2k for bf16/int8 codes, 10k for pq4; ignored when the index keeps no vectors);
    adaptive (default): probe becomes a mean. Each query searches the partitions whose centre
    score is within a gap g of its best centre's (gaps divided by |q|), at least 1 and at most
    ADAPTIVE_SPREAD * probe of them, where g is set so that the training sample's rows, as
    queries, search `probe` partitions on average (`PartitionedIndex.probe_gap`). Queries near
    partition borders search more partitions, and queries deep inside one search fewer (debian:
    recall 0.913 at probe 4 against 0.910 at a fixed probe 6, 5% faster). probe >=
    min(partitions, GAP_COLUMNS) searches that many partitions, as without adaptive.
    """

    probe: int = 16
    rerank: int | None = None
    adaptive: bool = True

    def __post_init__(self):
        _positive_int("probe", self.probe)
        if self.rerank is not None:
            _positive_int("rerank", self.rerank)
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(self.adaptive).__name__}")


class PartitionedIndex:
    """A partitioned, optionally compressed index (see module docstring).

    dim: vector dimension; metric: "ip" | "l2" | "cos"; settings: PartitionSettings;
    search_settings: SearchSettings (defaults of `search`); device: "cpu" (CUDA tensors work
    through the same torch code but the loop over page groups is tuned for the CPU).
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "ip",
        settings: PartitionSettings | None = None,
        search_settings: SearchSettings | None = None,
        device: str | torch.device = "cpu",
    ):
        _positive_int("dim", dim)
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self.settings = settings if settings is not None else PartitionSettings()
        self.search_settings = search_settings if search_settings is not None else SearchSettings()
        if not isinstance(self.settings, PartitionSettings):
            raise TypeError(f"settings must be a PartitionSettings, got {type(self.settings).__name__}")
        if not isinstance(self.search_settings, SearchSettings):
            raise TypeError(f"search_settings must be a SearchSettings, got {type(self.search_settings).__name__}")
        if self.settings.codes == "pq4":
            check_block_dims(self.dim, self.settings.block_dims)
        if isinstance(self.settings.scan_dims, int) and self.settings.scan_dims > self.dim:
            raise ValueError(f"scan_dims={self.settings.scan_dims} is more than dim={self.dim}")
        self.device = torch.device(device)
        # rows by slot
        self._vectors = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        self._scratch = _Scratch()
        self._slot_ids = torch.empty(0, dtype=torch.int64)  # -1 = free
        self._where = np.empty((0, self._copies, 2), dtype=np.int32)  # per copy: (partition, position); -1 = none
        self._free = np.empty(0, dtype=np.int64)
        self._ids = IdMap()
        self._next_id = 0
        # partitions
        self._centres: torch.Tensor | None = None
        self._codec: Int8Codes | ProductQuantizer | None = None
        self._projection: torch.Tensor | None = None  # f32[dim, m]: see PartitionSettings.scan_dims
        self._probe_gaps: torch.Tensor | None = None  # f32[min(P, GAP_COLUMNS)]: see probe_gap
        self._lists: PagedLists | None = None

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"PartitionedIndex(dim={self.dim}, metric={self.metric!r}, partitions={self.settings.partitions}, "
            f"codes={self.settings.codes!r}, scan_dims={self.settings.scan_dims!r}, keep_vectors={self.settings.keep_vectors}, "
            f"spill={self.settings.spill}, "
            f"size={len(self)}, trained={self.is_trained})"
        )

    @property
    def is_trained(self) -> bool:
        return self._centres is not None

    @property
    def partition_sizes(self) -> np.ndarray:
        """i64[partitions] rows stored in each partition, spilled copies included (empty before training)."""
        return self._lists.sizes.copy() if self._lists is not None else np.zeros(0, dtype=np.int64)

    def probe_gap(self, probe: int) -> float | None:
        """Centre-score gap (per unit of |q|) within which an adaptive search with this `probe`
        takes a query's partitions: calibrated at training so that the training sample's rows,
        as queries, take `probe` partitions on average (of at most ADAPTIVE_SPREAD * probe).
        None where probe >= min(partitions, GAP_COLUMNS): then every query takes `probe`."""
        if self._probe_gaps is None:
            raise ValueError("adaptive probing needs an index trained by this version: call train() again")
        return None if probe >= self._probe_gaps.shape[0] else float(self._probe_gaps[probe - 1])

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (capacities included) and its id map."""
        tensors = [self._vectors, self._slot_ids]
        if self._centres is not None:
            tensors.append(self._centres)
        if self._codec is not None:
            tensors.extend(self._codec.state().values())
        if self._projection is not None:
            tensors.append(self._projection)
        if self._probe_gaps is not None:
            tensors.append(self._probe_gaps)
        pages = self._lists.nbytes() if self._lists is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + pages + self._where.nbytes + self._free.nbytes + self._ids.nbytes

    @property
    def _copies(self) -> int:
        """Partitions each row is stored in: 2 with spill (and more than one partition), else 1."""
        return 2 if self.settings.spill and self.settings.partitions > 1 else 1

    # ----------------------------------------------------------------- training
    def train(self, sample=None) -> None:
        """Learn partitions (and codes) from sample f32[m, dim] (default: the rows added so far),
        then assign and encode every stored row. Retraining needs the stored vectors."""
        if self.is_trained and not self.settings.keep_vectors:
            raise ValueError("a compressed-only index (keep_vectors=False) cannot be retrained")
        if sample is None:
            x = self._vectors[self._live_slots()]
            if x.shape[0] == 0:
                raise ValueError("no rows to train on: pass a sample or add vectors first")
        else:
            x = self._prepare(sample, "sample")
        s = self.settings
        if s.partitions > x.shape[0]:
            raise ValueError(f"partitions={s.partitions} is more than the {x.shape[0]} training rows")
        g = torch.Generator().manual_seed(s.seed)
        most = MAX_TRAIN_PER_PARTITION * s.partitions
        if x.shape[0] > most:
            x = x[torch.randperm(x.shape[0], generator=g)[:most].to(x.device)]
        centres, assign = avq_kmeans(x, s.partitions, eta=self._partition_eta(), iters=s.iters, seed=s.seed)
        codec, projection = None, None
        if s.scan_dims == "auto":
            basis = principal_directions(x, self.dim)
            bias = rank_bias(x, self.metric) if self.metric == "l2" else None  # the scan adds it exactly
            m = calibrated_dims(x, basis, SCAN_K, 2 * SCAN_K, SCAN_RECALL, bias=bias, seed=s.seed)
            projection = basis[:, :m].contiguous() if m < self.dim else None
        elif s.scan_dims is not None:
            projection = principal_directions(x, s.scan_dims)
        if s.codes == "int8":
            codec = Int8Codes.train(x if projection is None else x @ projection)
        elif s.codes == "pq4":
            residuals = x - centres[assign]
            eta = self._code_eta()
            units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
            pick = torch.randperm(x.shape[0], generator=g)[:PQ_TRAIN_ROWS].to(x.device)
            codec = ProductQuantizer.train(residuals[pick], s.block_dims, eta=eta, directions=units[pick], seed=s.seed)
        self._centres, self._codec = _by_popularity(centres, x, self.metric, self.search_settings.probe), codec
        self._projection = projection
        self._probe_gaps = _probe_gaps(x[torch.randperm(x.shape[0], generator=g)[:GAP_SAMPLE].to(x.device)], self._centres, self.metric)
        self._lists = self._new_lists()
        self._where[:] = -1
        slots = self._live_slots()
        self._place(slots, self._vectors[slots])
        if not s.keep_vectors:
            self._vectors = self._vectors[:0]

    # ----------------------------------------------------------------- updates
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Insert rows f32[m, dim]; ids i64[m] (default: next free ids). Returns the ids.
        Raises ValueError (storing nothing) if an id is already present: use `upsert`."""
        x = self._prepare(vectors, "vectors")
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
        else:
            new_ids = as_ids("ids", ids, x.shape[0])
            present = new_ids[self._ids.lookup(new_ids) >= 0]
            if present.size:
                raise ValueError(f"id {int(present[0])} is already in the index; use upsert to replace it")
        self._insert(new_ids, x)
        return torch.from_numpy(new_ids)

    def upsert(self, vectors, ids) -> torch.Tensor:
        """Insert or replace rows: ids already present get the new vectors, others are added."""
        x = self._prepare(vectors, "vectors")
        new_ids = as_ids("ids", ids, x.shape[0])
        present = new_ids[self._ids.lookup(new_ids) >= 0]
        if present.size:
            self._delete(present)
        self._insert(new_ids, x)
        return torch.from_numpy(new_ids)

    def remove(self, ids) -> None:
        """Delete ids. Unknown ids raise ValueError and nothing is removed."""
        gone = as_ids("ids", ids)
        missing = gone[self._ids.lookup(gone) < 0]
        if missing.size:
            raise ValueError(f"id {int(missing[0])} is not in the index (nothing was removed)")
        self._delete(gone)

    def get(self, ids) -> torch.Tensor:
        """f32[m, dim] stored vectors of ids (needs keep_vectors or an untrained index)."""
        wanted = as_ids("ids", ids)
        slots = self._ids.lookup(wanted)
        if (slots < 0).any():
            raise ValueError(f"id {int(wanted[slots < 0][0])} is not in the index")
        if self._vectors.shape[0] == 0 and slots.size:
            raise ValueError("this index keeps no vectors (keep_vectors=False): only codes are stored")
        return self._vectors[torch.from_numpy(slots).to(self.device)].clone()

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries,
        k: int,
        *,
        probe: int | None = None,
        rerank: int | None = None,
        adaptive: bool | None = None,
        allowed_ids=None,
        max_memory: int = _scan.DEFAULT_MEMORY,
    ) -> SearchResult:
        """k nearest stored vectors of each query f32[nq, dim] (or [dim]).

        probe: partitions searched per query (None = the index's setting; capped at the
        number of partitions); rerank: candidates re-scored exactly (None = the index's
        setting); adaptive: probe is a mean over queries (see SearchSettings; None = the
        index's setting, which falls back to a fixed probe for an index loaded from a file
        written before adaptive probing existed); allowed_ids: only these ids may be returned
        (ids not in the index are ignored; only allowed rows of the probed partitions are
        searched, so a selective filter may need a larger probe). Returns SearchResult with user ids; -1 (score -inf / +inf)
        where fewer than k rows were found in the probed partitions.
        """
        k = check_k(k)
        probe = self.search_settings.probe if probe is None else probe
        rerank = self.search_settings.rerank if rerank is None else rerank
        if adaptive is None:  # the index's setting, where the index has the calibration
            adaptive = self.search_settings.adaptive and self._probe_gaps is not None
        SearchSettings(probe=probe, rerank=rerank, adaptive=adaptive)  # validates
        if not self.is_trained:
            raise ValueError(
                "the index is not trained: call train(sample) or add at least train_size="
                f"{self.settings.train_size} rows first"
            )
        if len(self) == 0:
            raise ValueError("cannot search an empty index: add vectors first")
        q = self._prepare(queries, "queries")
        if q.shape[0] == 0:
            empty = torch.empty(0, k)
            return SearchResult(scores=empty, ids=empty.long())
        probe = min(probe, self.settings.partitions)
        gap = self.probe_gap(probe) if adaptive else None
        width = probe if gap is None else min(self._probe_gaps.shape[0], ADAPTIVE_SPREAD * probe)
        depth = self._rerank_depth(k, rerank)
        bias = self._lists.bias if allowed_ids is None else self._filtered_bias(allowed_ids)
        centre_bias = rank_bias(self._centres, self.metric) if self.metric == "l2" else None
        page_counts = self._lists.table()[2].to(q.device)
        # inner-product partition choice tolerates bf16 scores; L2 ranks and pq4 offsets keep fp32
        centres16 = self._centres.to(torch.bfloat16) if self.metric != "l2" and self.settings.codes != "pq4" else None
        outer = int(max(1, min(4096, max_memory // (8 * self.settings.partitions))))
        ranks, slots = [], []
        for i in range(0, q.shape[0], outer):
            qo = q[i : i + outer]
            dot_c = qo @ self._centres.T if centres16 is None else (qo.to(torch.bfloat16) @ centres16.T).float()  # [nq, P]
            top, pids = torch.topk(dot_c if centre_bias is None else dot_c + centre_bias, width, dim=1)
            take = None  # all `probe` partitions of every query
            if gap is not None:  # the partitions within gap * |q| of each query's best
                take = (top[:, :1] - top) <= gap * torch.linalg.vector_norm(qo, dim=1, keepdim=True)
            # the score buffer holds (most pages of one query) x page rows per query: split the
            # block where that would exceed max_memory (12 bytes per buffer entry and its indices)
            pages = page_counts[pids] if take is None else page_counts[pids] * take
            widest = int(pages.sum(1).max()) * self._lists.page_rows
            inner = int(max(1, max_memory // (12 * max(1, widest))))
            for j in range(0, qo.shape[0], inner):
                chosen = None if take is None else take[j : j + inner]
                r, s = self._search_block(qo[j : j + inner], dot_c[j : j + inner], pids[j : j + inner], chosen, k, depth, bias)
                ranks.append(r)
                slots.append(s)
        rank, slot = torch.cat(ranks), torch.cat(slots)
        ids = self._slot_ids[slot.cpu()].to(slot.device)
        result = finish(rank, ids, self.metric)
        return SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu())

    def _search_block(
        self,
        q: torch.Tensor,
        dot_c: torch.Tensor,
        pids: torch.Tensor,
        take: torch.Tensor | None,
        k: int,
        depth: int | None,
        bias: torch.Tensor,
    ):
        """Top-k (rank scores, slots) of queries q [nq, d] that probe partitions pids i64[nq, w]
        (those where take bool[nq, w] is True, or all when take is None; dot_c: their
        <q, centre> [nq, P]; bias: f32[pages, page rows] rank bias, -inf = skip)."""
        dev, nq, lists = q.device, q.shape[0], self._lists
        rows_per_page = lists.page_rows
        pairs = _PagePairs(lists, pids, take)
        # bf16 scores suffice to pick candidates that are re-ranked exactly; estimates that are
        # returned as results (no re-ranking) and residual offsets keep fp32.
        residual = self.settings.codes == "pq4"
        exact_later = depth is not None and not residual and self.metric != "l2"
        scratch = self._scratch
        buf = scratch.take("scores", (nq * pairs.width, rows_per_page), torch.bfloat16 if exact_later else torch.float32, dev)
        buf.fill_(float("-inf"))
        qp = q if self._projection is None else q @ self._projection
        q_scan = self._codec.scan_queries(qp) if self._codec is not None else qp.to(torch.bfloat16)
        offset = dot_c[pairs.query, pairs.partition] if residual else None  # <q, centre> per pair
        group_pages = max(1, GROUP_BYTES // (2 * rows_per_page * q_scan.shape[1]))
        for g0, g1, lo, hi, most in pairs.groups(group_pages, max(1, GROUP_SCORES // rows_per_page), GROUP_GAP):
            local, rank = pairs.page[lo:hi] - g0, pairs.rank[lo:hi]
            padded = torch.zeros((g1 - g0) * most, dtype=torch.int64, device=dev)  # queries of each page, padded
            padded[local * most + rank] = pairs.query[lo:hi]
            codes = lists.codes[g0:g1]
            rows = codes if self._codec is None else self._codec.scan_rows(codes.flatten(0, 1)).view(g1 - g0, rows_per_page, -1)
            # rows x queries (not the transpose): the pages stream through as the first operand
            queries = scratch.take("queries", (padded.numel(), q_scan.shape[1]), q_scan.dtype, dev)
            torch.index_select(q_scan, 0, padded, out=queries)
            queries = queries.view(g1 - g0, most, -1).transpose(1, 2)
            if exact_later:  # the bias (0, or -inf for empty rows) rides along in the product
                s = torch.baddbmm(bias[g0:g1].to(torch.bfloat16).unsqueeze(2).expand(-1, -1, most), rows, queries)
            else:
                s = torch.bmm(rows, queries).float() + bias[g0:g1].unsqueeze(2)
            s = s.transpose(1, 2)[local, rank]  # [pairs, page rows]
            if residual:
                s += offset[lo:hi].unsqueeze(1)
            buf.index_copy_(0, pairs.dest[lo:hi], s)
        want = depth if depth is not None else k  # distinct candidates wanted
        best, pos = exact_topk_rows(buf.view(nq, -1), min(want * self._copies, buf.numel() // nq))
        page = pairs.page_table().gather(1, pos // rows_per_page)
        slot = lists.slots[page.cpu(), (pos % rows_per_page).cpu()].to(dev)
        valid = (best > float("-inf")) & (slot >= 0)
        if self._copies > 1:  # rows found through both of their partitions count once
            valid &= ~_repeats(slot.masked_fill(~valid, -1))
            best, pick = torch.topk(best.masked_fill(~valid, float("-inf")), min(want, best.shape[1]), dim=1)
            slot, valid = slot.gather(1, pick), valid.gather(1, pick)
        slot = slot.clamp_min(0)
        if depth is not None:
            return _scan.rescore(_Vectors(self), q, slot, valid, k, self.metric, _scan.DEFAULT_MEMORY)
        best = best.masked_fill(~valid, float("-inf"))
        if self.metric == "l2":  # scan rank <q, x> - |x|^2/2 -> -|q - x|^2
            best = 2 * best - (q * q).sum(1, keepdim=True)
        if best.shape[1] < k:
            best = torch.cat([best, best.new_full((nq, k - best.shape[1]), float("-inf"))], dim=1)
            slot = torch.cat([slot, slot.new_zeros((nq, k - slot.shape[1]))], dim=1)
        return best, slot.masked_fill(best == float("-inf"), 0)

    def _filtered_bias(self, allowed_ids) -> torch.Tensor:
        """The pages' rank bias with -inf on every row whose id is not in allowed_ids."""
        slots = self._ids.lookup(as_id_set("allowed_ids", allowed_ids))
        keep = torch.zeros(self._slot_ids.shape[0] + 1, dtype=torch.bool)  # last entry: empty rows
        keep[torch.from_numpy(slots[slots >= 0])] = True
        rows = self._lists.slots
        mask = keep[torch.where(rows >= 0, rows, keep.shape[0] - 1)].to(self._lists.bias.device)
        return self._lists.bias.masked_fill(~mask, float("-inf"))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory `path` atomically (safetensors + JSON, never pickle)."""
        from .. import io

        arrays = {}
        slots = torch.from_numpy(self._live_slots())
        if self.is_trained:  # every partition's rows in position order, each naming its row in `ids`
            row_of = torch.full((self._slot_ids.shape[0],), -1, dtype=torch.int64)
            row_of[slots] = torch.arange(slots.numel())
            parts = [self._lists.rows(p) for p in range(self.settings.partitions)]
            arrays["codes"] = torch.cat([codes for codes, _, _ in parts])
            arrays["entry_rows"] = row_of[torch.cat([entry_slots for _, entry_slots, _ in parts])]
            arrays["bias"] = torch.cat([bias for _, _, bias in parts])
            arrays["partition_sizes"] = torch.from_numpy(self._lists.sizes.copy())
            arrays["centres"] = self._centres
            if self._codec is not None:
                arrays.update(self._codec.state())
            if self._projection is not None:
                arrays["projection"] = self._projection
            arrays["probe_gaps"] = self._probe_gaps
        arrays["ids"] = self._slot_ids[slots]
        if self._vectors.shape[0]:
            arrays["vectors"] = self._vectors[slots.to(self.device)]
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "metric": self.metric,
            "settings": dataclasses.asdict(self.settings),
            "search_settings": dataclasses.asdict(self.search_settings),
            "trained": self.is_trained,
            "count": len(self),
            "next_id": self._next_id,
        }
        io.write_bundle(path, manifest, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "PartitionedIndex":
        """Read an index written by `save`; corrupt or mismatched files raise ValueError."""
        from .. import io

        manifest, arrays, where = io.read_bundle(path, FORMAT, VERSION)
        try:
            dim, metric, count, next_id = (manifest[key] for key in ("dim", "metric", "count", "next_id"))
            settings = PartitionSettings(**manifest["settings"])
            search_settings = SearchSettings(**manifest["search_settings"])
            trained = manifest["trained"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad manifest fields: {e}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (dim, count, next_id)) or metric not in METRICS:
            raise ValueError(f"{where}: bad dim/count/next_id/metric in manifest")
        index = cls(dim, metric=metric, settings=settings, search_settings=search_settings, device=device)
        ids = _array(arrays, "ids", torch.int64, (count,), where).numpy()
        if ids.size and (ids.min() < 0 or np.unique(ids).size != ids.size or ids.max() >= next_id):
            raise ValueError(f"{where}: ids must be unique, non-negative and below next_id")
        vectors = arrays.get("vectors")
        if vectors is not None:
            vectors = _array(arrays, "vectors", torch.float32, (count, dim), where)
            if vectors.numel() and not bool(torch.isfinite(vectors).all()):
                raise ValueError(f"{where}: vectors contain NaN or inf")
        elif settings.keep_vectors or not trained:
            raise ValueError(f"{where}: array 'vectors' is missing")
        index._next_id = next_id
        if not trained:
            index._insert(ids, vectors.to(index.device), auto_train=False)
            return index
        index._restore(arrays, ids, vectors, where)
        return index

    # ----------------------------------------------------------------- internals
    def _prepare(self, vectors, name: str) -> torch.Tensor:
        x = as_matrix(name, vectors, self.dim).to(device=self.device, dtype=torch.float32)
        if self.metric == "cos":
            x = normalize_rows(x, name)
        return x

    def _partition_eta(self) -> float:
        s = self.settings
        if not s.anisotropic_partitions or s.threshold is None or self.metric == "l2" or self.dim < 2:
            return 1.0
        return eta_from_threshold(s.threshold, self.dim)

    def _code_eta(self) -> float:
        s = self.settings
        if s.threshold is None or self.metric == "l2" or self.dim < 2:
            return 1.0
        return eta_from_threshold(s.threshold, self.dim)

    def _rerank_depth(self, k: int, rerank: int | None) -> int | None:
        """Candidates re-scored exactly, or None when the index keeps no vectors."""
        if not self.settings.keep_vectors:
            return None
        if rerank is None:
            rerank = 10 * k if self.settings.codes == "pq4" else 2 * k
        return max(k, rerank)

    def _new_lists(self) -> PagedLists:
        codes, width = self.settings.codes, self._scan_width
        if codes == "bf16":
            dtype = torch.bfloat16
        elif codes == "int8":
            dtype = torch.int8
        else:  # decoded per page before scoring anyway: small pages keep the padding small
            width, dtype = (self.dim // self.settings.block_dims + 1) // 2, torch.uint8
            return PagedLists(self.settings.partitions, width, dtype, self.device, page_rows=PQ_PAGE_ROWS)
        return PagedLists(self.settings.partitions, width, dtype, self.device)

    @property
    def _scan_width(self) -> int:
        """Dimensions of the rows that bf16/int8 codes hold (the projection's, or all)."""
        return self._projection.shape[1] if self._projection is not None else self.dim

    def _encode(self, x: torch.Tensor, partition: torch.Tensor) -> torch.Tensor:
        if self._projection is not None:
            x = x @ self._projection
        if self._codec is None:
            return x.to(torch.bfloat16)
        if isinstance(self._codec, Int8Codes):
            return self._codec.encode(x)
        units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        return self._codec.encode(x - self._centres[partition], units, self._code_eta())

    def _assign(self, x: torch.Tensor) -> torch.Tensor:
        """i64[m, copies] partitions of rows x: the least partitioning loss, then (with spill) the
        SOAR choice: least |x - c|^2 + SOAR_LAMBDA * <x - c, r>^2 over the other partitions,
        r the unit residual in the first, so the two residuals are nearly orthogonal."""
        eta, c = self._partition_eta(), self._centres
        c2 = (c * c).sum(1)
        parts = []
        for i in range(0, x.shape[0], ASSIGN_BLOCK):
            xb = x[i : i + ASSIGN_BLOCK]
            dot = xb @ c.T
            if eta == 1.0:  # |x - c|^2 up to the row's constant |x|^2
                first = (c2 - 2 * dot).argmin(1)
            else:
                first = assignment_loss(xb, c, eta).argmin(1)
            if self._copies == 1:
                parts.append(first.unsqueeze(1))
                continue
            r = xb - c[first]
            r = r / torch.linalg.vector_norm(r, dim=1, keepdim=True).clamp_min(1e-30)
            proj = (xb * r).sum(1, keepdim=True) - r @ c.T  # <x - c, r>
            loss = (c2 - 2 * dot).add_(proj.square_(), alpha=SOAR_LAMBDA)  # SOAR loss up to |x|^2
            loss.scatter_(1, first.unsqueeze(1), float("inf"))
            parts.append(torch.stack([first, loss.argmin(1)], dim=1))
        return torch.cat(parts) if parts else torch.empty(0, self._copies, dtype=torch.int64, device=x.device)

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._slot_ids.numpy() >= 0)

    def _take_slots(self, m: int) -> np.ndarray:
        if m > self._free.size:
            old = self._slot_ids.shape[0]
            new = max(old + m - self._free.size, 2 * old, 1024)
            if self.settings.keep_vectors or not self.is_trained:
                self._vectors = torch.cat([self._vectors, self._vectors.new_zeros(new - old, self.dim)])
            self._slot_ids = torch.cat([self._slot_ids, torch.full((new - old,), -1, dtype=torch.int64)])
            self._where = np.concatenate([self._where, np.full((new - old, self._copies, 2), -1, dtype=np.int32)])
            self._free = np.concatenate([np.arange(new - 1, old - 1, -1, dtype=np.int64), self._free])
        taken = self._free[::-1][:m].copy()
        self._free = self._free[: self._free.size - m]
        return taken

    def _insert(self, ids: np.ndarray, x: torch.Tensor, auto_train: bool = True) -> None:
        slots = self._take_slots(x.shape[0])
        t = torch.from_numpy(slots)
        if self._vectors.shape[0]:
            self._vectors[t.to(self.device)] = x
        self._slot_ids[t] = torch.from_numpy(ids)
        self._ids.set(ids, slots)
        if ids.size:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        if self.is_trained:
            self._place(slots, x)
        elif auto_train and self.settings.train_size is not None and len(self) >= self.settings.train_size:
            self.train()

    def _place(self, slots: np.ndarray, x: torch.Tensor) -> None:
        """Assign rows to partitions (with spill: two), encode them and append them there."""
        if slots.size == 0:
            return
        parts = self._assign(x)  # [m, copies]
        # every copy of every row as one entry; a partition's entries are appended together, in
        # partition order, so each partition's pages stay consecutive
        part = parts.T.reshape(-1).cpu()
        codes = torch.cat([self._encode(x, parts[:, c]) for c in range(self._copies)])
        bias = rank_bias(x, self.metric).repeat(self._copies)
        entry_slots, entry_copy = np.tile(slots, self._copies), np.repeat(np.arange(self._copies), slots.size)
        self._append_entries(part, codes, entry_slots, entry_copy, bias)

    def _append_entries(self, part: torch.Tensor, codes: torch.Tensor, entry_slots: np.ndarray, entry_copy: np.ndarray, bias: torch.Tensor) -> None:
        """Append entries (partition i64[e], codes [e, width], slot and copy i64[e], bias f32[e])
        to their partitions, one partition at a time, and record where each entry landed."""
        order = torch.argsort(part, stable=True)
        counts = torch.bincount(part, minlength=self.settings.partitions).numpy()
        self._lists.reserve(self._lists.pages_needed(counts), exact=self._lists.page_count == 0)
        ends = np.cumsum(counts)
        for p in np.flatnonzero(counts).tolist():
            entries = order[ends[p] - counts[p] : ends[p]]
            e, at = entries.numpy(), entries.to(codes.device)
            pos = self._lists.append(p, codes[at], torch.from_numpy(entry_slots[e]), bias[at.to(bias.device)])
            self._where[entry_slots[e], entry_copy[e], 0] = p
            self._where[entry_slots[e], entry_copy[e], 1] = pos

    def _delete(self, ids: np.ndarray) -> None:
        slots = self._ids.lookup(ids)
        for slot in slots.tolist():
            for p, pos in self._where[slot].tolist():
                if p < 0:
                    continue
                moved = self._lists.remove(p, pos)
                if moved is not None:  # the partition's last row now sits at pos
                    copy = int(np.flatnonzero(self._where[moved, :, 0] == p)[0])
                    self._where[moved, copy, 1] = pos
            self._where[slot] = -1
        t = torch.from_numpy(slots)
        self._slot_ids[t] = -1
        if self._vectors.shape[0]:
            self._vectors[t.to(self.device)] = 0.0
        self._ids.set(ids, np.full(ids.size, -1, dtype=np.int64))
        self._free = np.concatenate([self._free, slots[::-1]])

    def _restore(self, arrays: dict, ids: np.ndarray, vectors: torch.Tensor | None, where) -> None:
        """Rebuild a trained index's partitions from saved arrays (entries in partition order)."""
        s, count, copies = self.settings, ids.size, self._copies
        centres = _array(arrays, "centres", torch.float32, (s.partitions, self.dim), where)
        sizes = _array(arrays, "partition_sizes", torch.int64, (s.partitions,), where).numpy()
        entries = count * copies
        if (sizes < 0).any() or int(sizes.sum()) != entries:
            raise ValueError(f"{where}: partition sizes do not add up to {entries} entries ({count} rows x {copies})")
        projection = arrays.get("projection")
        if isinstance(s.scan_dims, int) or (s.scan_dims == "auto" and projection is not None):  # "auto" may keep all dims
            width = s.scan_dims if isinstance(s.scan_dims, int) else (projection.shape[-1] if projection.ndim else 0)
            if not 1 <= width <= self.dim:
                raise ValueError(f"{where}: array 'projection' must be f32[{self.dim}, m], 1 <= m <= {self.dim}")
            self._projection = _array(arrays, "projection", torch.float32, (self.dim, width), where).to(self.device)
        if "probe_gaps" in arrays:  # absent from files written before adaptive probing
            gaps = _array(arrays, "probe_gaps", torch.float32, (min(s.partitions, GAP_COLUMNS),), where)
            if bool(gaps.isnan().any()) or bool((gaps < 0).any()):
                raise ValueError(f"{where}: probe_gaps must be non-negative numbers")
            self._probe_gaps = gaps.to(self.device)
        lists = self._new_lists()
        codes = _array(arrays, "codes", lists.codes.dtype, (entries, lists.codes.shape[2]), where)
        rows = _array(arrays, "entry_rows", torch.int64, (entries,), where)
        if entries and (rows.min() < 0 or rows.max() >= count or (torch.bincount(rows, minlength=count) != copies).any()):
            raise ValueError(f"{where}: entry_rows must name every row exactly {copies} time(s)")
        bias = _array(arrays, "bias", torch.float32, (entries,), where)
        if s.codes == "int8":
            self._codec = Int8Codes(_array(arrays, "int8_scale", torch.float32, (self._scan_width,), where).to(self.device))
        elif s.codes == "pq4":
            blocks = self.dim // s.block_dims
            self._codec = ProductQuantizer(_array(arrays, "pq_centres", torch.float32, (blocks, 16, s.block_dims), where).to(self.device))
        tensors = [centres, bias] + list(self._codec.state().values() if self._codec else [])
        tensors += [self._projection] if self._projection is not None else []
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise ValueError(f"{where}: centres, biases, codec or projection contain NaN or inf")
        self._centres, self._lists = centres.to(self.device), lists
        slots = self._take_slots(count)
        self._slot_ids[torch.from_numpy(slots)] = torch.from_numpy(ids)
        self._ids.set(ids, slots)
        if vectors is not None:
            self._vectors = torch.zeros(self._slot_ids.shape[0], self.dim, device=self.device)
            self._vectors[torch.from_numpy(slots).to(self.device)] = vectors.to(self.device)
        else:
            self._vectors = self._vectors[:0]
        copy = np.empty(entries, dtype=np.int64)  # the n-th entry of a row is its copy n
        copy[np.argsort(rows.numpy(), kind="stable")] = np.arange(entries) % copies
        part = torch.repeat_interleave(torch.arange(s.partitions), torch.from_numpy(sizes))
        self._append_entries(part, codes.to(self.device), slots[rows.numpy()], copy, bias)


class _Vectors:
    """The index's fp32 vectors as an engine table for `_scan.rescore`."""

    def __init__(self, index: PartitionedIndex):
        self.index = index

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.index._vectors.index_select(0, slots.reshape(-1)).view(*slots.shape, self.index.dim)

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return self.index._slot_ids[slots.cpu()].to(slots.device) >= 0


class _Scratch(threading.local):
    """Per-thread scratch tensors that one search after another reuses.

    On CPU a fresh tensor of a few MB or more is fresh memory from the OS, and its first write
    costs a page fault per 4 KiB (a 44 MB score buffer: ~9 ms to fill, 0.8 ms when reused). A
    search takes its score buffer and query blocks from here; they stay allocated, at the size
    of the largest search so far, until the index is dropped. CUDA has a caching allocator:
    there every take is a plain allocation.
    """

    def __init__(self):
        self.tensors: dict = {}

    def take(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of `shape`, sharing memory with the last take of `name`."""
        numel = math.prod(shape)
        if not REUSE_SCRATCH or device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        held = self.tensors.get(name)
        if held is None or held.dtype != dtype or held.numel() < numel:
            held = self.tensors[name] = torch.empty(numel, dtype=dtype, device=device)
        return held[:numel].view(shape)


class _PagePairs:
    """The (query, page) pairs of one query block's probed partitions, sorted by page.

    pids: i64[nq, w] partitions of each query; take: bool[nq, w] which of them are probed
    (None = all).

    page, query, partition, dest, rank: i64[pairs] in page order, where dest = query * width +
    the pair's column among its query's pages (a row of the score buffer [nq * width, page rows])
    and rank = the pair's position among its page's pairs; width: most pages of one query.
    """

    def __init__(self, lists: PagedLists, pids: torch.Tensor, take: torch.Tensor | None = None):
        dev = pids.device
        flat_pages, first, count = (t.to(dev) for t in lists.table())
        nq = pids.shape[0]
        per_pair = count[pids] if take is None else count[pids] * take
        per_pair = per_pair.reshape(-1)  # pages of each (query, partition); 0 where not taken
        per_query = per_pair.view(nq, -1).sum(1)
        total = int(per_query.sum())
        self.width = max(1, int(per_query.max())) if nq else 1
        ramp = torch.arange(total, device=dev)
        within = ramp - (per_pair.cumsum(0) - per_pair).repeat_interleave(per_pair, output_size=total)
        page = flat_pages[first[pids].view(-1).repeat_interleave(per_pair, output_size=total) + within]
        query = torch.arange(nq, device=dev).repeat_interleave(per_query, output_size=total)
        column = ramp - (per_query.cumsum(0) - per_query).repeat_interleave(per_query, output_size=total)
        order = torch.argsort(page, stable=True)
        self.page, self.query = page[order], query[order]
        self.partition = pids.view(-1).repeat_interleave(per_pair, output_size=total)[order]
        self.dest = (query * self.width + column)[order]
        counts = torch.bincount(self.page, minlength=lists.page_count)
        self.rank = ramp - (counts.cumsum(0) - counts)[self.page]
        self._counts = counts.cpu().numpy()
        self._nq = nq

    def groups(self, most_pages: int, most_cells: int, max_gap: int):
        """Yield (g0, g1, lo, hi, most): runs of pages [g0, g1) that start and end on a probed
        page and skip at most `max_gap` unprobed pages at a time, their pairs [lo, hi) and the
        most pairs of one page in the run, where a run has at most `most_pages` pages and
        (pages x most) <= most_cells unless it is a single page."""
        counts = self._counts
        active = np.flatnonzero(counts)
        if active.size == 0:
            return
        ends = np.cumsum(counts)
        breaks = np.flatnonzero(np.diff(active) > 1 + max_gap) + 1
        for run in np.split(active, breaks):  # probed pages, sorted
            i = 0
            while i < run.size:
                g0 = int(run[i])
                j = int(np.searchsorted(run, g0 + most_pages))  # run[i:j]: the group's probed pages
                g1 = int(run[j - 1]) + 1
                most = int(counts[g0:g1].max())
                if (g1 - g0) * most > most_cells:  # busy pages: fewer pages bound the scores
                    j = int(np.searchsorted(run, g0 + max(1, most_cells // most)))
                    g1 = int(run[j - 1]) + 1
                    most = int(counts[g0:g1].max())
                yield g0, g1, int(ends[g0] - counts[g0]), int(ends[g1 - 1]), most
                i = j

    def page_table(self) -> torch.Tensor:
        """i64[nq, width]: the page behind each column of the score buffer (0 where unused: -inf there)."""
        table = torch.zeros(self._nq * self.width, dtype=torch.int64, device=self.page.device)
        table[self.dest] = self.page
        return table.view(self._nq, self.width)


def _best_centres(rows: torch.Tensor, centres: torch.Tensor, metric: str, count: int):
    """Yield (scores f32[b, count], partitions i64[b, count]) of the `count` best centres of each
    block of ASSIGN_BLOCK rows, by rank score <x, c> (- |c|^2/2 for L2), best first."""
    bias = rank_bias(centres, metric) if metric == "l2" else 0.0
    for i in range(0, rows.shape[0], ASSIGN_BLOCK):
        yield torch.topk(rows[i : i + ASSIGN_BLOCK] @ centres.T + bias, count, dim=1)


def _probe_gaps(sample: torch.Tensor, centres: torch.Tensor, metric: str) -> torch.Tensor:
    """f32[c] adaptive-probe gaps, c = min(partitions, GAP_COLUMNS): entry p - 1 is the gap g
    for which the sample's rows, as queries, have on average p of their best
    min(c, ADAPTIVE_SPREAD * p) centres within g * |row| of their best (entries p >= c: inf)."""
    c = min(centres.shape[0], GAP_COLUMNS)
    top = torch.cat([values for values, _ in _best_centres(sample, centres, metric, c)])
    gaps = (top[:, :1] - top) / torch.linalg.vector_norm(sample, dim=1, keepdim=True).clamp_min(1e-30)
    gaps = gaps.cpu()  # [m, c], ascending along each row, column 0 = 0
    m = gaps.shape[0]
    out = torch.full((c,), float("inf"))
    for p in range(1, c):
        width = min(c, ADAPTIVE_SPREAD * p)
        out[p - 1] = torch.kthvalue(gaps[:, :width].reshape(-1), m * p).values  # m * p gaps lie within it
    return out.to(centres.device)


def _by_popularity(centres: torch.Tensor, sample: torch.Tensor, metric: str, probe: int) -> torch.Tensor:
    """centres reordered from the most to the least often probed by the sample's rows (as
    queries, `probe` partitions each). Partition ids then follow popularity, and so does the page
    layout: consecutive pages get similar numbers of queries, and the batched products that
    score runs of pages (padded to their busiest page) waste little."""
    hits = torch.zeros(centres.shape[0], dtype=torch.int64)
    for _, probed in _best_centres(sample, centres, metric, min(probe, centres.shape[0])):
        hits += torch.bincount(probed.reshape(-1).cpu(), minlength=centres.shape[0])
    return centres[torch.argsort(hits, descending=True, stable=True).to(centres.device)].contiguous()


def _repeats(slot: torch.Tensor) -> torch.Tensor:
    """bool [rows, m]: entries whose (non-negative) slot already appears earlier in the row."""
    ordered, perm = torch.sort(slot, dim=1, stable=True)
    again = torch.zeros_like(slot, dtype=torch.bool)
    again[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return torch.zeros_like(again).scatter_(1, perm, again)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _array(arrays: dict, name: str, dtype: torch.dtype, shape: tuple, where) -> torch.Tensor:
    t = arrays.get(name)
    if t is None:
        raise ValueError(f"{where}: array {name!r} is missing")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: array {name!r} has {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}")
    return t
