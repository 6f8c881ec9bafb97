"""IdMap: int64 id -> int64 value (a slot) in compact numpy arrays, with batch updates.

A Python dict costs about 100 bytes per entry, more than a compressed vector. IdMap keeps a
sorted array of ids with their values (16 bytes per entry) plus a small dict of recent changes
(a value of -1 marks a deletion); the dict is merged into the arrays once it exceeds
MERGE_AT entries, so a batch update costs O(batch) amortised and a lookup is a binary search.
"""

from __future__ import annotations

import numpy as np

MERGE_AT = 65536  # recent changes kept in the dict before a merge
MERGE_BATCH = 1024  # larger batches merge straight into the arrays


class IdMap:
    def __init__(self):
        self._keys = np.empty(0, dtype=np.int64)  # sorted
        self._values = np.empty(0, dtype=np.int64)  # -1 = deleted
        self._recent: dict[int, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._values.nbytes + 100 * len(self._recent)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """i64 values of ids (-1 where absent)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.full(ids.shape, -1, dtype=np.int64)
        if self._keys.size:
            pos = np.searchsorted(self._keys, ids).clip(max=self._keys.size - 1)
            hit = self._keys[pos] == ids
            out[hit] = self._values[pos[hit]]
        if self._recent:
            if ids.size <= len(self._recent):
                for i, key in enumerate(ids.tolist()):
                    if key in self._recent:
                        out[i] = self._recent[key]
            else:  # many ids: one vectorised search of the recent changes instead of a loop over ids
                keys = np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent))
                values = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
                order = np.argsort(keys)
                keys, values = keys[order], values[order]
                pos = np.searchsorted(keys, ids).clip(max=keys.size - 1)
                hit = keys[pos] == ids
                out[hit] = values[pos[hit]]
        return out

    def set(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Map ids (unique) to values >= 0, or delete them with value -1."""
        ids = np.asarray(ids, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        before = self.lookup(ids)
        self._count += int(((before < 0) & (values >= 0)).sum()) - int(((before >= 0) & (values < 0)).sum())
        if ids.size > MERGE_BATCH:
            self._merge(ids, values)
            return
        self._recent.update(zip(ids.tolist(), values.tolist()))
        if len(self._recent) > MERGE_AT:
            self._merge(np.empty(0, np.int64), np.empty(0, np.int64))

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, values) of every live entry (reads only: safe beside other readers)."""
        return self._merged(np.empty(0, np.int64), np.empty(0, np.int64))

    def _merge(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._keys, self._values = self._merged(ids, values)
        self._recent = {}

    def _merged(self, ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sorted live (keys, values) after applying the recent changes, then ids -> values."""
        if self._recent:
            recent_ids = np.fromiter(self._recent.keys(), dtype=np.int64, count=len(self._recent))
            recent_values = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
            keep = ~np.isin(recent_ids, ids)
            ids = np.concatenate([recent_ids[keep], ids])
            values = np.concatenate([recent_values[keep], values])
        if not ids.size:
            return self._keys.copy(), self._values.copy()
        if (not self._keys.size or ids.min() > self._keys[-1]) and (ids.size < 2 or bool((np.diff(ids) > 0).all())):
            live = values >= 0  # appending ascending new ids (the common bulk add): no sort needed
            return np.concatenate([self._keys, ids[live]]), np.concatenate([self._values, values[live]])
        stale = np.isin(self._keys, ids)
        keys = np.concatenate([self._keys[~stale], ids])
        vals = np.concatenate([self._values[~stale], values])
        order = np.argsort(keys, kind="stable")
        keys, vals = keys[order], vals[order]
        live = vals >= 0
        return keys[live], vals[live]
