"""Measured recall of approx_topk against torch.topk: >= recall_target - MARGIN on random rows
and on adversarially ordered ones (sorted, periodic, a contiguous block of large values), for
per_bin = 1, > 1 and the automatic choice; and close to the formula's expectation on random rows.

MARGIN: 200 rows of k results each; a row's recall has variance <= (1 - r) r / k <= 0.025 at
k = 10, so the mean of 200 rows has a standard error <= 0.011 and MARGIN = 0.03 is ~3 sigma."""

import math

import pytest
import torch

from peakknn import approx_topk, expected_recall
from peakknn.evaluation import recall
from peakknn.topk import plan_topk
from peakknn.topk.plan import topk_bins

MARGIN = 0.03
ROWS, N = 200, 8000


def measured(x, k, target, per_bin):
    _, i = approx_topk(x, k, recall_target=target, per_bin=per_bin)
    return recall(i, torch.topk(x, k).indices)


@pytest.mark.parametrize("k,target,per_bin", [(10, 0.95, 1), (32, 0.9, 1), (10, 0.95, 2), (64, 0.95, 4), (128, 0.95, 2), (50, 0.95, 3)])
def test_recall_meets_target_and_the_formula_on_random_rows(k, target, per_bin):
    g = torch.Generator().manual_seed(k + per_bin)
    x = torch.randn(ROWS, N, generator=g)
    bins = topk_bins(N, k, target, per_bin)
    assert bins is not None  # the approximate path runs
    got = measured(x, k, target, per_bin)
    assert got >= target - MARGIN
    assert got == pytest.approx(expected_recall(k, bins, per_bin=per_bin), abs=MARGIN)


def periodic(kind: str, g: torch.Generator) -> torch.Tensor:
    """spikesP: noise plus one large value every P elements (at a random phase per row), the
    adversary of strided bins whose L divides P; sineP: sin(2 pi j / P + phase) + small noise, a
    smooth signal whose large values come in runs around each crest."""
    period = int(kind.removeprefix("spikes").removeprefix("sine"))
    j = torch.arange(N)
    if kind.startswith("spikes"):
        phase = torch.randint(0, period, (ROWS, 1), generator=g)
        return torch.randn(ROWS, N, generator=g) + 6.0 * ((j - phase) % period == 0)
    phase = torch.rand(ROWS, 1, generator=g, dtype=torch.float64) * 2 * math.pi
    return (torch.sin(2 * math.pi * j / period + phase) + 0.01 * torch.randn(ROWS, N, generator=g, dtype=torch.float64)).float()


def adversarial_rows(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(kind))
    x = torch.randn(ROWS, N, generator=g)
    if kind == "ascending":  # the best values contiguous at the end
        return torch.sort(x, dim=1).values
    if kind == "descending":
        return torch.sort(x, dim=1, descending=True).values
    if kind.startswith(("spikes", "sine")):
        return periodic(kind, g)
    assert kind == "block"  # a run of large values at a random place in each row
    start = torch.randint(0, N - 300, (ROWS,), generator=g)
    cols = start[:, None] + torch.arange(300)
    return x.scatter_add(1, cols, torch.full((ROWS, 300), 4.0))


@pytest.mark.parametrize("kind", ["ascending", "descending", "spikes32", "spikes128", "spikes1000", "sine32", "sine128", "block"])
@pytest.mark.parametrize("k,target,per_bin", [(10, 0.95, 1), (64, 0.95, 4)])
def test_recall_meets_target_on_adversarial_orders(kind, k, target, per_bin):
    """Strided bins (j mod L) keep contiguous runs apart; a prime L spreads every period shorter
    than L over all bins (a multiple of 16 would put period-32 or period-128 spikes into L / 32
    or L / 128 bins and lose most of them). Not covered: smooth periodic rows with many crests
    and per_bin = 1 at large k, whose crest runs can collide more often than at random (docs/MODELS.md)."""
    x = adversarial_rows(kind)
    plan = plan_topk(ROWS, N, k, target, per_bin)
    assert not plan.exact
    assert measured(x, k, target, per_bin) >= target - MARGIN


@pytest.mark.parametrize("kind", ["ascending", "spikes128", "sine32"])
def test_recall_of_the_automatic_choice_on_adversarial_orders(kind):
    x = adversarial_rows(kind)
    assert not plan_topk(ROWS, N, 100, 0.9).exact
    assert measured(x, 100, 0.9, None) >= 0.9 - MARGIN
