"""Input validation shared by the public functions (peakknn._checks): errors name the value."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

from peakknn._checks import all_finite, as_id_set, as_ids, as_matrix, ceil_div, check_array, check_int, positive_int, renamed, round_up


def test_ceil_div_and_round_up():
    for a in range(-40, 41):
        for b in range(1, 13):
            assert ceil_div(a, b) == math.ceil(a / b)
            if a >= 0:
                r = round_up(a, b)
                assert r % b == 0 and a <= r < a + b
    assert ceil_div(10**18 + 1, 10**9) == 10**9 + 1  # exact for large ints (no float rounding)


def test_check_int_accepts_ints_in_range():
    assert check_int("k", 3) == 3
    assert type(check_int("k", np.int64(4))) is int and check_int("k", np.int64(4)) == 4
    assert check_int("n", 0, 0) == 0 and check_int("n", 9, 0, 9) == 9


@pytest.mark.parametrize("value,low,high,message", [
    (0, 1, None, "probe must be positive, got 0"),
    (-2, 0, None, "probe must be >= 0, got -2"),
    (5, 1, 4, "probe must be <= 4, got 5"),
])  # fmt: skip
def test_check_int_range_errors_name_the_value(value, low, high, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_int("probe", value, low, high)


def test_check_int_type_errors():
    for bad, kind in ((2.5, "float"), (True, "bool"), ("3", "str"), (None, "NoneType")):
        with pytest.raises(TypeError, match=re.escape(f"k must be an int, got {kind}")):
            check_int("k", bad)
        with pytest.raises(ValueError, match=re.escape(f"dim must be an int >= 1, got {bad!r}")):
            check_int("dim", bad, type_error=ValueError)
    for bad in (0, 1.5, True, "8"):
        with pytest.raises(ValueError, match="partitions"):
            positive_int("partitions", bad)
    assert positive_int("partitions", 8) == 8


def test_check_array_names_the_file_and_array():
    arrays = {"ids": torch.arange(4), "vectors": torch.zeros(4, 3)}
    assert check_array(arrays, "ids", torch.int64, (4,), "f") is arrays["ids"]
    assert check_array(arrays, "ids", torch.int64, None, "f") is arrays["ids"]  # None: any 1-d length
    for name, dtype, shape, match in (
        ("slots", torch.int64, (4,), "f: array 'slots' is missing"),
        ("ids", torch.int32, (4,), "f: array 'ids' has torch.int64"),
        ("vectors", torch.float32, (4, 2), "f: array 'vectors' has torch.float32"),
        ("vectors", torch.float32, None, "array 'vectors'"),
    ):
        with pytest.raises(ValueError, match=re.escape(match)):
            check_array(arrays, name, dtype, shape, "f")


def test_renamed_keyword():
    assert renamed("old", None, "new", 5) == 5
    with pytest.warns(DeprecationWarning, match="old= is now called new="):
        assert renamed("old", 7, "new", None) == 7
    with pytest.raises(TypeError, match="pass new= only"):
        renamed("old", 7, "new", 5)
    with pytest.warns(DeprecationWarning):  # a new keyword left at its (non-None) default
        assert renamed("old", "fp32", "new", "bf16", default="bf16") == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed("old", None, "new", "x", default="bf16") == "x"  # no warning without the old name


def test_all_finite_even_when_the_sum_overflows():
    big = torch.full((4,), 3e38)  # finite, but the sum overflows to inf
    assert all_finite(big) and all_finite(torch.zeros(0))
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = big.clone()
        x[2] = bad
        assert not all_finite(x)


def test_ids_and_matrices():
    assert as_ids("ids", [3, 1, 2]).tolist() == [3, 1, 2]
    assert as_ids("ids", torch.tensor(5)).tolist() == [5]
    assert as_id_set("allowed", [4, 1, 4, 2]).tolist() == [1, 2, 4]  # repeats allowed in a set
    with pytest.raises(ValueError, match="duplicates, e.g. 4"):
        as_ids("ids", [4, 1, 4])
    with pytest.raises(ValueError, match="non-negative, got -3"):
        as_ids("ids", [1, -3])
    with pytest.raises(TypeError, match="integers"):
        as_ids("ids", [1.0])
    with pytest.raises(ValueError, match="2 entries but there are 3 vectors"):
        as_ids("ids", [1, 2], 3)
    assert as_matrix("q", torch.ones(5)).shape == (1, 5)
    assert as_matrix("q", np.ones((2, 3), dtype=np.float16)).dtype == torch.float16
    with pytest.raises(ValueError, match="q must have dim 4, got 3"):
        as_matrix("q", torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="q contains NaN or inf"):
        as_matrix("q", torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="q must have a floating dtype"):
        as_matrix("q", torch.ones(2, 3, dtype=torch.int32))
