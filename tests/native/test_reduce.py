"""reduce_sum/mean/max/min/prod and argmax/argmin against the numpy reference (ONNX semantics).

Tolerances: max, min, argmax and argmin are exact. A sum of n unit normals has size ~sqrt(n) and
float32 (blocked) accumulation error a small multiple of eps·sqrt(n), so sums use rtol 1e-5 and
``atol = 1e-5 * sqrt(n)``, means the same divided by n. Products of n values in [0.9, 1.1] use
``rtol = 2e-7 * n`` (one rounding per factor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref

F32 = np.float32
KINDS = ["sum", "mean", "max", "min", "prod"]

Axes = int | Sequence[int] | None

CASES: list[tuple[tuple[int, ...], Axes]] = [
    ((), None),
    ((1,), None),
    ((7,), [0]),
    ((7,), -1),
    ((13, 17), None),
    ((13, 17), [0]),
    ((13, 17), [1]),
    ((13, 17), [-1, 0]),
    ((2, 3, 5, 7), [1, 3]),  # non-adjacent axes: two reduction steps
    ((2, 3, 5, 7), [0, 2]),
    ((2, 3, 5, 7), [2, 3]),
    ((2, 3, 5, 7), [0, 1, 3]),
    ((1, 5, 1, 7), [0, 2]),  # only size-1 axes reduced: a copy
    ((1, 5, 1, 7), [1, 2]),
    ((3, 1031), [1]),
    ((1031, 3), [0]),
    ((4, 3000, 5), [1]),
]


def reduced_count(shape: tuple[int, ...], axes: Axes) -> int:
    if axes is None:
        return int(np.prod(shape))
    listed = [axes] if isinstance(axes, int) else list(axes)
    return int(np.prod([shape[a] for a in listed])) if listed else int(np.prod(shape))


def make_input(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "prod":
        return np.asarray(rng.uniform(0.9, 1.1, shape), dtype=F32)
    return np.asarray(rng.standard_normal(shape), dtype=F32)


def check(kind: str, out: np.ndarray, expected: np.ndarray, n: int) -> None:
    assert out.dtype == F32 and out.shape == expected.shape
    if kind in ("max", "min"):
        np.testing.assert_array_equal(out, expected)
    elif kind == "prod":
        np.testing.assert_allclose(out, expected, rtol=2e-7 * max(n, 4))
    elif kind == "mean":
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 / np.sqrt(max(n, 1)))
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.sqrt(max(n, 1)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("shape", "axes"), CASES)
@pytest.mark.parametrize("keepdims", [True, False])
def test_reduce(
    rng: np.random.Generator, kind: str, shape: tuple[int, ...], axes: Axes, keepdims: bool
) -> None:
    x = make_input(rng, kind, shape)
    out = getattr(ops, f"reduce_{kind}")(x, axes, keepdims)
    expected = getattr(ref, f"reduce_{kind}")(x, axes, keepdims)
    check(kind, out, expected, reduced_count(shape, axes))


@pytest.mark.parametrize("kind", KINDS)
def test_reduce_empty_axes(rng: np.random.Generator, kind: str) -> None:
    x = make_input(rng, kind, (3, 4))
    fn, rfn = getattr(ops, f"reduce_{kind}"), getattr(ref, f"reduce_{kind}")
    check(kind, fn(x, []), rfn(x, []), 12)  # [] reduces everything
    np.testing.assert_array_equal(fn(x, [], noop_with_empty_axes=True), x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("shape", "axes"), [((0, 3), [0]), ((3, 0), [1]), ((3, 0), [0]), ((0,), None)]
)
def test_reduce_zero_size(kind: str, shape: tuple[int, ...], axes: Axes) -> None:
    # ONNX: sum 0, prod 1, max -inf, min +inf, mean NaN over an empty set.
    x = np.zeros(shape, F32)
    out = getattr(ops, f"reduce_{kind}")(x, axes)
    expected = getattr(ref, f"reduce_{kind}")(x, axes)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", ["max", "min"])
def test_reduce_nan_propagates(rng: np.random.Generator, kind: str) -> None:
    x = make_input(rng, kind, (6, 300))
    x[2, 17] = np.nan
    x[4, 299] = np.nan
    for axes in ([1], [0], None):
        out = getattr(ops, f"reduce_{kind}")(x, axes)
        np.testing.assert_array_equal(out, getattr(ref, f"reduce_{kind}")(x, axes))


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((1 << 20,), None),  # whole-tensor sum: split over r into fixed blocks
        ((1024, 1024), [0]),
        ((1024, 1024), [1]),
        ((3, 1 << 18), [1]),
        ((1 << 18, 3), [0]),
        ((64, 4096, 4), [0, 2]),
    ],
)
def test_reduce_large_threads_agree(
    rng: np.random.Generator, shape: tuple[int, ...], axes: Axes
) -> None:
    # The work split depends on the shape only, so one and two threads give identical bits.
    x = make_input(rng, "sum", shape)
    n = reduced_count(shape, axes)
    for kind in ("sum", "max"):
        fn = getattr(ops, f"reduce_{kind}")
        one = fn(x, axes, threads=1)
        np.testing.assert_array_equal(one, fn(x, axes, threads=2))
        check(kind, one, getattr(ref, f"reduce_{kind}")(x, axes), n)


def test_reduce_noncontiguous(rng: np.random.Generator) -> None:
    base = make_input(rng, "sum", (40, 60))
    for x in (base.T, base[::3, 1::2]):
        for axes in ([0], [1], None):
            check("sum", ops.reduce_sum(x, axes), ref.reduce_sum(x, axes), x.size)
            check("max", ops.reduce_max(x, axes, False), ref.reduce_max(x, axes, False), 1)


# ---- argmax / argmin -----------------------------------------------------------------------

ARG_CASES = [
    ((1,), 0),
    ((7,), 0),
    ((13, 17), 0),
    ((13, 17), 1),
    ((13, 17), -1),
    ((2, 3, 5, 7), 2),
    ((4, 3000, 5), 1),
    ((3, 1031), 1),
]


def ties(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Small integers as floats: many ties, so first/last occurrence is really tested."""
    return rng.integers(-3, 4, shape).astype(F32)


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize(("shape", "axis"), ARG_CASES)
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("last", [False, True])
def test_arg(
    rng: np.random.Generator,
    fn: str,
    shape: tuple[int, ...],
    axis: int,
    keepdims: bool,
    last: bool,
) -> None:
    for x in (ties(rng, shape), make_input(rng, "sum", shape)):
        out = getattr(ops, fn)(x, axis, keepdims, select_last_index=last)
        expected = getattr(ref, fn)(x, axis, keepdims, select_last_index=last)
        np.testing.assert_array_equal(out, expected, strict=True)


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
def test_arg_nan_is_first(rng: np.random.Generator, fn: str) -> None:
    x = make_input(rng, "sum", (5, 40))
    x[1, 7] = x[1, 30] = np.nan
    x[3, 0] = np.nan
    for axis in (0, 1):
        for last in (False, True):
            out = getattr(ops, fn)(x, axis, select_last_index=last)
            expected = getattr(ref, fn)(x, axis, select_last_index=last)
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize("last", [False, True])
def test_arg_long_rows_split(rng: np.random.Generator, fn: str, last: bool) -> None:
    # Few long rows are searched in parallel blocks; ties across blocks keep first/last semantics.
    x = ties(rng, (2, 1 << 18))
    one = getattr(ops, fn)(x, 1, select_last_index=last, threads=1)
    two = getattr(ops, fn)(x, 1, select_last_index=last, threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, getattr(ref, fn)(x, 1, select_last_index=last))


def test_arg_large_columns_and_noncontiguous(rng: np.random.Generator) -> None:
    x = ties(rng, (512, 2048))
    np.testing.assert_array_equal(ops.argmax(x, 0, threads=2), ref.argmax(x, 0))
    xt = x.T[::3]
    np.testing.assert_array_equal(ops.argmin(xt, 1, False), ref.argmin(xt, 1, False))


Call = Callable[[], Any]
X = np.ones((3, 4), F32)


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("reduce_sum", lambda: ops.reduce_sum(X.astype(np.int64))),
        ("reduce_mean", lambda: ops.reduce_mean(X, [2])),
        ("reduce_max", lambda: ops.reduce_max(X, [0, -2])),
        ("reduce_min", lambda: ops.reduce_min(X, [-3])),
        ("reduce_prod", lambda: ops.reduce_prod(X.astype(np.float64))),
        ("reduce_sum", lambda: ops.reduce_sum(X, "0")),
        ("argmax", lambda: ops.argmax(X, 2)),
        ("argmax", lambda: ops.argmax(np.float32(1.0))),
        ("argmin", lambda: ops.argmin(np.ones((3, 0), F32), 1)),
        ("argmin", lambda: ops.argmin(X.astype(np.int32))),
    ],
)
def test_errors(op: str, call: Call) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[{op}\]"):
        call()


# ---- robustness: bad arguments, random cases ------------------------------------------------


@pytest.mark.parametrize(
    ("op", "call"),
    [
        # Each of these leaked a ValueError or pybind11's RuntimeError.
        ("reduce_sum", lambda: ops.reduce_sum(X, [2**64])),
        ("reduce_max", lambda: ops.reduce_max(X, keepdims=np.array([True, False]))),  # type: ignore[arg-type]
        ("argmax", lambda: ops.argmax(X, select_last_index=np.ones(2))),  # type: ignore[arg-type]
        ("argmin", lambda: ops.argmin(X, axis=2**63)),
    ],
)
def test_bad_arguments_raise_phi_errors(op: str, call: Call) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[{op}\]"):
        call()


def test_fuzz_matches_reference_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Random ranks 0-4 with size-0 and size-1 dims, NaN and inf values, random (sometimes bad)
    axes and flags: either numpy's result or an InvalidRequestError naming the op."""
    for _ in range(1000):
        shape = tuple(int(d) for d in rng.choice([0, 1, 2, 3, 7], rng.integers(0, 5)))
        x = np.asarray(rng.standard_normal(shape), F32)
        x[rng.random(shape) < 0.03] = np.nan
        x[rng.random(shape) < 0.03] = rng.choice([np.inf, -np.inf])
        rank = max(len(shape), 1)
        if rng.random() < 0.7:
            kind = str(rng.choice(KINDS))
            op = f"reduce_{kind}"
            axes = [int(a) for a in rng.choice(np.arange(-rank, rank), rng.integers(0, 3))]
            kw: dict[str, Any] = {
                "axes": axes if rng.random() < 0.8 else None,
                "keepdims": bool(rng.random() < 0.5),
                "noop_with_empty_axes": bool(rng.random() < 0.2),
            }
        else:
            op = str(rng.choice(["argmax", "argmin"]))
            kw = {
                "axis": int(rng.integers(-rank, rank)),
                "keepdims": bool(rng.random() < 0.5),
                "select_last_index": bool(rng.random() < 0.3),
            }
        try:
            out = getattr(ops, op)(x, **kw, threads=int(rng.integers(0, 4)))
        except InvalidRequestError as e:
            assert str(e).startswith(f"[{op}]")
            continue
        expected = getattr(ref, op)(x, **kw)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
