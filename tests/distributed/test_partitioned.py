"""ShardedIndex(kind="partitioned") over gloo: the scenarios of scenarios_partitioned.py in real
processes (world sizes 2 and 3), each bounded by a timeout."""

from __future__ import annotations

import pytest
from launch import failures, run  # tests/distributed on sys.path: conftest.py

@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("scenario", ["exact", "updates", "errors"])
def test_partitioned(scenario, world):
    results = run(f"scenarios_partitioned:{scenario}", world, timeout=120)
    assert not failures(results)
    assert len(results[0]) > 5  # the checks ran

@pytest.mark.parametrize("world", [2, 3])
def test_partitioned_recall(world):
    results = run("scenarios_partitioned:recall", world, timeout=180)
    print(f"world {world} recall:", results[0]["_recall"])
    assert not failures(results)

def test_partitioned_save_load_and_world_size(tmp_path):
    path = str(tmp_path / "sharded")
    assert not failures(run("scenarios_partitioned:persist", 2, timeout=120, path=path, mode="save"))
    assert not failures(run("scenarios_partitioned:persist", 3, timeout=120, path=path, mode="load"))
