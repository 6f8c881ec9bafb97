import pytest
import torch

from peakknn import SearchResult


def test_mean_recall_and_unpacking():
    res = SearchResult(scores=torch.zeros(2, 3), ids=torch.tensor([[1, 2, 3], [4, -1, -1]]))
    scores, ids = res
    assert ids is res.ids and scores is res.scores
    assert res.mean_recall(torch.tensor([[3, 2, 9, 8], [4, 5, 6, 7]])) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        res.mean_recall(torch.tensor([[1, 2]]))
