"""The reduce hook of avq_kmeans (the distributed k-means), in one process: holders are threads
whose reduce sums through a barrier, and k-means over the parts must give the centres that
k-means over all the rows gives (the specification: `avq_kmeans` without reduce)."""

from __future__ import annotations

import threading

import pytest
import torch

from peakknn.distributed._comm import shares
from peakknn.quant.avq import avq_kmeans


class ThreadReduce:
    """quant.avq.Reduce over `holders` threads: each contributes, all wait, all read the total."""

    def __init__(self, holders: int):
        self.barrier = threading.Barrier(holders)
        self.parts: dict[int, torch.Tensor] = {}
        self.calls: list[str] = []

    def bind(self, holder: int):
        def reduce(t: torch.Tensor, op: str) -> torch.Tensor:
            self.parts[holder] = t.clone()
            if holder == 0:
                self.calls.append(op)
            self.barrier.wait()
            stacked = torch.stack([self.parts[h] for h in sorted(self.parts)])
            out = stacked.amax(0) if op == "max" else stacked.sum(0)
            self.barrier.wait()  # everyone has read before the next call overwrites
            t.copy_(out)
            return t

        return reduce


def _run_parts(x: torch.Tensor, cuts: list[int], clusters: int, eta: float, init: torch.Tensor, iters: int):
    holders = len(cuts) - 1
    red = ThreadReduce(holders)
    out: dict[int, tuple] = {}

    def work(h: int):
        out[h] = avq_kmeans(x[cuts[h] : cuts[h + 1]], clusters, eta=eta, iters=iters, reduce=red.bind(h), init=init)

    threads = [threading.Thread(target=work, args=(h,)) for h in range(holders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == holders
    return out, red.calls


@pytest.mark.parametrize("eta", [1.0, 3.0])
@pytest.mark.parametrize("cuts", [[0, 700, 1000], [0, 0, 333, 1000]])  # uneven parts, an empty one
def test_kmeans_over_parts_equals_kmeans_over_all_rows(eta, cuts):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 12, generator=g) + 3 * torch.randn(8, 12, generator=g)[torch.randint(0, 8, (1000,), generator=g)]
    init = x[torch.randperm(1000, generator=g)[:16]].clone()
    want, want_assign = avq_kmeans(x, 16, eta=eta, iters=6, init=init)
    out, calls = _run_parts(x, cuts, 16, eta, init, iters=6)
    for h, (centres, assign) in out.items():
        assert torch.allclose(centres, want, atol=1e-4, rtol=1e-4), (h, float((centres - want).abs().max()))
        assert torch.equal(centres, out[0][0])  # the same centres on every holder
        agree = (assign == want_assign[cuts[h] : cuts[h + 1]]).float().mean() if assign.numel() else 1.0
        assert agree > 0.99
    assert ("lossy_sum" in calls) == (eta == 1.0) and "sum" in calls


def test_an_emptied_cluster_takes_the_worst_row_of_all_holders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g)
    x[290] = 50.0  # the row of largest loss, on the second holder
    init = torch.cat([x[:5], torch.full((1, 4), 1e4)])  # centre 5 attracts nothing: re-seeded
    want, _ = avq_kmeans(x, 6, eta=1.0, iters=1, init=init)
    out, calls = _run_parts(x, [0, 200, 300], 6, 1.0, init, iters=1)
    assert "max" in calls
    for centres, _ in out.values():
        assert torch.allclose(centres, want, atol=1e-5)
        assert torch.equal(centres[5], x[290])


def test_reduce_needs_init_of_the_right_shape():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="init="):
        avq_kmeans(x, 2, eta=1.0, reduce=lambda t, op: t)
    with pytest.raises(ValueError, match="init must have shape"):
        avq_kmeans(x, 2, eta=1.0, reduce=lambda t, op: t, init=torch.zeros(3, 3))


@pytest.mark.parametrize("counts,total", [([5, 0, 2], 4), ([3, 3, 3], 9), ([1, 1, 1], 2), ([10, 1], 11), ([7], 3)])
def test_shares_are_proportional_add_up_and_fit(counts, total):
    got = shares(counts, total)
    assert sum(got) == min(total, sum(counts))
    assert all(0 <= s <= c for s, c in zip(got, counts))
    assert all(abs(s - c * total / sum(counts)) < 1 for s, c in zip(got, counts))
