"""PartitionedIndex.search(recall_target=...): probes read off recall curves measured on the
index's own rows (peakknn.partitioned.calibration), checked on held-out queries."""

import numpy as np
import pytest
import torch

from partitioned_helpers import truth
from peakknn import PartitionedIndex, PartitionSettings
from peakknn.data import clustered
from peakknn.evaluation import recall
from peakknn.partitioned import calibration
from peakknn.partitioned.settings import partitions_for


def test_probe_ladder_rises_to_the_partition_count():
    for partitions in (1, 2, 5, 64, 100, 1000):
        ladder = calibration.probe_ladder(partitions)
        assert ladder[0] == 1 and ladder[-1] == partitions
        assert all(b > a for a, b in zip(ladder, ladder[1:]))
        assert all(b <= 1.5 * a + 1 for a, b in zip(ladder, ladder[1:]))  # about sqrt(2) apart


def test_probe_for_interpolates_with_the_standard_error():
    curve = calibration.RecallCurve(10, np.array([1, 2, 4, 8]), np.array([0.5, 0.8, 0.9, 0.98]), queries=10**6, rows=1000)
    assert calibration.probe_for(curve, 0.8) == 3  # 0.8 + a tiny error lands just past probe 2
    assert calibration.probe_for(curve, 0.939) == 6  # just under halfway between 4 and 8
    assert calibration.probe_for(curve, 0.4) == 1
    assert calibration.probe_for(curve, 0.99) == 8  # out of reach: the largest measured probe
    few = calibration.RecallCurve(10, curve.probes, curve.recall, queries=10, rows=1000)
    assert calibration.probe_for(few, 0.9) > calibration.probe_for(curve, 0.9)  # fewer queries, wider margin


def held_out(metric, spread, d=32, n=20_000, seed=0):
    ds = clustered(n, d, 500, clusters=60, spread=spread, seed=seed)
    return torch.from_numpy(ds.train), torch.from_numpy(ds.test)


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("spread", [0.3, 1.0])
def test_recall_target_holds_on_held_out_queries(metric, spread):
    x, q = held_out(metric, spread)
    index = PartitionedIndex(x.shape[1], metric=metric, settings=PartitionSettings(partitions=64, train_size=5000))
    index.add(x)
    exact = truth(x, q, 10, metric)
    index.calibrate()
    assert set(index.recall_curves) == set(calibration.KS)
    probes = []
    for target in (0.9, 0.95, 0.99):
        got = recall(index.search(q, 10, recall_target=target).ids, exact)
        assert got >= target - 0.01, (metric, spread, target, got)
        probes.append(index.probe_for(target))
    assert probes == sorted(probes)


def test_curves_are_saved_and_checked(tmp_path):
    x, q = held_out("ip", 0.5, n=4000)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=16))
    index.add(x)
    index.calibrate()
    index.save(tmp_path / "i")
    loaded = PartitionedIndex.load(tmp_path / "i")
    assert loaded.recall_curves == index.recall_curves
    assert loaded.probe_for(0.95) == index.probe_for(0.95)
    torch.testing.assert_close(loaded.search(q, 5, recall_target=0.9).ids, index.search(q, 5, recall_target=0.9).ids)
    with pytest.raises(ValueError, match="recall_curves"):
        calibration.curves_from_array(torch.tensor([[10.0, 2.0, 0.9, 10.0, 5.0], [10.0, 1.0, 0.8, 10.0, 5.0]], dtype=torch.float64), "x")
    with pytest.raises(ValueError, match="recall_curves"):
        calibration.curves_from_array(torch.tensor([[10.0, 1.0, 1.5, 10.0, 5.0]], dtype=torch.float64), "x")


def test_recall_target_errors_and_growth():
    x, q = held_out("l2", 0.5, n=8000)
    index = PartitionedIndex(32, metric="l2", settings=PartitionSettings(partitions=16, train_size=1000))
    assert (index.search(q, 5, recall_target=0.9).ids == -1).all()  # empty: fillers, nothing measured
    index.add(x[:999])  # untrained: an exact scan, nothing measured
    assert torch.equal(index.search(q, 5, recall_target=0.9).ids, truth(x[:999], q, 5, "l2")) and index.recall_curves == {}
    index.add(x[999:1000])
    assert index.recall_curves == {}  # measured by the first search that asks for a recall
    index.search(q, 5, recall_target=0.9)
    first = index._curves[10].rows
    with pytest.raises(ValueError, match="probe or recall_target"):
        index.search(q, 5, recall_target=0.9, probe=3)
    with pytest.raises(ValueError, match="recall_target"):
        index.search(q, 5, recall_target=1.5)
    index.add(x[1000:])  # 8x the rows: measured again by the next search with a target
    assert index._curves[10].rows == first == 1000
    index.search(q, 5, recall_target=0.9)
    assert index._curves[10].rows == 8000
    index.calibrate()  # on demand
    assert index._curves[10].rows == 8000
    compressed = PartitionedIndex(32, metric="l2", settings=PartitionSettings(partitions=16, codes="pq4", keep_vectors=False))
    compressed.add(x)
    assert compressed.recall_curves  # measured at training, before the vectors were dropped
    with pytest.raises(ValueError, match="compressed-only"):
        compressed.calibrate()


def test_recall_target_with_too_few_rows_searches_every_partition():
    index = PartitionedIndex(4, settings=PartitionSettings(partitions=1, train_size=None))
    index.add(torch.randn(2, 4))
    index.train()
    assert index.probe_for(0.9) == 1 and index.recall_curves == {}
    assert index.search(torch.randn(3, 4), 1, recall_target=0.9).ids.shape == (3, 1)


def test_searches_with_a_target_survive_concurrent_training():
    import threading

    x, q = held_out("ip", 0.5, n=1000)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=8, train_size=None))
    index.add(x)
    index.train()
    errors, done = [], threading.Event()

    def trainer():
        for _ in range(3):  # each training leaves the curves stale: the next target search measures again
            index.train()

    t = threading.Thread(target=trainer)
    t.start()
    try:
        for _ in range(4):
            try:
                assert index.search(q[:20], 5, recall_target=0.9).ids.shape == (20, 5)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
    finally:
        done.set()
        t.join()
    assert not errors, errors[:2]


def test_default_partitions_are_derived_again_at_every_training(tmp_path):
    x = torch.randn(6000, 8)
    index = PartitionedIndex(8, settings=PartitionSettings(train_size=None))
    index.add(x[:100])
    index.train()
    small = index.settings.partitions
    index.add(x[100:])
    index.train()
    assert small < index.settings.partitions == partitions_for(6000)
    index.save(tmp_path / "i")
    loaded = PartitionedIndex.load(tmp_path / "i")
    loaded.add(torch.randn(20_000, 8))
    loaded.train()
    assert loaded.settings.partitions == partitions_for(26_000)
