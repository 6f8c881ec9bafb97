"""PagedLists: one growable list of code rows per partition, stored in fixed-size pages.

Every partition's rows live in pages of `page_rows` rows each (like a paged KV cache): the
codes of all pages are one tensor [pages, page_rows, code_width], so a run of consecutive pages is a
view that one batched matrix product scores at once, whatever the partitions' sizes. A
partition owns a list of pages; its row `pos` is row `pos % page_rows` of its
`pos // page_rows`-th page. Removal moves the partition's last row into the hole, so each
partition stays dense; a page left empty goes back to the free pool.

Per page row: codes (any dtype), the row's slot (i64, -1 = empty) and its rank bias (f32:
0, or -|x|^2/2 for L2; -inf for empty rows, so empty rows never win a search).
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import ceil_div

PAGE_ROWS = 128  # rows per page: large enough for efficient products, small enough to pad little


class PagedLists:
    """`lists` growable row lists sharing pages of `page_rows` rows of `code_width` codes of `dtype`."""

    def __init__(self, lists: int, code_width: int, dtype: torch.dtype, device: torch.device, page_rows: int = PAGE_ROWS):
        self.page_rows = page_rows
        self.codes = torch.zeros(0, page_rows, code_width, dtype=dtype, device=device)
        self.slots = torch.full((0, page_rows), -1, dtype=torch.int64)
        self.bias = torch.full((0, page_rows), float("-inf"), dtype=torch.float32, device=device)
        self.sizes = np.zeros(lists, dtype=np.int64)
        self.pages: list[list[int]] = [[] for _ in range(lists)]
        self._free: list[int] = []
        self._table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def page_count(self) -> int:
        """Pages allocated (used or free)."""
        return self.codes.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.slots, self.bias))

    def pages_needed(self, counts: np.ndarray) -> int:
        """New pages that appending counts[p] rows to every list p would take."""
        full = ceil_div(self.sizes + counts, self.page_rows)
        return int(np.maximum(full - np.array([len(p) for p in self.pages]), 0).sum())

    def reserve(self, pages: int, exact: bool = False) -> None:
        """Make `pages` free pages available (growing by at least half unless `exact`)."""
        if len(self._free) >= pages:
            return
        old = self.page_count
        new = old + pages - len(self._free)
        if not exact:
            new = max(new, old + old // 2, 4)
        grow = new - old
        self.codes = torch.cat([self.codes, self.codes.new_zeros(grow, *self.codes.shape[1:])])
        self.slots = torch.cat([self.slots, self.slots.new_full((grow, self.page_rows), -1)])
        self.bias = torch.cat([self.bias, self.bias.new_full((grow, self.page_rows), float("-inf"))])
        self._free = list(range(new - 1, old - 1, -1)) + self._free

    def append(self, lst: int, codes: torch.Tensor, slots: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
        """Add rows (codes [m, code_width], cast to the pages' dtype; slots i64[m]; bias f32[m]) to list
        `lst`; returns their positions i64[m]."""
        m, start = codes.shape[0], int(self.sizes[lst])
        need = ceil_div(start + m, self.page_rows) - len(self.pages[lst])
        if need > 0:
            self.reserve(need)
            self.pages[lst].extend(self._free.pop() for _ in range(need))
            self._table = None
        pos = np.arange(start, start + m)
        page = torch.from_numpy(np.asarray(self.pages[lst], dtype=np.int64)[pos // self.page_rows])
        row = torch.from_numpy(pos % self.page_rows)
        self.codes[page.to(self.codes.device), row.to(self.codes.device)] = codes.to(self.codes.dtype)
        self.slots[page, row] = slots.cpu()
        self.bias[page.to(self.bias.device), row.to(self.bias.device)] = bias.to(self.bias.device)
        self.sizes[lst] = start + m
        return pos

    def remove(self, lst: int, pos: int) -> int | None:
        """Delete row `pos` of list `lst` by moving its last row there; returns the moved row's
        slot (now at `pos`), or None when the deleted row was the last."""
        last = int(self.sizes[lst]) - 1
        lp, lr = self._locate(lst, last)
        moved = None
        if pos != last:
            p, r = self._locate(lst, pos)
            self.codes[p, r] = self.codes[lp, lr]
            self.bias[p, r] = self.bias[lp, lr]
            moved = int(self.slots[lp, lr])
            self.slots[p, r] = moved
        self.slots[lp, lr] = -1
        self.bias[lp, lr] = float("-inf")
        self.sizes[lst] = last
        if last % self.page_rows == 0:  # the last page is empty now
            self._free.append(self.pages[lst].pop())
            self._table = None
        return moved

    def rows(self, lst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes [size, code_width], slots i64[size], bias f32[size]) of list `lst`, in position order."""
        size = int(self.sizes[lst])
        page = torch.as_tensor(self.pages[lst], dtype=torch.int64)
        codes = self.codes[page.to(self.codes.device)].flatten(0, 1)[:size]
        return codes, self.slots[page].flatten()[:size], self.bias[page.to(self.bias.device)].flatten()[:size]

    def table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(all lists' page ids concatenated i64[used], each list's first entry in it i64[lists],
        each list's page count i64[lists]) — cached until pages change hands."""
        if self._table is None:
            counts = np.array([len(p) for p in self.pages], dtype=np.int64)
            flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in self.pages]) if counts.sum() else np.empty(0, np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            self._table = (torch.from_numpy(flat), torch.from_numpy(starts), torch.from_numpy(counts))
        return self._table

    def _locate(self, lst: int, pos: int) -> tuple[int, int]:
        return self.pages[lst][pos // self.page_rows], pos % self.page_rows
