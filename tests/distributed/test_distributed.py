"""peakknn.distributed over gloo: every scenario of scenarios.py runs in real processes (world
sizes 2 and 3, 4 for the all-reduce), each bounded by a timeout."""

from __future__ import annotations

import functools

import pytest
from launch import failures, run  # tests/distributed on sys.path: conftest.py


@functools.cache
def _run(scenario: str, world: int, **args):
    return run(scenario, world, timeout=90, **args)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_reduce_quantized(world):
    results = _run("quantized", world)
    rel = results[0].get("_rel_l2", {})
    print(f"world {world} relative L2 error vs fp32 all_reduce:", {k: f"{v:.2e}" for k, v in rel.items()})
    assert not failures(results)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("scenario", ["exact", "updates", "errors"])
def test_sharded(scenario, world):
    results = _run(scenario, world)
    assert not failures(results)
    assert len(results[0]) > 3  # the checks ran


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_recall(world):
    results = _run("recall", world)
    print(f"world {world} recall:", results[0]["_recall"])
    assert not failures(results)


def test_save_load_and_world_size(tmp_path):
    path = str(tmp_path / "sharded")
    assert not failures(run("persist", 2, timeout=90, path=path, mode="save"))
    assert not failures(run("persist", 3, timeout=90, path=path, mode="load"))


def test_not_imported_by_peakknn_and_needs_a_process_group():
    import subprocess
    import sys

    code = "import sys, peakknn; assert 'peakknn.distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    import torch

    from peakknn.distributed import ShardedIndex, all_reduce_quantized

    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedIndex(4)
    with pytest.raises(RuntimeError, match="init_process_group"):
        all_reduce_quantized(torch.ones(3))


def test_a_rank_that_never_joins_times_out_instead_of_hanging():
    results = run("stalled", 2, timeout=60, pg_timeout=2)
    assert not failures(results)
    assert "stalled_raises" in results[0]
