import pytest
import torch

from peakknn import SearchResult
from peakknn._types import check_metric, default_rerank, is_distance, precision_name, scan_dtype


def test_mean_recall_and_unpacking():
    res = SearchResult(scores=torch.zeros(2, 3), ids=torch.tensor([[1, 2, 3], [4, -1, -1]]))
    scores, ids = res
    assert ids is res.ids and scores is res.scores
    assert res.mean_recall(torch.tensor([[3, 2, 9, 8], [4, 5, 6, 7]])) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        res.mean_recall(torch.tensor([[1, 2]]))


def test_metrics_precisions_and_default_rerank():
    for name, dtype in (("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16)):
        assert scan_dtype(name) == dtype and scan_dtype(dtype) == dtype
        assert precision_name(dtype) == ("bf16" if dtype == torch.bfloat16 else "fp32")
    for bad in ("int8", "fp16", torch.float16, torch.float64):
        with pytest.raises(ValueError, match="precision"):
            scan_dtype(bad)
    assert [check_metric(m) for m in ("ip", "l2", "cos")] == ["ip", "l2", "cos"]
    with pytest.raises(ValueError, match="metric"):
        check_metric("hamming")
    assert is_distance("l2") and not is_distance("ip") and not is_distance("cos")
    # candidates re-scored by default: k for fp32, 2k for the lower-precision scans
    assert [default_rerank(k, torch.float32) for k in (1, 10)] == [1, 10]
    assert [default_rerank(k, torch.bfloat16) for k in (1, 10)] == [2, 20]
