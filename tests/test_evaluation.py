"""How peakknn is judged (peakknn.evaluation): recall with and without ties, exact references and
the timer, on cases small enough to check by hand."""

import statistics
import time

import numpy as np
import pytest
import torch

from peakknn.evaluation import exact_rank, exact_scores, exact_search, recall, recall_at_k, recall_with_ties, timed


def test_recall_counts_ids_among_the_first_k_true_neighbours():
    ids = torch.tensor([[1, 2, -1], [4, 5, 6]])
    truth = torch.tensor([[2, 5, 1, 7], [9, 8, 4, 6]])
    # row 0: 1 and 2 are in truth[0, :3] = {2, 5, 1}, -1 never counts -> 2 of 3
    # row 1: only 4 is in truth[1, :3] = {9, 8, 4} (6 is the 4th true neighbour) -> 1 of 3
    assert recall(ids, truth) == pytest.approx(3 / 6)
    assert recall(ids.numpy(), truth.numpy()) == pytest.approx(3 / 6)  # numpy works too
    assert recall(torch.tensor([[-1]]), torch.tensor([[-1]])) == 0.0  # -1 never counts, even against -1
    batched = torch.stack([ids, ids.flip(0)])  # [2, 2, 3]: any leading shape
    assert recall(batched, torch.stack([truth, truth.flip(0)])) == pytest.approx(3 / 6)
    assert recall(torch.tensor([7, 3]), torch.tensor([3, 7, 1])) == 1.0  # a single row [k]
    with pytest.raises(ValueError, match="expected must have shape"):
        recall(ids, truth[:, :2])  # fewer true neighbours than k
    with pytest.raises(ValueError):
        recall(ids, truth[:1])


def test_recall_with_ties_counts_ids_as_good_as_the_kth():
    rank = torch.tensor([[3.0, 1.0, 3.0, 2.0], [0.0, 5.0, 4.0, 4.0]], dtype=torch.float64)
    # k = 1: the best score is 3 in row 0 (ids 0 and 2 tie), 5 in row 1
    assert recall_with_ties(torch.tensor([[2], [1]]), rank, 1, 0.0) == 1.0
    assert recall_with_ties(torch.tensor([[3], [2]]), rank, 1, 0.0) == 0.0
    assert recall_with_ties(torch.tensor([[3], [2]]), rank, 1, 1.0) == 1.0  # within tol of the best
    # k = 2: the 2nd best is 3 in row 0 and 4 in row 1 (ids 2 and 3 tie there)
    assert recall_with_ties(torch.tensor([[0, 3], [3, 1]]), rank, 2, 0.0) == pytest.approx(3 / 4)
    assert recall_with_ties(torch.tensor([[0, -1], [2, 3]]), rank, 2, 0.0) == pytest.approx(3 / 4)  # -1 never counts


def test_exact_rank_is_larger_is_better_in_float64():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert exact_rank(q, x, "ip").dtype == torch.float64
    assert exact_rank(q, x, "ip").tolist() == [[3.0, 1.0], [8.0, 2.0]]
    want = torch.tensor([[-(4.0 + 16.0), -(0.0 + 1.0)], [-(9.0 + 4.0), -(1.0 + 1.0)]], dtype=torch.float64)
    torch.testing.assert_close(exact_rank(q, x, "l2"), want)  # minus squared distances
    torch.testing.assert_close(exact_rank(q, x, "cos"), torch.tensor([[0.6, 0.5**0.5], [0.8, 0.5**0.5]], dtype=torch.float64))


def test_exact_scores_and_recall_at_k_allow_ties():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.5, 0.0]], dtype=np.float32)  # rows 0 and 2 equal
    test = np.array([[2.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(exact_scores(train, test, np.array([[0, 4, -1]]), "ip"), [[2.0, 1.0, -np.inf]])
    np.testing.assert_allclose(exact_scores(train, test, np.array([[3]]), "l2"), [[-9.0]])
    neighbors = np.array([[0, 2, 4, 1, 3]])  # by inner product: 0 and 2 (tied), 4, then 1, 3
    assert recall_at_k(np.array([[2, 0]]), neighbors, train, test, "ip") == 1.0
    assert recall_at_k(np.array([[0, 4]]), neighbors, train, test, "ip") == 0.5
    # row 2 ties with row 0, the true 1st neighbour: it counts although the list names 0
    assert recall_at_k(np.array([[2]]), np.array([[0, 2]]), train, test, "ip") == 1.0
    assert recall_at_k(np.array([[0, -1]]), neighbors, train, test, "ip") == 0.5  # -1 never counts
    # l2 distances from (2, 0): rows 0 and 2: 1, row 4: 2.25, row 1: 5, row 3: 9
    assert recall_at_k(np.array([[2, 4]]), neighbors, train, test, "l2") == 0.5
    assert recall_at_k(np.array([[4, 1]]), neighbors, train, test, "l2") == 0.0
    with pytest.raises(ValueError, match="same id twice"):
        recall_at_k(np.array([[0, 0]]), neighbors, train, test, "ip")


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
def test_exact_search_is_the_float64_top_k(metric):
    g = torch.Generator().manual_seed(2)
    x, q = torch.randn(500, 8, generator=g), torch.randn(130, 8, generator=g)
    calls = []
    ids = exact_search(x, q, 6, metric, block=64, progress=lambda blocks: calls.append(len(blocks)) or blocks)
    assert isinstance(ids, np.ndarray) and ids.shape == (130, 6) and calls == [3]
    want = torch.topk(exact_rank(q, x, metric), 6, dim=1).indices.numpy()
    assert np.array_equal(ids, want)


def test_timed_returns_the_last_result_and_reduces_the_times():
    results = iter(range(100))
    calls = []

    def fn():
        calls.append(1)
        return next(results)

    result, times = timed(fn, 3, warmup=2, reduce=list)
    assert result == 4 and len(calls) == 5  # 2 uncounted warm-up calls, then 3 timed ones
    assert len(times) == 3 and all(t >= 0 for t in times)
    result, secs = timed(lambda: time.sleep(0.01) or "done", 3)
    assert result == "done" and 0.01 <= secs < 5  # the median of three 10 ms calls
    assert timed(fn, 0, warmup=1, reduce=len) == (5, 0)  # only the warm-up call: its result
    _, best = timed(lambda: None, 5, reduce=min)
    _, median = timed(lambda: None, 5, reduce=statistics.median)
    assert best >= 0 and median >= 0
