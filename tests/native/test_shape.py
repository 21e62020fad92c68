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


@pytest.mark.parametrize(
    ("shape", "target", "match"),
    [
        # A product of 2^32 * 2^32 wrapped around to 0, which matched the empty input.
        ((0,), [2**32, 2**32, 1], "cannot reshape"),
        ((0,), [2**62, 4, 3], "cannot reshape"),
        ((3,), [2**63 - 1, 2**63 - 1, 1], "cannot reshape"),
        ((6,), [2.0, 3], "must be an integer"),  # was truncated by int(): 2.5 became 2
        ((6,), ["2", 3], "must be an integer"),  # was parsed by int()
        ((6,), [2**64], "does not fit"),
        ((6,), 6, "sequence of integers"),
    ],
)
def test_reshape_refuses_malformed_shapes(
    shape: tuple[int, ...], target: object, match: str
) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[reshape\] .*{match}"):
        ops.reshape(np.zeros(shape, np.float32), target)  # type: ignore[arg-type]


def test_reshape_empty_to_huge_zero_size_shape() -> None:
    # Legal: no elements, however large the other dimensions (numpy agrees).
    x = np.zeros((0, 3), np.float32)
    out = ops.reshape(x, [2**40, 0, 2**20], allowzero=True)
    assert out.shape == (2**40, 0, 2**20) and out.size == 0


def test_reshape_fuzz_matches_numpy_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Random shapes and targets (0, -1, size-0 dims): numpy's result or InvalidRequestError."""
    for _ in range(1000):
        shape = tuple(int(d) for d in rng.choice([0, 1, 2, 3, 4, 6], rng.integers(0, 4)))
        x = rng.standard_normal(shape).astype(np.float32)
        target = [int(d) for d in rng.choice([-1, 0, 1, 2, 3, 4, 6, 12], rng.integers(0, 4))]
        allowzero = bool(rng.random() < 0.3)
        try:
            out = ops.reshape(x, target, allowzero=allowzero)
        except InvalidRequestError as e:
            assert str(e).startswith("[reshape]")
            continue
        np.testing.assert_array_equal(out, ref.reshape(x, target, allowzero=allowzero))
