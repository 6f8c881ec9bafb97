"""PagedLists (peakknn.partitioned.pages) against a plain model (one Python list per partition) through random appends and removals."""

import numpy as np
import pytest
import torch

from peakknn.partitioned.pages import PagedLists


def check_against_model(lists: PagedLists, model: list[list[tuple[int, float]]]):
    for p, rows in enumerate(model):
        codes, slots, bias = lists.rows(p)
        assert int(lists.sizes[p]) == len(rows)
        assert slots.tolist() == [s for s, _ in rows]
        assert bias.tolist() == [b for _, b in rows]
        assert torch.equal(codes[:, 0], torch.tensor([float(s) for s, _ in rows], dtype=codes.dtype))
        assert len(lists.pages[p]) == -(-len(rows) // lists.page_rows)  # no empty page is kept
    used = [page for pages in lists.pages for page in pages]
    assert len(used) == len(set(used))  # a page has one owner
    unused = torch.ones(lists.page_count, dtype=torch.bool)
    unused[used] = False
    empty = lists.slots < 0
    assert bool(empty[unused].all()) and bool(torch.isinf(lists.bias[empty]).all())  # empty rows never score
    flat, first, count = lists.table()
    for p, pages in enumerate(lists.pages):
        assert flat[first[p] : first[p] + count[p]].tolist() == pages


@pytest.mark.parametrize("page_rows", (1, 3, 8))
def test_random_appends_and_removals_match_a_plain_model(page_rows):
    rng = np.random.default_rng(page_rows)
    lists = PagedLists(5, 2, torch.float32, torch.device("cpu"), page_rows=page_rows)
    model = [[] for _ in range(5)]
    slot = 0
    for step in range(300):
        p = int(rng.integers(5))
        if rng.random() < 0.55 or not model[p]:
            m = int(rng.integers(0, 7))
            slots = torch.arange(slot, slot + m)
            bias = torch.from_numpy(rng.standard_normal(m).astype(np.float32))
            codes = slots.float().unsqueeze(1).repeat(1, 2)
            pos = lists.append(p, codes, slots, bias)
            assert pos.tolist() == list(range(len(model[p]), len(model[p]) + m))
            model[p].extend(zip(slots.tolist(), bias.tolist()))
            slot += m
        else:
            pos = int(rng.integers(len(model[p])))
            last = model[p].pop()
            moved = lists.remove(p, pos)
            if pos < len(model[p]):
                model[p][pos] = last
                assert moved == last[0]
            else:
                assert moved is None
        if step % 25 == 0:
            check_against_model(lists, model)
    check_against_model(lists, model)


def test_pages_are_reused_and_reserve_is_exact_when_asked():
    lists = PagedLists(2, 1, torch.bfloat16, torch.device("cpu"), page_rows=4)
    lists.reserve(lists.pages_needed(np.array([8, 3])), exact=True)
    assert lists.page_count == 3
    lists.append(0, torch.zeros(8, 1), torch.arange(8), torch.zeros(8))
    lists.append(1, torch.zeros(3, 1), torch.arange(8, 11), torch.zeros(3))
    assert lists.page_count == 3 and lists.pages == [[0, 1], [2]]
    for _ in range(4):
        lists.remove(0, 0)
    assert lists.pages[0] == [0]  # the emptied page went back to the pool ...
    lists.append(1, torch.zeros(4, 1), torch.arange(11, 15), torch.zeros(4))
    assert lists.page_count == 3 and lists.pages[1] == [2, 1]  # ... and was taken again
