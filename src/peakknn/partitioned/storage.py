"""Where a PartitionedIndex keeps its rows' codes: entries in the partitions' pages.

Every stored row has one entry per copy (two with spill): its codes, slot and rank bias in a
partition's pages (`pages.PagedLists`). `Entries` also remembers where each slot's copies sit,
`where` i32[slots, copies, 2] = (partition, position), -1 for none, so a removal finds them,
and keeps that map right when a removal moves a partition's last row into the hole.
"""

from __future__ import annotations

import numpy as np
import torch

from .pages import PAGE_ROWS, PagedLists
from .settings import PartitionSettings

PQ_PAGE_ROWS = 32  # rows per page of pq4 codes (decoded per page before scoring: small pages pad little)


class Entries:
    """Codes of every row's copies in pages, and where each slot's copies are."""

    def __init__(self, copies: int):
        self.copies = copies
        self.where = np.empty((0, copies, 2), dtype=np.int32)
        self.lists: PagedLists | None = None  # None until the index is trained

    @property
    def nbytes(self) -> int:
        return self.where.nbytes + (self.lists.nbytes() if self.lists is not None else 0)

    def grow(self, capacity: int) -> None:
        """Room for slots up to `capacity` (no entries there yet)."""
        old = self.where.shape[0]
        self.where = np.concatenate([self.where, np.full((capacity - old, self.copies, 2), -1, dtype=np.int32)])

    def reset(self, settings: PartitionSettings, dim: int, scan_width: int, device: torch.device, copies: int | None = None) -> None:
        """Empty pages for the codes of `settings` (rows of scan_width dims for bf16 / int8), with
        `copies` entries per row from now on (None: as before)."""
        if copies is not None and copies != self.copies:
            self.copies = copies
            self.where = np.full((self.where.shape[0], copies, 2), -1, dtype=np.int32)
        if settings.codes == "pq4":
            code_width = (dim // settings.block_dims + 1) // 2
            self.lists = PagedLists(settings.partitions, code_width, torch.uint8, device, page_rows=PQ_PAGE_ROWS)
        else:
            dtype = torch.bfloat16 if settings.codes == "bf16" else torch.int8
            self.lists = PagedLists(settings.partitions, scan_width, dtype, device, page_rows=PAGE_ROWS)
        self.where[:] = -1

    def append(self, part: torch.Tensor, codes: torch.Tensor, entry_slots: np.ndarray, entry_copy: np.ndarray, bias: torch.Tensor) -> None:
        """Append entries (partition i64[e], codes [e, code_width], slot and copy i64[e], bias
        f32[e]) to their partitions, one partition at a time, in partition order (so each
        partition's pages stay consecutive), and record where each entry landed."""
        lists = self.lists
        order = torch.argsort(part, stable=True)
        counts = torch.bincount(part, minlength=len(lists.pages)).numpy()
        lists.reserve(lists.pages_needed(counts), exact=lists.page_count == 0)
        ends = np.cumsum(counts)
        for p in np.flatnonzero(counts).tolist():
            entries = order[ends[p] - counts[p] : ends[p]]
            e, at = entries.numpy(), entries.to(codes.device)
            pos = lists.append(p, codes[at], torch.from_numpy(entry_slots[e]), bias[at.to(bias.device)])
            self.where[entry_slots[e], entry_copy[e], 0] = p
            self.where[entry_slots[e], entry_copy[e], 1] = pos

    def delete(self, slots: np.ndarray) -> None:
        """Remove every entry of these slots."""
        for slot in slots.tolist():
            for p, pos in self.where[slot].tolist():
                if p < 0:
                    continue
                moved = self.lists.remove(p, pos)
                if moved is not None:  # the partition's last row now sits at pos
                    copy = int(np.flatnonzero(self.where[moved, :, 0] == p)[0])
                    self.where[moved, copy, 1] = pos
            self.where[slot] = -1

    def masked_bias(self, keep: torch.Tensor) -> torch.Tensor:
        """The pages' rank bias with -inf on every row whose slot is not kept (keep: bool[slots])."""
        keep = torch.cat([keep, torch.zeros(1, dtype=torch.bool)])  # last entry: empty rows
        rows = self.lists.slots
        mask = keep[torch.where(rows >= 0, rows, keep.shape[0] - 1)].to(self.lists.bias.device)
        return self.lists.bias.masked_fill(~mask, float("-inf"))

    def saved(self, row_of: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every partition's entries in position order: codes, entry_rows (row_of[slot], the
        entry's row in the saved ids), bias and partition_sizes."""
        parts = [self.lists.rows(p) for p in range(len(self.lists.pages))]
        return {
            "codes": torch.cat([codes for codes, _, _ in parts]),
            "entry_rows": row_of[torch.cat([entry_slots for _, entry_slots, _ in parts])],
            "bias": torch.cat([bias for _, _, bias in parts]),
            "partition_sizes": torch.from_numpy(self.lists.sizes.copy()),
        }
