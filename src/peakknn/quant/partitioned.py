"""PartitionedIndex: partitioned, optionally compressed k-NN search (the ScaNN pipeline).

    index = PartitionedIndex(384, metric="cos", settings=PartitionSettings(partitions=256, codes="pq4"))
    index.add(vectors)                      # trains itself once `train_size` rows are in
    result = index.search(queries, k=10, probe=32)   # probe / rerank: None = the index's setting
    index.remove([3]); index.upsert(v, ids=[7]); index.save("dir"); PartitionedIndex.load("dir")

Pipeline of one search (a block of queries at a time):
 1. partition scores: one matrix product queries x centres; each query probes its `probe` best
    partitions (<q, c>; <q, c> - |c|^2/2 for L2);
 2. grouped scoring: the (query, partition) pairs are sorted by partition, so each probed
    partition is scored once, as one bf16 matrix product [its queries] x [its rows] (codes are
    decoded to bf16 rows first: `codes.Int8Codes`, `codes.ProductQuantizer`); the scores land
    in a per-query buffer that concatenates the query's probed partitions;
 3. candidates: the `rerank` best columns of every query (torch.topk);
 4. re-ranking: exact fp32 scores of the candidates from the stored vectors, then the top k.
    With keep_vectors=False (compressed-only) there is no step 4: the top k by code score is
    returned and the reported scores are those estimates.

Training: partitions are k-means centres of a sample (anisotropic k-means when
`anisotropic_partitions`); PQ codes are trained on the residuals x - centre with the
anisotropic loss at threshold T (eta = (d - 1) T^2 / (1 - T^2) for T relative to each row's
norm; L2 uses eta = 1). After training, new rows are assigned to the partition with the least
loss and encoded on insert, removals swap the partition's last row into the hole, so add /
upsert / remove cost O(batch) and show in the next search; nothing is rebuilt.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from .. import _scan
from .._checks import as_ids, as_matrix, check_k
from .._idmap import IdMap
from .._types import METRICS, SearchResult, check_metric
from ..search import finish, normalize_rows, rank_bias
from .avq import assignment_loss, avq_kmeans, eta_from_threshold
from .codes import Int8Codes, ProductQuantizer, check_block_dims

CODE_TYPES = ("bf16", "int8", "pq4")
ASSIGN_BLOCK = 32768  # rows assigned to partitions at once
MAX_TRAIN_PER_PARTITION = 256  # k-means sample: at most this many rows per partition
PQ_TRAIN_ROWS = 16384  # PQ codebooks are trained on at most this many residuals
FORMAT = "peakknn.partitioned"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    """How an index is built (fixed at construction).

    partitions: k-means partitions; codes: "bf16" (rows in bfloat16), "int8" (per-dimension
    scalar codes) or "pq4" (4-bit product quantization of residuals, `block_dims` dims per
    16-centre block); threshold: anisotropic threshold T for PQ training (None = plain PQ);
    anisotropic_partitions: partition with the anisotropic loss too; keep_vectors: keep fp32
    vectors for exact re-ranking (False = compressed-only); train_size: train automatically when
    this many rows are in (None = only `train()`; default 40 * partitions); iters: k-means
    iterations; seed: seeds training.
    """

    partitions: int = 256
    codes: str = "bf16"
    block_dims: int = 2
    threshold: float | None = 0.2
    anisotropic_partitions: bool = False
    keep_vectors: bool = True
    train_size: int | None = -1
    iters: int = 10
    seed: int = 0

    def __post_init__(self):
        _positive_int("partitions", self.partitions)
        if self.codes not in CODE_TYPES:
            raise ValueError(f"codes must be one of {CODE_TYPES}, got {self.codes!r}")
        _positive_int("block_dims", self.block_dims)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) or None, got {self.threshold!r}")
        if self.train_size == -1:
            object.__setattr__(self, "train_size", 40 * self.partitions)
        if self.train_size is not None:
            _positive_int("train_size", self.train_size)
        _positive_int("iters", self.iters)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How a search runs (the index's defaults; each search may override).

    probe: partitions searched per query; rerank: candidates re-scored exactly in fp32
    (None = 2k for bf16/int8 codes, 10k for pq4; ignored when the index keeps no vectors).
    """

    probe: int = 16
    rerank: int | None = None

    def __post_init__(self):
        _positive_int("probe", self.probe)
        if self.rerank is not None:
            _positive_int("rerank", self.rerank)


class PartitionedIndex:
    """A partitioned, optionally compressed index (see module docstring).

    dim: vector dimension; metric: "ip" | "l2" | "cos"; settings: PartitionSettings;
    search_settings: SearchSettings (defaults of `search`); device: "cpu" (CUDA tensors work
    through the same torch code but the loop over partitions is tuned for the CPU).
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
        self.device = torch.device(device)
        # rows by slot
        self._vectors = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)
        self._slot_ids = torch.empty(0, dtype=torch.int64)  # -1 = free
        self._where = np.empty((0, 2), dtype=np.int64)  # (partition, position); (-1, -1) = pending
        self._free = np.empty(0, dtype=np.int64)
        self._ids = IdMap()
        self._next_id = 0
        # partitions
        self._centres: torch.Tensor | None = None
        self._codec: Int8Codes | ProductQuantizer | None = None
        self._rows: list[torch.Tensor] = []  # per partition: codes [cap_p, width]
        self._slots: list[torch.Tensor] = []  # per partition: i64 slots [cap_p]
        self._bias: list[torch.Tensor] = []  # per partition: f32 rank corrections [cap_p] (L2)
        self._sizes = np.zeros(0, dtype=np.int64)
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None  # cached (all slots, starts)

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"PartitionedIndex(dim={self.dim}, metric={self.metric!r}, partitions={self.settings.partitions}, "
            f"codes={self.settings.codes!r}, keep_vectors={self.settings.keep_vectors}, size={len(self)}, "
            f"trained={self.is_trained})"
        )

    @property
    def is_trained(self) -> bool:
        return self._centres is not None

    @property
    def partition_sizes(self) -> np.ndarray:
        """i64[partitions] rows per partition (empty before training)."""
        return self._sizes.copy()

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (capacities included) and its id map."""
        tensors = [self._vectors, self._slot_ids, *self._rows, *self._slots, *self._bias]
        if self._centres is not None:
            tensors.append(self._centres)
        if self._codec is not None:
            tensors.extend(self._codec.state().values())
        return sum(t.numel() * t.element_size() for t in tensors) + self._where.nbytes + self._free.nbytes + self._ids.nbytes

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
        codec = None
        if s.codes == "int8":
            codec = Int8Codes.train(x)
        elif s.codes == "pq4":
            residuals = x - centres[assign]
            eta = self._code_eta()
            units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
            pick = torch.randperm(x.shape[0], generator=g)[:PQ_TRAIN_ROWS].to(x.device)
            codec = ProductQuantizer.train(residuals[pick], s.block_dims, eta=eta, directions=units[pick], seed=s.seed)
        self._centres, self._codec = centres.contiguous(), codec
        self._rows = [self._empty_rows(0) for _ in range(s.partitions)]
        self._slots = [torch.empty(0, dtype=torch.int64) for _ in range(s.partitions)]
        self._bias = [torch.empty(0, dtype=torch.float32) for _ in range(s.partitions)]
        self._sizes = np.zeros(s.partitions, dtype=np.int64)
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
        self, queries, k: int, *, probe: int | None = None, rerank: int | None = None, max_memory: int = _scan.DEFAULT_MEMORY
    ) -> SearchResult:
        """k nearest stored vectors of each query f32[nq, dim] (or [dim]).

        probe: partitions searched per query (None = the index's setting; capped at the
        number of partitions); rerank: candidates re-scored exactly (None = the index's
        setting). Returns SearchResult with user ids; -1 (score -inf / +inf) where fewer than
        k rows were found in the probed partitions.
        """
        k = check_k(k)
        probe = self.search_settings.probe if probe is None else probe
        rerank = self.search_settings.rerank if rerank is None else rerank
        SearchSettings(probe=probe, rerank=rerank)  # validates
        if not self.is_trained:
            raise ValueError(
                "the index is not trained: call train(sample) or add at least train_size="
                f"{self.settings.train_size} rows first"
            )
        if len(self) == 0:
            raise ValueError("cannot search an empty index: add vectors first")
        q = self._prepare(queries, "queries")
        probe = min(probe, self.settings.partitions)
        depth = self._rerank_depth(k, rerank)
        widest = int(np.sort(self._sizes)[-probe:].sum())
        block = int(max(1, min(4096, max_memory // max(1, 6 * widest + 4 * self.settings.partitions))))
        centre_bias = rank_bias(self._centres, self.metric) if self.metric == "l2" else None
        ranks, slots = [], []
        for i in range(0, q.shape[0], block):
            r, s = self._search_block(q[i : i + block], k, probe, depth, centre_bias)
            ranks.append(r)
            slots.append(s)
        rank, slot = torch.cat(ranks), torch.cat(slots)
        ids = self._slot_ids[slot.cpu()].to(slot.device)
        result = finish(rank, ids, self.metric)
        return SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu())

    def _search_block(self, q: torch.Tensor, k: int, probe: int, depth: int | None, centre_bias: torch.Tensor | None):
        nq = q.shape[0]
        dot_c = q @ self._centres.T  # [nq, P]
        score_c = dot_c if centre_bias is None else dot_c + centre_bias
        _, pids = torch.topk(score_c, probe, dim=1)  # [nq, probe]
        sizes = torch.from_numpy(self._sizes).to(q.device)
        widths = sizes[pids]
        ends = widths.cumsum(1)
        starts = ends - widths
        total = int(ends[:, -1].max())
        # bf16 scores suffice to pick candidates that are re-ranked exactly; estimates that are
        # returned as results (no re-ranking) and residual offsets keep fp32.
        residual = self.settings.codes == "pq4"
        exact_later = depth is not None and not residual and self.metric != "l2"
        buf_dtype = torch.bfloat16 if exact_later else torch.float32
        buf = torch.full((nq, max(total, 1)), float("-inf"), dtype=buf_dtype, device=q.device)
        base = (torch.arange(nq, device=q.device).unsqueeze(1) * buf.shape[1] + starts).view(-1)
        flat_p = pids.reshape(-1)
        order = torch.argsort(flat_p, stable=True)
        counts = torch.bincount(flat_p, minlength=self.settings.partitions).tolist()
        pair_query = order // probe
        pair_base = base[order]  # buffer offset of each pair, in partition order
        q_scan = self._codec.scan_queries(q) if self._codec is not None else q.to(torch.bfloat16)
        columns = torch.arange(int(self._sizes.max()) if self._sizes.size else 0, device=q.device)
        flat_buf = buf.view(-1)
        start = 0
        for p, c in enumerate(counts):
            if c == 0:
                continue
            lo, hi = start, start + c
            start = hi
            size = int(self._sizes[p])
            if size == 0:
                continue
            queries = pair_query[lo:hi]
            s = torch.mm(q_scan.index_select(0, queries), self._scan_rows(p).T)  # [c, size]
            if not exact_later:
                s = s.float()
                if self.metric == "l2":
                    s += self._bias[p][:size]
                if residual:  # scores of residual codes: add <q, centre>
                    s += dot_c[queries, p].unsqueeze(1)
            flat_buf[pair_base[lo:hi].unsqueeze(1) + columns[:size]] = s
        keep = min(depth if depth is not None else k, buf.shape[1])
        best, pos = torch.topk(buf, keep, dim=1)
        pair = torch.searchsorted(ends, pos, right=True).clamp_max(probe - 1)
        within = pos - starts.gather(1, pair)
        all_slots, part_start = self._flat_slots()
        slot = all_slots[(part_start[pids.gather(1, pair)] + within).clamp(0, max(all_slots.numel() - 1, 0))]
        valid = best > float("-inf")
        if depth is not None:
            return _scan.rescore(_Vectors(self), q, slot, valid, k, self.metric, _scan.DEFAULT_MEMORY)
        if self.metric == "l2":  # scan rank <q, x> - |x|^2/2 -> -|q - x|^2
            best = 2 * best - (q * q).sum(1, keepdim=True)
        if keep < k:
            best = torch.cat([best, best.new_full((nq, k - keep), float("-inf"))], dim=1)
            slot = torch.cat([slot, slot.new_zeros((nq, k - keep))], dim=1)
        return best, slot.masked_fill(best == float("-inf"), 0)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory `path` atomically (safetensors + JSON, never pickle)."""
        from .. import io

        arrays = {}
        if self.is_trained:
            order = [self._slots[p][: self._sizes[p]] for p in range(len(self._sizes))]
            slots = torch.cat(order) if order else torch.empty(0, dtype=torch.int64)
            arrays["codes"] = torch.cat([self._rows[p][: self._sizes[p]] for p in range(len(self._sizes))])
            arrays["partition_sizes"] = torch.from_numpy(self._sizes.copy())
            arrays["bias"] = torch.cat([self._bias[p][: self._sizes[p]] for p in range(len(self._sizes))])
            arrays["centres"] = self._centres
            if self._codec is not None:
                arrays.update(self._codec.state())
        else:
            slots = torch.from_numpy(self._live_slots())
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

    def _empty_rows(self, capacity: int) -> torch.Tensor:
        codes = self.settings.codes
        if codes == "bf16":
            return torch.zeros(capacity, self.dim, dtype=torch.bfloat16, device=self.device)
        if codes == "int8":
            return torch.zeros(capacity, self.dim, dtype=torch.int8, device=self.device)
        return torch.zeros(capacity, (self.dim // self.settings.block_dims + 1) // 2, dtype=torch.uint8, device=self.device)

    def _scan_rows(self, p: int) -> torch.Tensor:
        rows = self._rows[p][: self._sizes[p]]
        return rows if self._codec is None else self._codec.scan_rows(rows)

    def _encode(self, x: torch.Tensor, partition: torch.Tensor) -> torch.Tensor:
        if self._codec is None:
            return x.to(torch.bfloat16)
        if isinstance(self._codec, Int8Codes):
            return self._codec.encode(x)
        units = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
        return self._codec.encode(x - self._centres[partition], units, self._code_eta())

    def _assign(self, x: torch.Tensor) -> torch.Tensor:
        eta = self._partition_eta()
        parts = [assignment_loss(x[i : i + ASSIGN_BLOCK], self._centres, eta).argmin(1) for i in range(0, x.shape[0], ASSIGN_BLOCK)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=x.device)

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self._slot_ids.numpy() >= 0)

    def _take_slots(self, m: int) -> np.ndarray:
        if m > self._free.size:
            old = self._slot_ids.shape[0]
            new = max(old + m - self._free.size, 2 * old, 1024)
            if self.settings.keep_vectors or not self.is_trained:
                self._vectors = torch.cat([self._vectors, self._vectors.new_zeros(new - old, self.dim)])
            self._slot_ids = torch.cat([self._slot_ids, torch.full((new - old,), -1, dtype=torch.int64)])
            self._where = np.concatenate([self._where, np.full((new - old, 2), -1, dtype=np.int64)])
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
        """Assign rows to partitions, encode them and append them to their partitions."""
        if slots.size == 0:
            return
        part = self._assign(x)
        codes = self._encode(x, part)
        bias = rank_bias(x, self.metric)
        order = torch.argsort(part.cpu(), stable=True)
        counts = torch.bincount(part.cpu(), minlength=self.settings.partitions).tolist()
        start = 0
        for p, c in enumerate(counts):
            if c == 0:
                continue
            rows = order[start : start + c]
            start += c
            size = int(self._sizes[p])
            if size + c > self._rows[p].shape[0]:
                cap = max(size + c, size + size // 2, 16)
                self._rows[p] = _grow(self._rows[p], cap)
                self._slots[p] = _grow(self._slots[p], cap)
                self._bias[p] = _grow(self._bias[p], cap)
            placed = slots[rows.numpy()]
            self._rows[p][size : size + c] = codes[rows.to(codes.device)]
            self._slots[p][size : size + c] = torch.from_numpy(placed)
            self._bias[p][size : size + c] = bias[rows.to(bias.device)].cpu()
            self._where[placed, 0] = p
            self._where[placed, 1] = np.arange(size, size + c)
            self._sizes[p] = size + c
        self._flat = None

    def _delete(self, ids: np.ndarray) -> None:
        slots = self._ids.lookup(ids)
        for slot in slots.tolist():
            p, pos = (int(v) for v in self._where[slot])
            if p >= 0:  # swap the partition's last row into the hole
                last = int(self._sizes[p]) - 1
                if pos != last:
                    moved = int(self._slots[p][last])
                    self._rows[p][pos] = self._rows[p][last]
                    self._slots[p][pos] = moved
                    self._bias[p][pos] = self._bias[p][last]
                    self._where[moved, 1] = pos
                self._sizes[p] = last
            self._where[slot] = -1
        t = torch.from_numpy(slots)
        self._slot_ids[t] = -1
        if self._vectors.shape[0]:
            self._vectors[t.to(self.device)] = 0.0
        self._ids.set(ids, np.full(ids.size, -1, dtype=np.int64))
        self._free = np.concatenate([self._free, slots[::-1]])
        self._flat = None

    def _flat_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(all partitions' slots concatenated i64[len], each partition's start i64[P])."""
        if self._flat is None:
            parts = [self._slots[p][: self._sizes[p]] for p in range(len(self._sizes))]
            starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
            self._flat = (torch.cat(parts).to(self.device), torch.from_numpy(starts).to(self.device))
        return self._flat

    def _restore(self, arrays: dict, ids: np.ndarray, vectors: torch.Tensor | None, where) -> None:
        """Rebuild a trained index's partitions from saved arrays (rows in partition order)."""
        s, count = self.settings, ids.size
        centres = _array(arrays, "centres", torch.float32, (s.partitions, self.dim), where)
        sizes = _array(arrays, "partition_sizes", torch.int64, (s.partitions,), where).numpy()
        if (sizes < 0).any() or int(sizes.sum()) != count:
            raise ValueError(f"{where}: partition sizes do not add up to {count} rows")
        width = self._empty_rows(0).shape[1]
        codes = _array(arrays, "codes", self._empty_rows(0).dtype, (count, width), where)
        if s.codes == "int8":
            self._codec = Int8Codes(_array(arrays, "int8_scale", torch.float32, (self.dim,), where))
        elif s.codes == "pq4":
            blocks = self.dim // s.block_dims
            self._codec = ProductQuantizer(_array(arrays, "pq_centres", torch.float32, (blocks, 16, s.block_dims), where))
        tensors = [centres] + list(self._codec.state().values() if self._codec else [])
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise ValueError(f"{where}: centres contain NaN or inf")
        self._centres = centres.to(self.device)
        slots = self._take_slots(count)
        self._slot_ids[torch.from_numpy(slots)] = torch.from_numpy(ids)
        self._ids.set(ids, slots)
        if vectors is not None:
            self._vectors = torch.zeros(self._slot_ids.shape[0], self.dim, device=self.device)
            self._vectors[torch.from_numpy(slots).to(self.device)] = vectors.to(self.device)
        else:
            self._vectors = self._vectors[:0]
        bias = _array(arrays, "bias", torch.float32, (count,), where)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._sizes = sizes.copy()
        self._rows, self._slots, self._bias = [], [], []
        for p in range(s.partitions):
            lo, hi = int(starts[p]), int(starts[p + 1])
            self._rows.append(codes[lo:hi].clone().to(self.device))
            self._slots.append(torch.from_numpy(slots[lo:hi].copy()))
            self._bias.append(bias[lo:hi].clone())
            self._where[slots[lo:hi], 0] = p
            self._where[slots[lo:hi], 1] = np.arange(hi - lo)
        self._flat = None


class _Vectors:
    """The index's fp32 vectors as an engine table for `_scan.rescore`."""

    def __init__(self, index: PartitionedIndex):
        self.index = index

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.index._vectors[slots]

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return self.index._slot_ids[slots.cpu()].to(slots.device) >= 0


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _grow(t: torch.Tensor, capacity: int) -> torch.Tensor:
    out = torch.zeros((capacity, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


def _array(arrays: dict, name: str, dtype: torch.dtype, shape: tuple, where) -> torch.Tensor:
    t = arrays.get(name)
    if t is None:
        raise ValueError(f"{where}: array {name!r} is missing")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: array {name!r} has {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}")
    return t
