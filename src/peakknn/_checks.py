"""Input validation shared by the public functions. Errors name the offending value."""

from __future__ import annotations

import numbers

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_ID = 2**63 - 2  # the largest id: next_id = max id + 1 stays an int64
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def as_matrix(name: str, value, dim: int | None = None, *, allow_1d: bool = True) -> torch.Tensor:
    """Return `value` as a float tensor of shape [m, d] (a 1-d vector becomes [1, d]).

    Accepts torch tensors and numpy arrays of a floating dtype (with or without gradients: the
    result is detached) and nested lists / tuples of numbers (as float64); raises TypeError for
    other types or dtypes (integers and bools included) and ValueError for wrong or ragged shapes,
    a mismatched `dim`, or NaN/inf entries. The result shares memory with the input where
    possible; callers copy before storing.
    """
    if isinstance(value, (list, tuple)):
        value = _list_matrix(name, value)
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must have a floating dtype, got numpy {value.dtype}")
        if value.dtype.itemsize > 8:  # torch has no float128
            value = value.astype(np.float64)
        native = value.dtype.newbyteorder("=")
        if value.dtype != native or not value.flags.writeable or not value.flags.c_contiguous or min(value.strides, default=0) < 0:
            value = np.array(value, dtype=native, order="C")  # a copy torch can wrap (byte order, strides, read-only)
        value = torch.from_numpy(value)
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, numpy.ndarray or nested list, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    value = value.detach()  # search results need no gradient (approx_topk keeps them)
    if value.ndim == 1 and allow_1d:
        value = value.unsqueeze(0)
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-d [count, dim], got shape {tuple(value.shape)}")
    if dim is not None and value.shape[1] != dim:
        raise ValueError(f"{name} must have dim {dim}, got {value.shape[1]}")
    if value.shape[1] == 0:
        raise ValueError(f"{name} must have dim >= 1, got shape {tuple(value.shape)}")
    if value.numel() and not all_finite(value):
        raise ValueError(f"{name} contains NaN or inf")
    if value.dtype == torch.float64 and value.numel() and float(value.abs().max()) > FLOAT32_MAX:
        raise ValueError(f"{name} has values beyond the float32 range (|x| > {FLOAT32_MAX:.3g}); peakknn stores float32")
    return value


def _list_matrix(name: str, value) -> np.ndarray:
    """A nested list / tuple of real numbers (not bools) as a float64 numpy array."""
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as e:  # ragged rows, numbers numpy cannot hold
        raise ValueError(f"{name} must be a rectangular nested list of numbers: {e}") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number) or arr.size == 0):
        raise TypeError(f"{name} must hold real numbers, got a list of {arr.dtype if arr.dtype != object else 'mixed objects'}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got complex")
    return arr.astype(np.float64)


def is_numpy(value) -> bool:
    """True for numpy input: the public searches answer it with numpy results."""
    return isinstance(value, np.ndarray)


def check_device(value) -> torch.device:
    """`value` as a torch.device that this torch can use; ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int)):
        raise TypeError(f"device must be a str, int or torch.device, got {type(value).__name__}")
    try:
        device = torch.device(value)
    except RuntimeError as e:
        raise ValueError(f"device={value!r} is not a device name: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={value!r}: this torch has no usable CUDA device (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={value!r}: peakknn runs on 'cpu' or 'cuda' devices")
    return device


def check_int(name: str, value, low: int = 1, high: int | None = None, *, type_error: type = TypeError) -> int:
    """`value` as an int in [low, high]; raises `type_error` for a non-integer (bools included)
    and ValueError for one out of range, naming `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if type_error is TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        raise type_error(f"{name} must be an int >= {low}, got {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}" if low != 1 else f"{name} must be positive, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def positive_int(name: str, value) -> int:
    """A setting that must be an int >= 1 (ValueError for anything else, as settings always did)."""
    return check_int(name, value, 1, type_error=ValueError)


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= a."""
    return ceil_div(a, multiple) * multiple


def check_k(k, limit: int | None = None) -> int:
    """k must be an int >= 1 (and <= limit when given)."""
    return check_int("k", k, 1, limit)


def check_recall_target(recall_target) -> float:
    if isinstance(recall_target, bool) or not isinstance(recall_target, numbers.Real):
        raise TypeError(f"recall_target must be a float, got {type(recall_target).__name__}")
    r = float(recall_target)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    return r


def check_search_options(rerank, max_memory) -> None:
    """rerank: None or an int >= 1; max_memory: an int >= 1 (bytes)."""
    if rerank is not None:
        check_int("rerank", rerank, 1)
    check_int("max_memory", max_memory, 1)


def check_per_bin(per_bin) -> int:
    return check_int("per_bin", per_bin)


def as_ids(name: str, value, count: int | None = None, *, storable: bool = True) -> np.ndarray:
    """Return ids as a 1-d int64 numpy array (copy); rejects non-integers and duplicates, and
    (storable) ids above MAX_ID. Accepts tensors, arrays, lists, tuples, ranges and a single
    int; without `count` (ids not tied to rows) also any iterable such as a set."""
    arr = _integer_array(name, value, ordered=count is not None)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if count is not None and arr.shape[0] != count:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {count} vectors")
    if arr.size and (arr < 0).any():
        raise ValueError(f"{name} must be non-negative, got {int(arr[arr < 0][0])}")
    if arr.size and (arr.dtype == object or (storable and arr.max() > MAX_ID)):  # object: ints beyond int64
        raise ValueError(f"{name} must be <= 2**63 - 2 (the next automatic id must fit in int64), got {int(max(arr))}")
    arr = arr.astype(np.int64, copy=True)
    if np.unique(arr).size != arr.size:
        values, counts = np.unique(arr, return_counts=True)
        raise ValueError(f"{name} contains duplicates, e.g. {int(values[counts > 1][0])}")
    return arr


def as_id_set(name: str, value) -> np.ndarray:
    """Return a set of ids (a filter: any iterable of ints) as a sorted, unique 1-d int64 numpy
    array; repeats are allowed, and ids that no index can hold (above MAX_ID) are simply never
    matched."""
    arr = _integer_array(name, value, ordered=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size and (arr < 0).any():
        raise ValueError(f"{name} must be non-negative, got {int(arr[arr < 0][0])}")
    if arr.dtype == object:  # Python ints beyond int64: never stored, so never matched
        arr = np.array([int(v) for v in arr if int(v) <= MAX_ID], dtype=np.int64)
    return as_ids(name, np.unique(arr), storable=False)


def _integer_array(name: str, value, *, ordered: bool) -> np.ndarray:
    """ids as a numpy integer array (0-d becomes 1-d); object dtype only for Python ints beyond
    int64. TypeError for anything that is not integers (floats, bools, strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    elif isinstance(value, (set, frozenset, dict)) or not isinstance(value, (np.ndarray, list, tuple, range, numbers.Integral, np.generic)):
        if not ordered and hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)):
            value = list(value)
        else:
            what = "an ordered sequence, one per vector" if ordered else "ints or an iterable of ints"
            raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{name} must be a flat sequence of ints: {e}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64) if arr.ndim == 1 else arr.astype(np.int64)
    if arr.dtype == object:
        odd = [v for v in arr.reshape(-1) if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if odd:
            raise TypeError(f"{name} must be integers, got {odd[0]!r}")
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        return arr.astype(object)
    return arr


def check_array(arrays: dict, name: str, dtype: torch.dtype, shape: tuple | None, where) -> torch.Tensor:
    """arrays[name], which must exist with this dtype and shape (None: any 1-d length); raises
    ValueError naming `where` (the file) otherwise."""
    t = arrays.get(name)
    if t is None:
        raise ValueError(f"{where}: array {name!r} is missing")
    if t.dtype != dtype or (tuple(t.shape) != tuple(shape) if shape is not None else t.ndim != 1):
        raise ValueError(f"{where}: array {name!r} has {t.dtype}{list(t.shape)}, expected {dtype}{list(shape or ['?'])}")
    return t


def all_finite(x: torch.Tensor) -> bool:
    """True when every entry is finite. A finite sum proves it in one cheap pass (NaN and inf
    propagate through it); only a sum that overflows needs the slow element-wise check."""
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def renamed(old: str, old_value, new: str, new_value, default=None):
    """The value of keyword `new`, taking a value passed under its former name `old` with a
    DeprecationWarning (one version of grace); both at once is a TypeError."""
    if old_value is None:
        return new_value
    if new_value is not default:
        raise TypeError(f"pass {new}= only ({old}= is its former name)")
    import warnings

    warnings.warn(f"{old}= is now called {new}=; {old}= will be removed in the next version", DeprecationWarning, stacklevel=caller_stacklevel())
    return old_value


def caller_stacklevel() -> int:
    """The `stacklevel` of warnings.warn, called from here, that names the first frame outside
    the peakknn package (the user's line), whatever wrappers lie between."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level
