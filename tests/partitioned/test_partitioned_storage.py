"""Where a PartitionedIndex keeps its rows (peakknn.partitioned.storage.Entries): every copy of
every row at its recorded position through churn, spilled copies, and filter masks."""

import numpy as np
import pytest
import torch
from partitioned_helpers import CODES, build, check_bookkeeping, data, low_rank

from peakknn import PartitionedIndex


@pytest.mark.parametrize("spill", (False, True))
def test_every_row_stays_findable_through_churn(spill):
    """Random interleaved adds/removes/upserts, then each live row finds itself (probe = all)."""
    x, _ = data(n=3000, d=16, seed=4)
    index = build(x[:1000], "l2", partitions=8, codes="int8", spill=spill)
    rng = np.random.default_rng(0)
    live = dict(enumerate(x[:1000]))
    nxt = 1000
    for step in range(30):
        op = step % 3
        if op == 0:
            ids = index.add(x[nxt : nxt + 50])
            live.update(zip(ids.tolist(), x[nxt : nxt + 50]))
            nxt += 50
        elif op == 1:
            gone = rng.choice(sorted(live), 40, replace=False)
            index.remove(gone)
            for i in gone.tolist():
                del live[i]
        else:
            ids = rng.choice(sorted(live), 20, replace=False)
            vecs = x[2000 + 20 * step : 2020 + 20 * step]  # same distribution (int8 scales clamp outliers)
            index.upsert(vecs, ids=ids)
            live.update(zip(ids.tolist(), vecs))
        if step % 10 == 9:
            check_bookkeeping(index)
    ids = sorted(live)
    vecs = torch.stack([live[i] for i in ids])
    got = index.search(vecs, 1, probe=8).ids[:, 0]
    assert torch.equal(got, torch.tensor(ids))


@pytest.mark.parametrize("codes", CODES)
def test_spill_stores_rows_twice_and_counts_them_once(tmp_path, codes):
    x, q = data(n=3000, d=32, seed=13, spread=1.0)
    index = build(x, "ip", partitions=16, codes=codes, block_dims=4, spill=True)
    check_bookkeeping(index)
    # SOAR picks a second partition whose residual is closer to orthogonal to the first than
    # the plain runner-up's would be
    centres, where = index._centres, torch.from_numpy(index._entries.where[:3000, :, 0])
    r1 = torch.nn.functional.normalize(x - centres[where[:, 0]], dim=1)
    r2 = torch.nn.functional.normalize(x - centres[where[:, 1]], dim=1)
    distance = torch.cdist(x, centres).scatter(1, where[:, :1], float("inf"))
    plain = torch.nn.functional.normalize(x - centres[distance.argmin(1)], dim=1)
    soar, runner_up = (r1 * r2).sum(1).abs().mean(), (r1 * plain).sum(1).abs().mean()
    assert soar < runner_up - 0.01, (soar, runner_up)
    # searching every partition finds each row twice; results name it once
    result = index.search(q, 50, probe=16)
    assert all(len(set(row)) == 50 for row in result.ids.tolist())
    index.remove(list(range(0, 3000, 7)))
    check_bookkeeping(index)
    index.save(tmp_path / "s")
    loaded = PartitionedIndex.load(tmp_path / "s")
    check_bookkeeping(loaded)
    a, b = index.search(q, 10, probe=4), loaded.search(q, 10, probe=4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


def test_projection_follows_updates():
    x, q = low_rank(seed=2)
    index = build(x, "l2", partitions=8, scan_dims=16)
    new = index.add(q[:5])
    assert torch.equal(index.search(q[:5], 1, probe=8).ids[:, 0], new)
    index.remove(new[:2])
    index.upsert(q[9:10], ids=[int(new[2])])
    got = index.search(q[:5], 1, probe=8).ids[:, 0]
    assert not set(new[:2].tolist()) & set(got.tolist())
    assert int(index.search(q[9:10], 1, probe=8).ids[0, 0]) == int(new[2])
    check_bookkeeping(index)


def test_masked_bias_hides_exactly_the_rows_not_kept():
    x, _ = data(n=1200, d=16, seed=18)
    index = build(x, "l2", partitions=8, spill=True)
    entries = index._entries
    keep = torch.rand(index._slots.capacity) < 0.5
    got = entries.masked_bias(keep)
    slots, bias = entries.lists.slots, entries.lists.bias
    for page, row in np.ndindex(*slots.shape):  # row by row, from the pages' own slots and biases
        slot = int(slots[page, row])
        want = float(bias[page, row]) if slot >= 0 and bool(keep[slot]) else float("-inf")
        assert float(got[page, row]) == want
    assert torch.equal(entries.lists.bias, bias)  # the pages' own bias is untouched
