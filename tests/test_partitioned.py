"""PartitionedIndex: recall against exact search, monotone probe curves, updates after training,
save/load round trips, compressed-only memory, PQ codes, and bad settings."""

import concurrent.futures
import itertools

import numpy as np
import pytest
import torch

from peakknn import Index, PartitionedIndex, PartitionSettings, SearchSettings
from peakknn.data import clustered
from peakknn.quant import ProductQuantizer, anisotropic_loss, eta_from_threshold
from peakknn.quant import partitioned
from peakknn.quant.codes import Int8Codes, pack, unpack
from peakknn.search import search

METRICS = ("ip", "l2", "cos")
CODES = ("bf16", "int8", "pq4")


def data(n=4000, d=32, nq=60, seed=0, spread=0.3):
    ds = clustered(n, d, nq, clusters=40, spread=spread, seed=seed)
    return torch.from_numpy(ds.train), torch.from_numpy(ds.test)


def truth(x, q, k, metric):
    return search(q, x, k, metric=metric, recall_target=1.0).ids


def recall(ids, expected):
    hits = (ids.unsqueeze(2) == expected.unsqueeze(1)) & (ids.unsqueeze(2) >= 0)
    return float(hits.any(2).float().mean())


def copies(index):
    """Partitions each row is stored in (spill stores every row twice)."""
    return 2 if index.settings.spill else 1


def check_recall_and_exact_scores(index, x, q, metric, probe):
    """Recall@10 >= 0.99 at `probe` against exact search, and the reported scores exact (fp32
    re-ranked) for the ids it gets right. Returns the exact ids i64[nq, 10]."""
    exact = search(q, x, 10, metric=metric, recall_target=1.0)
    result = index.search(q, 10, probe=probe)
    assert recall(result.ids, exact.ids) >= 0.99
    hit = result.ids == exact.ids
    torch.testing.assert_close(result.scores[hit], exact.scores[hit], rtol=1e-4, atol=1e-4)
    return exact.ids


def build(x, metric="ip", **settings):
    settings.setdefault("partitions", 32)
    index = PartitionedIndex(x.shape[1], metric=metric, settings=PartitionSettings(**settings))
    index.add(x)
    return index


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", CODES)
def test_all_partitions_with_rerank_reach_high_recall(metric, codes):
    x, q = data()
    index = build(x, metric, codes=codes)
    assert index.is_trained and len(index) == x.shape[0]
    check_recall_and_exact_scores(index, x, q, metric, probe=32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", ("bf16", "pq4"))
@pytest.mark.parametrize("spill", (False, True))
def test_recall_is_monotone_in_partitions_searched(metric, codes, spill):
    x, q = data(seed=1, spread=1.0)  # wide clusters: one partition does not hold all neighbours
    index = build(x, metric, codes=codes, block_dims=4, spill=spill)
    expected = truth(x, q, 10, metric)
    curve = [recall(index.search(q, 10, probe=p).ids, expected) for p in (1, 2, 4, 8, 16, 32)]
    assert all(b >= a - 0.005 for a, b in zip(curve, curve[1:])), curve
    assert curve[0] < curve[-1]


def test_recall_compares_with_the_flat_index():
    x, q = data(n=6000, d=48, seed=2)
    expected = truth(x, q, 10, "cos")
    part = build(x, "cos", partitions=48)
    flat = Index(48, metric="cos")
    flat.add(x)
    assert recall(part.search(q, 10, probe=48).ids, expected) >= recall(flat.search(q, 10).ids, expected) - 0.01


def test_updates_after_training_show_immediately():
    x, q = data(seed=3)
    index = build(x, "l2", partitions=16)
    # add: a new row equal to a query is that query's nearest row
    new = index.add(q[:5])
    got = index.search(q[:5], 1, probe=16).ids[:, 0]
    assert torch.equal(got, new)
    # remove: it disappears from results
    index.remove(new[:2])
    got = index.search(q[:5], 1, probe=16).ids[:, 0]
    assert not set(new[:2].tolist()) & set(got.tolist())
    assert torch.equal(got[2:], new[2:])
    # upsert: an existing id gets a new vector (possibly in another partition)
    index.upsert(q[7:8], ids=[int(new[2])])
    assert int(index.search(q[7:8], 1, probe=16).ids[0, 0]) == int(new[2])
    assert int(index.search(q[2:3], 1, probe=16).ids[0, 0]) != int(new[2])
    torch.testing.assert_close(index.get([int(new[2])]), q[7:8])
    assert len(index) == x.shape[0] + 3
    # bookkeeping stays consistent: each live id is in exactly one partition slot
    assert int(index.partition_sizes.sum()) == len(index) * copies(index)
    with pytest.raises(ValueError, match="already"):
        index.add(q[:1], ids=[int(new[3])])
    assert len(index) == x.shape[0] + 3
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([10**9])


def check_bookkeeping(index):
    """Every live row sits, once per copy, in distinct partitions at the recorded positions."""
    pages = index._lists
    live = np.flatnonzero(index._slot_ids.numpy() >= 0)
    assert int(index.partition_sizes.sum()) == live.size * copies(index)
    for slot in live.tolist():
        parts = index._where[slot, :, 0]
        assert (parts >= 0).all() and len(set(parts.tolist())) == parts.size
        for p, pos in index._where[slot].tolist():
            assert int(pages.rows(p)[1][pos]) == slot


@pytest.mark.parametrize("spill", (False, True))
def test_every_row_stays_findable_through_churn(spill):
    """Random interleaved adds/removes/upserts, then each live row finds itself (probe = all)."""
    x, _ = data(n=3000, d=16, seed=4)
    index = build(x[:1000], "l2", partitions=8, codes="int8", spill=spill)
    rng = np.random.default_rng(0)
    live = dict(enumerate(x[:1000]))
    nxt = 1000
    for step in range(30):
        op = step % 3
        if op == 0:
            ids = index.add(x[nxt : nxt + 50])
            live.update(zip(ids.tolist(), x[nxt : nxt + 50]))
            nxt += 50
        elif op == 1:
            gone = rng.choice(sorted(live), 40, replace=False)
            index.remove(gone)
            for i in gone.tolist():
                del live[i]
        else:
            ids = rng.choice(sorted(live), 20, replace=False)
            vecs = x[2000 + 20 * step : 2020 + 20 * step]  # same distribution (int8 scales clamp outliers)
            index.upsert(vecs, ids=ids)
            live.update(zip(ids.tolist(), vecs))
        if step % 10 == 9:
            check_bookkeeping(index)
    ids = sorted(live)
    vecs = torch.stack([live[i] for i in ids])
    got = index.search(vecs, 1, probe=8).ids[:, 0]
    assert torch.equal(got, torch.tensor(ids))


@pytest.mark.parametrize("codes", CODES)
def test_spill_stores_rows_twice_and_counts_them_once(tmp_path, codes):
    x, q = data(n=3000, d=32, seed=13, spread=1.0)
    index = build(x, "ip", partitions=16, codes=codes, block_dims=4, spill=True)
    check_bookkeeping(index)
    # SOAR picks a second partition whose residual is closer to orthogonal to the first than
    # the plain runner-up's would be
    centres, where = index._centres, torch.from_numpy(index._where[:3000, :, 0])
    r1 = torch.nn.functional.normalize(x - centres[where[:, 0]], dim=1)
    r2 = torch.nn.functional.normalize(x - centres[where[:, 1]], dim=1)
    distance = torch.cdist(x, centres).scatter(1, where[:, :1], float("inf"))
    plain = torch.nn.functional.normalize(x - centres[distance.argmin(1)], dim=1)
    soar, runner_up = (r1 * r2).sum(1).abs().mean(), (r1 * plain).sum(1).abs().mean()
    assert soar < runner_up - 0.01, (soar, runner_up)
    # searching every partition finds each row twice; results name it once
    result = index.search(q, 50, probe=16)
    assert all(len(set(row)) == 50 for row in result.ids.tolist())
    index.remove(list(range(0, 3000, 7)))
    check_bookkeeping(index)
    index.save(tmp_path / "s")
    loaded = PartitionedIndex.load(tmp_path / "s")
    check_bookkeeping(loaded)
    a, b = index.search(q, 10, probe=4), loaded.search(q, 10, probe=4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


def test_spill_needs_fewer_partitions_for_the_same_recall():
    x, q = data(n=6000, d=32, nq=100, seed=14, spread=1.0)
    expected = truth(x, q, 10, "ip")
    plain, spilled = (build(x, "ip", partitions=64, spill=s) for s in (False, True))
    assert recall(spilled.search(q, 10, probe=2).ids, expected) > recall(plain.search(q, 10, probe=2).ids, expected)


@pytest.mark.parametrize("codes", CODES)
@pytest.mark.parametrize("keep", (True, False))
def test_save_load_round_trip_is_identical(tmp_path, codes, keep):
    x, q = data(seed=5)
    index = build(x, "l2", partitions=16, codes=codes, block_dims=4, keep_vectors=keep)
    index.remove([1, 2, 3])
    index.add(q[:3], ids=[10**6, 10**6 + 1, 10**6 + 2])
    index.save(tmp_path / "idx")
    loaded = PartitionedIndex.load(tmp_path / "idx")
    for probe in (1, 4, 16):
        a, b = index.search(q, 10, probe=probe), loaded.search(q, 10, probe=probe)
        assert torch.equal(a.ids, b.ids)
        assert torch.equal(a.scores, b.scores)
    assert loaded.settings == index.settings and len(loaded) == len(index)
    # the loaded index keeps working
    new = loaded.add(q[5:6] * 3)
    assert int(new) == 10**6 + 3


def test_untrained_round_trip_and_auto_training(tmp_path):
    x, q = data(seed=6)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=8, train_size=500))
    index.add(x[:300])
    assert not index.is_trained
    with pytest.raises(ValueError, match="not trained"):
        index.search(q, 5)
    index.save(tmp_path / "u")
    loaded = PartitionedIndex.load(tmp_path / "u")
    assert not loaded.is_trained and len(loaded) == 300
    loaded.add(x[300:600])  # crosses train_size: trains itself on the 600 rows
    assert loaded.is_trained and int(loaded.partition_sizes.sum()) == 600 * copies(loaded)
    expected = truth(x[:600], q, 5, "ip")
    assert recall(loaded.search(q, 5, probe=8).ids, expected) >= 0.99


def test_explicit_training_and_no_auto_training():
    x, q = data(seed=7)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=8, train_size=None))
    index.add(x)
    assert not index.is_trained
    index.train(x[:1000])
    assert index.is_trained and int(index.partition_sizes.sum()) == x.shape[0] * copies(index)
    expected = truth(x, q, 5, "ip")
    assert recall(index.search(q, 5, probe=8).ids, expected) >= 0.99


def test_compressed_only_memory_is_under_an_eighth_of_fp32():
    x, q = data(n=8000, d=384, nq=20, seed=8)
    index = build(x, "cos", partitions=16, codes="pq4", block_dims=2, keep_vectors=False)
    fp32 = x.numel() * 4
    assert index.memory_bytes <= fp32 / 8, (index.memory_bytes, fp32)
    with pytest.raises(ValueError, match="keeps no vectors"):
        index.get([0])
    with pytest.raises(ValueError, match="cannot be retrained"):
        index.train()


def test_compressed_only_search_ranks_by_codes():
    ds = clustered(4000, 64, 60, clusters=40, spread=1.0, seed=8)
    x, q = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    expected = truth(x, q, 10, "cos")
    index = build(x, "cos", partitions=16, codes="pq4", keep_vectors=False)
    result = index.search(q, 10, probe=16)
    assert recall(result.ids, expected) >= 0.6  # measured 0.70; random ids would give 0.0025
    # reported scores are the codes' estimates, close to the exact cosines
    exact = (torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(x, dim=1).T).gather(1, result.ids)
    assert float((result.scores - exact).abs().mean()) < 0.05


@pytest.mark.parametrize("codes", CODES)
def test_allowed_ids_filter(codes):
    x, q = data(seed=16, spread=1.0)
    index = build(x, "l2", partitions=16, codes=codes, block_dims=4)
    allowed = torch.arange(0, x.shape[0], 5)
    before = index.search(q, 10, probe=16)
    result = index.search(q, 10, probe=16, allowed_ids=allowed.flip(0).tolist() + [10**9])  # unknown id ignored
    assert bool(torch.isin(result.ids, allowed).all())
    expected = allowed[truth(x[allowed], q, 10, "l2")]
    assert recall(result.ids, expected) >= 0.99
    nothing = index.search(q, 3, probe=16, allowed_ids=[])
    assert bool((nothing.ids == -1).all())
    one = index.search(q, 3, probe=16, allowed_ids=torch.tensor([7]))
    assert bool((one.ids[:, 0] == 7).all()) and bool((one.ids[:, 1:] == -1).all())
    with pytest.raises(TypeError, match="allowed_ids"):
        index.search(q, 3, allowed_ids=[1.5])
    after = index.search(q, 10, probe=16)  # filters leave the index untouched
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)


def test_searches_override_the_index_settings():
    x, q = data(seed=9, spread=1.0)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=32), search_settings=SearchSettings(probe=1))
    index.add(x)
    expected = truth(x, q, 10, "ip")
    low = recall(index.search(q, 10).ids, expected)
    high = recall(index.search(q, 10, probe=32).ids, expected)
    assert low < high
    assert recall(index.search(q, 10, probe=1).ids, expected) == low
    assert index.search(q, 10, probe=10**6).ids.shape == (q.shape[0], 10)  # capped at partitions


@pytest.mark.parametrize("codes", CODES)
def test_group_size_does_not_change_results(monkeypatch, codes):
    x, q = data(seed=12)
    index = build(x, "cos", codes=codes, spill=True)
    expected = index.search(q, 10, probe=5)
    # one page per product, and products capped at a few padded queries (runs split by the cap)
    settings = ((1, 1, 0), (1 << 30, 3 * index._lists.page_rows, 0), (1 << 30, 1 << 30, 0), (1 << 30, 1 << 30, 10**6))
    for group_bytes, group_scores, gap in settings:
        monkeypatch.setattr(partitioned, "GROUP_BYTES", group_bytes)
        monkeypatch.setattr(partitioned, "GROUP_SCORES", group_scores)
        monkeypatch.setattr(partitioned, "GROUP_GAP", gap)
        got = index.search(q, 10, probe=5)
        assert torch.equal(got.ids, expected.ids)
        torch.testing.assert_close(got.scores, expected.scores)


def test_page_groups_cover_every_pair_once_within_bounds():
    x, q = data(seed=13)
    index = build(x, "ip", codes="bf16", spill=True)
    limits = ((1, 1), (4, 10), (7, 1000), (10**6, 10**9))
    for queries, (most_pages, most_cells), gap in itertools.product((q[:2], q), limits, (0, 3, 10**6)):
        pids = torch.topk(queries @ index._centres.T, 6, dim=1).indices
        pairs = partitioned._PagePairs(index._lists, pids)
        counts = torch.bincount(pairs.page, minlength=index._lists.page_count).numpy()
        assert queries.shape[0] > 2 or (counts == 0).any()  # two queries leave gaps between probed pages
        seen = 0
        for g0, g1, lo, hi, most in pairs.groups(most_pages, most_cells, gap):
            assert lo == seen and hi > lo and 1 <= g1 - g0 <= most_pages
            assert (g1 - g0) * most <= most_cells or g1 - g0 == 1
            assert most == counts[g0:g1].max() and counts[g0] > 0 and counts[g1 - 1] > 0
            assert bool((pairs.page[lo:hi] >= g0).all() and (pairs.page[lo:hi] < g1).all())
            gaps = np.diff(np.flatnonzero(counts[g0:g1])) - 1
            assert gaps.size == 0 or gaps.max() <= gap
            seen = hi
        assert seen == pairs.page.numel()


def test_reused_scratch_gives_the_same_results_across_sizes_and_threads(monkeypatch):
    x, q = data(seed=14)
    index = build(x, "ip", codes="bf16", spill=True)
    monkeypatch.setattr(partitioned, "REUSE_SCRATCH", False)
    fresh = {probe: index.search(q, 10, probe=probe) for probe in (1, 8, 3)}
    monkeypatch.setattr(partitioned, "REUSE_SCRATCH", True)
    for probe in (1, 8, 3, 8):  # the buffer grows, then smaller searches reuse it
        got = index.search(q, 10, probe=probe)
        assert torch.equal(got.ids, fresh[probe].ids) and torch.equal(got.scores, fresh[probe].scores)
    held = index._scratch.tensors["scores"]
    index.search(q[:5], 10, probe=1)
    assert index._scratch.tensors["scores"] is held  # no new allocation for a smaller search
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # each thread has its own scratch
        results = list(pool.map(lambda p: index.search(q, 10, probe=p), [1, 8, 3, 8, 1, 3] * 3))
    for probe, got in zip([1, 8, 3, 8, 1, 3] * 3, results):
        assert torch.equal(got.ids, fresh[probe].ids)


def test_fewer_rows_than_k_gives_fillers():
    x, q = data(n=200, seed=10)
    index = build(x, "l2", partitions=4, codes="bf16")
    result = index.search(q, 300, probe=1)
    assert (result.ids == -1).any()
    assert torch.isinf(result.scores[result.ids == -1]).all()
    assert (result.scores[result.ids == -1] > 0).all()  # +inf for distances
    empty = index.search(torch.zeros(0, x.shape[1]), 5)
    assert empty.ids.shape == (0, 5) and empty.scores.shape == (0, 5)


def test_bad_settings_and_inputs_are_rejected():
    for bad in (dict(partitions=0), dict(codes="pq8"), dict(block_dims=0), dict(threshold=1.5), dict(train_size=0), dict(iters=0)):
        with pytest.raises(ValueError):
            PartitionSettings(**bad)
    with pytest.raises(ValueError, match="divisible"):
        PartitionedIndex(30, settings=PartitionSettings(codes="pq4", block_dims=4))
    with pytest.raises(ValueError):
        SearchSettings(probe=0)
    with pytest.raises(TypeError):
        PartitionedIndex(8, settings={"partitions": 4})
    x, q = data(n=100, seed=11)
    index = PartitionedIndex(32, settings=PartitionSettings(partitions=200, train_size=None))
    index.add(x)
    with pytest.raises(ValueError, match="more than the 100"):
        index.train()
    assert not index.is_trained and len(index) == 100  # nothing changed
    index = build(x, partitions=4, train_size=50)
    with pytest.raises(ValueError, match="probe"):
        index.search(q, 5, probe=0)
    with pytest.raises(ValueError, match="dim"):
        index.search(torch.randn(3, 7), 5)
    with pytest.raises(ValueError, match="NaN"):
        index.add(torch.full((1, 32), float("nan")))
    with pytest.raises(ValueError):
        index.search(q, 0)
    assert len(index) == 100


def test_corrupt_files_are_rejected(tmp_path):
    x, _ = data(n=500, seed=12)
    index = build(x, partitions=4, codes="int8")
    index.save(tmp_path / "c")
    arrays = next((tmp_path / "c").glob("arrays-*.safetensors"))
    blob = bytearray(arrays.read_bytes())
    blob[-5] ^= 0xFF
    arrays.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        PartitionedIndex.load(tmp_path / "c")
    with pytest.raises(ValueError, match="not a saved"):
        PartitionedIndex.load(tmp_path / "missing")
    index.save(tmp_path / "flat_format")
    flat = Index(32)
    flat.add(x)
    flat.save(tmp_path / "flat")
    with pytest.raises(ValueError, match="peakknn.partitioned"):
        PartitionedIndex.load(tmp_path / "flat")


def test_inconsistent_saved_arrays_are_rejected(tmp_path):
    from peakknn import io
    from peakknn.quant import partitioned

    x, _ = data(n=500, seed=15)
    build(x, partitions=4).save(tmp_path / "good")
    manifest, arrays, _ = io.read_bundle(tmp_path / "good", partitioned.FORMAT, partitioned.VERSION)
    bad_rows = dict(arrays, entry_rows=torch.zeros_like(arrays["entry_rows"]))  # one row named 1000 times
    bad_bias = dict(arrays, bias=torch.full_like(arrays["bias"], float("nan")))
    bad_sizes = dict(arrays, partition_sizes=arrays["partition_sizes"] + 1)
    for name, bad, match in (("rows", bad_rows, "entry_rows"), ("bias", bad_bias, "NaN"), ("sizes", bad_sizes, "add up")):
        io.write_bundle(tmp_path / name, manifest, bad)
        with pytest.raises(ValueError, match=match):
            PartitionedIndex.load(tmp_path / name)
    io.write_bundle(tmp_path / "old", dict(manifest, version=1), arrays)
    with pytest.raises(ValueError, match="version"):
        PartitionedIndex.load(tmp_path / "old")


# ----------------------------------------------------------------- adaptive probe


def taken_partitions(index, q, probe):
    """i64[nq]: partitions an adaptive search takes per query, recomputed from the centres in
    float64 (every centre whose score is within probe_gap * |q| of the query's best, at most
    ADAPTIVE_SPREAD * probe)."""
    c = index._centres.double()
    qd = q.double() / (q.double().norm(dim=1, keepdim=True) if index.metric == "cos" else 1.0)
    scores = qd @ c.T - (0.5 * (c * c).sum(1) if index.metric == "l2" else 0.0)
    top = torch.sort(scores, dim=1, descending=True).values[:, : min(c.shape[0], partitioned.ADAPTIVE_SPREAD * probe)]
    return ((top[:, :1] - top) <= index.probe_gap(probe) * qd.norm(dim=1, keepdim=True)).sum(1)


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


@pytest.mark.parametrize("metric", METRICS)
def test_adaptive_search_is_a_fixed_search_with_each_querys_own_probe(metric):
    """Query by query, adaptive search = a fixed search with probe = the partitions it takes."""
    x, q = data(n=3000, d=16, nq=40, seed=22, spread=1.0)
    index = build(x, metric, partitions=48, codes="int8")
    probe = 3
    taken = taken_partitions(index, q, probe)
    assert taken.min() >= 1 and taken.max() <= 2 * probe and len(set(taken.tolist())) > 1  # it does adapt
    got = index.search(q, 10, probe=probe, adaptive=True)
    for i in range(len(q)):
        one = index.search(q[i : i + 1], 10, probe=int(taken[i]), adaptive=False)
        assert torch.equal(got.ids[i], one.ids[0])
        torch.testing.assert_close(got.scores[i], one.scores[0])
    fixed = index.search(q, 10, probe=probe, adaptive=False)
    assert not torch.equal(got.ids, fixed.ids)  # the setting reaches the search


def test_adaptive_gives_more_recall_at_the_same_mean_probe():
    x, q = data(n=8000, d=32, nq=300, seed=23, spread=1.5)
    index = build(x, "cos", partitions=128, spill=False)
    expected = truth(x, q, 10, "cos")
    for probe in (2, 4):
        mean = float(taken_partitions(index, q, probe).double().mean())
        below, above = int(mean), int(mean) + 1  # fixed probes around the adaptive mean
        fixed = [recall(index.search(q, 10, probe=p, adaptive=False).ids, expected) for p in (below, above)]
        interpolated = fixed[0] + (mean - below) * (fixed[1] - fixed[0])
        assert recall(index.search(q, 10, probe=probe).ids, expected) > interpolated


def test_adaptive_round_trip_and_files_without_calibration(tmp_path):
    from peakknn import io

    x, q = data(n=1500, seed=24)
    index = build(x, "l2", partitions=16)
    index.save(tmp_path / "idx")
    loaded = PartitionedIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.search(q, 10, probe=3).ids, index.search(q, 10, probe=3).ids)
    assert [loaded.probe_gap(p) for p in (1, 3, 15)] == [index.probe_gap(p) for p in (1, 3, 15)]
    manifest, arrays, _ = io.read_bundle(tmp_path / "idx", partitioned.FORMAT, partitioned.VERSION)
    older = {name: t for name, t in arrays.items() if name != "probe_gaps"}  # written before adaptive probing
    io.write_bundle(tmp_path / "older", manifest, older)
    old = PartitionedIndex.load(tmp_path / "older")
    assert torch.equal(old.search(q, 10, probe=3).ids, index.search(q, 10, probe=3, adaptive=False).ids)
    with pytest.raises(ValueError, match="train"):
        old.search(q, 10, probe=3, adaptive=True)
    for bad in (torch.full((16,), float("nan")), -torch.ones(16), torch.zeros(15)):
        io.write_bundle(tmp_path / "bad", manifest, dict(arrays, probe_gaps=bad))
        with pytest.raises(ValueError, match="probe_gaps"):
            PartitionedIndex.load(tmp_path / "bad")
    with pytest.raises(TypeError, match="adaptive"):
        SearchSettings(adaptive="yes")


# ----------------------------------------------------------------- projected first pass (scan_dims)


def low_rank(n=3000, d=48, rank=12, nq=60, seed=0):
    """Rows near a rank-12 subspace of R^48 (what embeddings look like: a few directions hold
    most of the energy) with a little full-rank noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0]
    x = torch.randn(n + nq, rank, generator=g) @ basis.T + 0.05 * torch.randn(n + nq, d, generator=g)
    return x[:n].contiguous(), x[n:].contiguous()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("codes", ("bf16", "int8"))
@pytest.mark.parametrize("scan_dims", (16, "auto"))
def test_projected_first_pass_keeps_recall_and_exact_scores(metric, codes, scan_dims):
    x, q = low_rank(seed=1)
    index = build(x, metric, partitions=16, codes=codes, scan_dims=scan_dims)
    assert index._scan_width < x.shape[1]  # rows are stored narrower than they are
    assert index._lists.codes.shape[2] == index._scan_width
    expected = check_recall_and_exact_scores(index, x, q, metric, probe=16)
    # a narrower first pass is still re-ranked exactly, but it does find fewer true neighbours
    narrow = build(x, metric, partitions=16, codes=codes, scan_dims=2).search(q, 10, probe=16, rerank=10)
    assert recall(narrow.ids, expected) < 0.9


def test_projection_follows_updates():
    x, q = low_rank(seed=2)
    index = build(x, "l2", partitions=8, scan_dims=16)
    new = index.add(q[:5])
    assert torch.equal(index.search(q[:5], 1, probe=8).ids[:, 0], new)
    index.remove(new[:2])
    index.upsert(q[9:10], ids=[int(new[2])])
    got = index.search(q[:5], 1, probe=8).ids[:, 0]
    assert not set(new[:2].tolist()) & set(got.tolist())
    assert int(index.search(q[9:10], 1, probe=8).ids[0, 0]) == int(new[2])
    check_bookkeeping(index)


def test_calibrated_dims_is_the_fewest_that_reach_the_target():
    from peakknn.quant.codes import DIMS_MULTIPLE, calibrated_dims, principal_directions

    x, _ = low_rank(n=4000, d=64, seed=3)
    basis = principal_directions(x, 64)
    torch.testing.assert_close(basis.T @ basis, torch.eye(64), atol=1e-4, rtol=0)

    def kept(m):  # the same measurement, done independently
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(x.shape[0], generator=g)[:256]
        exact, approx = x[pick] @ x.T, (x[pick] @ basis[:, :m]) @ (x @ basis[:, :m]).T
        exact[torch.arange(256), pick] = approx[torch.arange(256), pick] = float("-inf")
        truth_ids, found = torch.topk(exact, 10, dim=1).indices, torch.topk(approx, 20, dim=1).indices
        return float((found.unsqueeze(2) == truth_ids.unsqueeze(1)).any(1).float().mean())

    for target in (0.9, 0.995):
        m = calibrated_dims(x, basis, 10, 20, target)
        assert m % DIMS_MULTIPLE == 0 and m < 64
        assert kept(m) >= target
        assert m == DIMS_MULTIPLE or kept(m - DIMS_MULTIPLE) < target
    # isotropic data: every direction matters, so all dims are kept (no projection)
    iso = torch.randn(4000, 64, generator=torch.Generator().manual_seed(4))
    assert calibrated_dims(iso, principal_directions(iso, 64), 10, 20, 0.995) == 64
    index = build(iso[:3000], "ip", partitions=8)  # scan_dims="auto" is the default
    assert index._projection is None and index._scan_width == 64


@pytest.mark.parametrize("scan_dims", (16, "auto"))
def test_projected_round_trip_is_identical(tmp_path, scan_dims):
    x, q = low_rank(seed=5)
    index = build(x, "cos", partitions=8, codes="int8", scan_dims=scan_dims)
    index.save(tmp_path / "p")
    loaded = PartitionedIndex.load(tmp_path / "p")
    assert loaded._scan_width == index._scan_width < x.shape[1]
    a, b = index.search(q, 10, probe=4), loaded.search(q, 10, probe=4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    from peakknn import io

    manifest, arrays, _ = io.read_bundle(tmp_path / "p", partitioned.FORMAT, partitioned.VERSION)
    for name, bad, match in (
        ("nan", dict(arrays, projection=torch.full_like(arrays["projection"], float("nan"))), "NaN"),
        ("shape", dict(arrays, projection=arrays["projection"][:-1]), "projection"),
    ):
        io.write_bundle(tmp_path / name, manifest, bad)
        with pytest.raises(ValueError, match=match):
            PartitionedIndex.load(tmp_path / name)
    if scan_dims == 16:
        missing = {k: v for k, v in arrays.items() if k != "projection"}
        io.write_bundle(tmp_path / "missing", manifest, missing)
        with pytest.raises(ValueError, match="projection"):
            PartitionedIndex.load(tmp_path / "missing")


def test_bad_scan_dims_are_rejected():
    for bad in (0, -3, 1.5, "some", True):
        with pytest.raises(ValueError, match="scan_dims"):
            PartitionSettings(scan_dims=bad)
    for bad in (dict(codes="pq4"), dict(keep_vectors=False)):
        with pytest.raises(ValueError, match="scan_dims"):
            PartitionSettings(scan_dims=8, **bad)
        assert PartitionSettings(**bad).scan_dims is None  # "auto" without re-ranking: no projection
    with pytest.raises(ValueError, match="more than dim"):
        PartitionedIndex(16, settings=PartitionSettings(scan_dims=32))


# ----------------------------------------------------------------- codes


def test_pack_unpack_round_trip():
    codes = torch.randint(0, 16, (50, 7))
    assert torch.equal(unpack(pack(codes), 7).to(torch.int64), codes)


def test_int8_codes_error_is_bounded():
    x = torch.randn(1000, 24)
    codec = Int8Codes.train(x)
    err = (codec.decode(codec.encode(x)) - x).abs()
    assert float((err / codec.scale).max()) <= 0.5 + 1e-4
    q = torch.randn(5, 24)
    torch.testing.assert_close(
        (codec.scan_queries(q).float() @ codec.scan_rows(codec.encode(x)).float().T),
        q @ codec.decode(codec.encode(x)).T,
        rtol=5e-2,
        atol=5e-2,
    )


def test_anisotropic_pq_lowers_the_error_of_top_scoring_pairs():
    """The paper's claim for codes: at equal bits, the score-aware loss gives a smaller
    inner-product error on each query's top pairs than plain PQ (reconstruction loss)."""
    ds = clustered(6000, 32, 100, clusters=30, spread=0.25, seed=13)
    x = torch.nn.functional.normalize(torch.from_numpy(ds.train), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(ds.test), dim=1)
    eta = eta_from_threshold(0.2, 32)
    plain = ProductQuantizer.train(x, 2, eta=1.0, seed=0)
    aniso = ProductQuantizer.train(x, 2, eta=eta, directions=x, seed=0)
    exact = q @ x.T
    top = exact.topk(10, dim=1).indices

    def top_error(pq, eta_encode):
        approx = q @ pq.decode(pq.encode(x, x, eta_encode)).T
        return float((approx - exact).gather(1, top).abs().mean())

    plain_err, aniso_err = top_error(plain, 1.0), top_error(aniso, eta)
    assert aniso_err < 0.9 * plain_err, (aniso_err, plain_err)
    # and it is the anisotropic loss that went down
    lp = anisotropic_loss(x, plain.decode(plain.encode(x)), eta).mean()
    la = anisotropic_loss(x, aniso.decode(aniso.encode(x, x, eta)), eta).mean()
    assert la < lp
