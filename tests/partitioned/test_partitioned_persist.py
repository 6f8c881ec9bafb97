"""Saving and loading a PartitionedIndex (peakknn.partitioned.persist): identical results after a
round trip, untrained files, files from before adaptive probing, and corrupt or inconsistent files."""

import pytest
import torch
from partitioned_helpers import CODES, build, copies, data, low_rank, truth

from peakknn import Index, PartitionedIndex, PartitionSettings, SearchSettings, io
from peakknn.evaluation import recall
from peakknn.partitioned import persist


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
    exact_300 = truth(x[:300], q, 5, "ip")
    assert torch.equal(index.search(q, 5).ids, exact_300)  # untrained: an exact scan of its rows
    index.save(tmp_path / "u")
    loaded = PartitionedIndex.load(tmp_path / "u")
    assert not loaded.is_trained and len(loaded) == 300
    assert torch.equal(loaded.search(q, 5).ids, exact_300)
    loaded.add(x[300:600])  # crosses train_size: trains itself on the 600 rows
    assert loaded.is_trained and int(loaded.partition_sizes.sum()) == 600 * copies(loaded)
    expected = truth(x[:600], q, 5, "ip")
    assert recall(loaded.search(q, 5, probe=8).ids, expected) >= 0.99


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
    x, _ = data(n=500, seed=15)
    build(x, partitions=4).save(tmp_path / "good")
    manifest, arrays, _ = io.read_bundle(tmp_path / "good", persist.FORMAT, persist.VERSION)
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


def test_adaptive_round_trip_and_files_without_calibration(tmp_path):
    x, q = data(n=1500, seed=24)
    index = build(x, "l2", partitions=16)
    index.save(tmp_path / "idx")
    loaded = PartitionedIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.search(q, 10, probe=3).ids, index.search(q, 10, probe=3).ids)
    assert [loaded.probe_gap(p) for p in (1, 3, 15)] == [index.probe_gap(p) for p in (1, 3, 15)]
    manifest, arrays, _ = io.read_bundle(tmp_path / "idx", persist.FORMAT, persist.VERSION)
    older = {name: t for name, t in arrays.items() if name != "probe_gaps"}  # written before adaptive probing
    io.write_bundle(tmp_path / "older", manifest, older)
    old = PartitionedIndex.load(tmp_path / "older")
    assert torch.equal(old.search(q, 10, probe=3).ids, index.search(q, 10, probe=3, adaptive=False).ids)
    with pytest.raises(ValueError, match="train"):
        old.search(q, 10, probe=3, adaptive=True)
    old.save(tmp_path / "older-resaved")  # an index without the calibration saves and loads as it is
    again = PartitionedIndex.load(tmp_path / "older-resaved")
    assert torch.equal(again.search(q, 10, probe=3).ids, old.search(q, 10, probe=3).ids)
    for bad in (torch.full((16,), float("nan")), -torch.ones(16), torch.zeros(15)):
        io.write_bundle(tmp_path / "bad", manifest, dict(arrays, probe_gaps=bad))
        with pytest.raises(ValueError, match="probe_gaps"):
            PartitionedIndex.load(tmp_path / "bad")
    with pytest.raises(TypeError, match="adaptive"):
        SearchSettings(adaptive="yes")


@pytest.mark.parametrize("scan_dims", (16, "auto"))
def test_projected_round_trip_is_identical(tmp_path, scan_dims):
    x, q = low_rank(seed=5)
    index = build(x, "cos", partitions=8, codes="int8", scan_dims=scan_dims)
    index.save(tmp_path / "p")
    loaded = PartitionedIndex.load(tmp_path / "p")
    assert loaded.scan_dims == index.scan_dims < x.shape[1]
    a, b = index.search(q, 10, probe=4), loaded.search(q, 10, probe=4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    manifest, arrays, _ = io.read_bundle(tmp_path / "p", persist.FORMAT, persist.VERSION)
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


def test_empty_and_emptied_indexes_round_trip(tmp_path):
    """An index with no rows, untrained or trained and then emptied, saves a folder that loads."""
    empty = PartitionedIndex(8, settings=PartitionSettings(partitions=4))
    empty.save(tmp_path / "empty")
    loaded = PartitionedIndex.load(tmp_path / "empty")
    assert len(loaded) == 0 and not loaded.is_trained
    assert loaded.add(torch.randn(3, 8)).tolist() == [0, 1, 2]
    trained = PartitionedIndex(8, settings=PartitionSettings(partitions=4, train_size=None))
    trained.add(torch.randn(200, 8))
    trained.train()
    trained.remove(list(range(200)))
    trained.save(tmp_path / "emptied")
    again = PartitionedIndex.load(tmp_path / "emptied")
    assert len(again) == 0 and again.is_trained and again.partition_sizes.sum() == 0
    again.add(torch.randn(5, 8))
    assert again.search(torch.randn(2, 8), 3, probe=4).ids.shape == (2, 3)


def test_hand_edited_partitioned_manifest_is_refused(tmp_path):
    import json

    index = PartitionedIndex(8, metric="ip", settings=PartitionSettings(partitions=4, train_size=None))
    index.add(torch.randn(300, 8))
    index.train()
    index.save(tmp_path / "p")
    m = json.loads((tmp_path / "p" / io.MANIFEST).read_text())
    (tmp_path / "p" / io.MANIFEST).write_text(json.dumps(dict(m, metric="l2")))
    with pytest.raises(ValueError, match="changed after it was written"):
        PartitionedIndex.load(tmp_path / "p")


def test_a_corrupt_scan_frame_is_refused(tmp_path):
    index = PartitionedIndex(8, metric="l2", settings=PartitionSettings(partitions=4, train_size=None))
    index.add(torch.randn(300, 8) + 100)
    index.train()
    index.save(tmp_path / "p")
    manifest, arrays, _ = io.read_bundle(tmp_path / "p", persist.FORMAT, persist.VERSION)
    fields = {k: v for k, v in manifest.items() if k not in ("arrays", "sha256", io.CHECKSUM)}
    for bad, match in (({"frame_scale": torch.tensor([0.3], dtype=torch.float64)}, "power of two"), ({"frame_centre": torch.full((8,), float("inf"))}, "NaN or inf")):
        io.write_bundle(tmp_path / "bad", fields, dict(arrays, **bad))
        with pytest.raises(ValueError, match=match):
            PartitionedIndex.load(tmp_path / "bad")
    loaded = PartitionedIndex.load(tmp_path / "p")  # the good file keeps its frame
    assert torch.equal(loaded._trained.frame.centre, index._trained.frame.centre) and loaded._trained.frame.scale == index._trained.frame.scale
