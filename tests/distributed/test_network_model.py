"""peakknn.perfmodel.network against real gloo processes: a search issues the collectives and
moves the bytes `search_traffic` counts (flat and partitioned), and (world size 2) `measure`
gives every rank the same finite link."""

from __future__ import annotations

import pytest
from launch import failures, run  # tests/distributed on sys.path: conftest.py


@pytest.mark.parametrize("world", [2, 3])
def test_search_traffic_matches_a_real_search_and_measure_agrees(world):
    results = run("scenarios_network:counts", world, timeout=90)
    if world == 2:
        print("gloo loopback:", results[0]["_link"])
    assert not failures(results)
    assert len(results[0]) >= 4
