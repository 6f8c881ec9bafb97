"""Training a PartitionedIndex (peakknn.partitioned.training): explicit and automatic training,
the adaptive probe's calibration, SOAR spill, and the per-row choices checked against float64
recomputations."""

import pytest
import torch
from partitioned_helpers import METRICS, build, copies, data, taken_partitions, truth

from peakknn import PartitionedIndex, PartitionSettings
from peakknn.evaluation import recall
from peakknn.partitioned import training
from peakknn.quant import anisotropic_loss


def test_explicit_training_and_no_auto_training():
    x, q = data(seed=7)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=8, train_size=None))
    index.add(x)
    assert not index.is_trained
    index.train(x[:1000])
    assert index.is_trained and int(index.partition_sizes.sum()) == x.shape[0] * copies(index)
    expected = truth(x, q, 5, "ip")
    assert recall(index.search(q, 5, probe=8).ids, expected) >= 0.99


def test_spill_needs_fewer_partitions_for_the_same_recall():
    x, q = data(n=6000, d=32, nq=100, seed=14, spread=1.0)
    expected = truth(x, q, 10, "ip")
    plain, spilled = (build(x, "ip", partitions=64, spill=s) for s in (False, True))
    assert recall(spilled.search(q, 10, probe=2).ids, expected) > recall(plain.search(q, 10, probe=2).ids, expected)


@pytest.mark.parametrize("metric", METRICS)
def test_probe_gap_makes_the_training_rows_average_probe_partitions(metric):
    x, _ = data(n=900, d=16, seed=21, spread=1.0)  # n <= GAP_SAMPLE: the calibration sees every row
    index = build(x, metric, partitions=64)
    index.train()
    for probe in (1, 2, 5, 12):
        mean = float(taken_partitions(index, x, probe).double().mean())
        # the gap is the (rows * probe)-th smallest; float64 here may drop that boundary row
        assert probe - 1.5 / len(x) <= mean <= probe + 0.02
    gaps = [index.probe_gap(p) for p in range(1, 64)]
    assert gaps[0] == 0.0 and all(g >= 0 for g in gaps) and index.probe_gap(64) is None


# ----------------------------------------------------------------- per-row choices


@pytest.mark.parametrize("block", (training.ASSIGN_BLOCK, 64))
def test_assign_takes_the_nearest_then_the_soar_partition(monkeypatch, block):
    """copies=1: the centre nearest in L2; copies=2 adds the least |x - c|^2 + SOAR_LAMBDA *
    <x - c, r>^2 over the other centres (r: the unit residual in the first). Blocks of rows
    (ASSIGN_BLOCK) change nothing."""
    monkeypatch.setattr(training, "ASSIGN_BLOCK", block)
    g = torch.Generator().manual_seed(5)
    x, centres = torch.randn(700, 8, generator=g), torch.randn(12, 8, generator=g)
    xd, cd = x.double(), centres.double()
    nearest = torch.cdist(xd, cd).argmin(1)
    one = training.assign(x, centres, 1.0, 1)
    assert one.shape == (700, 1) and torch.equal(one[:, 0], nearest)
    two = training.assign(x, centres, 1.0, 2)
    assert torch.equal(two[:, 0], nearest)
    r = torch.nn.functional.normalize(xd - cd[nearest], dim=1)
    residual = xd.unsqueeze(1) - cd.unsqueeze(0)  # [m, P, d]
    loss = (residual**2).sum(2) + training.SOAR_LAMBDA * (residual * r.unsqueeze(1)).sum(2) ** 2
    loss.scatter_(1, nearest.unsqueeze(1), float("inf"))
    assert torch.equal(two[:, 1], loss.argmin(1))
    # eta != 1: the first partition minimises the anisotropic loss
    eta = 4.0
    aniso = torch.stack([anisotropic_loss(xd, cd[j].expand_as(xd), eta) for j in range(12)], dim=1)
    assert torch.equal(training.assign(x, centres, eta, 1)[:, 0], aniso.argmin(1))
    assert training.assign(x[:0], centres, 1.0, 2).shape == (0, 2)


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_by_popularity_orders_centres_by_how_often_they_are_probed(monkeypatch, metric):
    monkeypatch.setattr(training, "ASSIGN_BLOCK", 100)  # several blocks of rows
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(10, 6, generator=g)
    sample = torch.randn(450, 6, generator=g) + centres[3]  # centre 3's neighbourhood is the busiest
    probe = 3
    scores = sample.double() @ centres.double().T - (0.5 * (centres.double() ** 2).sum(1) if metric == "l2" else 0.0)
    hits = torch.bincount(torch.topk(scores, probe, dim=1).indices.reshape(-1), minlength=10).tolist()
    order = sorted(range(10), key=lambda j: (-hits[j], j))  # most probed first, ties in centre order
    got = training.by_popularity(centres, sample, metric, probe)
    assert torch.equal(got, centres[order])
    # and the blockwise centre top-k it is built on is the plain one
    blocks = list(training.best_centres(sample, centres, metric, probe))
    assert len(blocks) == 5
    values = torch.cat([v for v, _ in blocks])
    indices = torch.cat([i for _, i in blocks])
    assert torch.equal(indices, torch.topk(scores, probe, dim=1).indices)
    torch.testing.assert_close(values.double(), torch.topk(scores, probe, dim=1).values, rtol=1e-5, atol=1e-5)
