"""Index files written by peakknn 0.1.0 (main before the restructure) still load and search
as they did then: tests/fixtures/v0.1.0-* were saved by that version together with the results
it returned (tests/fixtures/make_v0_1_0.py, run against that version's source). Exact searches
and partitioned searches must return the same results (fp32 scores to a few ulps: the sums'
order changed); approximate flat searches at least the
recall they had then (their bins are sized for a per-query confidence since)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peakknn import Index, PartitionedIndex
from peakknn.evaluation import recall

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RESULTS = load_file(FIXTURES / "v0.1.0-results.safetensors")
QUERIES = RESULTS["queries"]


ULPS = 4 * torch.finfo(torch.float32).eps  # fp32 scores re-summed in another order (vecdot, not bmm)


def same(result, name):
    """The same ids, and the same fp32 scores up to the order of their sums (a few ulps)."""
    torch.testing.assert_close(result.ids, RESULTS[f"{name}-ids"], rtol=0, atol=0)
    torch.testing.assert_close(result.scores, RESULTS[f"{name}-scores"], rtol=ULPS, atol=ULPS)


@pytest.mark.parametrize("name", ["flat-ip-bf16", "flat-l2-fp32", "flat-cos-bf16"])
def test_flat_index_files_search_identically(name):
    index = Index.load(FIXTURES / f"v0.1.0-{name}")
    assert len(index) == 500 - 3 + 2
    same(index.search(QUERIES, 7, recall_target=1.0), f"{name}-1.0")
    exact = RESULTS[f"{name}-1.0-ids"]
    then = recall(RESULTS[f"{name}-0.9-ids"], exact)
    now = index.search(QUERIES, 7, recall_target=0.9)
    assert recall(now.ids, exact) >= then
    hit = now.ids == RESULTS[f"{name}-0.9-ids"]
    torch.testing.assert_close(now.scores[hit], RESULTS[f"{name}-0.9-scores"][hit], rtol=ULPS, atol=ULPS)
    same(index.search(QUERIES, 5, allowed_ids=list(range(0, 300, 3)) + [2000]), f"{name}-filtered")
    # the loaded index keeps working: its next ids and slots follow the saved state
    new = index.add(torch.randn(3, 24))
    assert new.tolist() == [2002, 2003, 2004]


@pytest.mark.parametrize("name", ["part-ip-bf16", "part-l2-int8", "part-cos-pq4"])
def test_partitioned_index_files_search_identically(name):
    index = PartitionedIndex.load(FIXTURES / f"v0.1.0-{name}")
    assert len(index) == 550 - 2 + 10 - 2  # ids 4, 5, 6 were re-inserted by the upsert
    for probe, adaptive in ((3, True), (5, False)):
        same(index.search(QUERIES, 6, probe=probe, adaptive=adaptive), f"{name}-{probe}")
    same(index.search(QUERIES, 4, probe=4, allowed_ids=range(0, 550, 2)), f"{name}-filtered")


def test_untrained_partitioned_file_loads():
    index = PartitionedIndex.load(FIXTURES / "v0.1.0-part-untrained")
    assert len(index) == 50 and not index.is_trained
    assert index.add(torch.randn(2, 24)).tolist() == [50, 51]
