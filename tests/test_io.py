"""Saved indexes: the bundle layout (peakknn.io) and the flat Index's format (peakknn.index)."""

import json

import pytest
import torch

from peakknn import index_persist
from peakknn import Index, io


@pytest.fixture
def saved(tmp_path):
    index = Index(12, metric="l2")
    index.add(torch.randn(3000, 12))
    index.remove([1, 2, 3])
    index.upsert(torch.randn(2, 12), ids=[10, 777])
    path = tmp_path / "ix"
    index.save(path)
    return index, path


@pytest.mark.parametrize("metric", ["ip", "l2", "cos"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_round_trip_identical_results(tmp_path, metric, precision):
    index = Index(12, metric=metric, precision=precision, recall_target=0.9)
    index.add(torch.randn(5000, 12))
    index.remove([0, 17])
    q = torch.randn(40, 12)
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert repr(loaded) == repr(index) and torch.equal(loaded.ids, index.ids)
    for target in (0.9, 1.0):
        a, b = index.search(q, 10, recall_target=target), loaded.search(q, 10, recall_target=target)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    # updates after loading behave as they would have on the original
    new = torch.randn(300, 12)
    index.add(new)
    loaded.add(new)
    a, b = index.search(q, 10), loaded.search(q, 10)
    assert torch.equal(a.ids, b.ids)


def test_resave_replaces_and_cleans_up(saved):
    index, path = saved
    index.add(torch.randn(5, 12))
    index.save(path)
    assert len(list(path.glob("arrays-*"))) == 1
    assert len(Index.load(path)) == len(index)


def test_crash_before_manifest_swap_keeps_previous_copy(saved, monkeypatch):
    index, path = saved
    n_before = len(index)
    index.add(torch.randn(5, 12))
    import peakknn.io as io

    def crash(*a, **k):
        raise OSError("simulated crash")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(OSError):
        index.save(path)
    monkeypatch.undo()
    assert len(Index.load(path)) == n_before


def _arrays_file(path):
    return next(path.glob("arrays-*.safetensors"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest_json", "version", "missing_arrays", "field_type", "no_manifest"])
def test_corrupt_files_are_rejected(saved, damage):
    _, path = saved
    manifest = path / "manifest.json"
    if damage == "truncate":
        f = _arrays_file(path)
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "flip":
        f = _arrays_file(path)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "manifest_json":
        manifest.write_text("{not json")
    elif damage == "version":
        m = json.loads(manifest.read_text())
        m["version"] = 99
        manifest.write_text(json.dumps(m))
    elif damage == "missing_arrays":
        _arrays_file(path).unlink()
    elif damage == "field_type":
        m = json.loads(manifest.read_text())
        m["dim"] = "12"
        manifest.write_text(json.dumps(m))
    else:
        manifest.unlink()
    with pytest.raises(ValueError):
        Index.load(path)


def test_mismatched_arrays_rejected_even_with_valid_checksum(saved):
    import hashlib

    from safetensors.torch import save

    _, path = saved
    m = json.loads((path / "manifest.json").read_text())
    blob = save({"vectors": torch.zeros(2, 3), "slots": torch.zeros(2, dtype=torch.int64), "ids": torch.zeros(2, dtype=torch.int64), "free": torch.zeros(0, dtype=torch.int64)})
    (path / m["arrays"]).write_bytes(blob)
    m["sha256"] = hashlib.sha256(blob).hexdigest()
    m[io.CHECKSUM] = io._manifest_digest(m)  # a forger who also redoes the manifest checksum
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="vectors"):
        Index.load(path)


def test_bundle_round_trip_and_checks(tmp_path):
    arrays = {"a": torch.arange(6, dtype=torch.int64).view(2, 3), "b": torch.randn(4).bfloat16()}
    io.write_bundle(tmp_path / "b", {"format": "test.fmt", "version": 3, "field": [1, "x"]}, arrays)
    manifest, got, path = io.read_bundle(tmp_path / "b", "test.fmt", 3)
    assert manifest["field"] == [1, "x"] and manifest["arrays"] == path.name and path.parent == tmp_path / "b"
    assert set(got) == set(arrays) and all(torch.equal(got[k], arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match="other.fmt"):
        io.read_bundle(tmp_path / "b", "other.fmt", 3)
    with pytest.raises(ValueError, match="version"):
        io.read_bundle(tmp_path / "b", "test.fmt", 4)
    m = json.loads((tmp_path / "b" / io.MANIFEST).read_text())
    (tmp_path / "outside.safetensors").write_bytes((tmp_path / "b" / m["arrays"]).read_bytes())
    forged = dict(m, arrays="../outside.safetensors")
    forged[io.CHECKSUM] = io._manifest_digest(forged)  # even with a valid manifest checksum
    (tmp_path / "b" / io.MANIFEST).write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="missing"):  # only a file inside the directory is read
        io.read_bundle(tmp_path / "b", "test.fmt", 3)


def test_flat_index_writes_its_own_format(saved):
    index, path = saved
    manifest, arrays, _ = io.read_bundle(path, index_persist.FORMAT, index_persist.VERSION)
    assert manifest["format"] == "peakknn.index" and manifest["count"] == len(index) == 3000 - 3  # ids 10 and 777 were replaced
    assert manifest["dtype"] == index.precision and torch.equal(arrays["ids"].sort().values, index.ids)


@pytest.mark.parametrize("field,value", [("metric", "ip"), ("dtype", "fp32"), ("recall_target", 0.5), ("next_id", 10**6), ("capacity", 2**40)])
def test_hand_edited_manifest_is_refused(saved, field, value):
    """A manifest changed after the save (other semantics, or sizes to allocate) never loads."""
    _, path = saved
    m = json.loads((path / io.MANIFEST).read_text())
    assert m[field] != value
    (path / io.MANIFEST).write_text(json.dumps(dict(m, **{field: value})))
    with pytest.raises(ValueError, match="changed after it was written"):
        Index.load(path)


def test_capacity_is_bounded_by_the_arrays_before_anything_is_allocated(saved):
    """Even a manifest whose checksum was redone cannot make load allocate more slots than the
    file's arrays name (every slot is used or free)."""
    _, path = saved
    m = json.loads((path / io.MANIFEST).read_text())
    forged = dict(m, capacity=2**40)
    forged[io.CHECKSUM] = io._manifest_digest(forged)
    (path / io.MANIFEST).write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="capacity"):
        Index.load(path)


def test_files_of_peakknn_0_1_0_carry_no_checksum_and_still_load(tmp_path):
    """Version 1 manifests predate the checksum: they load, and a resave writes version 2 with one."""
    from pathlib import Path

    old = Path(__file__).resolve().parent / "fixtures" / "v0.1.0-flat-ip-bf16"
    m = json.loads((old / io.MANIFEST).read_text())
    assert m["version"] == 1 and io.CHECKSUM not in m
    index = Index.load(old)
    index.save(tmp_path / "new")
    m2 = json.loads((tmp_path / "new" / io.MANIFEST).read_text())
    assert m2["version"] == index_persist.VERSION == 2 and m2[io.CHECKSUM] == io._manifest_digest(m2)


def test_stale_temporary_files_are_cleaned_by_the_next_save(saved):
    index, path = saved
    (path / f"{io.MANIFEST}.tmp-dead").write_text("{}")  # what a save killed before its rename leaves
    (path / "arrays-0000000000000000.safetensors").write_bytes(b"partial")
    index.save(path)
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == sorted([io.MANIFEST, json.loads((path / io.MANIFEST).read_text())["arrays"]])


def test_concurrent_saves_to_one_directory_always_leave_a_loadable_index(tmp_path):
    import threading

    indexes = []
    for seed in range(3):
        ix = Index(8)
        ix.add(torch.randn(500 + 100 * seed, 8))
        indexes.append(ix)
    errors = []

    def save_many(ix):
        try:
            for _ in range(15):
                ix.save(tmp_path / "one")
                loaded = Index.load(tmp_path / "one")
                assert len(loaded) in (500, 600, 700)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save_many, args=(ix,)) for ix in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert len(Index.load(tmp_path / "one")) in (500, 600, 700)
    assert len(list((tmp_path / "one").glob("arrays-*"))) == 1


def test_loading_writes_nothing_into_the_index_directory(tmp_path):
    """A load only reads: a directory saved by peakknn 0.1.0 (no lock file) stays as it was."""
    import shutil
    from pathlib import Path

    old = Path(__file__).resolve().parent / "fixtures" / "v0.1.0-flat-ip-bf16"
    shutil.copytree(old, tmp_path / "copy")
    before = sorted(p.name for p in (tmp_path / "copy").iterdir())
    Index.load(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == before


def test_a_load_racing_a_save_reads_the_new_manifest(saved, monkeypatch):
    """Without a lock file (a directory no save of this version wrote) a load reads unlocked: if
    a save replaces the manifest and deletes the arrays between the load's two reads, the load
    reads the new manifest instead of failing."""
    from pathlib import Path

    index, path = saved
    (path / io.LOCK).unlink()
    real_read_bytes, raced = Path.read_bytes, []

    def read_bytes(self):
        if self.name.startswith("arrays-") and not raced:
            raced.append(self.name)
            index.save(path)  # a concurrent save: new arrays and manifest, the old arrays deleted
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    loaded = Index.load(path)
    assert raced and not (path / raced[0]).exists() and len(loaded) == len(index)


@pytest.mark.parametrize("bad", [{"scale": torch.tensor([3.0], dtype=torch.float64)}, {"scale": torch.tensor([0.0], dtype=torch.float64)}, {"centre": torch.full((12,), float("nan"))}])
def test_a_corrupt_scan_frame_is_refused(tmp_path, bad):
    from safetensors.torch import load_file

    index = Index(12)
    index.add(torch.randn(100, 12) + 5)
    index.save(tmp_path / "i")
    m = json.loads((tmp_path / "i" / io.MANIFEST).read_text())
    arrays = dict(load_file(tmp_path / "i" / m["arrays"]), **bad)
    io.write_bundle(tmp_path / "bad", {k: v for k, v in m.items() if k not in ("arrays", "sha256", io.CHECKSUM)}, arrays)
    with pytest.raises(ValueError, match="scale must be a positive power of two|centre contains NaN"):
        Index.load(tmp_path / "bad")
