"""Anisotropic vector quantization: eta, the loss, the closed-form centre, and the paper's
claim that score-aware partitioning lowers the inner-product error of the top-scoring pairs."""

import pytest
import torch

from peakknn.data import clustered
from peakknn.quant import anisotropic_centre, anisotropic_loss, assignment_loss, avq_kmeans, eta_from_threshold


def test_eta_matches_the_paper_value():
    assert eta_from_threshold(0.2, 100) == pytest.approx(99 * 0.04 / 0.96)  # 4.125
    assert eta_from_threshold(0.2, 100) == pytest.approx(4.125)
    assert eta_from_threshold(0.4, 100, norm=2.0) == pytest.approx(4.125)
    for bad in ((0.0, 10), (1.0, 10), (0.5, 1)):
        with pytest.raises(ValueError):
            eta_from_threshold(*bad)


def test_loss_splits_parallel_and_orthogonal_residual():
    x = torch.tensor([[2.0, 0.0, 0.0]])
    along = torch.tensor([[1.5, 0.0, 0.0]])  # residual 0.5 parallel to x
    across = torch.tensor([[2.0, 0.5, 0.0]])  # residual 0.5 orthogonal
    assert float(anisotropic_loss(x, along, 5.0)) == pytest.approx(5 * 0.25)
    assert float(anisotropic_loss(x, across, 5.0)) == pytest.approx(0.25)
    c = torch.randn(7, 3)
    xs = torch.randn(11, 3)
    pairwise = torch.stack([anisotropic_loss(xs, c[j].expand_as(xs), 3.0) for j in range(7)], dim=1)
    torch.testing.assert_close(assignment_loss(xs, c, 3.0), pairwise, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eta", [1.0, 4.125, 20.0])
def test_closed_form_centre_is_the_minimiser(eta):
    x = torch.nn.functional.normalize(torch.randn(50, 8) + 2.0, dim=1)
    c = anisotropic_centre(x, eta)
    if eta == 1.0:
        torch.testing.assert_close(c, x.mean(0), rtol=1e-5, atol=1e-5)
    else:  # unit vectors: eta (n I + (eta - 1) X^T X)^-1 sum x
        expected = eta * torch.linalg.solve(50 * torch.eye(8) + (eta - 1) * x.T @ x, x.sum(0))
        torch.testing.assert_close(c, expected, rtol=1e-4, atol=1e-5)
    base = anisotropic_loss(x, c.expand_as(x), eta).sum()
    for _ in range(20):
        moved = c + 1e-2 * torch.randn(8)
        assert anisotropic_loss(x, moved.expand_as(x), eta).sum() > base


def test_avq_kmeans_validates_and_is_seeded():
    x = torch.randn(100, 4)
    with pytest.raises(ValueError, match="clusters"):
        avq_kmeans(x, 101, eta=2.0)
    with pytest.raises(ValueError, match="eta"):
        avq_kmeans(x, 4, eta=0.5)
    a = avq_kmeans(x, 5, eta=2.0, seed=3)
    b = avq_kmeans(x, 5, eta=2.0, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].min() >= 0 and a[1].max() < 5


@pytest.mark.slow
def test_anisotropic_partitioning_beats_kmeans_on_top_scoring_pairs():
    """Guo et al. figure 2: quantizing each row to its centre, the score-aware loss gives a smaller
    inner-product error on the pairs (q, x) with the largest <q, x>, at the price of low-scoring ones."""
    ds = clustered(20_000, 32, 200, clusters=50, spread=0.8, seed=1)
    x, q = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    eta = eta_from_threshold(0.2, 32)  # the paper's T = 0.2 for unit vectors
    errors = {}
    for name, e in (("plain", 1.0), ("anisotropic", eta)):
        centres, assign = avq_kmeans(x, 64, eta=e, iters=8, seed=0)
        scores = q @ x.T
        approx = q @ centres[assign].T
        top = torch.topk(scores, 10, dim=1).indices
        errors[name] = float((scores.gather(1, top) - approx.gather(1, top)).abs().mean())
    assert errors["anisotropic"] < 0.8 * errors["plain"], errors


def test_plain_avq_kmeans_is_lloyds_algorithm():
    """eta = 1 takes the vectorised mean update: it must match a plain Lloyd loop step for step,
    re-seeding of emptied clusters included (duplicated rows leave clusters empty)."""
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(300, 6, generator=g), torch.zeros(40, 6)])
    for iters in (1, 3, 6):
        centres, assign = avq_kmeans(x, 12, eta=1.0, iters=iters, seed=5)
        ref = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(5))[:12]].clone()
        for _ in range(iters):
            loss = torch.cdist(x, ref) ** 2
            best, nearest = loss.min(1)
            for j in range(12):
                members = x[nearest == j]
                if len(members):
                    ref[j] = members.mean(0)
            for j in range(12):
                if not (nearest == j).any():
                    worst = int(best.argmax())
                    ref[j] = x[worst]
                    best[worst] = 0.0
        torch.testing.assert_close(centres, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(assign, (torch.cdist(x, centres) ** 2).argmin(1))
