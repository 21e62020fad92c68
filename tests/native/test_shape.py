"""reshape against numpy (ONNX Reshape semantics)."""

from __future__ import annotations

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref


@pytest.mark.parametrize(
    ("shape", "target"),
    [
        ((6,), [2, 3]),
        ((2, 3, 4), [-1]),
        ((2, 3, 4), [0, -1]),
        ((2, 3, 4), [4, 0, 2]),
        ((1,), []),
        ((5, 0), [0, 0, 7]),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float16])
def test_reshape_matches_numpy(
    rng: np.random.Generator, shape: tuple[int, ...], target: list[int], dtype: type
) -> None:
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    out = ops.reshape(x, target)
    np.testing.assert_array_equal(out, ref.reshape(x, target))
    assert out.dtype == x.dtype


def test_reshape_noncontiguous_and_allowzero(rng: np.random.Generator) -> None:
    x = rng.standard_normal((6, 8), dtype=np.float32).T[::2]
    np.testing.assert_array_equal(ops.reshape(x, [2, -1]), x.reshape(2, -1))
    empty = np.zeros((0, 3), np.float32)
    assert ops.reshape(empty, [3, 0], allowzero=True).shape == (3, 0)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ([4, 4], "cannot reshape"),
        ([-1, -1], "at most one"),
        ([-2, 3], "invalid dimension"),
        ([0, 0, 0, 0], "no input"),
    ],
)
def test_reshape_bad_input(target: list[int], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[reshape\] .*{match}"):
        ops.reshape(np.zeros((2, 3), np.float32), target)
