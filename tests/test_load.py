"""peakknn.load: one function that opens a saved index folder of either kind."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peakknn
from peakknn import Index, PartitionedIndex, PartitionSettings, SearchSettings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RESULTS = load_file(FIXTURES / "v0.1.0-results.safetensors")  # what peakknn 0.1.0 returned (tests/io)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_load_is_exported():
    assert "load" in peakknn.__all__ and peakknn.load is peakknn.saved.load


@pytest.mark.parametrize("device", DEVICES)
def test_each_kind_comes_back_as_its_class(tmp_path, device):
    x, q = torch.randn(600, 16), torch.randn(9, 16)
    flat = Index(16, metric="l2", precision="fp32")
    flat.add(x)
    part = PartitionedIndex(16, metric="cos", settings=PartitionSettings(partitions=8, codes="int8"), search_settings=SearchSettings(probe=3))
    part.add(x)
    part.train()
    flat.save(tmp_path / "flat")
    part.save(tmp_path / "part")
    a = peakknn.load(tmp_path / "flat", device=device)
    b = peakknn.load(str(tmp_path / "part"), device=torch.device(device))
    assert type(a) is Index and type(b) is PartitionedIndex
    assert a.device.type == b.device.type == device
    assert (a.metric, a.precision, len(a)) == ("l2", "fp32", 600)
    assert (b.metric, b.settings.codes, b.search_settings.probe, len(b)) == ("cos", "int8", 3, 600)
    for before, after in ((flat.search(q, 5, recall_target=1.0), a.search(q, 5, recall_target=1.0)), (part.search(q, 5), b.search(q, 5))):
        torch.testing.assert_close(after.ids, before.ids, rtol=0, atol=0)
        torch.testing.assert_close(after.scores, before.scores)


@pytest.mark.parametrize("name", ["flat-ip-bf16", "flat-l2-fp32", "flat-cos-bf16"])
def test_flat_files_of_peakknn_0_1_0(name):
    index = peakknn.load(FIXTURES / f"v0.1.0-{name}")
    assert type(index) is Index
    result = index.search(RESULTS["queries"], 7, recall_target=1.0)
    torch.testing.assert_close(result.ids, RESULTS[f"{name}-1.0-ids"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["part-ip-bf16", "part-l2-int8", "part-cos-pq4"])
def test_partitioned_files_of_peakknn_0_1_0(name):
    index = peakknn.load(FIXTURES / f"v0.1.0-{name}")
    assert type(index) is PartitionedIndex
    result = index.search(RESULTS["queries"], 6, probe=3, adaptive=True)
    torch.testing.assert_close(result.ids, RESULTS[f"{name}-3-ids"], rtol=0, atol=0)


def test_untrained_partitioned_file_of_peakknn_0_1_0():
    index = peakknn.load(FIXTURES / "v0.1.0-part-untrained")
    assert type(index) is PartitionedIndex and not index.is_trained and len(index) == 50


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    "make, found",
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: (p / "file.npy").write_bytes(b"x") and p / "file.npy", "a file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no manifest.json"),
        (lambda p: _manifest(p / "junk", "{not json"), "not valid JSON"),
        (lambda p: _manifest(p / "list", "[1, 2]"), '"format"'),
        (lambda p: _manifest(p / "noformat", json.dumps({"version": 2})), '"format"'),
        (lambda p: _manifest(p / "other", json.dumps({"format": "faiss.ivf", "version": 1})), "'faiss.ivf'"),
    ],
)
def test_a_folder_of_neither_kind_names_the_path_and_what_is_there(tmp_path, make, found):
    path = make(tmp_path)
    with pytest.raises(ValueError) as e:
        peakknn.load(path)
    assert str(path) in str(e.value) and found in str(e.value)


def test_a_corrupt_index_gives_its_class_error(tmp_path):
    index = PartitionedIndex(8, settings=PartitionSettings(partitions=2))
    index.add(torch.randn(100, 8))
    index.save(tmp_path / "ix")
    arrays = next((tmp_path / "ix").glob("arrays-*.safetensors"))
    blob = bytearray(arrays.read_bytes())
    blob[-1] ^= 0xFF
    arrays.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        peakknn.load(tmp_path / "ix")
