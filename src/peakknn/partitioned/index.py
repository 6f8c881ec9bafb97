"""PartitionedIndex: partitioned, optionally compressed k-NN search (the ScaNN pipeline).

    index = PartitionedIndex(384, metric="cos", settings=PartitionSettings(partitions=256, codes="pq4"))
    index.add(vectors)                      # trains itself once `train_size` rows are in
    result = index.search(queries, k=10, probe=32)   # probe / rerank: None = the index's setting
    index.remove([3]); index.upsert(v, ids=[7]); index.save("dir"); PartitionedIndex.load("dir")

Storage: each partition's code rows live in fixed-size pages (`pages.PagedLists`, kept by
`storage.Entries`), so any run of consecutive pages is one tensor view. With `spill` (SOAR, Sun
et al. 2023) every row is also stored in a second partition, chosen so that its residual there is
nearly orthogonal to the first one; a query then finds a neighbour through either partition,
which needs far fewer probed partitions for the same recall (candidates found twice count once).

A search (`scan.search`) scores the probed partitions' pages with batched bf16 products, takes
the best candidates and re-ranks them exactly in fp32 from the stored vectors (or returns the
code scores when keep_vectors=False). Training (`training.fit`) learns the partitions, codes,
projection and adaptive-probe gaps from a sample; after training, new rows are assigned and
encoded on insert and removals move a partition's last row into the hole, so add / upsert /
remove cost O(batch) and show in the next search; nothing is rebuilt.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from .._locks import RWLock, reads, writes
from .._checks import as_id_set, as_ids, check_device, check_k, check_recall_target, check_search_options, positive_int
from .._slots import SlotStore
from .._types import MetricLike, SearchResult, check_metric
from ..engine.plan import DEFAULT_MEMORY
from ..engine.driver import run_search
from ..engine.rescore import answer, empty_result, finish
from ..engine.table import DenseTable, prepare_rows, rank_bias
from ..quant.codes import check_block_dims
from . import calibration, persist, scan, training
from .settings import ADAPTIVE_SPREAD, PartitionSettings, SearchSettings, partitions_for
from .storage import Entries


class PartitionedIndex:
    """A partitioned, optionally compressed index (ScaNN-style: partitions, SOAR spill, bf16 /
    int8 / 4-bit codes, exact fp32 re-ranking; details: the `peakknn.partitioned.index` module).
    It trains itself once `settings.train_size` rows are in (or on `train()`); until then a
    search scans its rows exactly. Ask for recall, not probes: `search(q, k, recall_target=0.95)`
    reads the probe off a recall curve measured on the index's own rows, because the recall a
    given probe reaches depends on the data.

        index = PartitionedIndex(384, metric="cos"); index.add(vectors)
        result = index.search(queries, k=10, recall_target=0.95)

    dim: vector dimension; metric: "ip" | "l2" | "cos"; settings: PartitionSettings;
    search_settings: SearchSettings (defaults of `search`); device: "cpu" (CUDA tensors work
    through the same torch code but the loop over page groups is tuned for the CPU).
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: MetricLike = "ip",
        settings: PartitionSettings | None = None,
        search_settings: SearchSettings | None = None,
        device: str | torch.device = "cpu",
    ):
        self.dim = positive_int("dim", dim)
        self.metric = check_metric(metric)
        self.settings = settings if settings is not None else PartitionSettings()
        self.search_settings = search_settings if search_settings is not None else SearchSettings()
        if not isinstance(self.settings, PartitionSettings):
            raise TypeError(f"settings must be a PartitionSettings, got {type(self.settings).__name__}")
        if not isinstance(self.search_settings, SearchSettings):
            raise TypeError(f"search_settings must be a SearchSettings, got {type(self.search_settings).__name__}")
        self._auto_partitions = self.settings.partitions is None  # derived again at every training
        if self.settings.codes == "pq4":
            check_block_dims(self.dim, self.settings.block_dims)
        if isinstance(self.settings.scan_dims, int) and self.settings.scan_dims > self.dim:
            raise ValueError(f"scan_dims={self.settings.scan_dims} is more than dim={self.dim}")
        self.device = check_device(device)
        self._lock = RWLock()  # searches and saves read, updates and training write (peakknn._locks)
        self._vectors = torch.empty(0, self.dim, dtype=torch.float32, device=self.device)  # rows by slot
        self._slots = SlotStore(torch.device("cpu"))  # slots in order: pages do not depend on them
        self._entries = Entries(self._copies)
        self._scratch = scan.Scratch()
        self._trained: training.Trained | None = None  # centres, codec, projection, probe gaps
        self._curves: dict[int, calibration.RecallCurve] = {}  # recall per probe, per k (calibration)
        self._curves_stale = False  # True from a training until the curves are measured again
        self._calibration_queries: torch.Tensor | None = None  # measured on these queries, not on rows ...
        self._calibration_from: str | None = None  # ... given by the "caller" (calibrate(queries)) or learned from "searches"
        self._query_sample = calibration.QuerySample(self.dim, seed=self.settings.seed)  # searches' queries (learn_queries)

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        return (
            f"PartitionedIndex(dim={self.dim}, metric={self.metric!r}, partitions={self.settings.partitions}, "
            f"codes={self.settings.codes!r}, scan_dims={self.settings.scan_dims!r}, keep_vectors={self.settings.keep_vectors}, "
            f"spill={self.settings.spill}, "
            f"size={len(self)}, trained={self.is_trained})"
        )

    @reads
    def __contains__(self, id_) -> bool:
        return self._slots.contains(id_)

    @property
    @reads
    def ids(self) -> torch.Tensor:
        """i64[len] ids currently stored, ascending."""
        return torch.from_numpy(self._slots.ids())

    @property
    def is_trained(self) -> bool:
        return self._trained is not None

    @property
    def _centres(self) -> torch.Tensor | None:
        return self._trained.centres if self._trained is not None else None

    @property
    def _codec(self):
        """quant.codes.Int8Codes | ProductQuantizer | None (bf16 codes, or untrained)."""
        return self._trained.codec if self._trained is not None else None

    @property
    def _projection(self) -> torch.Tensor | None:
        """f32[dim, m]: see PartitionSettings.scan_dims (None: rows are not projected)."""
        return self._trained.projection if self._trained is not None else None

    @property
    def _probe_gaps(self) -> torch.Tensor | None:
        """f32[min(P, GAP_COLUMNS)]: see probe_gap (None for files from before adaptive probing)."""
        return self._trained.probe_gaps if self._trained is not None else None

    @property
    def scan_dims(self) -> int:
        """Dimensions of the rows the first pass scores: the projection's width after training
        with scan_dims set (or calibrated), else dim."""
        return self._projection.shape[1] if self._projection is not None else self.dim

    @property
    @reads
    def partition_sizes(self) -> np.ndarray:
        """i64[partitions] rows stored in each partition, spilled copies included (empty before training)."""
        lists = self._entries.lists
        return lists.sizes.copy() if lists is not None else np.zeros(0, dtype=np.int64)

    @reads
    def probe_gap(self, probe: int) -> float | None:
        """Centre-score gap (per unit of |q|) within which an adaptive search with this `probe`
        takes a query's partitions: calibrated at training so that the training sample's rows,
        as queries, take `probe` partitions on average (of at most ADAPTIVE_SPREAD * probe).
        None where probe >= min(partitions, GAP_COLUMNS): then every query takes `probe`."""
        return self._gap(probe)

    def _gap(self, probe: int) -> float | None:
        if self._probe_gaps is None:
            raise ValueError("adaptive probing needs an index trained by this version: call train() again")
        return None if probe >= self._probe_gaps.shape[0] else float(self._probe_gaps[probe - 1])

    @property
    @reads
    def memory_bytes(self) -> int:
        """Bytes held by the index's arrays (capacities included) and its id bookkeeping."""
        tensors = [self._vectors]
        if self._centres is not None:
            tensors.append(self._centres)
        if self._codec is not None:
            tensors.extend(self._codec.state().values())
        if self._projection is not None:
            tensors.append(self._projection)
        if self._probe_gaps is not None:
            tensors.append(self._probe_gaps)
        return sum(t.numel() * t.element_size() for t in tensors) + self._entries.nbytes + self._slots.nbytes

    @property
    def _copies(self) -> int:
        """Partitions each row is stored in: 2 with spill (and more than one partition), else 1."""
        return 2 if self.settings.spill and self.settings.partitions != 1 else 1

    # ----------------------------------------------------------------- training
    @writes
    def train(self, sample=None) -> None:
        """Learn partitions (and codes) from sample f32[m, dim] (default: the rows added so far),
        then assign and encode every stored row. Retraining needs the stored vectors."""
        self._train(sample)

    def _train(self, sample=None) -> None:
        if self.is_trained and not self.settings.keep_vectors:
            raise ValueError("a compressed-only index (keep_vectors=False) cannot be retrained")
        if sample is None:
            x = self._vectors[self._slots.live_slots()]
            if x.shape[0] == 0:
                raise ValueError("no rows to train on: pass a sample or add vectors first")
        else:
            x = self._prepare(sample, "sample")
        settings = self.settings
        if self._auto_partitions:
            settings = dataclasses.replace(settings, partitions=partitions_for(max(len(self), x.shape[0])))
        trained = training.fit(x, settings, self.metric, self.search_settings.probe)
        self._install(trained, settings, self._calibrate)

    def _install(self, trained: training.Trained, settings: PartitionSettings, calibrate) -> None:
        """Adopt what training learned (settings: with the partition count it used) and place
        every stored row; a compressed-only index then runs calibrate() (the recall curves need
        the vectors) and drops its vectors. peakknn.distributed installs what the ranks trained
        together through this, under the write lock, with a calibration over every shard."""
        self.settings = settings  # only once training has succeeded
        self._set_trained(trained)
        slots = self._slots.live_slots()
        self._place(slots, self._vectors[slots])
        if not self.settings.keep_vectors:  # measured now, while the vectors are still here
            calibrate()
            self._vectors = self._vectors[:0]

    @writes
    def calibrate(self, queries=None) -> None:
        """Measure the recall curves behind `search(recall_target=...)` now (`partitioned.calibration`).

        queries None: on stored rows as queries (what the first search with a recall target does
        by itself, and again once the index has grown CALIBRATE_GROWTH-fold), so the target holds
        for queries distributed like the rows. queries f32[m, dim] (m >= 1; a few hundred give a
        tight curve): on these, a sample of the queries searches will ask, so the target holds
        for queries like them; use it when queries come from elsewhere than the rows (questions
        against passages, another model's embeddings), where the rows' curve can promise too much.
        The sample is kept (and saved) and measured on again when the index has grown.
        A compressed-only index (keep_vectors=False) measures on rows at training only."""
        if not self.is_trained:
            raise ValueError("the index is not trained: train it first")
        if not self.settings.keep_vectors:
            raise ValueError("a compressed-only index (keep_vectors=False) is calibrated at training only")
        if queries is not None:
            q = self._prepare(queries, "queries")
            if q.shape[0] == 0:
                raise ValueError("queries holds no row: pass at least one query to calibrate on")
            self._calibration_queries, self._calibration_from = q, "caller"
        self._calibrate()

    def _calibrate(self) -> None:
        if self._learning() and self._query_sample.due():
            self._calibration_queries, self._calibration_from = self._query_sample.take().to(self.device), "searches"
        slots = self._slots.live_slots()
        x = self._vectors[torch.from_numpy(slots).to(self.device)]
        ids = self._slots.slot_ids[torch.from_numpy(slots)].numpy()
        self._curves = calibration.measure(self, x, ids, seed=self.settings.seed, sample=self._calibration_queries)
        self._curves_stale = False

    def _learning(self) -> bool:
        """Searches' queries feed the calibration (SearchSettings.learn_queries; not once the caller gave a sample)."""
        return self.search_settings.learn_queries and self._calibration_from != "caller"

    @property
    def calibration_source(self) -> str:
        """What the recall curves are measured on: "rows" (stored rows as queries), "caller"
        (calibrate(queries)) or "searches" (a sample of the queries searches sent, learn_queries)."""
        return self._calibration_from or "rows"

    @property
    def recall_curves(self) -> dict[int, tuple[list[int], list[float]]]:
        """{k: (probes, mean recall@k)} measured at the last calibration (empty before the first
        `calibrate()` or search with a recall_target)."""
        return {k: (c.probes.tolist(), c.recall.tolist()) for k, c in self._curves.items()}

    def _set_trained(self, trained: training.Trained) -> None:
        """Adopt what training learned, with empty partitions (the caller places the rows)."""
        self._trained = trained
        self._curves_stale = True  # curves (if any) describe the old partitions until measured again
        self._entries.reset(self.settings, self.dim, self.scan_dims, self.device, self._copies)

    # ----------------------------------------------------------------- updates
    @writes
    def add(self, vectors, ids=None) -> torch.Tensor:
        """Insert rows f32[m, dim]; ids i64[m] (default: next free ids). Returns the ids.
        Raises ValueError (storing nothing) if an id is already present: use `upsert`."""
        x = self._prepare(vectors, "vectors")
        new_ids = self._slots.ids_to_add(ids, x.shape[0])
        self._insert(new_ids, x)
        return torch.from_numpy(new_ids)

    @writes
    def upsert(self, vectors, ids) -> torch.Tensor:
        """Insert or replace rows: ids already present get the new vectors, others are added."""
        x = self._prepare(vectors, "vectors")
        new_ids = as_ids("ids", ids, x.shape[0])
        present = new_ids[self._slots.lookup(new_ids) >= 0]
        if present.size:
            self._delete(present)
        self._insert(new_ids, x)
        return torch.from_numpy(new_ids)

    @writes
    def remove(self, ids) -> None:
        """Delete ids. Unknown ids raise ValueError and nothing is removed."""
        gone, _ = self._slots.stored(ids, " (nothing was removed)")
        self._delete(gone)

    @reads
    def get(self, ids) -> torch.Tensor:
        """f32[m, dim] stored vectors of ids (needs keep_vectors or an untrained index)."""
        _, slots = self._slots.stored(ids)
        if self._vectors.shape[0] == 0 and slots.size:
            raise ValueError("this index keeps no vectors (keep_vectors=False): only codes are stored")
        return self._vectors[torch.from_numpy(slots).to(self.device)].clone()

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries,
        k: int,
        *,
        recall_target: float | None = None,
        probe: int | None = None,
        rerank: int | None = None,
        adaptive: bool | None = None,
        allowed_ids=None,
        max_memory: int = DEFAULT_MEMORY,
    ) -> SearchResult:
        """k nearest stored vectors of each query f32[nq, dim] (or [dim]).

        recall_target: the probe whose recall@k, as measured at the last calibration
        (`recall_curves`: on stored rows as queries, on calibrate(queries)'s sample, or on a
        sample of the queries searches sent, see SearchSettings.learn_queries), reaches this
        (`partitioned.calibration`; not with probe);
        probe: partitions searched per query (None = the index's setting; capped at the
        number of partitions); rerank: candidates re-scored exactly (None = the index's
        setting); adaptive: probe is a mean over queries (see SearchSettings; None = the
        index's setting, which falls back to a fixed probe for an index loaded from a file
        written before adaptive probing existed); allowed_ids: only these ids may be returned
        (ids not in the index are ignored; only allowed rows of the probed partitions are
        searched, so a selective filter may need a larger probe). Returns SearchResult on the
        CPU with user ids; -1 (score -inf / +inf) where fewer than k rows were found in the
        probed partitions.
        """
        learn = recall_target is not None and probe is None and self._learning()
        if recall_target is not None and probe is None and self._calibration_due():
            with self._lock.write():  # measure the curves once (the others wait, then find them) ...
                if self._calibration_due():
                    self._calibrate()
                probe = self.probe_for(recall_target, check_k(k))  # ... and read the probe off them here,
            recall_target = None  # so that a training in between cannot leave this search without one
        with self._lock.read():
            return self._search(queries, k, recall_target=recall_target, probe=probe, rerank=rerank, adaptive=adaptive, allowed_ids=allowed_ids,
                                max_memory=max_memory, learn=learn)  # fmt: skip

    def _calibration_due(self) -> bool:
        """Trained with vectors and rows enough to measure (calibration.MIN_ROWS), and no curves
        yet, curves from before the last training (kept meanwhile, so that a search that finds
        them between a training and the next calibration still has a probe), or curves measured
        on a CALIBRATE_GROWTH-fold smaller index."""
        if not self.is_trained or not self.settings.keep_vectors or len(self) < calibration.MIN_ROWS:
            return False
        if not self._curves or self._curves_stale or (self._learning() and self._query_sample.due()):
            return True
        return len(self) >= calibration.CALIBRATE_GROWTH * max(c.rows for c in self._curves.values())

    def probe_for(self, recall_target: float, k: int = 10) -> int:
        """The probe a search with this recall_target and k uses (from `recall_curves`)."""
        target = check_recall_target(recall_target)
        k = check_k(k)
        if not self._curves and self.is_trained and len(self) < calibration.MIN_ROWS:
            return self.settings.partitions  # too few rows to measure a curve: search them all
        if not self._curves:
            raise ValueError(
                "the index has no recall calibration (untrained, compressed-only and trained before its rows "
                "were added, or loaded from an older file): call calibrate() (needs the vectors), or pass probe="
            )
        return calibration.probe_for(calibration.curve_for(self._curves, k), target)

    def _search(self, queries, k, *, recall_target=None, probe=None, rerank=None, adaptive=None, allowed_ids=None, max_memory=DEFAULT_MEMORY,
                learn=False) -> SearchResult:  # fmt: skip
        k = check_k(k)
        check_search_options(rerank, max_memory)
        allowed = None  # slots of the allowed ids that are stored
        if allowed_ids is not None:
            allowed = self._slots.lookup(as_id_set("allowed_ids", allowed_ids))
            allowed = allowed[allowed >= 0]
        if recall_target is not None:
            recall_target = check_recall_target(recall_target)
            if probe is not None:
                raise ValueError(f"pass probe or recall_target, not both (got probe={probe}, recall_target={recall_target})")
            if self.is_trained:
                probe = self.probe_for(recall_target, k)
        probe = self.search_settings.probe if probe is None else probe
        rerank = self.search_settings.rerank if rerank is None else rerank
        if adaptive is None:  # the index's setting, where the index has the calibration
            adaptive = self.search_settings.adaptive and self._probe_gaps is not None
        SearchSettings(probe=probe, rerank=rerank, adaptive=adaptive)  # validates
        q = self._prepare(queries, "queries")
        if learn:  # a search with a recall target: its queries may join the calibration sample
            self._query_sample.add(q)
        if len(self) == 0:  # like `peakknn.search` on a 0-row database: fillers only
            return answer(queries, empty_result(q.shape[0], k, self.metric))
        if not self.is_trained:  # few rows so far (< train_size): an exact scan of them
            return answer(queries, self._exact_search(q, k, allowed, max_memory))
        probe = min(probe, self.settings.partitions)
        gap = self._gap(probe) if adaptive else None
        considered = probe if gap is None else min(self._probe_gaps.shape[0], ADAPTIVE_SPREAD * probe)
        bias = self._entries.lists.bias if allowed is None else self._filtered_bias(allowed)
        rank, slot = scan.search(self, q, k, considered, gap, self._rerank_depth(k, rerank), bias, max_memory)
        ids = self._slots.slot_ids[slot.cpu()].to(slot.device)
        result = finish(rank, ids, self.metric)
        return answer(queries, SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu()))

    def _exact_search(self, q: torch.Tensor, k: int, allowed: np.ndarray | None, max_memory: int) -> SearchResult:
        """Exact fp32 top-k over the stored vectors (of the slots `allowed`, None = all): an
        untrained index."""
        slots = self._slots.live_slots() if allowed is None else np.unique(allowed)
        if slots.size == 0:
            return empty_result(q.shape[0], k, self.metric)
        slots_t = torch.from_numpy(slots).to(self.device)
        table = DenseTable(self._vectors[slots_t].contiguous(), self.metric, torch.float32)
        rank, rows = run_search(table, q.contiguous(), k, self.metric, 1.0, None, max_memory, "torch")
        ids = self._slots.slot_ids[torch.from_numpy(slots)][rows.cpu()].to(self.device)
        result = finish(rank, ids, self.metric)
        return SearchResult(scores=result.scores.cpu(), ids=result.ids.cpu())

    def _filtered_bias(self, allowed: np.ndarray) -> torch.Tensor:
        """The pages' rank bias with -inf on every row whose slot is not in `allowed`."""
        keep = torch.zeros(self._slots.capacity, dtype=torch.bool)
        keep[torch.from_numpy(allowed)] = True
        return self._entries.masked_bias(keep)

    def _rerank_depth(self, k: int, rerank: int | None) -> int | None:
        """Candidates re-scored exactly, or None when the index keeps no vectors."""
        if not self.settings.keep_vectors:
            return None
        if rerank is None:
            rerank = 10 * k if self.settings.codes == "pq4" else 2 * k
        return max(k, rerank)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory `path` atomically (safetensors + JSON, never pickle)."""
        persist.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "PartitionedIndex":
        """Read an index written by `save`; corrupt or mismatched files raise ValueError."""
        return persist.load(cls, path, device)

    # ----------------------------------------------------------------- internals
    def _prepare(self, vectors, name: str) -> torch.Tensor:
        return prepare_rows(vectors, name, self.dim, self.metric, self.device)

    def _take_slots(self, m: int) -> np.ndarray:
        capacity = self._slots.capacity_for(m)
        if capacity > self._slots.capacity:
            extra = capacity - self._slots.capacity
            if self.settings.keep_vectors or not self.is_trained:
                self._vectors = torch.cat([self._vectors, self._vectors.new_zeros(extra, self.dim)])
            self._entries.grow(capacity)
            self._slots.grow(capacity)
        return self._slots.take(m)

    def _insert(self, ids: np.ndarray, x: torch.Tensor, auto_train: bool = True) -> None:
        slots = self._take_slots(x.shape[0])
        if self._vectors.shape[0]:
            self._vectors[torch.from_numpy(slots).to(self.device)] = x
        self._slots.assign(slots, ids)
        if self.is_trained:
            self._place(slots, x)
        elif auto_train and self.settings.train_size is not None and len(self) >= self.settings.train_size:
            self._train()

    def _place(self, slots: np.ndarray, x: torch.Tensor) -> None:
        """Assign rows to partitions (with spill: two), encode them and append them there."""
        if slots.size == 0:
            return
        copies = self._copies
        parts = training.assign(x, self._centres, training.partition_eta(self.settings, self.metric, self.dim), copies, self._trained.frame)
        # every copy of every row as one entry, appended partition by partition
        eta = training.code_eta(self.settings, self.metric, self.dim)
        codes = torch.cat([training.encode(x, parts[:, c], self._trained, eta) for c in range(copies)])
        bias = rank_bias(self._trained.frame.rows(x), self.metric).repeat(copies)  # pages rank in the frame
        entry_slots, entry_copy = np.tile(slots, copies), np.repeat(np.arange(copies), slots.size)
        self._entries.append(parts.T.reshape(-1).cpu(), codes, entry_slots, entry_copy, bias)

    def _delete(self, ids: np.ndarray) -> None:
        slots = self._slots.lookup(ids)
        self._entries.delete(slots)
        self._slots.release(ids)
        if self._vectors.shape[0]:
            self._vectors[torch.from_numpy(slots).to(self.device)] = 0.0
