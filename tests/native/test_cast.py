"""ops.cast against numpy astype: every dtype pair, non-finite and out-of-range values."""

from __future__ import annotations

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref

DTYPES = [np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


def _values(rng: np.random.Generator, dtype: type, n: int) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        x = (rng.standard_normal(n) * 1e3).astype(dtype)
        special = [np.nan, np.inf, -np.inf, 3e9, -3e9, 1e20, -0.0]  # unrepresentable as ints
        x[: min(n, 7)] = special[: min(n, 7)]
        return x
    if dtype is np.bool_:
        return rng.random(n) < 0.5
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("src", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("dst", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [1, 7, 200_003])  # 200_003: several parallel chunks and a tail
def test_cast_matches_numpy(rng: np.random.Generator, src: type, dst: type, n: int) -> None:
    x = _values(rng, src, n)
    out = ops.cast(x, dst)
    expected = ref.cast(x, dst)
    assert out.dtype == expected.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, expected)


def test_cast_keeps_shape_and_handles_empty_and_noncontiguous(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 6)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(ops.cast(x, "int64"), x.astype(np.int64))
    assert ops.cast(np.zeros((0, 3), np.int64), np.float32).shape == (0, 3)
    same = ops.cast(x, np.float32)
    np.testing.assert_array_equal(same, x)


def test_cast_bad_input() -> None:
    x = np.ones(3, np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[cast\] unknown dtype"):
        ops.cast(x, "no-such-type")
    with pytest.raises(InvalidRequestError, match=r"\[cast\] cannot cast float32 to float16"):
        ops.cast(x, np.float16)
