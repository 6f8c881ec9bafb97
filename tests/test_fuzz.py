"""Fuzz test of the public surface (issue #19): approx_topk, search, Index, PartitionedIndex and
their settings, loading saved folders, and the command line.

Each test draws its inputs with hypothesis, derandomized (the same inputs on every run), with no
example database and no shrinking, and judges every call it makes:

- a result must agree with a float64 reference: for an exact request (recall_target=1.0, or a
  PartitionedIndex searched over every partition with every candidate re-ranked) the returned
  ids' reference scores must equal the k best reference scores within a tolerance (ties
  allowed); otherwise the contract: shapes, dtypes, best-first order, valid unique ids, -1 / inf
  fillers, and each reported score equal to the float64 score of its id;
- a rejection must be a ValueError or TypeError whose message names the offending argument (an
  integer or bool array must raise TypeError); another exception type, a warning, a call running
  past CALL_LIMIT_S, or a valid input rejected is a finding;
- a rejected call must leave an index as it was (length, ids, stored vectors, search results),
  and the caller's arrays are never modified;
- the command line returns (or exits with) a non-zero status for bad arguments, 0 for good ones,
  never raises, prints no traceback and writes nothing into the current directory.

Findings are collected over all examples, one line per distinct failure with the shortest
reproduction seen (arrays as `fuzz_matrix(...)` / `fuzz_rows(...)` of this module), and each test
fails at its end with that list, so one run shows every failure and its time stays bounded.
EXAMPLES sets the inputs generated per test; the session summary prints the counts (section
"peakknn fuzz") and test_fuzz_counts checks that a whole run generates at least MIN_TOTAL.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

import hypothesis.configuration
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import peakknn
from peakknn import Index, PartitionedIndex, PartitionSettings, SearchSettings

EXAMPLES = {  # generated inputs per test and run
    "approx_topk": 3500,
    "search": 3000,
    "Index": 1500,
    "PartitionedIndex": 1000,
    "settings": 1200,
    "load": 1000,
    "cli": 400,
}
MIN_TOTAL = 10_000
CALL_LIMIT_S = 20  # one call running longer than this is a hang (the slowest good call, a tiny bench, takes ~1 s)
RTOL = 1e-4  # score tolerance, relative to the scale of the scores (|q| |x|, or centred squared norms)
UNDERFLOW = 1e-37  # reported fp32 scores may flush float64 scores below this to zero
F32_MAX = float(np.finfo(np.float32).max)
MAX_ID = 2**63 - 2
METRICS = ("ip", "l2", "cos")
NAN, INF = float("nan"), float("inf")
FIXTURES = Path(__file__).parent / "fixtures"
HAS_CUDA = torch.cuda.is_available()

COUNTS: collections.Counter = collections.Counter()  # generated inputs, per test
VERDICTS: collections.Counter = collections.Counter()  # (test, "ok" | "rejected" | ...): calls judged


SCALE = float(os.environ.get("PEAKKNN_FUZZ_SCALE", "1"))  # more (or fewer) inputs for a deeper local run


def counted(name: str):
    """Count an example once it has run to its end (hypothesis also starts examples it abandons)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            fn(*args, **kwargs)
            COUNTS[name] += 1

        return run

    return wrap


def _fuzz(name: str):
    return settings(
        max_examples=max(1, round(EXAMPLES[name] * SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate),
        print_blob=False,
    )


# --------------------------------------------------------------------------- findings


def _normalise(text: str) -> str:
    text = re.sub(r"\S*peakknn-fuzz-\S*", "<path>", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "0x_", text)
    text = re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "N", text)
    return text[:220]


class Findings:
    """Distinct failures of one test: (where, what) -> [count, shortest reproduction]."""

    def __init__(self, test: str):
        self.test = test
        self.found: dict[tuple[str, str], list] = {}

    def add(self, where: str, what: str, repro: str, key: str | None = None) -> None:
        key = (where, _normalise(what if key is None else key))
        entry = self.found.setdefault(key, [0, repro, what])
        entry[0] += 1
        if len(repro) < len(entry[1]):
            entry[1], entry[2] = repro, what

    def report(self) -> str:
        lines = []
        for (where, _), (count, repro, what) in sorted(self.found.items()):
            lines.append(f"[{where}] {what}  ({count}x)\n      {repro}")
        return "\n".join(lines)

    def check(self) -> None:
        if self.found:
            head = f"{len(self.found)} distinct findings in {COUNTS[self.test]} generated inputs ({self.test}):\n"
            pytest.fail(head + self.report(), pytrace=False)


FINDINGS = {name: Findings(name) for name in EXAMPLES}


@dataclasses.dataclass
class Outcome:
    value: object = None
    error: BaseException | None = None
    warned: list = dataclasses.field(default_factory=list)
    hung: bool = False


class _Hang(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def attempt(fn, *args, **kwargs) -> Outcome:
    """Call fn, recording its value or exception, its warnings and whether it ran past CALL_LIMIT_S."""
    out = Outcome()
    alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, CALL_LIMIT_S)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out.value = fn(*args, **kwargs)
            except _Hang:
                out.hung = True
            except (Exception, SystemExit) as e:  # noqa: BLE001 - every exception is an outcome to judge
                out.error = e
        out.warned = [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return out


def names(message: str, tokens) -> bool:
    """True when one of tokens appears in message as a word (case-insensitive)."""
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(str(t))}(?![A-Za-z0-9_])", message, re.IGNORECASE) for t in tokens)


def _quiet(fn):
    """Run a checking helper with numpy's floating-point warnings off (inf - inf in a check is fine)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


@dataclasses.dataclass
class Mark:
    name: str
    why: str
    tokens: tuple
    type_error: bool = False


class Call:
    """One call under test: where, how to reproduce it, and which arguments are bad / awkward."""

    def __init__(self, where: str, repro: str = ""):
        self.where = where
        self.repro = repro
        self.bad: list[Mark] = []
        self.awkward: list[Mark] = []
        self.state: tuple = ()  # phrases of errors the index's state justifies
        self.allowed_warnings: tuple = ()  # warning categories the call asks for (a deprecated keyword)

    def mark(self, status: str, name: str, why: str, tokens=None, type_error: bool = False) -> None:
        tokens = tuple(tokens) if tokens is not None else (name,)
        if status in ("bad", "type"):
            self.bad.append(Mark(name, why, tokens, type_error or status == "type"))
        elif status == "awkward":
            self.awkward.append(Mark(name, why, tokens))


def judge(F: Findings, call: Call, out: Outcome) -> str:
    """'ok' (a result, no bad argument), 'rejected' (an exception), 'accepted_bad' or 'hung'."""
    verdict = _judge(F, call, out)
    VERDICTS[F.test, verdict] += 1
    return verdict


def _judge(F: Findings, call: Call, out: Outcome) -> str:
    for w in out.warned:
        if not w.startswith(call.allowed_warnings or ("\0",)):
            F.add(call.where, f"emits {w}", call.repro)
    if out.hung:
        F.add(call.where, f"runs past {CALL_LIMIT_S} s", call.repro)
        return "hung"
    e = out.error
    if e is None:
        if call.bad:
            b = call.bad[0]
            F.add(call.where, f"accepts bad {b.name} ({b.why})", call.repro)
            return "accepted_bad"
        return "ok"
    text = f"{type(e).__name__}: {e}"
    if not isinstance(e, (ValueError, TypeError)):
        F.add(call.where, f"raises {text}", call.repro)
        return "rejected"
    if call.state and names(str(e), call.state):  # the index's state rules the call out first
        return "rejected"
    if call.bad:
        b = call.bad[0]
        if all(m.type_error for m in call.bad) and not call.awkward and not isinstance(e, TypeError):
            F.add(call.where, f"{b.name} ({b.why}) must raise TypeError, got {text}", call.repro, f"{b.name} must raise TypeError, got {text}")
        if not names(str(e), [t for m in call.bad + call.awkward for t in m.tokens]):
            F.add(call.where, f"error does not name {b.name} ({b.why}): {text}", call.repro, f"error does not name the bad argument: {text}")
        return "rejected"
    if call.awkward:
        a = call.awkward[0]
        if not names(str(e), [t for m in call.awkward for t in m.tokens]):
            F.add(call.where, f"error does not name {a.name} ({a.why}): {text}", call.repro, f"error does not name the bad argument: {text}")
        return "rejected"
    F.add(call.where, f"rejects valid input: {text}", call.repro)
    return "rejected"


# --------------------------------------------------------------------------- generated arrays

TORCH_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool, "complex64": torch.complex64,
}  # fmt: skip
TORCH_FLOATS = ("float16", "bfloat16", "float32", "float64")
NUMPY_FLOATS = ("float16", "float32", "float64", ">f4", ">f8")
TYPE_DTYPES = ("int64", "int32", "uint8", "bool")  # must raise TypeError
OTHER_BAD_DTYPES = ("complex64", "complex128", "object")


def _fill(rng, shape, fill: str, dtype: str) -> np.ndarray:
    v = rng.standard_normal(shape)
    flat = v.reshape(-1)
    if fill == "ties":
        v = rng.integers(-2, 3, shape).astype(np.float64)
    elif fill == "offset":
        v = v + 1000.0
    elif fill == "dup_rows" and v.ndim >= 2 and v.shape[0] > 1:
        v = v[rng.integers(0, (v.shape[0] + 1) // 2, v.shape[0])]
    elif fill == "zero_row" and v.size:
        rows = v.reshape(-1, v.shape[-1])
        rows[rng.integers(0, rows.shape[0])] = 0.0
    elif fill == "tiny":
        v = v * (1e-6 if dtype == "float16" else 1e-30)
    elif fill == "huge":
        v = v * (3e4 if dtype == "float16" else 1e30)
    elif fill in ("nan", "inf", "-inf", "beyond") and v.size:
        flat[rng.integers(0, v.size)] = {"nan": NAN, "inf": INF, "-inf": -INF, "beyond": 1e39}[fill]
    return v


def _layout(v: np.ndarray, layout: str, gap: float):
    """(base array, view function, view text): view(base) holds the values v."""
    if layout == "transposed" and v.ndim == 2:
        return v.T.copy(), (lambda b: b.T), ".T"
    if layout == "rows-strided" and v.ndim >= 1:
        base = np.full((2 * v.shape[0],) + v.shape[1:], gap)
        base[::2] = v
        return base, (lambda b: b[::2]), "[::2]"
    if layout == "cols-strided" and v.ndim == 2:
        base = np.full((v.shape[0], 2 * v.shape[1]), gap)
        base[:, ::2] = v
        return base, (lambda b: b[:, ::2]), "[:, ::2]"
    if layout == "expanded" and v.ndim == 2:
        shape = v.shape
        base = v[:1].copy() if shape[0] else np.zeros((1, shape[1]))
        return base, (lambda b: b.expand(*shape) if isinstance(b, torch.Tensor) else np.broadcast_to(b, shape)), f".expand{shape}"
    if layout == "flipped" and v.ndim >= 1:
        return v[::-1].copy(), (lambda b: b[::-1]), "[::-1]"
    if layout == "fortran" and v.ndim == 2:
        return np.asfortranarray(v), (lambda b: b), " (Fortran order)"
    if layout == "readonly":
        return v.copy(), _readonly, " (read-only)"
    return v, (lambda b: b), ""


def _readonly(b):
    if isinstance(b, np.ndarray):
        b.setflags(write=False)
    return b


def _convert(base: np.ndarray, kind: str, dtype: str):
    if kind == "torch":
        t = torch.from_numpy(np.array(base, order="C"))
        if dtype in ("int64", "int32", "uint8"):
            return torch.from_numpy(np.array(np.round(np.nan_to_num(base)).clip(0 if dtype == "uint8" else -100, 100))).to(TORCH_DTYPES[dtype])
        if dtype == "bool":
            return t > 0
        return t.to(TORCH_DTYPES[dtype]) if dtype in TORCH_DTYPES else t.to(torch.complex64)
    if dtype in ("int64", "int32", "uint8"):
        return np.array(np.round(np.nan_to_num(base)).clip(0 if dtype == "uint8" else -100, 100)).astype(dtype)
    if dtype == "bool":
        return np.array(base > 0)
    if dtype == "object":
        return base.astype(object)
    return base.astype(dtype)


def fuzz_matrix(kind: str, dtype: str, shape: tuple, layout: str = "contiguous", fill: str = "normal", seed: int = 0, grad: bool = False):
    """The generated array argument: kind "torch" | "numpy" | "list" | "list-int"; values from
    `fill` (normal, ties, offset, dup_rows, zero_row, tiny, huge, nan, inf, -inf, beyond) with
    numpy seed `seed`, laid out as `layout` (contiguous, transposed, rows-strided, cols-strided,
    expanded; numpy also flipped, fortran, readonly). Strided layouts hold NaN in the gaps."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rng = np.random.default_rng(seed)
        v = _fill(rng, shape, fill, dtype)
        if kind == "list":
            return v.tolist()
        if kind == "list-int":
            return np.round(v).astype(np.int64).tolist()
        floating = dtype in TORCH_FLOATS or dtype in NUMPY_FLOATS
        base, view, _ = _layout(v, layout, NAN if floating else 7.0)
        x = _convert(base, kind, dtype)
        if grad and kind == "torch" and x.is_floating_point():
            x.requires_grad_(True)
        return view(x)


def fuzz_rows(seed: int, n: int, dim: int) -> torch.Tensor:
    """f32[n, dim] standard normal rows (the indexes' ordinary data)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g)


@dataclasses.dataclass
class Matrix:
    obj: object
    desc: str
    status: str  # ok | awkward | bad | type
    why: str
    kind: str  # torch | numpy | list | other
    rows: int = 0
    one_d: bool = False
    seen: np.ndarray | None = None  # float64 [rows, dim] of the float32 values peakknn should use
    original: object = None


def _seen(obj) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(obj, torch.Tensor):
            return obj.detach().to(torch.float32).to(torch.float64).numpy().copy()
        return np.asarray(obj, dtype=np.float64).astype(np.float32).astype(np.float64)


def _snapshot_input(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    return copy.deepcopy(obj)


@_quiet
def same_input(a, b) -> bool:
    """True when the caller's argument is unchanged (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        a = a.detach()
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
        return bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        try:
            return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        except TypeError:
            return bool(np.array_equal(a, b))
    return repr(a) == repr(b)


GARBAGE = {
    "None": None, "a string": "abc", "a float": 3.5, "a dict": {"a": 1}, "a ragged list": [[1.0, 2.0], [3.0]],
    "a list of strings": [["a", "b"]], "a list holding None": [[None, 1.0]], "a set": {1.0, 2.0},
}  # fmt: skip


def draw_matrix(draw, name: str, rows: int, dim: int, *, bad: bool = False, one_d_ok: bool = False, metric: str = "ip", awkward_ok: bool = True) -> Matrix:
    """A generated vectors / queries / database argument with its status (ok, awkward, bad, type)."""
    seed = draw(st.integers(0, 2**20))
    kind = draw(st.sampled_from(("torch",) * 5 + ("numpy",) * 3 + ("list",) * 2))
    status, why = "ok", ""
    shape = (rows, dim)
    fill = "normal"
    if bad:
        flavour = draw(st.sampled_from(("dtype", "dtype", "shape", "shape", "values", "values", "garbage")))
        if flavour == "garbage":
            label = draw(st.sampled_from(sorted(GARBAGE)))
            obj = copy.deepcopy(GARBAGE[label])
            return Matrix(obj, repr(obj), "bad", label, "other", rows, original=copy.deepcopy(obj))
        if flavour == "dtype":
            kind = draw(st.sampled_from(("torch", "numpy")))
            dtype = draw(st.sampled_from(TYPE_DTYPES + (("complex64",) if kind == "torch" else ("complex128", "object"))))
            status, why = ("type" if dtype in TYPE_DTYPES else "bad"), f"dtype {dtype}"
        else:
            dtype = draw(st.sampled_from(TORCH_FLOATS if kind == "torch" else NUMPY_FLOATS)) if kind != "list" else "float64"
            if flavour == "shape":
                choice = draw(st.sampled_from(("0-d", "3-d", "wrong dim", "dim 0") + (() if one_d_ok else ("1-d",))))
                shape = {"0-d": (), "3-d": (2, rows, dim), "wrong dim": (rows, dim + 1 if dim == 1 or draw(st.booleans()) else dim - 1), "dim 0": (rows, 0), "1-d": (dim,)}[choice]
                status, why = "bad", f"shape {shape}"
                if choice == "0-d" and kind == "list":
                    kind = "torch"
            else:
                rows = max(rows, 1)
                shape = (rows, dim)
                options = ["nan", "inf", "-inf"] + (["beyond"] if dtype in ("float64", ">f8") else []) + (["zero_row"] if metric == "cos" else [])
                fill = draw(st.sampled_from(options))
                status, why = "bad", f"fill {fill}"
    else:
        if kind == "list" and rows == 0:
            kind = "torch"  # [] has no dim
        if kind == "list":
            kind = draw(st.sampled_from(("list", "list", "list-int")))
            dtype = "float64"
        else:
            dtype = draw(st.sampled_from(TORCH_FLOATS if kind == "torch" else NUMPY_FLOATS))
        if one_d_ok and rows == 1 and draw(st.booleans()):
            shape = (dim,)
        fills = ["normal"] * 5 + ["ties", "offset", "dup_rows"] + (["zero_row"] if metric != "cos" else [])
        fill = draw(st.sampled_from(fills + (["tiny", "huge"] if awkward_ok else [])))
        if kind == "list-int":
            fill = "ties"
        if fill in ("tiny", "huge"):
            status, why = "awkward", f"fill {fill}"
    layouts = ["contiguous"] * 4
    if kind == "torch":
        layouts += ["transposed", "rows-strided", "cols-strided", "expanded"]
    elif kind == "numpy":
        layouts += ["transposed", "rows-strided", "cols-strided", "expanded", "flipped", "fortran", "readonly"]
    layout = draw(st.sampled_from(layouts))
    if status != "ok" and fill != "normal" and layout == "expanded":
        layout = "contiguous"  # an expanded view shows only row 0, which may not hold the bad value
    grad = kind == "torch" and dtype in TORCH_FLOATS and draw(st.integers(0, 3)) == 0
    obj = fuzz_matrix(kind, dtype, shape, layout, fill, seed, grad)
    desc = f"fuzz_matrix({kind!r}, {dtype!r}, {shape}, {layout!r}, {fill!r}, seed={seed}{', grad=True' if grad else ''})"
    m = Matrix(obj, desc, status, why, "list" if kind.startswith("list") else kind, shape[0] if len(shape) == 2 else 1, len(shape) == 1)
    m.original = _snapshot_input(obj)
    if status == "ok" or status == "awkward":
        seen = _seen(obj).reshape(-1, dim)
        m.seen = seen
        if not np.isfinite(seen).all():
            m.status, m.why = "bad", "non-finite after the float32 cast"
        elif metric == "cos" and seen.size and (np.abs(seen).sum(1) == 0).any():
            m.status, m.why = "bad", "a zero row (cosine)"
    return m


def mark_matrix(call: Call, name: str, m: Matrix, tokens=None) -> None:
    if m.status != "ok":
        call.mark(m.status, name, m.why, tokens or (name,))


# --------------------------------------------------------------------------- the float64 reference


def _np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    if isinstance(t, np.ndarray):
        return t
    return None


def reference_scores(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """f64[nq, n]: inner products, cosines or squared distances."""
    if metric == "cos":
        with np.errstate(all="ignore"):
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return q @ x.T


@_quiet
def tolerances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """f64[nq]: how far a score may be from the reference (RTOL of the scores' scale)."""
    nq = q.shape[0]
    if x.shape[0] == 0:
        return np.zeros(nq)
    if metric == "cos":
        return np.full(nq, RTOL)
    if metric == "ip":
        return RTOL * np.linalg.norm(q, axis=1) * np.linalg.norm(x, axis=1).max()
    centre = x.mean(0)
    return RTOL * ((np.linalg.norm(q - centre, axis=1) ** 2) + (np.linalg.norm(x - centre, axis=1) ** 2).max())


@_quiet
def check_knn(F, call, res, q64, x64, metric, k, *, exact, allowed_rows=None, row_ids=None, exact_scores=True, full=True, want_kind=None, one_query=False) -> bool:
    """Check a SearchResult against the reference over rows x64 (user ids row_ids, of which
    allowed_rows may be returned). Returns True when it agrees."""
    ok = [True]

    def bad(what, detail=""):
        ok[0] = False
        F.add(call.where, f"wrong result: {what}", call.repro + (f"  # {detail}" if detail else ""))

    if not (hasattr(res, "ids") and hasattr(res, "scores")):
        bad(f"returns {type(res).__name__}, not a SearchResult")
        return False
    if want_kind == "numpy" and not (isinstance(res.ids, np.ndarray) and isinstance(res.scores, np.ndarray)):
        bad(f"numpy in gives {type(res.ids).__name__} out, not numpy arrays")
    if want_kind == "torch" and not (isinstance(res.ids, torch.Tensor) and isinstance(res.scores, torch.Tensor)):
        bad(f"torch in gives {type(res.ids).__name__} out, not torch tensors")
    ids, scores = _np(res.ids), _np(res.scores)
    if ids is None or scores is None:
        bad("ids / scores are not arrays")
        return False
    nq, n = q64.shape[0], x64.shape[0]
    if one_query and ids.shape == (k,) and scores.shape == (k,):
        ids, scores = ids[None], scores[None]
    if ids.shape != (nq, k) or scores.shape != (nq, k):
        bad(f"shapes ids {ids.shape}, scores {scores.shape}; expected {(nq, k)}")
        return False
    if ids.dtype != np.int64:
        bad(f"ids dtype {ids.dtype}")
    if scores.dtype != np.float32:
        bad(f"scores dtype {scores.dtype}")
    row_ids = np.arange(n) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
    allowed_rows = np.arange(n) if allowed_rows is None else np.asarray(allowed_rows, dtype=np.int64)
    row_of = {int(i): r for r, i in enumerate(row_ids.tolist())}
    allowed = set(allowed_rows.tolist())
    VERDICTS[F.test, "exact"] += bool(exact)
    S = reference_scores(q64, x64, metric) if n else np.zeros((nq, 0))
    tol = tolerances(q64, x64[allowed_rows] if allowed_rows.size else x64[:0], metric)
    descending = metric != "l2"
    filler = -np.inf if descending else np.inf
    want = min(k, len(allowed))
    for qi in range(nq):
        got = ids[qi]
        valid = got >= 0
        count = int(valid.sum())
        if not valid[:count].all():
            bad("an id -1 before a real id")
            continue
        if (got < -1).any():
            bad("ids below -1")
        if (full and count != want) or count > want:
            bad(f"{count} ids where {want} rows qualify" + ("" if full else " (at most)"), f"query {qi}")
        if not np.all(scores[qi][~valid] == filler):
            bad("filler scores are not -inf (+inf for l2)")
        rows = [row_of.get(int(i)) for i in got[:count]]
        if any(r is None or r not in allowed for r in rows):
            bad("returns an id that is not stored or not allowed", f"ids {got[:count].tolist()}")
            continue
        if len(set(rows)) != len(rows):
            bad("returns an id twice", f"ids {got[:count].tolist()}")
            continue
        if count == 0:
            continue
        ref = S[qi, rows]
        rep = scores[qi, :count].astype(np.float64)
        if np.isnan(rep).any():
            bad("NaN scores")
            continue
        if exact_scores:
            diff = np.abs(np.clip(rep, -F32_MAX, F32_MAX) - np.clip(ref, -F32_MAX, F32_MAX))
            if (diff > tol[qi] + UNDERFLOW).any():
                j = int(np.argmax(diff - tol[qi]))
                bad("a reported score differs from the float64 score of its id", f"query {qi}: {rep[j]!r} vs {ref[j]!r}, tol {tol[qi]:.3g}")
        order = rep if descending else -rep
        with np.errstate(invalid="ignore"):
            if (np.diff(order) > tol[qi] + UNDERFLOW).any():
                bad("scores not sorted best first", f"query {qi}: {rep.tolist()}")
        if exact:
            best = np.sort(S[qi, allowed_rows])
            best = (best[::-1] if descending else best)[:count]
            mine = np.sort(ref)
            mine = mine[::-1] if descending else mine
            if (np.abs(mine - best) > tol[qi]).any():
                bad("not the k nearest (beyond ties)", f"query {qi}: got {mine.tolist()}, best {best.tolist()}, tol {tol[qi]:.3g}")
    return ok[0]


# --------------------------------------------------------------------------- generated scalars

K_BAD = {"0": 0, "-1": -1, "True": True, "False": False, "2.0": 2.0, "'3'": "3", "None": None}
RECALL_GOOD = (1.0, 1.0, 1, 0.99, 0.95, 0.9, 0.5, 0.01)
RECALL_BAD = {"0": 0, "0.0": 0.0, "-0.5": -0.5, "1.0000001": 1.0000001, "1.5": 1.5, "nan": NAN, "inf": INF, "True": True, "'0.9'": "0.9", "None": None}


def draw_k(draw, n: int, bad: bool, *, zero_awkward: bool = False):
    """(k, status, why)."""
    if bad:
        label = draw(st.sampled_from(sorted(K_BAD)))
        value = K_BAD[label]
        if zero_awkward and label == "0":
            return value, "awkward", "k=0"
        return value, ("type" if label in ("True", "False", "2.0", "'3'", "None") else "bad"), f"k={label}"
    value = draw(st.sampled_from(sorted({1, 2, 3, max(1, n), n + 1, n + 2})))
    if draw(st.integers(0, 9)) == 0:
        value = np.int64(value)
    return value, "ok", ""


def draw_recall(draw, bad: bool, good=RECALL_GOOD):
    if bad:
        label = draw(st.sampled_from(sorted(b for b in RECALL_BAD if b != "None" or None not in good)))
        value = RECALL_BAD[label]
        return value, ("type" if label in ("True", "'0.9'", "None") else "bad"), f"recall_target={label}"
    value = draw(st.sampled_from(good))
    if value is not None and draw(st.integers(0, 9)) == 0:
        value = np.float64(value)
    return value, "ok", ""


def _kw(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --------------------------------------------------------------------------- approx_topk

APPROX_BAD_TARGETS = ("x", "k", "dim", "recall_target", "per_bin", "backend")


@_fuzz("approx_topk")
@given(st.data())
@counted("approx_topk")
def _approx_topk_example(data):
    F = FINDINGS["approx_topk"]
    draw = data.draw
    target = draw(st.sampled_from(("none",) * 8 + APPROX_BAD_TARGETS))
    call = Call("approx_topk")
    ndim = draw(st.sampled_from((1, 1, 2, 2, 2, 3, 0)))
    axis = draw(st.integers(0, max(0, ndim - 1)))
    n = draw(st.sampled_from((0, 1, 2, 3, 5, 8, 13, 40, 64, 65, 100, 200, 300)))
    shape = [draw(st.sampled_from((1, 1, 2, 3, 0))) if i != axis else n for i in range(ndim)]
    shape = tuple(shape)
    seed = draw(st.integers(0, 2**20))
    kind = "torch"
    dtype = draw(st.sampled_from(TORCH_FLOATS))
    garbage = False
    if target == "x":
        flavour = draw(st.sampled_from(("bool", "int", "numpy", "list", "garbage")))
        if flavour == "bool":
            dtype = "bool"
            call.mark("type", "x", "dtype bool")
        elif flavour == "int":
            dtype = draw(st.sampled_from(("int64", "int32")))
            call.mark("awkward", "x", f"dtype {dtype} (torch.topk takes it)")
        elif flavour in ("numpy", "list"):
            kind = flavour
            dtype = "float32"
            call.mark("awkward", "x", f"a {flavour} input")
        else:
            label = draw(st.sampled_from(("None", "a string", "a float")))
            garbage, x = True, GARBAGE[label]
            call.mark("bad", "x", label)
    if ndim == 0:
        call.mark("awkward", "x", "a 0-d tensor (torch.topk takes it)")
    fill = draw(st.sampled_from(("normal",) * 4 + ("ties", "sorted", "nan", "inf", "-inf", "huge", "equal", "signed_zero")))
    layout = draw(st.sampled_from(("contiguous",) * 4 + ("transposed", "strided", "expanded")))
    grad = dtype in TORCH_FLOATS and kind == "torch" and draw(st.integers(0, 3)) == 0
    if garbage:
        base, desc = None, repr(x)
    else:
        x, base, desc = _topk_input(kind, dtype, shape, axis, fill, layout, seed, grad)
    # arguments
    nd = max(ndim, 1)
    dim_arg = axis if draw(st.booleans()) else axis - nd
    if ndim == 0:
        dim_arg = draw(st.sampled_from((0, -1)))
    if target == "dim":
        label = draw(st.sampled_from(("ndim", "-ndim-1", "1.5", "None")))
        dim_arg = {"ndim": nd, "-ndim-1": -nd - 1, "1.5": 1.5, "None": None}[label]
        call.mark("bad", "dim", f"dim={label}")
    size = n if ndim else 1
    if target == "k":
        label = draw(st.sampled_from(("0", "-1", "n+1", "True", "2.0", "'2'", "None")))
        k = {"0": 0, "-1": -1, "n+1": size + 1, "True": True, "2.0": 2.0, "'2'": "2", "None": None}[label]
        call.mark("awkward" if label == "0" else ("type" if label in ("True", "2.0", "'2'", "None") else "bad"), "k", f"k={label}")
    else:
        if size == 0:
            k = 1
            call.mark("bad", "k", "k=1 > n=0")
        else:
            k = draw(st.sampled_from(sorted({v for v in (1, 2, 3, size, max(1, size // 2)) if v <= size})))
            if draw(st.integers(0, 9)) == 0:
                k = np.int64(k)
    rt, status, why = draw_recall(draw, target == "recall_target", good=(1.0, 0.99, 0.95, 0.9, 0.5, 0.2, 1e-3))
    call.mark(status, "recall_target", why)
    largest = draw(st.booleans())
    form = draw(st.sampled_from(("keywords",) * 6 + ("sorted", "sorted", "positional")))
    sorted_ = True if form == "keywords" else draw(st.booleans())
    kwargs = {"recall_target": rt}
    if target == "per_bin":
        label = draw(st.sampled_from(("0", "-1", "1.5")))
        kwargs["per_bin"] = {"0": 0, "-1": -1, "1.5": 1.5}[label]
        call.mark("type" if label == "1.5" else "bad", "per_bin", f"per_bin={label}")
    elif draw(st.integers(0, 7)) == 0:
        kwargs["per_bin"] = 2
    if target == "backend":
        kwargs["backend"] = draw(st.sampled_from(("cuda", "TORCH", "gpu", None)))
        call.mark("bad", "backend", f"backend={kwargs['backend']!r}")
    elif draw(st.integers(0, 7)) == 0:
        kwargs["backend"] = draw(st.sampled_from(("auto", "torch")))
    if form == "positional":
        args = (x, k, dim_arg, largest, sorted_)
        text = f"approx_topk(X, {k!r}, {dim_arg!r}, {largest}, {sorted_}, {_kw(kwargs)})"
    elif form == "sorted":
        args = (x, k, dim_arg)
        kwargs.update(largest=largest, sorted=sorted_)
        text = f"approx_topk(X, {k!r}, {dim_arg!r}, {_kw(kwargs)})"
    else:
        args = (x, k, dim_arg)
        kwargs["largest"] = largest
        text = f"approx_topk(X, {k!r}, {dim_arg!r}, {_kw(kwargs)})"
    call.repro = f"X = {desc}; {text}"
    original = _snapshot_input(x)
    out = attempt(peakknn.approx_topk, *args, **kwargs)
    verdict = judge(F, call, out)
    if not same_input(x, original):
        F.add("approx_topk", "modifies its input", call.repro)
    if verdict != "ok":
        return
    _check_topk(F, call, out.value, x, base, k, dim_arg, largest, sorted_, exact=float(rt) >= 1.0)


def _topk_input(kind, dtype, shape, axis, fill, layout, seed, grad):
    """(x, leaf tensor that carries the gradient or None, description)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rng = np.random.default_rng(seed)
        v = rng.standard_normal(shape)
        if fill == "ties":
            v = rng.integers(-2, 3, shape).astype(np.float64)
        elif fill == "sorted" and v.ndim:
            v = np.sort(v, axis=axis)
        elif fill in ("nan", "inf", "-inf") and v.size:
            mask = rng.random(shape) < 0.1
            mask.reshape(-1)[rng.integers(0, v.size)] = True
            v[mask] = {"nan": NAN, "inf": INF, "-inf": -INF}[fill]
        elif fill == "huge":
            v = v * 1e30
        elif fill == "equal":
            v = np.full(shape, 0.5)
        elif fill == "signed_zero":
            v = np.where(rng.random(shape) < 0.5, 0.0, -0.0)
        desc = f"_topk_input({kind!r}, {dtype!r}, {shape}, {axis}, {fill!r}, {layout!r}, {seed}, {grad})[0]"
        if kind == "list":
            return v.tolist(), None, desc
        if kind == "numpy":
            return v.astype(np.float32), None, desc
        if dtype in ("int64", "int32"):
            t = torch.from_numpy(np.array(np.round(np.clip(np.nan_to_num(v, posinf=9, neginf=-9) * 3, -100, 100)))).to(TORCH_DTYPES[dtype])
        elif dtype == "bool":
            t = torch.from_numpy(np.array(v > 0))
        else:
            t = None
        ndim = len(shape)
        if layout == "transposed" and ndim >= 2:
            other = (axis + 1) % ndim
            base = torch.from_numpy(np.array(np.swapaxes(v, axis, other)))
            base = base.to(TORCH_DTYPES[dtype]) if t is None else t.transpose(axis, other).contiguous()
            if grad:
                base.requires_grad_(True)
            return base.transpose(axis, other), base, desc
        if layout == "strided" and ndim >= 1:
            a = (axis + seed) % ndim
            big = list(shape)
            big[a] *= 2
            b = np.full(big, NAN)
            index = [slice(None)] * ndim
            index[a] = slice(None, None, 2)
            b[tuple(index)] = v
            base = torch.from_numpy(b).to(TORCH_DTYPES[dtype]) if t is None else torch.repeat_interleave(t, 2, dim=a)
            if grad:
                base.requires_grad_(True)
            return base[tuple(index)], base, desc
        if layout == "expanded" and ndim >= 2:
            a = (axis + 1) % ndim
            take = [slice(None)] * ndim
            take[a] = slice(0, 1)
            small = v[tuple(take)] if shape[a] else np.zeros([1 if i == a else s for i, s in enumerate(shape)])
            base = torch.from_numpy(np.array(small)).to(TORCH_DTYPES[dtype]) if t is None else t[tuple(take)].contiguous()
            if grad:
                base.requires_grad_(True)
            return base.expand(*shape), base, desc
        base = torch.from_numpy(np.array(v)).to(TORCH_DTYPES[dtype]) if t is None else t
        if grad:
            base.requires_grad_(True)
        return base, base, desc


@_quiet
def _key(values: np.ndarray) -> np.ndarray:
    """Ranking key of torch.topk: NaN above +inf."""
    out = values.astype(np.float64).copy()
    out[np.isnan(out)] = np.inf
    return out


@_quiet
def _check_topk(F, call, res, x, leaf, k, dim, largest, sorted_, exact):
    def bad(what, detail=""):
        F.add("approx_topk", f"wrong result: {what}", call.repro + (f"  # {detail}" if detail else ""))

    if not isinstance(res, torch.return_types.topk):
        bad(f"returns {type(res).__name__}, not torch.return_types.topk")
    try:
        values, indices = res[0], res[1]
    except (TypeError, IndexError, KeyError):
        bad("result is not a (values, indices) pair")
        return
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    k = int(k)
    expect_shape = list(x.shape)
    if x.ndim:
        expect_shape[dim] = k
    if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
        bad("values / indices are not tensors")
        return
    if list(values.shape) != expect_shape or list(indices.shape) != expect_shape:
        bad(f"shapes {tuple(values.shape)}, {tuple(indices.shape)}; expected {tuple(expect_shape)}")
        return
    if indices.dtype != torch.int64:
        bad(f"indices dtype {indices.dtype}")
    if values.dtype != x.dtype:
        bad(f"values dtype {values.dtype}, input {x.dtype}")
        return
    if x.ndim == 0 or values.numel() == 0:
        return
    n = x.shape[dim]
    idx = indices.detach().movedim(dim, -1).reshape(-1, k).numpy()
    if (idx < 0).any() or (idx >= n).any():
        bad("indices out of range")
        return
    if any(len(set(row.tolist())) != k for row in idx):
        bad("an index twice in one row")
    gathered = x.detach().gather(dim, indices.detach())
    if not same_input(values.detach(), gathered):
        bad("values are not x at the indices")
    vals = values.detach().movedim(dim, -1).reshape(-1, k).to(torch.float64).numpy()
    key = _key(vals)
    if sorted_:
        step = np.diff(key, axis=1)
        with np.errstate(invalid="ignore"):
            if (step > 0).any() if largest else (step < 0).any():
                bad("values not sorted", f"{vals.tolist()[:2]}")
    VERDICTS["approx_topk", "exact"] += bool(exact)
    if exact:
        rows = x.detach().movedim(dim, -1).reshape(-1, n).to(torch.float64).numpy()
        want = np.sort(_key(rows), axis=1)
        want = want[:, ::-1][:, :k] if largest else want[:, :k]
        mine = np.sort(key, axis=1)
        mine = mine[:, ::-1] if largest else mine
        if not np.array_equal(mine, want):
            bad("recall_target=1.0 is not the exact top-k", f"got {mine.tolist()[:2]}, want {want.tolist()[:2]}")
    if leaf is not None and leaf.requires_grad:
        if not values.requires_grad:
            bad("values do not carry the input's gradient")
            return
        out = attempt(lambda: values.float().sum().backward())
        if out.error is not None:
            F.add("approx_topk", f"backward raises {type(out.error).__name__}: {out.error}", call.repro)
        elif leaf.grad is None or abs(float(leaf.grad.double().sum()) - values.numel()) > 1e-3 * values.numel():
            bad("gradient does not reach exactly the selected entries")


def test_approx_topk_fuzz():
    _approx_topk_example()
    FINDINGS["approx_topk"].check()


# --------------------------------------------------------------------------- search

SEARCH_TARGETS = ("database", "queries", "k", "recall_target", "metric", "precision", "rerank", "max_memory", "backend")
PRECISION_GOOD = ("fp32", "bf16", "float32", "bfloat16", torch.float32, torch.bfloat16)
PRECISION_BAD = ("fp16", "float16", "BF16", "int8", torch.float16, torch.float64, None, 16)
METRIC_BAD = ("IP", "dot", "euclidean", "", None, 3)


@_fuzz("search")
@given(st.data())
@counted("search")
def _search_example(data):
    F = FINDINGS["search"]
    draw = data.draw
    target = draw(st.sampled_from(("none",) * 6 + SEARCH_TARGETS))
    call = Call("search")
    dim = draw(st.sampled_from((1, 1, 2, 3, 4, 5, 8, 16)))
    n = draw(st.sampled_from((0, 1, 2, 3, 5, 8, 13, 21, 40, 64)))
    nq = draw(st.sampled_from((0, 1, 1, 2, 3, 6)))
    metric = draw(st.sampled_from(METRICS))
    X = draw_matrix(draw, "database", n, dim, bad=target == "database", metric=metric)
    Q = draw_matrix(draw, "queries", nq, dim, bad=target == "queries", one_d_ok=True, metric=metric)
    mark_matrix(call, "database", X, ("database", "queries") if X.why.startswith("shape") else None)
    mark_matrix(call, "queries", Q, ("queries", "query"))
    k, status, why = draw_k(draw, X.rows, target == "k")
    call.mark(status, "k", why)
    kwargs = {}
    metric_arg = metric
    if target == "metric":
        metric_arg = draw(st.sampled_from(METRIC_BAD))
        call.mark("bad", "metric", f"metric={metric_arg!r}")
    if metric_arg != "ip" or draw(st.booleans()):
        kwargs["metric"] = metric_arg
    rt, status, why = draw_recall(draw, target == "recall_target")
    kwargs["recall_target"] = rt
    call.mark(status, "recall_target", why, ("recall_target",))
    if target == "precision":
        kwargs["precision"] = draw(st.sampled_from(PRECISION_BAD))
        call.mark("bad", "precision", f"precision={kwargs['precision']!r}")
    elif draw(st.booleans()):
        kwargs["precision"] = draw(st.sampled_from(PRECISION_GOOD))
    if target == "rerank":
        label = draw(st.sampled_from(("0", "-1", "1.5", "True", "'2'")))
        kwargs["rerank"] = {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "'2'": "2"}[label]
        call.mark("bad", "rerank", f"rerank={label}")
    elif draw(st.integers(0, 3)) == 0:
        kwargs["rerank"] = draw(st.sampled_from((None, 1, 2, 5, 100)))
    if target == "max_memory":
        label = draw(st.sampled_from(("0", "-1", "1.5", "True", "None", "1", "100")))
        kwargs["max_memory"] = {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "None": None, "1": 1, "100": 100}[label]
        call.mark("awkward" if label in ("1", "100") else "bad", "max_memory", f"max_memory={label}")
    if target == "backend":
        kwargs["backend"] = draw(st.sampled_from(("cuda", "gpu", "TORCH", None, 1)))
        call.mark("bad", "backend", f"backend={kwargs['backend']!r}")
    elif draw(st.integers(0, 3)) == 0:
        kwargs["backend"] = draw(st.sampled_from(("auto", "torch")))
    call.repro = f"Q = {Q.desc}; X = {X.desc}; peakknn.search(Q, X, {k!r}, {_kw(kwargs)})"
    out = attempt(peakknn.search, Q.obj, X.obj, k, **kwargs)
    verdict = judge(F, call, out)
    for m, name in ((Q, "queries"), (X, "database")):
        if m.original is not None and not same_input(m.obj, m.original):
            F.add("search", f"modifies its {name} argument", call.repro)
    if verdict != "ok":
        return
    kinds = {Q.kind, X.kind}
    want_kind = kinds.pop() if len(kinds) == 1 and Q.kind in ("numpy", "torch") else None
    check_knn(F, call, out.value, Q.seen, X.seen, metric, int(k), exact=float(rt) >= 1.0, want_kind=want_kind, one_query=Q.one_d)


def test_search_fuzz():
    _search_example()
    FINDINGS["search"].check()


# --------------------------------------------------------------------------- ids


@dataclasses.dataclass
class Ids:
    obj: object
    desc: str
    values: list | None  # the ints as the index should read them
    status: str
    why: str


def _container(draw, values: list[int], purpose: str):
    """values in one of the containers users pass."""
    options = ["list", "list", "tuple", "np.int64", "torch.int64", "np.uint64"]
    if all(-(2**31) <= v < 2**31 for v in values):
        options += ["np.int32", "torch.int32"]
    if values and values == list(range(values[0], values[0] + len(values))):
        options += ["range"]
    if len(values) == 1:
        options += ["int", "np.int64 scalar"]
    if purpose == "allowed":
        options += ["set", "set", "frozenset", "generator", "dict keys"]
    if any(v < 0 for v in values):
        options = [o for o in options if o not in ("np.uint64",)]
    if any(v > 2**63 - 1 or v < -(2**63) for v in values):
        options = ["list", "tuple"] + (["set"] if purpose == "allowed" else [])
    choice = draw(st.sampled_from(options))
    make = {
        "list": lambda: list(values), "tuple": lambda: tuple(values),
        "np.int64": lambda: np.array(values, dtype=np.int64), "np.int32": lambda: np.array(values, dtype=np.int32),
        "np.uint64": lambda: np.array(values, dtype=np.uint64), "torch.int64": lambda: torch.tensor(values, dtype=torch.int64),
        "torch.int32": lambda: torch.tensor(values, dtype=torch.int32),
        "range": lambda: range(values[0], values[0] + len(values)) if values else range(0),
        "int": lambda: values[0], "np.int64 scalar": lambda: np.int64(values[0]),
        "set": lambda: set(values), "frozenset": lambda: frozenset(values), "generator": lambda: (v for v in values),
        "dict keys": lambda: dict.fromkeys(values).keys(),
    }  # fmt: skip
    text = {"list": f"{values}", "tuple": f"tuple({values})", "range": f"range({values[0] if values else 0}, {values[0] + len(values) if values else 0})", "int": f"{values[0] if values else ''}"}
    return make[choice](), text.get(choice, f"{choice}({values})")


def draw_ids(draw, purpose: str, present: list[int], count: int, bad: bool) -> Ids:
    """ids for add / upsert (count of them), remove / get, or an allowed_ids filter."""
    present_set = set(present)
    rng = np.random.default_rng(draw(st.integers(0, 2**20)))
    fresh_pool = [i for i in range(60 + len(present)) if i not in present_set] + [v for v in (1000, 2**40, 2**62, MAX_ID) if v not in present_set]

    def fresh(m):
        picks = rng.choice(len(fresh_pool), size=min(m, len(fresh_pool)), replace=False)
        return [int(fresh_pool[i]) for i in picks]

    if purpose in ("add", "upsert"):
        values = fresh(count)
        if purpose == "upsert" and present:
            for i in range(len(values)):
                if rng.random() < 0.5:
                    values[i] = int(rng.choice(present))
            values = list(dict.fromkeys(values))
            values += fresh(count - len(values))
            values = list(dict.fromkeys(values))[:count]
            while len(values) < count:
                values.append(fresh(1)[0] + 1000 * len(values))
    elif purpose in ("remove", "get"):
        m = min(len(present), draw(st.sampled_from((0, 1, 1, 2, 3))))
        values = [int(v) for v in rng.choice(present, size=m, replace=False)] if m else []
    else:
        m = draw(st.sampled_from((0, 1, 2, 3, 5, 8)))
        values = [int(rng.choice(present)) if present and rng.random() < 0.6 else int(rng.integers(0, 80)) for _ in range(m)]
    if not bad:
        obj, desc = _container(draw, values, purpose)
        return Ids(obj, desc, values, "ok", "")
    options = ["negative", "too big", "2**63", "2**64", "floats", "bools", "strings", "None entry", "nested", "not iterable"]
    if purpose in ("add", "upsert"):
        options += ["duplicate", "count"] + (["present"] if purpose == "add" and present else [])
    elif purpose in ("remove", "get"):
        options += ["unknown", "unknown", "duplicate"]
    label = draw(st.sampled_from(options))
    status = "bad"
    vals = list(values) if values else [int(fresh_pool[0])]
    if label == "negative":
        vals[0] = draw(st.sampled_from((-1, -(2**63))))
    elif label == "too big":
        vals[0] = 2**63 - 1
    elif label == "2**63":
        vals[0] = 2**63
    elif label == "2**64":
        vals[0] = 2**64
    elif label == "duplicate":
        vals = (vals + vals)[: max(2, len(vals))] if purpose in ("remove", "get") else [vals[0]] + vals[:-1] if len(vals) >= 2 else vals + vals
        if purpose in ("remove", "get") and all(v in present_set for v in vals):
            status = "awkward"
    elif label == "count":
        vals = list(values) + fresh(1) if draw(st.booleans()) or not values else list(values)[:-1]  # never the row count
    elif label == "present":
        vals[0] = present[0]
    elif label == "unknown":
        vals = vals + fresh(1)
    if purpose == "allowed" and label in ("negative", "too big", "2**63", "2**64"):
        status = "awkward"  # never stored: ignoring them is as good as refusing them
    if label in ("floats", "bools", "strings", "None entry", "nested", "not iterable"):
        obj = {
            "floats": lambda: draw(st.sampled_from(([float(v) for v in vals], np.array(vals, dtype=np.float64)))),
            "bools": lambda: draw(st.sampled_from(([True] * len(vals), np.ones(len(vals), dtype=bool), torch.ones(len(vals), dtype=torch.bool)))),
            "strings": lambda: [str(v) for v in vals],
            "None entry": lambda: [None] + vals[1:],
            "nested": lambda: [vals],
            "not iterable": lambda: draw(st.sampled_from((object(), 1.5, "abc"))),
        }[label]()
        if purpose == "allowed" and label == "nested" and not vals:
            obj = [[0]]
        return Ids(obj, repr(obj), None, status, label)
    obj, desc = _container(draw, vals, purpose)
    return Ids(obj, desc, vals, status, label)


# --------------------------------------------------------------------------- index models


class Model:
    """What an index should hold: id -> float64 vector (unit for cosine), the next automatic id."""

    def __init__(self, metric: str):
        self.metric = metric
        self.vectors: dict[int, np.ndarray] = {}
        self.next_id = 0

    def put(self, ids, rows64: np.ndarray) -> None:
        for i, row in zip(ids, rows64):
            if self.metric == "cos":
                row = row / np.linalg.norm(row)
            self.vectors[int(i)] = row
        if len(ids):
            self.next_id = max(self.next_id, max(int(i) for i in ids) + 1)

    def ids(self) -> list[int]:
        return sorted(self.vectors)

    def matrix(self, dim: int) -> np.ndarray:
        return np.array([self.vectors[i] for i in self.ids()], dtype=np.float64).reshape(-1, dim)


def _state(index, queries, search_kwargs: dict):
    """Everything a rejected call must leave as it was: len, ids, stored vectors, search results."""
    parts = [len(index)]
    ids = attempt(lambda: _np(index.ids).copy())
    parts.append(ids.value if ids.error is None else repr(ids.error))
    if ids.error is None and len(ids.value):
        got = attempt(index.get, ids.value)
        parts.append(_np(got.value).copy() if got.error is None else type(got.error).__name__)
    res = attempt(index.search, queries, max(1, len(index) + 1), **search_kwargs)
    if res.error is None:
        parts += [_np(res.value.ids).copy(), _np(res.value.scores).copy()]
    else:
        parts.append(type(res.error).__name__)
    return parts


def _same_state(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")):
                return False
        elif x != y:
            return False
    return True


@_quiet
def _check_model(F, call, index, model: Model, dim: int, queries, search_kwargs: dict, *, exact=True, exact_scores=True, vectors=True) -> None:
    """The index holds the model's ids and vectors, and an exact search agrees with the reference."""
    ids = _np(index.ids)
    if len(index) != len(model.vectors) or ids is None or ids.tolist() != model.ids():
        F.add(call.where, "wrong state: len / ids differ from the calls made", call.repro + f"  # ids {None if ids is None else ids.tolist()[:8]} vs {model.ids()[:8]}")
        return
    want = model.matrix(dim)
    if vectors and len(ids):
        got = attempt(index.get, ids)
        if got.error is not None:
            F.add(call.where, f"get of stored ids raises {type(got.error).__name__}: {got.error}", call.repro)
        elif not np.allclose(_np(got.value).astype(np.float64), want, rtol=1e-6, atol=1e-6 if model.metric == "cos" else 0.0):
            F.add(call.where, "wrong state: get returns other vectors than were stored", call.repro)
    res = attempt(index.search, queries, len(ids) + 1, **search_kwargs)
    if res.error is not None:
        if not (call.state and names(str(res.error), call.state)):
            F.add(call.where, f"search after the calls raises {type(res.error).__name__}: {res.error}", call.repro)
        return
    check_knn(F, call, res.value, _seen(queries), want, model.metric, len(ids) + 1, exact=exact, row_ids=ids, exact_scores=exact_scores, full=exact)


# --------------------------------------------------------------------------- Index

INDEX_OPS = ("add", "add", "add", "upsert", "upsert", "remove", "remove", "get", "search", "search", "search", "reserve", "contains")


def draw_contains(draw, present: list[int]):
    """(value, expected membership or None when either False or a TypeError / ValueError will do)."""
    choice = draw(st.sampled_from(("present", "unknown", "-1", "2**63-1", "2**64", "2**70", "np.int64", "1.5", "'a'", "None", "True")))
    if choice == "present" and present:
        return present[0], True
    if choice == "np.int64" and present:
        return np.int64(present[-1]), True
    value = {"unknown": 59_999, "-1": -1, "2**63-1": 2**63 - 1, "2**64": 2**64, "2**70": 2**70, "1.5": 1.5, "'a'": "a", "None": None, "True": True}.get(choice, 123_456)
    if choice in ("1.5", "'a'", "None", "True"):
        return value, None
    return value, int(value) in set(present)


def _contains_check(F, call, index, value, expected):
    out = attempt(lambda: value in index)
    if out.hung:
        F.add(call.where, "runs past the time limit", call.repro)
    elif out.error is not None:
        if expected is not None or not isinstance(out.error, (TypeError, ValueError)):
            F.add(call.where, f"`{value!r} in index` raises {type(out.error).__name__}: {out.error}", call.repro)
    elif expected is None:
        if out.value is not False and not (value is True and out.value is (1 in set(_np(index.ids).tolist()))):
            F.add(call.where, f"`{value!r} in index` returns {out.value!r}", call.repro)
    elif out.value is not expected:
        F.add(call.where, f"`{value!r} in index` returns {out.value!r}, expected {expected}", call.repro)


def _index_constructor(F, draw, dim, metric, precision, rt):
    target = draw(st.sampled_from(("dim", "metric", "precision", "dtype", "device", "recall_target", "seed")))
    kwargs = {"metric": metric, "precision": precision, "recall_target": rt}
    call = Call("Index()")
    if target == "dtype":  # the former name of precision: a DeprecationWarning, and errors name dtype
        del kwargs["precision"]
        kwargs["dtype"] = draw(st.sampled_from(PRECISION_BAD))
        call.mark("bad", "dtype", f"dtype={kwargs['dtype']!r}")
        call.allowed_warnings = ("DeprecationWarning",)
    if target == "dim":
        dim = draw(st.sampled_from((0, -1, 1.5, True, "8", None)))
        call.mark("bad", "dim", f"dim={dim!r}")
    elif target == "metric":
        kwargs["metric"] = draw(st.sampled_from(METRIC_BAD))
        call.mark("bad", "metric", f"metric={kwargs['metric']!r}")
    elif target == "precision":
        kwargs["precision"] = draw(st.sampled_from(PRECISION_BAD))
        call.mark("bad", "precision", f"precision={kwargs['precision']!r}")
    elif target == "device":
        kwargs["device"] = draw(st.sampled_from(("bogus", "cuda:99", 3.5) + (() if HAS_CUDA else ("cuda", "cuda:0"))))
        call.mark("bad", "device", f"device={kwargs['device']!r}")
    elif target == "recall_target":
        kwargs["recall_target"], status, why = draw_recall(draw, True)
        call.mark(status, "recall_target", why)
    else:
        kwargs["seed"] = draw(st.sampled_from(("x", 1.5, None, [1])))
        call.mark("bad", "seed", f"seed={kwargs['seed']!r}")
    call.repro = f"Index({dim!r}, {_kw(kwargs)})"
    judge(F, call, attempt(Index, dim, **kwargs))


@_fuzz("Index")
@given(st.data())
@counted("Index")
def _index_example(data):
    F = FINDINGS["Index"]
    draw = data.draw
    seed = draw(st.integers(0, 2**20))
    rng = np.random.default_rng(seed)
    dim = draw(st.sampled_from((1, 2, 3, 4, 6, 8, 8, 16)))
    metric = draw(st.sampled_from(METRICS))
    precision = draw(st.sampled_from(PRECISION_GOOD))
    rt = draw(st.sampled_from((0.95, 0.9, 0.5, 1.0)))
    if draw(st.integers(0, 7)) == 0:
        _index_constructor(F, draw, dim, metric, precision, rt)
        return
    n0 = draw(st.sampled_from((0, 0, 1, 2, 3, 5, 8, 13, 24, 40)))
    ids0 = None
    if draw(st.booleans()) and n0:
        ids0 = [int(v) for v in rng.choice(200, n0, replace=False)]
        if draw(st.integers(0, 3)) == 0:
            ids0[0] = draw(st.sampled_from((MAX_ID, 2**62, 2**40)))
    x0 = fuzz_rows(seed, n0, dim)
    setup = f"index = Index({dim}, metric={metric!r}, precision={precision!r}, recall_target={rt})"
    if n0:
        setup += f"; index.add(fuzz_rows({seed}, {n0}, {dim}), ids={ids0})"
    index = Index(dim, metric=metric, precision=precision, recall_target=rt)
    model = Model(metric)
    if n0:
        out = attempt(index.add, x0, ids=ids0)
        if out.error is not None:
            F.add("Index.add", f"rejects valid input: {type(out.error).__name__}: {out.error}", setup)
            return
        model.put(ids0 if ids0 is not None else list(range(n0)), x0.double().numpy())
    queries = fuzz_rows(seed + 1, 3, dim)
    exact_kw = {"recall_target": 1.0}
    steps = [setup]
    before = None
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(INDEX_OPS))
        if before is None:
            before = _state(index, queries, exact_kw)
        call, result, update = _index_op(draw, op, index, model, dim, metric, rt, steps)
        if call is None:
            continue
        out = attempt(*result)
        verdict = judge(F, call, out)
        if call.inputs is not None:
            for name, m in call.inputs:
                if m.original is not None and not same_input(m.obj, m.original):
                    F.add(call.where, f"modifies its {name} argument", call.repro)
        if verdict in ("rejected", "hung"):
            after = _state(index, queries, exact_kw)
            if not _same_state(before, after):
                F.add(call.where, "a rejected call changed the index", call.repro + f"  # {type(out.error).__name__}: {out.error}")
                return
            continue
        if verdict == "accepted_bad":
            return  # the model no longer knows what the index holds
        if update is not None and not update(F, call, out.value):
            return
        if op in ("add", "upsert", "remove", "reserve"):
            before = None
            if call.step:
                steps.append(call.step)
            _check_model(F, call, index, model, dim, queries, exact_kw)


def _index_op(draw, op, index, model: Model, dim, metric, rt, steps):
    """(Call, (fn, *args) or with kwargs, update(F, call, value) -> bool) for one generated operation."""
    present = model.ids()
    prefix = "; ".join(steps)
    kind = type(index).__name__
    call = Call(f"{kind}.{op}")
    call.inputs = None
    partitioned = isinstance(index, PartitionedIndex)
    if partitioned:
        call.state = STATE_PHRASES
    if op in ("add", "upsert"):
        target = draw(st.sampled_from(("none", "none", "none", "vectors", "ids")))
        rows = draw(st.sampled_from((0, 1, 1, 2, 3, 5)))
        V = draw_matrix(draw, "vectors", rows, dim, bad=target == "vectors", one_d_ok=True, metric=metric, awkward_ok=False)
        mark_matrix(call, "vectors", V)
        call.inputs = [("vectors", V)]
        if op == "add" and target != "ids" and draw(st.booleans()):
            I = Ids(None, "None", None, "ok", "")
            automatic = list(range(model.next_id, model.next_id + V.rows))
            if model.next_id + V.rows - 1 > MAX_ID:
                call.mark("bad", "ids", "automatic ids run out", ("ids", "id"))
        else:
            I = draw_ids(draw, op, present, V.rows, target == "ids")
            if I.status == "ok" and I.values is not None and op == "add" and set(I.values) & set(present):
                I.status, I.why = "bad", "present"
            call.mark(I.status, "ids", I.why, ("ids", "id"))
            automatic = None
        call.repro = f"{prefix}; index.{op}({V.desc}, ids={I.desc})"
        call.step = f"index.{op}({V.desc}, ids={I.desc})" if V.rows and V.seen is not None and V.seen.shape[0] else None

        def update(F, call, value):
            got = _np(value)
            want = automatic if automatic is not None else I.values
            if got is None or got.reshape(-1).tolist() != list(want):
                F.add(call.where, f"returns ids {None if got is None else got.tolist()}, expected {want}", call.repro)
                return False
            model.put(want, V.seen)
            return True

        return call, (getattr(index, op), V.obj, I.obj), update
    if op in ("remove", "get"):
        I = draw_ids(draw, op, present, 0, draw(st.integers(0, 2)) == 0)
        call.mark(I.status, "ids", I.why, ("ids", "id"))
        call.repro = f"{prefix}; index.{op}({I.desc})"
        call.step = f"index.{op}({I.desc})" if I.values else None
        if partitioned and op == "get" and not index.settings.keep_vectors and I.values:
            call.awkward.append(Mark("ids", "keep_vectors=False", ("keep_vectors", "vectors")))

        def update(F, call, value):
            if op == "remove":
                for i in set(I.values):
                    del model.vectors[int(i)]
                return True
            got = _np(value)
            want = np.array([model.vectors[int(i)] for i in I.values]).reshape(-1, dim)
            if got is None or got.shape != want.shape or not np.allclose(got.astype(np.float64), want, rtol=1e-6, atol=1e-6 if metric == "cos" else 0.0):
                F.add(call.where, "returns other vectors than were stored", call.repro)
            return True

        return call, (getattr(index, op), I.obj), update
    if op == "reserve":
        good = draw(st.booleans())
        capacity = draw(st.sampled_from((0, 1, 10, 100, 2000))) if good else draw(st.sampled_from((-1, 1.5, True, "10", None)))
        call.mark("ok" if good else "bad", "capacity", f"capacity={capacity!r}")
        call.repro = f"{prefix}; index.reserve({capacity!r})"
        call.step = f"index.reserve({capacity!r})"
        return call, (index.reserve, capacity), None
    if op == "contains":
        value, expected = draw_contains(draw, present)
        call.repro = f"{prefix}; {value!r} in index"
        _contains_check(FINDINGS[kind if kind == "Index" else "PartitionedIndex"], call, index, value, expected)
        return None, None, None
    # search
    target = draw(st.sampled_from(("none",) * 5 + ("queries", "k", "recall_target", "allowed_ids", "rerank", "max_memory", "backend")))
    nq = draw(st.sampled_from((0, 1, 1, 2, 3)))
    Q = draw_matrix(draw, "queries", nq, dim, bad=target == "queries", one_d_ok=True, metric=metric)
    mark_matrix(call, "queries", Q, ("queries", "query"))
    call.inputs = [("queries", Q)]
    k, status, why = draw_k(draw, len(present), target == "k")
    call.mark(status, "k", why)
    kwargs = {}
    if target == "recall_target" or draw(st.booleans()):
        kwargs["recall_target"], status, why = draw_recall(draw, target == "recall_target", good=(None,) + RECALL_GOOD)
        call.mark(status, "recall_target", why)
    allowed = None
    if target == "allowed_ids" or draw(st.integers(0, 2)) == 0:
        A = draw_ids(draw, "allowed", present, 0, target == "allowed_ids")
        call.mark(A.status, "allowed_ids", A.why, ("allowed_ids", "allowed"))
        kwargs["allowed_ids"] = A.obj
        if A.values is not None:
            allowed = sorted({v for v in A.values if v in set(present)})
        desc_allowed = A.desc
    if target == "rerank":
        label = draw(st.sampled_from(("0", "-1", "1.5", "True")))
        kwargs["rerank"] = {"0": 0, "-1": -1, "1.5": 1.5, "True": True}[label]
        call.mark("bad", "rerank", f"rerank={label}")
    elif draw(st.integers(0, 4)) == 0:
        kwargs["rerank"] = draw(st.sampled_from((None, 1, 4, 50)))
    if target == "max_memory":
        label = draw(st.sampled_from(("0", "-1", "1.5", "None", "1", "100")))
        kwargs["max_memory"] = {"0": 0, "-1": -1, "1.5": 1.5, "None": None, "1": 1, "100": 100}[label]
        call.mark("awkward" if label in ("1", "100") else "bad", "max_memory", f"max_memory={label}")
    exact = False
    full = True
    if partitioned:
        exact, full = _partitioned_search_args(draw, call, index, kwargs, target, len(present))
    elif target == "backend":
        kwargs["backend"] = draw(st.sampled_from(("cuda", "gpu", None)))
        call.mark("bad", "backend", f"backend={kwargs['backend']!r}")
    else:
        r = kwargs.get("recall_target")
        exact = float(rt if r is None else r) >= 1.0
    shown = {key: (desc_allowed if key == "allowed_ids" else value) for key, value in kwargs.items()}
    call.repro = f"{prefix}; index.search({Q.desc}, {k!r}, {', '.join(f'{a}={b}' if a == 'allowed_ids' else f'{a}={b!r}' for a, b in shown.items())})"
    call.step = "(search)"

    def update(F, call, value):
        rows = model.ids()
        allowed_rows = None if allowed is None else [rows.index(v) for v in allowed]
        keep = not partitioned or index.settings.keep_vectors
        want_kind = Q.kind if Q.kind in ("numpy", "torch") else None
        check_knn(F, call, value, Q.seen, model.matrix(dim), metric, int(k), exact=exact and keep, allowed_rows=allowed_rows, row_ids=rows, exact_scores=keep, full=full, want_kind=want_kind, one_query=Q.one_d)
        return True

    return call, (lambda: index.search(Q.obj, k, **kwargs),), update


def test_index_fuzz():
    _index_example()
    FINDINGS["Index"].check()


# --------------------------------------------------------------------------- PartitionedIndex

POOL = (
    {"dim": 4, "metric": "ip", "rows": 48, "settings": {"partitions": 4, "train_size": None}},
    {"dim": 6, "metric": "l2", "rows": 40, "settings": {"partitions": 3, "codes": "int8", "train_size": None}},
    {"dim": 8, "metric": "cos", "rows": 56, "settings": {"partitions": 4, "codes": "pq4", "train_size": None}},
    {"dim": 2, "metric": "l2", "rows": 30, "settings": {"partitions": 2, "codes": "pq4", "block_dims": 1, "threshold": None, "train_size": None}},
    {"dim": 5, "metric": "ip", "rows": 40, "settings": {"partitions": 4, "keep_vectors": False, "train_size": None}},
    {"dim": 8, "metric": "l2", "rows": 50, "settings": {"partitions": 4, "codes": "int8", "scan_dims": 4, "train_size": None}},
    {"dim": 3, "metric": "cos", "rows": 20, "settings": {"partitions": 1, "spill": False, "train_size": None}},
    {"dim": 4, "metric": "ip", "rows": 30, "settings": {"partitions": None, "train_size": None}},
    {"dim": 4, "metric": "l2", "rows": 20, "settings": {"partitions": 4, "train_size": 40}, "train": False},
    {"dim": 7, "metric": "ip", "rows": 0, "settings": {"partitions": 8, "train_size": None}, "sample": 40},
    {"dim": 1, "metric": "l2", "rows": 24, "settings": {"partitions": 2, "train_size": None}},
)
STATE_PHRASES = ("train", "trained", "calibration", "calibrate", "calibrated", "keep_vectors", "compressed", "empty")  # errors an index's state justifies
PART_OPS = ("add", "add", "upsert", "remove", "remove", "get", "search", "search", "search", "search", "train", "calibrate", "probe_for", "contains")
_POOL: dict[int, dict] = {}


def _pool_base(i: int) -> dict:
    """POOL[i] built once and saved; each example loads a fresh copy (1 ms) with the model of its rows."""
    entry = _POOL.get(i)
    if entry is not None:
        return entry
    cfg = POOL[i]
    index = PartitionedIndex(cfg["dim"], metric=cfg["metric"], settings=PartitionSettings(**cfg["settings"]))
    x = fuzz_rows(100 + i, cfg["rows"], cfg["dim"])
    model = Model(cfg["metric"])
    setup = f"index = PartitionedIndex({cfg['dim']}, metric={cfg['metric']!r}, settings=PartitionSettings({_kw(cfg['settings'])}))"
    if cfg["rows"]:
        index.add(x)
        model.put(list(range(cfg["rows"])), x.double().numpy())
        setup += f"; index.add(fuzz_rows({100 + i}, {cfg['rows']}, {cfg['dim']}))"
    if cfg.get("sample"):
        index.train(fuzz_rows(200 + i, cfg["sample"], cfg["dim"]))
        setup += f"; index.train(fuzz_rows({200 + i}, {cfg['sample']}, {cfg['dim']}))"
    elif cfg.get("train", True):
        index.train()
        setup += "; index.train()"
    if index.is_trained and index.settings.keep_vectors and len(index) >= 3:
        index.calibrate()  # saved with the index: searches with a recall_target need not measure again
        setup += "; index.calibrate()"
    queries = fuzz_rows(300 + i, 3, cfg["dim"])
    folder = scratch() / f"pool-{i}"
    index.save(folder)
    loaded = PartitionedIndex.load(folder)
    entry = {"folder": folder, "model": model, "setup": setup, "queries": queries, "state": _state(loaded, queries, _exact_kwargs(loaded))}
    if not _same_state(_state(index, queries, _exact_kwargs(index)), entry["state"]):
        FINDINGS["PartitionedIndex"].add("PartitionedIndex.load", "a loaded index searches differently from the saved one", setup + "; index.save(p); PartitionedIndex.load(p)")
    _POOL[i] = entry
    return entry


def _exact_kwargs(index) -> dict:
    partitions = index.settings.partitions or 1
    return {"probe": max(1, partitions), "adaptive": False, "rerank": 4 * (len(index) + 8)}


def _partitioned_search_args(draw, call, index, kwargs, target, n) -> tuple[bool, bool]:
    """Adds probe / rerank / adaptive / recall_target to kwargs; returns (exact, full)."""
    partitions = index.settings.partitions or 1
    if target == "backend":  # no backend argument here: a bad probe instead
        target = "probe"
    mode = draw(st.sampled_from(("exact", "exact", "probe", "default", "recall")))
    if "recall_target" in kwargs and kwargs["recall_target"] is None:
        del kwargs["recall_target"]
    if target == "recall_target":
        mode = "recall"
    if target == "rerank":
        mode = "probe"
    if mode == "exact":
        kwargs.update(probe=partitions + draw(st.sampled_from((0, 0, 1, 100))), adaptive=False)
        if "rerank" not in kwargs:
            kwargs["rerank"] = 4 * (n + 8)
        kwargs.pop("recall_target", None)
    elif mode == "probe":
        kwargs["probe"] = draw(st.sampled_from((1, 2, partitions, 10**6)))
        if draw(st.booleans()):
            kwargs["adaptive"] = draw(st.booleans())
        kwargs.pop("recall_target", None)
    elif mode == "recall":
        if "recall_target" not in kwargs:
            kwargs["recall_target"] = draw(st.sampled_from((0.5, 0.9, 0.99, 1.0)))
        kwargs.pop("probe", None)
    else:
        kwargs.pop("recall_target", None)
    if target == "probe":
        label = draw(st.sampled_from(("0", "-1", "1.5", "True", "'2'")))
        kwargs["probe"] = {"0": 0, "-1": -1, "1.5": 1.5, "True": True, "'2'": "2"}[label]
        kwargs.pop("recall_target", None)
        call.mark("bad", "probe", f"probe={label}")
    elif draw(st.integers(0, 9)) == 0:
        label = draw(st.sampled_from(("adaptive='yes'", "probe and recall_target")))
        if label == "adaptive='yes'":
            kwargs["adaptive"] = "yes"
            call.mark("bad", "adaptive", label)
        else:
            kwargs.update(probe=2, recall_target=0.9)
            call.mark("bad", "probe", label, ("probe", "recall_target"))
        mode = "bad"
    exact = mode == "exact" and (kwargs.get("rerank") or 0) >= 4 * (n + 8) and kwargs.get("adaptive") is False
    return exact, exact


@_fuzz("PartitionedIndex")
@given(st.data())
@counted("PartitionedIndex")
def _partitioned_example(data):
    F = FINDINGS["PartitionedIndex"]
    draw = data.draw
    if draw(st.integers(0, 9)) == 0:
        _partitioned_constructor(F, draw)
        return
    i = draw(st.integers(0, len(POOL) - 1))
    base = _pool_base(i)
    index = PartitionedIndex.load(base["folder"])
    model = copy.deepcopy(base["model"])
    dim, metric, queries = POOL[i]["dim"], POOL[i]["metric"], base["queries"]
    steps = [base["setup"]]
    before = base["state"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(PART_OPS))
        if before is None:
            before = _state(index, queries, _exact_kwargs(index))
        if op in ("train", "calibrate", "probe_for"):
            call, fn, update = _partitioned_special(draw, op, index, model, dim, metric, steps)
        else:
            call, fn, update = _index_op(draw, op, index, model, dim, metric, 0.95, steps)
        if call is None:
            continue
        out = attempt(*fn)
        verdict = judge(F, call, out)
        for name, m in getattr(call, "inputs", None) or ():
            if m.original is not None and not same_input(m.obj, m.original):
                F.add(call.where, f"modifies its {name} argument", call.repro)
        if verdict in ("rejected", "hung"):
            after = _state(index, queries, _exact_kwargs(index))
            if not _same_state(before, after):
                F.add(call.where, "a rejected call changed the index", call.repro + f"  # {type(out.error).__name__}: {out.error}")
                return
            continue
        if verdict == "accepted_bad" or (update is not None and not update(F, call, out.value)):
            return  # the model no longer knows what the index holds
        if op in ("add", "upsert", "remove", "train"):
            before = None
            if call.step:
                steps.append(call.step)
            if index.is_trained:
                keep = index.settings.keep_vectors
                _check_model(F, call, index, model, dim, queries, _exact_kwargs(index), exact=keep, exact_scores=keep, vectors=keep)


def _partitioned_special(draw, op, index, model: Model, dim, metric, steps):
    prefix = "; ".join(steps)
    call = Call(f"PartitionedIndex.{op}")
    call.state = STATE_PHRASES + ("rows",)
    call.inputs = None
    if op == "train":
        mode = draw(st.sampled_from(("stored", "sample", "sample", "bad sample")))
        if mode == "stored":
            call.repro = f"{prefix}; index.train()"
            call.step = "index.train()"
            fn = (index.train,)
            S = None
        else:
            rows = draw(st.sampled_from((1, 2, 3, 8, 24, 48)))
            S = draw_matrix(draw, "sample", rows, dim, bad=mode == "bad sample", one_d_ok=True, metric=metric, awkward_ok=False)
            if S.obj is not None:  # train(None) trains on the stored rows
                mark_matrix(call, "sample", S)
            if S.status == "ok" and S.rows < (index.settings.partitions or 1):
                call.mark("awkward", "sample", f"{S.rows} rows for {index.settings.partitions} partitions", ("sample", "rows", "partitions"))
            call.inputs = [("sample", S)]
            call.repro = f"{prefix}; index.train({S.desc})"
            call.step = f"index.train({S.desc})"
            fn = (index.train, S.obj)
        return call, fn, None
    if op == "calibrate":
        call.repro = f"{prefix}; index.calibrate()"
        return call, (index.calibrate,), None
    # probe_for
    bad = draw(st.sampled_from(("none", "none", "recall_target", "k")))
    rt, status, why = draw_recall(draw, bad == "recall_target")
    call.mark(status, "recall_target", why)
    k, status, why = draw_k(draw, len(model.vectors), bad == "k")
    call.mark(status, "k", why)
    call.repro = f"{prefix}; index.probe_for({rt!r}, {k!r})"

    def update(F, call, value):
        top = index.settings.partitions or 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= max(top, 1):
            F.add(call.where, f"returns {value!r}, not a probe in [1, partitions={top}]", call.repro)
        return True

    return call, (index.probe_for, rt, k), update


def _partitioned_constructor(F, draw):
    target = draw(st.sampled_from(("dim", "metric", "settings", "search_settings", "device", "block_dims", "scan_dims")))
    dim = 4
    kwargs = {}
    call = Call("PartitionedIndex()")
    if target == "dim":
        dim = draw(st.sampled_from((0, -1, 1.5, True, "8", None)))
        call.mark("bad", "dim", f"dim={dim!r}")
    elif target == "metric":
        kwargs["metric"] = draw(st.sampled_from(METRIC_BAD))
        call.mark("bad", "metric", f"metric={kwargs['metric']!r}")
    elif target == "settings":
        kwargs["settings"] = draw(st.sampled_from(({"partitions": 4}, "pq4", SearchSettings(), 4)))
        call.mark("bad", "settings", f"settings={kwargs['settings']!r}")
    elif target == "search_settings":
        kwargs["search_settings"] = draw(st.sampled_from(({"probe": 4}, PartitionSettings(), 16)))
        call.mark("bad", "search_settings", f"search_settings={kwargs['search_settings']!r}")
    elif target == "device":
        kwargs["device"] = draw(st.sampled_from(("bogus", "cuda:99", 3.5) + (() if HAS_CUDA else ("cuda",))))
        call.mark("bad", "device", f"device={kwargs['device']!r}")
    elif target == "block_dims":
        dim = 5
        kwargs["settings"] = PartitionSettings(codes="pq4", block_dims=2)
        call.mark("bad", "block_dims", "block_dims=2 does not divide dim=5")
    else:
        dim = 3
        kwargs["settings"] = PartitionSettings(scan_dims=4)
        call.mark("bad", "scan_dims", "scan_dims=4 > dim=3")
    call.repro = f"PartitionedIndex({dim!r}, {_kw(kwargs)})"
    judge(F, call, attempt(PartitionedIndex, dim, **kwargs))


def test_partitioned_index_fuzz():
    _partitioned_example()
    FINDINGS["PartitionedIndex"].check()


# --------------------------------------------------------------------------- settings

SETTING_VALUES = {  # field: (good values, bad values, awkward values)
    "partitions": ((None, 1, 2, 4, np.int64(3)), (0, -1, 1.5, "4", True), ()),
    "codes": (("bf16", "int8", "pq4"), ("pq8", "", None, "BF16", 4), ()),
    "block_dims": ((1, 2), (0, -1, 1.5, None, "2"), ()),
    "threshold": ((None, 0.2, 0.5, 0.999), (0.0, 1.0, -0.1, NAN, 1.5, "x"), ()),
    "anisotropic_partitions": ((False, True), (), ("yes", None, 2)),
    "keep_vectors": ((True, False), (), ("no", None, 2)),
    "scan_dims": ((None, "auto", 1, 2), (0, -1, "x", 1.5, "all"), ()),
    "spill": ((None, True, False), (1, "yes", 0.0), ()),
    "train_size": ((None, 1, 32, 64), (0, -2, 1.5, "10", True), ()),
    "iters": ((1, 3, 10), (0, -1, 1.5, None, True), ()),
    "seed": ((0, 1, 12345, np.int64(3)), ("x", 1.5, None), (-1,)),
}
SEARCH_SETTING_VALUES = {
    "probe": ((1, 2, 16, 1000), (0, -1, 1.5, None, True), ()),
    "rerank": ((None, 1, 10), (0, -1, 1.5, True), ()),
    "adaptive": ((True, False), ("yes", 1, None), ()),
}


@_fuzz("settings")
@given(st.data())
@counted("settings")
def _settings_example(data):
    F = FINDINGS["settings"]
    draw = data.draw
    fields = list(SETTING_VALUES) + list(SEARCH_SETTING_VALUES)
    target = draw(st.sampled_from(["none"] * 6 + fields))
    dim = draw(st.sampled_from((1, 2, 3, 4, 6, 8)))
    metric = draw(st.sampled_from(METRICS))
    kw, skw = {}, {}
    call = Call("PartitionSettings")
    scall = Call("SearchSettings")
    for table, into, c in ((SETTING_VALUES, kw, call), (SEARCH_SETTING_VALUES, skw, scall)):
        for field, (good, bad_values, awkward) in table.items():
            if field == target:
                status, value = draw(st.sampled_from([("bad", v) for v in bad_values] + [("awkward", v) for v in awkward]))
                into[field] = value
                c.mark(status, field, f"{field}={value!r}")
            elif draw(st.integers(0, 2)) == 0:
                into[field] = draw(st.sampled_from(good))
    # dependencies between fields
    codes = kw.get("codes", "bf16")
    keep = kw.get("keep_vectors", True)
    sd = kw.get("scan_dims", "auto")
    if isinstance(sd, int) and not isinstance(sd, bool) and sd >= 1 and (codes == "pq4" or keep is not True):
        status = "bad" if codes == "pq4" or keep is False else "awkward"  # keep_vectors='no' may read as True
        call.mark(status, "scan_dims", f"scan_dims={sd} with codes={codes!r}, keep_vectors={keep!r}")
    ts, parts = kw.get("train_size", -1), kw.get("partitions")
    if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 1:  # training needs a row per partition, 16 for pq4
        least = max(parts if isinstance(parts, (int, np.integer)) and not isinstance(parts, bool) and parts >= 1 else 1, 16 if codes == "pq4" else 1)
        if ts < least:
            call.mark("bad", "train_size", f"train_size={ts} below {least} rows")
    call.repro = f"PartitionSettings({_kw(kw)})"
    out = attempt(PartitionSettings, **kw)
    if judge(F, call, out) != "ok":
        return
    s = out.value
    scall.repro = f"SearchSettings({_kw(skw)})"
    out = attempt(SearchSettings, **skw)
    if judge(F, scall, out) != "ok":
        return
    ss = out.value
    icall = Call("PartitionedIndex(settings)")
    icall.awkward = call.awkward + scall.awkward
    if s.codes == "pq4" and dim % s.block_dims:
        icall.mark("bad", "block_dims", f"block_dims={s.block_dims} does not divide dim={dim}")
    if isinstance(s.scan_dims, int) and s.scan_dims > dim:
        icall.mark("bad", "scan_dims", f"scan_dims={s.scan_dims} > dim={dim}")
    icall.repro = f"index = PartitionedIndex({dim}, metric={metric!r}, settings=PartitionSettings({_kw(kw)}), search_settings=SearchSettings({_kw(skw)}))"
    out = attempt(PartitionedIndex, dim, metric=metric, settings=s, search_settings=ss)
    if judge(F, icall, out) != "ok" or draw(st.integers(0, 2)):
        return
    index = out.value
    n = draw(st.sampled_from((24, 40, 48)))
    seed = draw(st.integers(0, 2**16))
    x, q = fuzz_rows(seed, n, dim), fuzz_rows(seed + 1, 3, dim)
    use = Call("PartitionedIndex(settings) in use")
    use.awkward = icall.awkward
    use.state = STATE_PHRASES
    use.repro = icall.repro + f"; index.add(fuzz_rows({seed}, {n}, {dim})); index.train(); index.search(fuzz_rows({seed + 1}, 3, {dim}), 3, **exact)"

    def run():
        index.add(x)
        if not index.is_trained:
            index.train()
        res = index.search(q, 3, **_exact_kwargs(index))
        res2 = index.search(q, 3, recall_target=0.9)
        return res, res2

    out = attempt(run)
    if judge(F, use, out) != "ok":
        return
    model = Model(metric)
    model.put(list(range(n)), x.double().numpy())
    for res, exact in zip(out.value, (True, False)):
        check_knn(F, use, res, q.double().numpy(), model.matrix(dim), metric, 3, exact=exact and s.keep_vectors, exact_scores=s.keep_vectors, full=exact)


def test_settings_fuzz():
    _settings_example()
    FINDINGS["settings"].check()


# --------------------------------------------------------------------------- load

_SCRATCH: list[Path] = []
_SERIAL = itertools.count()  # names of per-example folders


def scratch() -> Path:
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="peakknn-fuzz-")))
    return _SCRATCH[0]


@dataclasses.dataclass
class Base:
    folder: Path
    kind: str  # flat | partitioned
    expected: list | None = None


_BASES: dict[str, Base] = {}


def _loaded_state(index, kind):
    q = fuzz_rows(7, 3, index.dim)
    kwargs = {"recall_target": 1.0} if kind == "flat" else _exact_kwargs(index)
    if kind == "partitioned" and not index.is_trained:
        return [len(index), _np(index.ids).copy()]
    return _state(index, q, kwargs)


def _load_bases() -> dict[str, Base]:
    if _BASES:
        return _BASES
    root = scratch() / "load-bases"
    root.mkdir(parents=True, exist_ok=True)
    flat = (("flat-ip", 6, "ip", "bf16", 30, 0), ("flat-l2", 3, "l2", "fp32", 20, 5), ("flat-cos", 4, "cos", "bf16", 10, 0), ("flat-empty", 5, "ip", "bf16", 0, 0), ("flat-16", 16, "l2", "bf16", 24, 2))
    for name, dim, metric, precision, n, removed in flat:
        index = Index(dim, metric=metric, precision=precision)
        if n:
            index.add(fuzz_rows(n, n, dim))
        if removed:
            index.remove(list(range(removed)))
        index.save(root / name)
        _BASES[name] = Base(root / name, "flat", _loaded_state(index, "flat"))
    part = (
        ("part-bf16", 4, "ip", {"partitions": 4, "train_size": None}, 40, "train"),
        ("part-int8", 6, "l2", {"partitions": 2, "codes": "int8", "train_size": None}, 30, "train"),
        ("part-pq4", 4, "cos", {"partitions": 2, "codes": "pq4", "keep_vectors": False, "train_size": None}, 30, "train"),
        ("part-untrained", 3, "ip", {"partitions": 4, "train_size": None}, 10, None),
        ("part-calibrated", 4, "l2", {"partitions": 4, "train_size": None}, 40, "calibrate"),
    )
    for name, dim, metric, s, n, how in part:
        index = PartitionedIndex(dim, metric=metric, settings=PartitionSettings(**s))
        index.add(fuzz_rows(n, n, dim))
        if how:
            index.train()
        if how == "calibrate":
            index.calibrate()
        index.save(root / name)
        _BASES[name] = Base(root / name, "partitioned", _loaded_state(index, "partitioned"))
    for folder in sorted(FIXTURES.glob("v0.1.0-*")):
        if folder.is_dir() and (folder / "manifest.json").is_file():
            dest = root / folder.name
            shutil.copytree(folder, dest)
            fmt = json.loads((dest / "manifest.json").read_text())["format"]
            kind = "flat" if fmt == "peakknn.index" else "partitioned"
            loaded = (Index if kind == "flat" else PartitionedIndex).load(dest)
            _BASES[folder.name] = Base(dest, kind, _loaded_state(loaded, kind))
    return _BASES


def _digest(manifest: dict) -> str:
    """The manifest checksum (docs/ARCHITECTURE.md): SHA-256 of the other fields as canonical JSON."""
    fields = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(folder: Path, manifest: dict, sign: bool, signed: bool) -> None:
    if sign and signed:
        manifest["manifest_sha256"] = _digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


FIELD_VALUES = (-1, 0, 1, 2, 3, 2**31, 2**63, -(2**63), 1.5, "x", "", None, True, False, [], {}, "ip", "l2", "cos", "bf16", "fp32", "pq4", 0.5)
CORRUPTIONS = {  # op: what loading the result must do
    "clean": "clean", "extra file": "clean", "no lock file": "clean",
    "flip arrays bytes": "reject", "truncate arrays": "reject", "append to arrays": "reject", "delete arrays": "reject",
    "arrays is a directory": "reject", "delete manifest": "reject", "manifest is a directory": "reject",
    "truncate manifest": "reject", "garbage manifest": "reject",
    "flip manifest byte": "either", "edit field": "either", "edit field unsigned": "either", "edit array": "either",
    "missing path": "reject", "path is a file": "reject", "path type": "reject", "bad device": "reject",
}  # fmt: skip


def _corrupt(folder: Path, op: str, rng, draw) -> tuple[object, str, str]:
    """Apply op to a copy of a saved folder; returns (path to pass, status, what was done)."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    signed = "manifest_sha256" in manifest
    arrays = folder / str(manifest.get("arrays"))
    status = CORRUPTIONS[op]
    what = op
    if op == "extra file":
        (folder / "notes.txt").write_text("hello")
    elif op == "no lock file":
        (folder / ".peakknn-lock").unlink(missing_ok=True)
    elif op == "flip arrays bytes":
        blob = bytearray(arrays.read_bytes())
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, len(blob)))
            blob[j] ^= int(rng.integers(1, 256))
        arrays.write_bytes(bytes(blob))
    elif op == "truncate arrays":
        blob = arrays.read_bytes()
        arrays.write_bytes(blob[: int(rng.integers(0, len(blob)))])
    elif op == "append to arrays":
        arrays.write_bytes(arrays.read_bytes() + b"\x00junk")
    elif op == "delete arrays":
        arrays.unlink()
    elif op == "arrays is a directory":
        arrays.unlink()
        arrays.mkdir()
    elif op == "delete manifest":
        manifest_path.unlink()
    elif op == "manifest is a directory":
        manifest_path.unlink()
        manifest_path.mkdir()
    elif op == "truncate manifest":
        text = manifest_path.read_bytes()
        manifest_path.write_bytes(text[: int(rng.integers(0, len(text)))])
    elif op == "garbage manifest":
        junk = draw(st.sampled_from(("", "[]", "null", "{}", "\x00\xff", '{"format": "peakknn.index"}', "not json", '"a string"', "1e999")))
        manifest_path.write_bytes(junk.encode("latin-1"))
        what = f"manifest.json = {junk!r}"
    elif op == "flip manifest byte":
        blob = bytearray(manifest_path.read_bytes())
        j = int(rng.integers(0, len(blob)))
        blob[j] ^= int(rng.integers(1, 256))
        manifest_path.write_bytes(bytes(blob))
        if signed:
            try:
                status = "either" if json.loads(bytes(blob)) == manifest else "reject"
            except ValueError:
                status = "reject"
        what = f"byte {j} of manifest.json flipped"
    elif op in ("edit field", "edit field unsigned"):
        key = draw(st.sampled_from(sorted(manifest)))
        target = manifest
        if isinstance(manifest[key], dict) and manifest[key] and draw(st.booleans()):
            target = manifest[key]
            key = draw(st.sampled_from(sorted(target)))
        if draw(st.integers(0, 5)) == 0:
            del target[key]
            what = f"{op}: delete {key!r}"
        else:
            value = draw(st.sampled_from(FIELD_VALUES))
            target[key] = value
            what = f"{op}: {key!r} = {value!r}"
        what += f" [{key}]"
        _write_manifest(folder, manifest, op == "edit field", signed)
        if op == "edit field unsigned" and signed:
            status = "reject"
    elif op == "edit array":
        from safetensors.torch import load, save

        tensors = load(arrays.read_bytes())
        name = draw(st.sampled_from(sorted(tensors)))
        t = tensors[name].clone()
        change = draw(st.sampled_from(("nan", "inf", "negative", "huge", "duplicate", "out of range", "dtype", "drop row", "add row", "reshape", "empty", "delete", "extra", "scale")))
        flat = t.reshape(-1)
        j = int(rng.integers(0, max(1, flat.numel())))
        if change in ("nan", "inf") and t.is_floating_point() and flat.numel():
            flat[j] = NAN if change == "nan" else INF
        elif change == "negative" and flat.numel():
            flat[j] = _fits(t, -1)
        elif change == "huge" and flat.numel():
            flat[j] = _fits(t, 2**62) if not t.is_floating_point() else 1e30
        elif change == "duplicate" and flat.numel() >= 2:
            flat[j] = flat[(j + 1) % flat.numel()]
        elif change == "out of range" and flat.numel() and not t.is_floating_point():
            flat[j] = _fits(t, t.shape[0] + int(rng.integers(0, 3000)))
        elif change == "dtype":
            t = t.to(torch.float64 if t.is_floating_point() and t.dtype != torch.float64 else torch.int32 if not t.is_floating_point() else torch.float32)
        elif change == "drop row" and t.ndim and t.shape[0]:
            t = t[:-1]
        elif change == "add row" and t.ndim and t.shape[0]:
            t = torch.cat([t, t[-1:]])
        elif change == "reshape":
            t = t.reshape(-1) if t.ndim > 1 else t.reshape(-1, 1)
        elif change == "empty":
            t = t[:0]
        elif change == "scale" and t.is_floating_point():
            t = t * float(rng.choice([-1.0, 0.0, 1e-30, 1e30]))
        if change == "delete":
            del tensors[name]
        elif change == "extra":
            tensors["junk"] = torch.zeros(3)
        else:
            tensors[name] = t.contiguous()
        blob = save(tensors)
        arrays.write_bytes(blob)
        manifest["sha256"] = hashlib.sha256(blob).hexdigest()
        _write_manifest(folder, manifest, True, signed)
        what = f"edit array {name!r}: {change} (re-hashed) [{name}]"
    elif op == "missing path":
        return folder / "nope", status, what
    elif op == "path is a file":
        return folder / "manifest.json", status, what
    elif op == "path type":
        value = draw(st.sampled_from((None, 5, 1.5, ["a"])))
        return value, status, f"path={value!r}"
    return folder, status, what


def _fits(t: torch.Tensor, value: int) -> int:
    """value clamped to the range of t's integer dtype (uint8 codes cannot hold -1)."""
    if t.is_floating_point() or t.dtype == torch.bool:
        return value
    info = torch.iinfo(t.dtype)
    return max(info.min, min(info.max, value))


def _loaders():
    out = [("Index.load", Index.load, "flat"), ("PartitionedIndex.load", PartitionedIndex.load, "partitioned")]
    load_any = getattr(peakknn, "load", None)
    if load_any is not None:
        out.append(("peakknn.load", load_any, "any"))
    return out


@_fuzz("load")
@given(st.data())
@counted("load")
def _load_example(data):
    F = FINDINGS["load"]
    draw = data.draw
    bases = _load_bases()
    base_name = draw(st.sampled_from(sorted(bases)))
    base = bases[base_name]
    op = draw(st.sampled_from(sorted(CORRUPTIONS) + ["clean", "edit field", "edit array", "edit array", "flip arrays bytes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**20)))
    loaders = _loaders()
    right = [entry for entry in loaders if entry[2] in (base.kind, "any")]
    wrong = [entry for entry in loaders if entry[2] not in (base.kind, "any")]
    use_wrong = draw(st.integers(0, 6)) == 0
    loader_name, loader, _ = draw(st.sampled_from(wrong if use_wrong else right))
    folder = scratch() / f"case-{next(_SERIAL)}"
    shutil.copytree(base.folder, folder)
    try:
        path, status, what = _corrupt(folder, op, rng, draw)
        kwargs = {}
        call = Call(f"{loader_name}")
        tokens = (folder.name, "path", "manifest") if op == "path type" else (folder.name,)
        field = re.search(r"\[(\w+)\]$", what)
        if field:  # an edited field or array may be named instead of the file
            tokens += (field.group(1),)
        if op == "bad device":
            kwargs["device"] = draw(st.sampled_from(("bogus", "cuda:99", 7) + (() if HAS_CUDA else ("cuda",))))
            tokens = ("device",)
            what = f"device={kwargs['device']!r}"
        if use_wrong:
            call.mark("bad", "path", f"a {base.kind} index", (folder.name,))
        if status == "reject":
            call.mark("bad", "path", what, tokens)
        elif status == "either":
            call.mark("awkward", "path", what, tokens)
        call.repro = f"{loader_name}(<{base_name} copy, {what}>{', ' + _kw(kwargs) if kwargs else ''})"
        out = attempt(loader, path, **kwargs)
        if judge(F, call, out) != "ok":
            return
        index = out.value
        kind = "flat" if isinstance(index, Index) else "partitioned" if isinstance(index, PartitionedIndex) else None
        if kind != base.kind:
            F.add(call.where, f"loads a {base.kind} folder as {type(index).__name__}", call.repro)
            return
        if status == "clean" and not use_wrong:
            got = attempt(_loaded_state, index, kind)
            if got.error is not None or not _same_state(base.expected, got.value):
                F.add(call.where, "a clean load differs from the saved index", call.repro + (f"  # {got.error!r}" if got.error else ""))
        _check_loaded(F, call, index, kind)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@_quiet
def _check_loaded(F, call, index, kind):
    """A loaded index behaves: consistent ids, an exact search that agrees with the stored vectors, an add."""
    where = call.where
    q = fuzz_rows(11, 3, index.dim)

    def fail(what, out):
        F.add(where, f"after loading ({call.bad[0].why if call.bad else call.awkward[0].why if call.awkward else 'clean'}): {what} raises {type(out.error).__name__}: {out.error}", call.repro)

    ids = attempt(lambda: _np(index.ids))
    if ids.error is not None:
        return fail("ids", ids)
    ids = ids.value
    if len(index) != ids.size or (ids.size and ((np.diff(ids) <= 0).any() or ids[0] < 0)):
        F.add(where, "loaded index has inconsistent len / ids", call.repro)
        return
    trained = kind == "flat" or index.is_trained
    keep = kind == "flat" or index.settings.keep_vectors or not index.is_trained
    vectors = None
    if keep and ids.size:
        got = attempt(index.get, ids)
        if got.error is not None:
            return fail("get(ids)", got)
        vectors = _np(got.value).astype(np.float64)
        if not np.isfinite(vectors).all():
            F.add(where, "loaded index holds NaN / inf vectors", call.repro)
            return
    if trained:
        kwargs = {"recall_target": 1.0} if kind == "flat" else _exact_kwargs(index)
        res = attempt(index.search, q, 3, **kwargs)
        if res.error is not None:
            return fail("search", res)
        x = vectors if vectors is not None else np.zeros((ids.size, index.dim))
        check_knn(F, call, res.value, q.double().numpy(), x, index.metric, 3, exact=vectors is not None, row_ids=ids, exact_scores=vectors is not None, full=kind == "flat" or vectors is not None)
    add = attempt(index.add, fuzz_rows(12, 1, index.dim))
    if add.error is not None:
        if not (isinstance(add.error, ValueError) and names(str(add.error), ("ids", "id"))):
            return fail("add", add)
    elif len(index) != ids.size + 1:
        F.add(where, "loaded index: add does not add one row", call.repro)


def test_load_fuzz():
    _load_example()
    FINDINGS["load"].check()


# --------------------------------------------------------------------------- command line

_CLI_FILES: dict[str, Path] = {}


def _cli_files() -> dict[str, Path]:
    if _CLI_FILES:
        return _CLI_FILES
    d = scratch() / "cli-files"
    d.mkdir(parents=True)
    rng = np.random.default_rng(5)
    vec = rng.standard_normal((40, 6)).astype(np.float32)
    arrays = {
        "vec.npy": vec, "vec16.npy": vec.astype(np.float16), "vec64.npy": vec.astype(np.float64),
        "int.npy": np.round(vec * 3).astype(np.int64), "bool.npy": vec > 0, "nan.npy": np.where(vec > 2, np.nan, vec).astype(np.float32),
        "d3.npy": vec.reshape(2, 20, 6), "d1.npy": vec[0], "empty.npy": vec[:0], "zero.npy": np.vstack([vec[:-1], np.zeros((1, 6), np.float32)]),
        "queries.npy": rng.standard_normal((5, 6)).astype(np.float32), "q_wrong.npy": rng.standard_normal((5, 3)).astype(np.float32),
        "q_int.npy": np.ones((5, 6), dtype=np.int64), "q_nan.npy": np.full((5, 6), np.nan, dtype=np.float32), "q_empty.npy": np.zeros((0, 6), np.float32),
    }  # fmt: skip
    for name, arr in arrays.items():
        np.save(d / name, arr)
    np.save(d / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage" + bytes(range(256)))
    (d / "text.txt").write_text("1 2 3\n")
    np.save(d / "existing.npy", np.arange(3))
    (d / "adir").mkdir()
    import h5py

    with h5py.File(d / "vec.h5", "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"] = vec, arrays["queries.npy"]
    flat = Index(6, metric="ip")
    flat.add(torch.from_numpy(vec))
    flat.save(d / "flat.index")
    part = PartitionedIndex(6, metric="l2", settings=PartitionSettings(partitions=2, train_size=None))
    part.add(torch.from_numpy(vec))
    part.train()
    part.save(d / "part.index")
    shutil.copytree(d / "flat.index", d / "corrupt.index")
    blob = bytearray((d / "corrupt.index" / json.loads((d / "corrupt.index" / "manifest.json").read_text())["arrays"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / "corrupt.index" / json.loads((d / "corrupt.index" / "manifest.json").read_text())["arrays"]).write_bytes(bytes(blob))
    for name in [*arrays, "object.npy", "corrupt.npy", "text.txt", "existing.npy", "adir", "vec.h5", "flat.index", "part.index", "corrupt.index"]:
        _CLI_FILES[name] = d / name
    _CLI_FILES["missing.npy"] = d / "missing.npy"
    _CLI_FILES["missing.index"] = d / "missing.index"
    return _CLI_FILES


def _run_cli(argv: list[str], cwd: Path):
    from peakknn.cli import main

    def run():
        try:
            return main(argv)
        except SystemExit as e:
            return 0 if e.code is None else e.code if isinstance(e.code, int) else 1

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = attempt(run)
    finally:
        os.chdir(previous)
        torch.set_num_threads(threads)
    return result, out.getvalue(), err.getvalue()


class _Argv:
    """argv under construction, with the status of each option."""

    def __init__(self, *words):
        self.words = list(words)
        self.bad: list[Mark] = []
        self.awkward: list[Mark] = []

    def add(self, *words, status="ok", name="", why="", tokens=None):
        self.words += [str(w) for w in words]
        tokens = tuple(tokens) if tokens else (name, name.lstrip("-"), name.lstrip("-").replace("-", "_"))
        if status == "bad":
            self.bad.append(Mark(name, why or " ".join(map(str, words)), tokens))
        elif status == "awkward":
            self.awkward.append(Mark(name, why or " ".join(map(str, words)), tokens))


def _option(draw, argv: _Argv, name: str, good, bad=(), awkward=(), omit=True, force_bad=False):
    """Add `name VALUE` (or nothing) to argv: a good value, or (force_bad) a bad or awkward one."""
    choices = ["good"] * 3 + (["omit"] if omit else [])
    if force_bad:
        choices = ["bad"] * bool(bad) + ["awkward"] * bool(awkward)
    pick = draw(st.sampled_from(choices))
    if pick == "omit":
        return None
    value = draw(st.sampled_from(good if pick == "good" else bad if pick == "bad" else awkward))
    tokens = [name, name.lstrip("-"), name.lstrip("-").replace("-", "_")]
    if isinstance(value, Path):
        tokens.append(value.name)
    elif isinstance(value, str) and len(value) >= 3:
        tokens.append(value)
    argv.add(name, value, status=pick if pick != "good" else "ok", name=name, tokens=tokens)
    return value


def _positional(draw, table: dict, bad: bool) -> str:
    return draw(st.sampled_from(sorted(f for f, status in table.items() if (status != "ok") == bad)))


BUILD_VECTORS = {  # file: status
    "vec.npy": "ok", "vec16.npy": "ok", "vec64.npy": "ok", "vec.h5": "ok", "zero.npy": "ok",
    "int.npy": "bad", "bool.npy": "bad", "nan.npy": "bad", "d3.npy": "bad", "d1.npy": "bad", "object.npy": "bad",
    "corrupt.npy": "bad", "text.txt": "bad", "missing.npy": "bad", "adir": "bad", "empty.npy": "awkward",
}  # fmt: skip
SEARCH_QUERIES = {
    "queries.npy": "ok", "vec.npy": "ok", "vec.h5": "ok", "q_wrong.npy": "bad", "q_int.npy": "bad", "q_nan.npy": "bad",
    "missing.npy": "bad", "text.txt": "bad", "q_empty.npy": "awkward", "d1.npy": "bad",
}  # fmt: skip
SEARCH_INDEXES = {"flat.index": "ok", "part.index": "ok", "corrupt.index": "bad", "missing.index": "bad", "vec.npy": "bad"}


def _cli_build(draw, files, case) -> tuple[_Argv, dict]:
    argv = _Argv("build")
    target = draw(st.sampled_from(("none", "none", "vectors", "vectors", "out", "--metric", "--precision", "--index", "--key", "partitioned")))
    vectors = _positional(draw, BUILD_VECTORS, target == "vectors")
    out_choice = draw(st.sampled_from(("existing file", "existing index") if target == "out" else ("fresh", "fresh", "nested", "empty dir")))
    out = {"fresh": case / "out.index", "nested": case / "a" / "b" / "out.index", "existing file": case / "file.npy", "existing index": case / "old.index", "empty dir": case / "emptydir"}[out_choice]
    if out_choice == "existing file":
        np.save(out, np.arange(3))
    elif out_choice == "existing index":
        shutil.copytree(files["flat.index"], out)
    elif out_choice == "empty dir":
        out.mkdir()
    argv.add(files[vectors], status=BUILD_VECTORS[vectors], name="vectors", tokens=(vectors, "vectors"))
    argv.add(out, status={"existing file": "bad", "existing index": "awkward"}.get(out_choice, "ok"), name="out", tokens=(out.name, "out"))
    metric = _option(draw, argv, "--metric", ("ip", "l2", "cos"), ("dot", "IP"), force_bad=target == "--metric")
    if metric == "cos" and vectors == "zero.npy":
        argv.bad.append(Mark("vectors", "a zero row with cos", ("zero", "vectors", "cos")))
    if vectors == "vec.h5" or target == "--key":
        _option(draw, argv, "--key", ("train", "test"), ("nope",), force_bad=target == "--key")
        if target == "--key" and vectors != "vec.h5":
            argv.bad, argv.awkward = [m for m in argv.bad if m.name != "--key"], argv.awkward  # --key is ignored for .npy
    kind = _option(draw, argv, "--index", ("flat", "partitioned"), ("ivf", "FLAT"), force_bad=target == "--index")
    if kind == "partitioned" or target == "partitioned":
        if kind != "partitioned":
            argv.add("--index", "partitioned")
        if vectors == "vec.h5" and "test" in argv.words:
            argv.awkward.append(Mark("vectors", "5 rows for a partitioned index", ("rows", "vectors")))
        _cli_partitioned_options(draw, argv, target == "partitioned")
        if draw(st.integers(0, 5)) == 0:
            argv.add("--precision", "fp32", status="bad", name="--precision", why="--precision with --index partitioned")
    else:
        _option(draw, argv, "--precision", ("bf16", "fp32"), ("fp16", "int8"), force_bad=target == "--precision")
        if draw(st.integers(0, 5)) == 0:
            argv.add("--partitions", 2, status="awkward", name="--partitions", why="--partitions with --index flat")
    return argv, {"out": out, "kind": kind, "check": out_choice in ("fresh", "nested")}


def _cli_partitioned_options(draw, argv: _Argv, bad: bool) -> None:
    """The PartitionSettings / SearchSettings options of `build --index partitioned` (one bad when asked)."""
    options = {  # name: (good, bad); the data have 6 dims and 40 rows
        "--partitions": ((1, 2, 4), (0, -1, "x")), "--codes": (("bf16", "int8", "pq4"), ("pq8",)),
        "--iters": ((1, 3), (0, -2)), "--seed": ((0, 3), ("x",)), "--probe": ((1, 4), (0, -1)), "--rerank": ((5, 50), (0, -3)),
    }  # fmt: skip
    target = draw(st.sampled_from(sorted(options) + ["--block-dims"])) if bad else None
    codes = None
    for name, (good, bad_values) in options.items():
        value = _option(draw, argv, name, good, bad_values, force_bad=name == target)
        if name == "--codes":
            codes = value
    if target == "--block-dims":
        if codes != "pq4":
            argv.add("--codes", "pq4")
        argv.add("--block-dims", draw(st.sampled_from((0, 4, 5))), status="bad", name="--block-dims")
    elif codes == "pq4" and draw(st.booleans()):
        argv.add("--block-dims", draw(st.sampled_from((1, 2, 3))))
    if draw(st.integers(0, 3)) == 0:
        argv.add(draw(st.sampled_from(("--keep-vectors", "--no-keep-vectors"))))


def _cli_search(draw, files, case) -> tuple[_Argv, dict]:
    argv = _Argv("search")
    target = draw(st.sampled_from(("none", "none", "none", "index", "queries", "queries", "--k", "--recall-target", "--probe", "outputs")))
    index = _positional(draw, SEARCH_INDEXES, target == "index")
    queries = _positional(draw, SEARCH_QUERIES, target == "queries")
    argv.add(files[index], status=SEARCH_INDEXES[index], name="index", tokens=(index, "index", "manifest"))
    argv.add(files[queries], status=SEARCH_QUERIES[queries], name="queries", tokens=(queries, "queries"))
    key = None
    if queries == "vec.h5":
        key = draw(st.sampled_from(("test", "train")))
        argv.add("--key", key)
    k = _option(draw, argv, "--k", (1, 3, 10, 40, 45), (0, -1, "abc", 2.5), force_bad=target == "--k")
    rt = _option(draw, argv, "--recall-target", (0.9, 1.0, 0.5), (0, 1.5, "nan", -1, "abc"), force_bad=target == "--recall-target")
    if draw(st.integers(0, 3)) == 0 or target == "--probe":
        if target == "--probe":
            argv.add("--probe", draw(st.sampled_from((0, -1, "x"))), status="bad", name="--probe")
        elif rt is not None:
            argv.add("--probe", 2, status="bad", name="--probe", why="--probe with --recall-target", tokens=("probe", "recall-target", "recall_target"))
        else:
            argv.add("--probe", draw(st.sampled_from((1, 2, 8))), status="ok" if index == "part.index" else "awkward", name="--probe")
    outs = draw(st.sampled_from(("none", "existing", "directory", "missing dir") if target == "outputs" else ("both", "both", "existing forced")))
    ids_out, scores_out = case / "ids.npy", case / "scores.npy"
    info = {"ids": None, "scores": None, "k": 10 if k is None else k, "existing": None}
    if outs == "none":
        argv.awkward.append(Mark("--ids-out", "no output paths", ("ids-out", "ids_out", "scores-out", "output", "out")))
    else:
        if outs in ("existing", "existing forced"):
            ids_out = case / "existing.npy"
            shutil.copy(files["existing.npy"], ids_out)
            info["existing"] = ids_out
        elif outs == "directory":
            ids_out = case / "adir"
            ids_out.mkdir()
        elif outs == "missing dir":
            ids_out = case / "nodir" / "ids.npy"
        status = {"existing": "bad", "directory": "bad", "missing dir": "awkward"}.get(outs, "ok")
        argv.add("--ids-out", ids_out, status=status, name="--ids-out", tokens=("ids-out", "ids_out", ids_out.name))
        argv.add("--scores-out", scores_out, name="--scores-out")
        if outs == "existing forced":
            argv.add("--force", name="--force")
        info["ids"], info["scores"] = ids_out, scores_out
    info["nq"] = {"queries.npy": 5, "vec.npy": 40, "vec.h5": 40 if key == "train" else 5, "q_empty.npy": 0}.get(queries)
    return argv, info


def _cli_bench(draw, files, case) -> tuple[_Argv, dict]:
    argv = _Argv("bench", "--no-peers", "--repeat", "1", "--out", case / "bench-out", "--json", case / "bench.json")
    options = {  # name: (good, bad, awkward)
        "--n": ((50,), (0, -5, "abc"), ()), "--d": ((4,), (0, -1), ()), "--nq": ((5,), (0, -1), ()),
        "--k": ((3,), (0, -1), (5000,)), "--recall-target": ((0.9,), (0, 1.5, "nan", -0.5), ()),
        "--precision": (("bf16", "fp32"), ("fp16",), ()), "--threads": ((1, 2), (0, -1), ()), "--repeat": ((1,), (0, -1), ()),
        "--seed": ((0, 3), (), (-1,)), "--partitioned": ((), ("0", "abc", "1,,2", "-1"), ()),
        "--dataset": ((), (files["missing.npy"], files["text.txt"], files["vec.npy"]), ()),
        "--rounds": ((), (0, -1), ()), "--partitions": ((), (0, -2), ()), "--codes": ((), ("pq8",), ()),
    }  # fmt: skip
    target = draw(st.sampled_from(sorted(options) + ["none"]))
    for name, (good, bad, awkward) in options.items():
        if name == target:
            if name in ("--rounds", "--partitions", "--codes"):
                argv.add("--partitioned", "1")
            if name == "--repeat":
                argv.words = argv.words[:2] + argv.words[4:]
            _option(draw, argv, name, good, bad, awkward, force_bad=True)
        elif good and name not in ("--repeat",) and draw(st.integers(0, 2)) == 0:
            argv.add(name, draw(st.sampled_from(good)))
    if target == "none":
        argv.add("--n", 50, "--d", 4, "--nq", 5, "--k", 3)
    else:
        for name, value in (("--n", 50), ("--d", 4), ("--nq", 5), ("--k", 3)):
            if name not in argv.words:
                argv.add(name, value)
    return argv, {}


@_fuzz("cli")
@given(st.data())
@counted("cli")
def _cli_example(data):
    F = FINDINGS["cli"]
    draw = data.draw
    files = _cli_files()
    case = scratch() / f"cli-{next(_SERIAL)}"
    cwd = case / "cwd"
    cwd.mkdir(parents=True)
    try:
        command = draw(st.sampled_from(("build",) * 4 + ("search",) * 4 + ("bench",) * 3 + ("none", "bogus", "version", "help")))
        info = {}
        if command == "build":
            argv, info = _cli_build(draw, files, case)
        elif command == "search":
            argv, info = _cli_search(draw, files, case)
        elif command == "bench":
            argv, info = _cli_bench(draw, files, case)
        elif command == "none":
            argv = _Argv()
            argv.bad.append(Mark("command", "no command", ("command", "usage")))
        elif command == "bogus":
            argv = _Argv("bogus")
            argv.bad.append(Mark("command", "unknown command", ("bogus", "command", "usage")))
        elif command == "version":
            argv = _Argv("--version")
        else:
            argv = _Argv(*draw(st.sampled_from((["--help"], ["build", "--help"], ["search", "--help"], ["bench", "--help"]))))
        words = [str(w) for w in argv.words]
        where = f"cli {command}"
        repro = "peakknn " + " ".join(w.replace(str(case), "CASE").replace(str(files["vec.npy"].parent), "FILES") for w in words)
        out, stdout, stderr = _run_cli(words, cwd)
        for w in out.warned:
            F.add(where, f"emits {w}", repro)
        if out.hung:
            F.add(where, "runs past the time limit", repro)
            return
        if out.error is not None:
            F.add(where, f"raises {type(out.error).__name__}: {out.error}", repro)
            return
        rc = out.value
        VERDICTS["cli", "ok" if rc == 0 else "rejected"] += 1
        tail = (stderr.strip().splitlines() or [""])[-1][:200]
        if not isinstance(rc, int) or isinstance(rc, bool):
            F.add(where, f"main returns {rc!r}, not an exit status", repro)
            return
        if "Traceback (most recent call last)" in stderr:
            F.add(where, f"prints a traceback: {tail}", repro)
        if argv.bad and rc == 0:
            F.add(where, f"accepts bad {argv.bad[0].name} ({argv.bad[0].why})", repro)
        elif not argv.bad and not argv.awkward and rc != 0:
            F.add(where, f"rejects valid arguments (status {rc}): {tail}", repro)
        elif rc != 0 and (argv.bad or argv.awkward):
            marks = argv.bad + argv.awkward
            if not names(stderr + stdout, [t for m in marks for t in m.tokens]):
                F.add(where, f"error does not name {marks[0].name} ({marks[0].why}): {tail}", repro)
        left = sorted(p.name for p in cwd.iterdir())
        if left:
            F.add(where, f"writes {left} into the current directory", repro)
        existing = info.get("existing")
        if existing is not None and "--force" not in words and not np.array_equal(np.load(existing), np.arange(3)):
            F.add(where, "overwrites an existing --ids-out file without --force", repro)
        if rc == 0 and command == "version" and peakknn.__version__ not in stdout + stderr:
            F.add(where, "--version does not print the version", repro)
        if rc == 0 and command == "build" and info.get("check") and not (info["out"] / "manifest.json").is_file():
            F.add(where, "build succeeds but writes no index", repro)
        if rc == 0 and command == "search" and info.get("ids") is not None and info.get("nq") is not None:
            try:
                ids = np.load(info["ids"])
                scores = np.load(info["scores"])
                k = int(info["k"])
                if ids.shape != (info["nq"], k) or scores.shape != (info["nq"], k):
                    F.add(where, f"writes ids {ids.shape} / scores {scores.shape}, expected {(info['nq'], k)}", repro)
            except (OSError, ValueError) as e:  # a missing or unreadable output file
                F.add(where, f"search succeeds but its outputs do not load: {type(e).__name__}: {e}", repro)
    finally:
        shutil.rmtree(case, ignore_errors=True)


def test_cli_fuzz():
    _cli_example()
    FINDINGS["cli"].check()


# --------------------------------------------------------------------------- counts


class _CountsReport:
    """Prints the generated inputs per test at the end of the session (section "peakknn fuzz")."""

    def pytest_terminal_summary(self, terminalreporter):
        if not COUNTS:
            return
        terminalreporter.write_sep("-", "peakknn fuzz: generated inputs")
        for name in EXAMPLES:
            if COUNTS[name]:
                calls = f"calls: {VERDICTS[name, 'ok']:,} results checked ({VERDICTS[name, 'exact']:,} against the exact reference), {VERDICTS[name, 'rejected']:,} rejections checked"
                terminalreporter.write_line(f"{name:18s} {COUNTS[name]:6,d} inputs   {calls}   distinct findings: {len(FINDINGS[name].found)}")
        terminalreporter.write_line(f"{'total':18s} {sum(COUNTS.values()):6,d}")


@pytest.fixture(scope="module", autouse=True)
def _fuzz_module(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("peakknn-fuzz-counts"):
        manager.register(_CountsReport(), "peakknn-fuzz-counts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny arrays: one thread is faster, and leaves the other core to the suite
    # database=None stores no examples, but hypothesis still caches the constants it reads from
    # local source files under .hypothesis/: keep that in this module's temporary folder too
    hypothesis.configuration.set_hypothesis_home_dir(scratch() / "hypothesis")
    yield
    hypothesis.configuration.set_hypothesis_home_dir(None)
    torch.set_num_threads(threads)
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)
    _SCRATCH.clear()
    _BASES.clear()
    _CLI_FILES.clear()
    _POOL.clear()


def test_fuzz_counts():
    """A whole run of this file generates at least MIN_TOTAL inputs (the per-test counts are printed)."""
    ran = {name for name in EXAMPLES if COUNTS[name]}
    total = sum(COUNTS.values())
    print("peakknn fuzz: " + ", ".join(f"{name} {COUNTS[name]:,}" for name in EXAMPLES) + f"; total {total:,}")
    if ran != set(EXAMPLES):
        pytest.skip(f"only part of the fuzz tests ran ({sorted(ran)}): the total is checked on a whole run")
    assert total >= MIN_TOTAL * min(1.0, SCALE)
    assert all(COUNTS[name] >= EXAMPLES[name] * min(1.0, SCALE) for name in EXAMPLES), dict(COUNTS)
