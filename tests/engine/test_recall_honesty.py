"""Recall honesty of the flat search: the mean recall of a 1,000-query batch stays >=
recall_target - 0.002 (the bins are sized for a 95% confidence over bin placements,
engine.plan.SEARCH_CONFIDENCE), for every metric and precision, on awkward data: a large
offset, an anisotropic spectrum, and tight clusters whose neighbours bf16 cannot tell apart
(the low-precision scan then re-scores every winner within its rounding of the k-th)."""

import pytest
import torch

import peakknn
from peakknn.evaluation import exact_search

N, D, NQ, K = 60_000, 48, 1000, 10


def make(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N + NQ, D, generator=g)
    if kind == "offset":
        return x + 10.0
    if kind == "anisotropic":
        rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
        return (x * torch.arange(1, D + 1).float().pow(-0.5)) @ rotation + 0.5
    if kind == "clustered":
        centres = 3.0 * torch.randn(40, D, generator=g)
        return centres[torch.randint(40, (N + NQ,), generator=g)] + 0.3 * x
    return x


@pytest.fixture(scope="module", params=["gaussian", "offset", "anisotropic", "clustered"])
def data(request):
    x = make(request.param)
    return x[:N], x[N:]


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_recall_meets_the_target(data, metric, precision):
    db, queries = data
    truth = torch.from_numpy(exact_search(db, queries, K, metric))
    for target in (0.9, 0.95, 0.99):
        res = peakknn.search(queries, db, K, metric=metric, precision=precision, recall_target=target)
        got = res.mean_recall(truth)
        assert got >= target - 0.002, (metric, precision, target, got)
