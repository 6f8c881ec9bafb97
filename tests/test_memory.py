"""Memory of the flat Index: what `memory_bytes` reports is every array the index holds, and a
bf16 index holds at most 1.6x its fp32 data after `reserve` or one bulk add."""

import numpy as np
import pytest
import torch

from peakknn import Index


def held_bytes(index):
    """Bytes of every tensor and numpy array reachable from the index's attributes (two levels
    into plain objects: its SlotStore and that store's IdMap)."""
    total, seen = 0, set()

    def visit(value, depth):
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = value.untyped_storage().data_ptr()
            if key not in seen and value.numel():
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):  # IdMap's recent changes, at its estimate of a dict entry
            total += 100 * len(value)
        elif depth < 3 and hasattr(value, "__dict__") and not isinstance(value, type):
            for v in vars(value).values():
                visit(v, depth + 1)

    visit(index, 0)
    return total


@pytest.mark.parametrize("dim", [128, 384, 100])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("how", ["reserve", "bulk"])
def test_bf16_index_holds_at_most_1_6x_its_data(dim, metric, how):
    n = 20_000
    x = torch.randn(n, dim)
    index = Index(dim, metric=metric)
    if how == "reserve":
        index.reserve(n)
        for part in x.split(5000):
            index.add(part)
    else:
        index.add(x)
    data = n * dim * 4
    assert index.memory_bytes <= 1.6 * data, index.memory_bytes / data
    assert abs(held_bytes(index) - index.memory_bytes) <= 0.01 * index.memory_bytes


def test_growth_keeps_doubling_slack_only_for_small_adds():
    index = Index(64)
    for _ in range(10):
        index.add(torch.randn(1000, 64))
    assert index.memory_bytes <= 2 * 1.6 * 10_000 * 64 * 4  # doubling: at most twice the room
    assert abs(held_bytes(index) - index.memory_bytes) <= 0.01 * index.memory_bytes
