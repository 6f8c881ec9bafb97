"""The search of a PartitionedIndex, for blocks of queries (engine.driver.run_blocks).

 1. partition scores: one matrix product queries x centres; each query probes its best
    partitions (<q, c>; <q, c> - |c|^2/2 for L2): `probe` of them, or (adaptive) those within
    a calibrated score gap of its best;
 2. grouped scoring: the (query, page) pairs of the probed partitions are sorted by page
    (`PagePairs`); each run of consecutive probed pages (up to GROUP_BYTES of bf16 rows,
    GROUP_GAP unprobed pages skipped inside it) is scored by one batched bf16 matrix product
    [pages, page rows, d'] x [pages, d', their queries (padded)] (codes are decoded to bf16
    rows first; d' = the index's scan dims), and each pair's scores are copied as a row into a
    per-query buffer that concatenates the query's pages;
 3. candidates: the exact `rerank` best of every query's buffer (`topk.exact_topk_rows`);
 4. re-ranking: exact fp32 scores of the candidates from the stored vectors
    (`engine.rescore.rescore`), then the top k. Without stored vectors, the top k by code score
    is returned and the reported scores are those estimates.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from ..engine.driver import run_blocks
from ..engine.rescore import pad_results, rescore
from ..engine.table import rank_bias
from ..topk import exact_topk_rows
from .pages import PagedLists

GROUP_BYTES = 16 << 20  # bf16 page rows scored by one batched matrix product (few large products)
GROUP_GAP = 32  # a run of probed pages spans gaps of up to this many unprobed pages (scored, ignored)
GROUP_SCORES = 4 << 20  # most scores (page rows x padded queries) one such product returns
REUSE_SCRATCH = True  # CPU searches reuse their large scratch tensors (see Scratch)
BUFFER_ENTRY_BYTES = 12  # a score-buffer entry with its indices, for the memory bound
CENTRE_SCORE_BYTES = 8  # per (query, partition) of the centre scores, for the memory bound
MAX_QUERY_BLOCK = 4096


def search(index, q: torch.Tensor, k: int, considered: int, gap: float | None, depth: int | None, bias: torch.Tensor, max_memory: int):
    """(rank f32[nq, k], slots i64[nq, k]) of queries q f32[nq, d] against `index` (a trained
    PartitionedIndex): each query considers its `considered` best partitions by centre score and
    probes all of them, or with a gap those within gap * |q| of its best; depth: candidates re-ranked exactly (None: none, code
    scores are returned); bias f32[pages, page rows]: rank bias of every page row, -inf = skip."""
    lists: PagedLists = index._entries.lists
    trained = index._trained
    metric, partitions = index.metric, trained.centres.shape[0]
    residual = index.settings.codes == "pq4"
    centres = trained.frame_centres  # partitions are chosen in the frame (training.best_centres)
    centre_bias = rank_bias(centres, metric) if metric == "l2" else None
    page_counts = lists.table()[2].to(q.device)
    # inner-product partition choice tolerates bf16 scores; L2 ranks and pq4 offsets keep fp32
    centres16 = centres.to(torch.bfloat16) if metric != "l2" and not residual else None

    def outer_block(qo: torch.Tensor, _start: int):
        qf = trained.frame.queries(qo, metric)
        dot_c = qf @ centres.T if centres16 is None else (qf.to(torch.bfloat16) @ centres16.T).float()  # [nq, P]
        top, pids = torch.topk(dot_c if centre_bias is None else dot_c + centre_bias, considered, dim=1)
        take = None  # all `considered` partitions of every query
        if gap is not None:  # the partitions within gap * |q'| of each query's best (training.probe_gaps)
            take = (top[:, :1] - top) <= gap * torch.linalg.vector_norm(qf, dim=1, keepdim=True)
        # the score buffer holds (most pages of one query) x page rows per query: split the
        # block where that would exceed max_memory
        pages = page_counts[pids] if take is None else page_counts[pids] * take
        widest = int(pages.sum(1).max()) * lists.page_rows

        def inner_block(qi: torch.Tensor, start: int):
            rows = slice(start, start + qi.shape[0])
            chosen = None if take is None else take[rows]
            return search_block(index, qi, dot_c[rows], pids[rows], chosen, k, depth, bias, max_memory)

        return run_blocks(qo, max_memory // (BUFFER_ENTRY_BYTES * max(1, widest)), inner_block, k)

    return run_blocks(q, min(MAX_QUERY_BLOCK, max_memory // (CENTRE_SCORE_BYTES * partitions)), outer_block, k)


def search_block(index, q, dot_c, pids, take, k: int, depth: int | None, bias: torch.Tensor, max_memory: int):
    """Top-k (rank scores, slots) of queries q [nq, d] that probe partitions pids i64[nq, w]
    (those where take bool[nq, w] is True, or all when take is None; dot_c: <q', c'> [nq, P] in
    the frame; bias: f32[pages, page rows] rank bias, -inf = skip). Scores are frame ranks:
    bf16/int8 codes hold frame rows; pq4 codes hold residuals r = x - c, scored as
    s <q', r> + <q', c'> (x' = s r + c')."""
    dev, nq, lists = q.device, q.shape[0], index._entries.lists
    codec, projection, copies = index._codec, index._projection, index._copies
    rows_per_page = lists.page_rows
    pairs = PagePairs(lists, pids, take)
    # bf16 scores suffice to pick candidates that are re-ranked exactly; estimates that are
    # returned as results (no re-ranking) and residual offsets keep fp32.
    residual = index.settings.codes == "pq4"
    exact_later = depth is not None and not residual and index.metric != "l2"
    scratch = index._scratch
    buf = scratch.take("scores", (nq * pairs.pages_per_query, rows_per_page), torch.bfloat16 if exact_later else torch.float32, dev)
    buf.fill_(float("-inf"))
    frame = index._trained.frame
    qs = frame.queries(q, index.metric)
    qp = qs * frame.scale if residual else qs if projection is None else qs @ projection
    q_scan = codec.scan_queries(qp) if codec is not None else qp.to(torch.bfloat16)
    offset = dot_c[pairs.query, pairs.partition] if residual else None  # <q', c'> per pair
    group_pages = max(1, GROUP_BYTES // (2 * rows_per_page * q_scan.shape[1]))
    for g0, g1, lo, hi, most in pairs.groups(group_pages, max(1, GROUP_SCORES // rows_per_page), GROUP_GAP):
        local, rank = pairs.page[lo:hi] - g0, pairs.rank[lo:hi]
        padded = torch.zeros((g1 - g0) * most, dtype=torch.int64, device=dev)  # queries of each page, padded
        padded[local * most + rank] = pairs.query[lo:hi]
        codes = lists.codes[g0:g1]
        rows = codes if codec is None else codec.scan_rows(codes.flatten(0, 1)).view(g1 - g0, rows_per_page, -1)
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
    best, pos = exact_topk_rows(buf.view(nq, -1), min(want * copies, buf.numel() // nq))
    page = pairs.page_table().gather(1, pos // rows_per_page)
    slot = lists.slots[page.cpu(), (pos % rows_per_page).cpu()].to(dev)
    valid = (best > float("-inf")) & (slot >= 0)
    if copies > 1:  # rows found through both of their partitions count once
        valid &= ~repeats(slot.masked_fill(~valid, -1))
        best, pick = torch.topk(best.masked_fill(~valid, float("-inf")), min(want, best.shape[1]), dim=1)
        slot, valid = slot.gather(1, pick), valid.gather(1, pick)
    slot = slot.clamp_min(0)
    if depth is not None:
        return rescore(ExactRows(index), q, slot, valid, k, index.metric, max_memory)
    best = best.masked_fill(~valid, float("-inf"))
    if index.metric == "l2":  # scan rank <q', x'> - |x'|^2/2 -> -|q' - x'|^2, then out of the frame
        best = (2 * best - (qs * qs).sum(1, keepdim=True)) / frame.scale**2
    else:  # s^2 <q, x - m> -> <q, x>
        best = best / frame.scale**2 + (q.double() @ frame.centre.double()).to(torch.float32).unsqueeze(1)
    best, slot = pad_results(best, slot, k)
    return best, slot.masked_fill(best == float("-inf"), 0)


class ExactRows:
    """The index's fp32 vectors as an engine table for `engine.rescore.rescore`."""

    def __init__(self, index):
        self.vectors = index._vectors
        self.slot_ids = index._slots.slot_ids
        self.frame = index._trained.frame  # inner products are re-scored relative to its centre

    def exact_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.vectors.index_select(0, slots.reshape(-1)).view(*slots.shape, self.vectors.shape[1])

    def alive(self, slots: torch.Tensor) -> torch.Tensor:
        return self.slot_ids[slots.cpu()].to(slots.device) >= 0


class Scratch(threading.local):
    """Per-thread scratch tensors that one search after another reuses.

    On CPU a fresh tensor of a few MB or more is fresh memory from the OS, and its first write
    costs a page fault per 4 KiB. A search takes its score buffer and query blocks from here; they
    stay allocated, at the size of the largest search so far, until the index is dropped. CUDA
    has a caching allocator: there every take is a plain allocation.
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


class PagePairs:
    """The (query, page) pairs of one query block's probed partitions, sorted by page.

    pids: i64[nq, w] partitions of each query; take: bool[nq, w] which of them are probed
    (None = all).

    page, query, partition, dest, rank: i64[pairs] in page order, where dest = query *
    pages_per_query + the pair's column among its query's pages (a row of the score buffer
    [nq * pages_per_query, page rows]) and rank = the pair's position among its page's pairs;
    pages_per_query: most pages of one query.
    """

    def __init__(self, lists: PagedLists, pids: torch.Tensor, take: torch.Tensor | None = None):
        dev = pids.device
        flat_pages, first, count = (t.to(dev) for t in lists.table())
        nq = pids.shape[0]
        per_pair = count[pids] if take is None else count[pids] * take
        per_pair = per_pair.reshape(-1)  # pages of each (query, partition); 0 where not taken
        per_query = per_pair.view(nq, -1).sum(1)
        total = int(per_query.sum())
        self.pages_per_query = max(1, int(per_query.max())) if nq else 1
        ramp = torch.arange(total, device=dev)
        within = ramp - (per_pair.cumsum(0) - per_pair).repeat_interleave(per_pair, output_size=total)
        page = flat_pages[first[pids].view(-1).repeat_interleave(per_pair, output_size=total) + within]
        query = torch.arange(nq, device=dev).repeat_interleave(per_query, output_size=total)
        column = ramp - (per_query.cumsum(0) - per_query).repeat_interleave(per_query, output_size=total)
        order = torch.argsort(page, stable=True)
        self.page, self.query = page[order], query[order]
        self.partition = pids.view(-1).repeat_interleave(per_pair, output_size=total)[order]
        self.dest = (query * self.pages_per_query + column)[order]
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
        """i64[nq, pages_per_query]: the page behind each column of the score buffer (0 where unused: -inf there)."""
        table = torch.zeros(self._nq * self.pages_per_query, dtype=torch.int64, device=self.page.device)
        table[self.dest] = self.page
        return table.view(self._nq, self.pages_per_query)


def repeats(slot: torch.Tensor) -> torch.Tensor:
    """bool [rows, m]: entries whose (non-negative) slot already appears earlier in the row."""
    ordered, perm = torch.sort(slot, dim=1, stable=True)
    again = torch.zeros_like(slot, dtype=torch.bool)
    again[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return torch.zeros_like(again).scatter_(1, perm, again)
