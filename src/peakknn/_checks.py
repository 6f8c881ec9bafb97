"""Input validation shared by the public functions. Errors name the offending value."""

from __future__ import annotations

import numbers

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_matrix(name: str, value, dim: int | None = None, *, allow_1d: bool = True) -> torch.Tensor:
    """Return `value` as a float tensor of shape [m, d] (a 1-d vector becomes [1, d]).

    Accepts torch tensors and numpy arrays of a floating dtype; raises TypeError for other types
    or dtypes and ValueError for wrong shapes, a mismatched `dim`, or NaN/inf entries.
    The result shares memory with the input where possible; callers copy before storing.
    """
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must have a floating dtype, got numpy {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
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
    return value


def check_k(k, limit: int | None = None) -> int:
    """k must be an int >= 1 (and <= limit when given)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if limit is not None and k > limit:
        raise ValueError(f"k must be <= {limit}, got {k}")
    return k


def check_recall_target(recall_target) -> float:
    if isinstance(recall_target, bool) or not isinstance(recall_target, numbers.Real):
        raise TypeError(f"recall_target must be a float, got {type(recall_target).__name__}")
    r = float(recall_target)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    return r


def check_per_bin(per_bin) -> int:
    if isinstance(per_bin, bool) or not isinstance(per_bin, numbers.Integral):
        raise TypeError(f"per_bin must be an int, got {type(per_bin).__name__}")
    if per_bin < 1:
        raise ValueError(f"per_bin must be >= 1, got {per_bin}")
    return int(per_bin)


def as_ids(name: str, value, count: int | None = None) -> np.ndarray:
    """Return ids as a 1-d int64 numpy array (copy); rejects non-integers and duplicates."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if count is not None and arr.shape[0] != count:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {count} vectors")
    if arr.size and (arr < 0).any():
        raise ValueError(f"{name} must be non-negative, got {int(arr[arr < 0][0])}")
    if np.unique(arr).size != arr.size:
        values, counts = np.unique(arr, return_counts=True)
        raise ValueError(f"{name} contains duplicates, e.g. {int(values[counts > 1][0])}")
    return arr


def as_id_set(name: str, value) -> np.ndarray:
    """Return a set of ids (a filter) as a sorted, unique 1-d int64 numpy array; repeats are allowed."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return as_ids(name, np.unique(np.asarray(value)))


def all_finite(x: torch.Tensor) -> bool:
    """True when every entry is finite. A finite sum proves it in one cheap pass (NaN and inf
    propagate through it); only a sum that overflows needs the slow element-wise check."""
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())
