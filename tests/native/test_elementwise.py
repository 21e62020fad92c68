"""Unary, binary (numpy broadcasting), comparison and where ops against the numpy reference.

Tolerances (native float32 against a float64 reference rounded to float32):
- neg, abs, sqrt, reciprocal, relu, clip, and float32 add/sub/mul/div/maximum/minimum, the
  integer ops, comparisons and where: exact (IEEE float32 / wrapping integer arithmetic is what
  numpy computes too).
- exp, log, tanh, sigmoid, erf, gelu, gelu_tanh, leaky_relu, pow and fused activations:
  rtol 2e-6, atol 1e-6 (polynomial approximations with < 5e-7 relative error, see math.h).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import phi_engine
from phi_engine import ops
from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError, ResourceError
from phi_engine.runtime import reference as ref

F32 = np.float32
LARGE = 1 << 20  # elements: well past the 64K grain, so two threads really split the work

EXACT_UNARY = ["neg", "abs", "sqrt", "reciprocal", "relu"]
APPROX_UNARY = ["exp", "log", "tanh", "sigmoid", "erf", "gelu", "gelu_tanh"]
UNARY_SHAPES = [(), (1,), (7,), (13, 17), (2, 3, 5, 7), (1031,)]


def randn(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 3.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=F32)


def rand_dtype(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # Mostly small values (ties for comparisons), some near the extremes (wrap-around).
        small = rng.integers(-5, 6, shape)
        big = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
        return np.where(rng.random(shape) < 0.8, small, big).astype(dtype)
    # Multiples of 1/4 so equal pairs occur; a few NaNs to check unordered comparisons.
    x = np.round(rng.standard_normal(shape) * 8) / 4
    return np.where(rng.random(shape) < 0.02, np.nan, x).astype(F32)


def unary_input(rng: np.random.Generator, op: str, shape: tuple[int, ...]) -> np.ndarray:
    x = randn(rng, shape)
    # log and sqrt mostly on their domain, with some negatives (NaN) left in.
    return np.abs(x) + F32(0.01) if op in ("log", "sqrt") and x.size > 3 else x


def check_unary(op: str, out: np.ndarray, x: np.ndarray) -> None:
    expected = getattr(ref, op)(x)
    assert out.dtype == F32 and out.shape == x.shape
    if op in EXACT_UNARY:
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("op", EXACT_UNARY + APPROX_UNARY)
@pytest.mark.parametrize("shape", UNARY_SHAPES)
def test_unary(rng: np.random.Generator, op: str, shape: tuple[int, ...]) -> None:
    x = unary_input(rng, op, shape)
    check_unary(op, getattr(ops, op)(x), x)


@pytest.mark.parametrize("op", EXACT_UNARY + APPROX_UNARY)
def test_unary_large_threads_agree(rng: np.random.Generator, op: str) -> None:
    x = unary_input(rng, op, (LARGE + 3,))
    one = getattr(ops, op)(x, threads=1)
    two = getattr(ops, op)(x, threads=2)
    np.testing.assert_array_equal(one, two)
    if op not in ("erf", "gelu"):  # their reference (math.erf per element) is slow at 1M
        check_unary(op, two, x)
    else:
        check_unary(op, two[:4099], x[:4099])


SPECIALS = np.array(
    [
        *(0.0, -0.0, 1.0, -1.0, 0.5, 0.625, -0.625, np.inf, -np.inf, np.nan),
        *(1e-40, -1e-40, 1e-30, 1e30, -1e30, 3.4e38, -3.4e38),  # subnormal, tiny, huge
        *(88.5, 88.8, 89.5, -87.5, -100.0, -104.0, -200.0),  # around exp's float32 range
    ],
    dtype=F32,
)


@pytest.mark.parametrize("op", EXACT_UNARY + APPROX_UNARY)
def test_unary_special_values(op: str) -> None:
    # inf, NaN, subnormals and the edges of exp's range give numpy's results.
    check_unary(op, getattr(ops, op)(SPECIALS), SPECIALS)


@pytest.mark.parametrize("shape", UNARY_SHAPES)
def test_clip_and_leaky_relu(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    x = randn(rng, shape)
    np.testing.assert_array_equal(ops.clip(x, -1.5, 2.0), ref.clip(x, -1.5, 2.0))
    np.testing.assert_array_equal(ops.clip(x, min=0.0), ref.clip(x, min=0.0))
    np.testing.assert_array_equal(ops.clip(x), x)
    np.testing.assert_allclose(ops.leaky_relu(x, 0.2), ref.leaky_relu(x, 0.2), rtol=2e-6)
    np.testing.assert_allclose(ops.leaky_relu(x), ref.leaky_relu(x), rtol=2e-6)


def test_unary_noncontiguous(rng: np.random.Generator) -> None:
    base = randn(rng, (64, 96))
    for x in (base.T, base[::3, 1::2], base[:, ::-1]):
        check_unary("exp", ops.exp(x), x)
        check_unary("neg", ops.neg(x), x)


def test_unary_errors() -> None:
    with pytest.raises(InvalidRequestError, match=r"\[exp\]"):
        ops.exp(np.ones(3, np.float64))
    with pytest.raises(InvalidRequestError, match=r"\[relu\]"):
        ops.relu(np.ones(3, np.int64))
    with pytest.raises(InvalidRequestError, match=r"\[clip\]"):
        ops.clip(np.ones(3, F32), 2.0, 1.0)
    with pytest.raises(InvalidRequestError, match=r"\[clip\]"):
        ops.clip(np.ones(3, F32), float("nan"))
    with pytest.raises(InvalidRequestError, match=r"\[leaky_relu\]"):
        ops.leaky_relu(np.ones(3, F32), float("inf"))


# ---- binary --------------------------------------------------------------------------------

BROADCASTS = [
    ((), ()),
    ((1,), (1,)),
    ((7,), ()),
    ((), (7,)),
    ((13, 17), (13, 17)),  # same shape: one flat loop
    ((13, 17), (17,)),  # row broadcast
    ((17,), (13, 17)),
    ((13, 17), (13, 1)),  # column broadcast
    ((13, 1), (13, 17)),
    ((13, 1), (1, 17)),  # both broadcast (outer product)
    ((2, 3, 5, 7), (3, 1, 7)),  # rank mismatch, general strided path
    ((2, 1, 5, 1), (3, 1, 4)),
    ((4, 1, 6), (5, 1)),
    ((3, 1, 1), (1, 4, 1)),
    ((0, 3), (3,)),  # empty
    ((3, 0), (1, 0)),
    ((1031, 3), (3,)),  # short rows: many rows per call
    ((7, 1, 5), (6, 1)),
    ((257, 1031), (1031,)),  # large row broadcast
    ((1031, 1), (1031, 257)),
]
EXACT_F32_OPS = ["add", "sub", "mul", "div", "maximum", "minimum"]
COMPARISONS = ["equal", "less", "greater", "less_equal", "greater_equal"]


@pytest.mark.parametrize("op", EXACT_F32_OPS)
@pytest.mark.parametrize(("sa", "sb"), BROADCASTS)
def test_binary_f32(
    rng: np.random.Generator, op: str, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = rand_dtype(rng, sa, F32), randn(rng, sb)
    out = getattr(ops, op)(a, b)
    expected = getattr(ref, op)(a, b)
    assert out.dtype == F32 and out.shape == np.broadcast_shapes(sa, sb)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize(("sa", "sb"), BROADCASTS[::2])
def test_binary_int(
    rng: np.random.Generator, op: str, dtype: Any, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = rand_dtype(rng, sa, dtype), rand_dtype(rng, sb, dtype)
    out = getattr(ops, op)(a, b)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, getattr(ref, op)(a, b))  # wraps around like numpy


@pytest.mark.parametrize("dtype", [F32, np.int64, np.int32])
@pytest.mark.parametrize("op", COMPARISONS)
@pytest.mark.parametrize(("sa", "sb"), BROADCASTS[::3])
def test_comparisons(
    rng: np.random.Generator, op: str, dtype: Any, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = rand_dtype(rng, sa, dtype), rand_dtype(rng, sb, dtype)
    out = getattr(ops, op)(a, b)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, getattr(ref, op)(a, b), strict=True)


@pytest.mark.parametrize("dtype", [F32, np.int64, np.int32, np.bool_])
@pytest.mark.parametrize(
    "shapes",
    [
        ((), (), ()),
        ((7,), (7,), (7,)),
        ((13, 17), (17,), ()),
        ((13, 1), (1, 17), (13, 17)),
        ((2, 1, 5), (3, 1), (1, 5)),
        ((64, 1031), (1031,), (64, 1)),
        ((1031, 1), (1031, 3), (3,)),
    ],
)
def test_where(rng: np.random.Generator, dtype: Any, shapes: tuple[tuple[int, ...], ...]) -> None:
    cond = rng.random(shapes[0]) < 0.5
    x, y = rand_dtype(rng, shapes[1], dtype), rand_dtype(rng, shapes[2], dtype)
    out = ops.where(cond, x, y)
    np.testing.assert_array_equal(out, ref.where(cond, x, y), strict=True)


def test_pow(rng: np.random.Generator) -> None:
    for sa, sb in BROADCASTS[:12]:
        a = np.abs(randn(rng, sa)) + F32(0.1)
        b = randn(rng, sb, scale=1.5)
        np.testing.assert_allclose(ops.pow(a, b), ref.pow(a, b), rtol=2e-6, atol=1e-6)
    # Negative bases: real for integral exponents, NaN otherwise (as numpy).
    a = randn(rng, (50,))
    b = np.array([2.0, 3.0, -1.0, 0.5, 1.5] * 10, F32)
    np.testing.assert_allclose(ops.pow(a, b), ref.pow(a, b), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("e", [1.0, 2.0, 0.5, -1.0, 3.0])
@pytest.mark.parametrize("eshape", [(), (1,), (1, 1)])
def test_pow_constant_exponent(rng: np.random.Generator, e: float, eshape: tuple[int, ...]) -> None:
    a = np.concatenate([randn(rng, (1000,)), SPECIALS])
    exponent = np.full(eshape, e, F32)
    out = ops.pow(a, exponent)
    assert out.shape == np.broadcast_shapes(a.shape, eshape)
    np.testing.assert_allclose(out, ref.pow(a, exponent), rtol=2e-6, atol=1e-6)


ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip"]


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("sa", "sb"), [((), ()), ((13, 17), (17,)), ((31, 1), (31, 257))])
def test_fused_activation(
    rng: np.random.Generator, op: str, act: str, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = randn(rng, sa), randn(rng, sb)
    kw = {"clip_min": -0.5, "clip_max": 0.75} if act == "clip" else {}
    out = getattr(ops, op)(a, b, act, **kw)
    expected = getattr(ref, op)(a, b, act, **kw)
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("op", "sa", "sb"),
    [
        ("add", (LARGE,), (LARGE,)),
        ("mul", (1024, 1024), (1024,)),
        ("sub", (1024, 1024), (1024, 1)),
        ("maximum", (1024, 1, 1024), (1, 3, 1)),
        ("less", (LARGE + 1,), ()),
        ("add", (1 << 18, 3), (3,)),  # short rows, split across threads by rows
        ("minimum", (4096, 1, 5), (1, 64, 1)),
    ],
)
def test_binary_large_threads_agree(
    rng: np.random.Generator, op: str, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = randn(rng, sa), randn(rng, sb)
    kw = {"activation": "gelu"} if op == "mul" else {}
    one = getattr(ops, op)(a, b, threads=1, **kw)
    two = getattr(ops, op)(a, b, threads=2, **kw)
    np.testing.assert_array_equal(one, two)
    expected = getattr(ref, op)(a, b, **kw)
    np.testing.assert_allclose(two, expected, rtol=2e-6, atol=1e-6)


def test_where_large_threads_agree(rng: np.random.Generator) -> None:
    cond = rng.random((1024, 1)) < 0.5
    x, y = randn(rng, (1024, 1024)), randn(rng, (1024,))
    one, two = ops.where(cond, x, y, threads=1), ops.where(cond, x, y, threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, ref.where(cond, x, y))


def test_binary_noncontiguous(rng: np.random.Generator) -> None:
    base = randn(rng, (60, 90))
    a = base.T  # (90, 60), Fortran order
    b = randn(rng, (120,))[::2]  # stride-2 vector of 60
    np.testing.assert_array_equal(ops.add(a, b), ref.add(a, b))
    c = base[::4, ::-3]  # (15, 30)
    d = randn(rng, (15, 2))[:, :1]  # column
    np.testing.assert_array_equal(ops.div(c, d), ref.div(c, d))
    cond = (randn(rng, (30, 15)) > 0).T
    np.testing.assert_array_equal(ops.where(cond, c, d), ref.where(cond, c, d))


def test_python_scalars_take_the_array_dtype(rng: np.random.Generator) -> None:
    x = randn(rng, (5,))
    assert ops.add(x, 1.5).dtype == F32
    np.testing.assert_array_equal(ops.sub(2.0, x), F32(2.0) - x)
    i = np.arange(5, dtype=np.int32)
    np.testing.assert_array_equal(ops.mul(i, 3), i * 3)
    np.testing.assert_array_equal(ops.less(i, 2), i < 2)
    np.testing.assert_array_equal(ops.where(i > 1, x, 0.0), np.where(i > 1, x, F32(0)))


BinaryCall = Callable[[], Any]


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("add", lambda: ops.add(np.ones(3, F32), np.ones(3, np.int64))),
        ("add", lambda: ops.add(np.ones((2, 3), F32), np.ones((2,), F32))),
        ("mul", lambda: ops.mul(np.ones((4, 2, 3), F32), np.ones((5, 3), F32), None)),
        ("add", lambda: ops.add(np.ones(3, np.float64), np.ones(3, np.float64))),
        ("div", lambda: ops.div(np.ones(3, np.int64), np.ones(3, np.int64))),
        ("pow", lambda: ops.pow(np.ones(3, np.int32), np.ones(3, np.int32))),
        ("maximum", lambda: ops.maximum(np.ones(3, np.int64), np.ones(3, np.int64))),
        ("add", lambda: ops.add(np.ones(3, np.int64), np.ones(3, np.int64), "relu")),
        ("add", lambda: ops.add(np.ones(3, F32), np.ones(3, F32), "swish")),
        ("less", lambda: ops.less(np.ones(3, F32), np.ones(3, np.int32))),
        ("equal", lambda: ops.equal(np.ones(3, np.bool_), np.ones(3, np.bool_))),
        ("add", lambda: ops.add(np.ones(3, np.int64), 0.5)),
        ("where", lambda: ops.where(np.ones(3, F32), np.ones(3, F32), np.ones(3, F32))),
        ("where", lambda: ops.where(np.ones(3, np.bool_), np.ones(3, F32), np.ones(3, np.int64))),
        ("where", lambda: ops.where(np.ones(4, np.bool_), np.ones(3, F32), np.ones(3, F32))),
    ],
)
def test_binary_errors(op: str, call: BinaryCall) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[{op}\]"):
        call()


def test_activation_only_on_add_and_mul() -> None:
    x = np.ones(3, F32)
    with pytest.raises(InvalidRequestError, match=r"\[sub\] a fused activation"):
        require_core().run_op("sub", [x, x], {"activation": "relu"}, 0)


# ---- robustness: bad arguments, huge shapes, random cases -------------------------------------

X3 = np.ones(3, F32)


@pytest.mark.parametrize(
    ("op", "call"),
    [
        # Each of these leaked a TypeError, ValueError, OverflowError or pybind11 RuntimeError.
        ("clip", lambda: ops.clip(X3, "a")),  # type: ignore[arg-type]
        ("clip", lambda: ops.clip(X3, 2**2000)),
        ("clip", lambda: ops.clip(X3, max=1e39)),  # finite as a double, inf in float32
        ("leaky_relu", lambda: ops.leaky_relu(X3, "0.1")),  # type: ignore[arg-type]
        ("add", lambda: ops.add(X3, X3, "clip", clip_min="a")),  # type: ignore[arg-type]
        ("add", lambda: ops.add(np.ones(3, np.int64), 2**70)),
        ("sub", lambda: ops.sub(np.ones(3, np.int32), 2**40)),
        ("where", lambda: ops.where(X3 > 0, np.ones(3, np.int64), 2**64)),
        ("relu", lambda: ops.relu(X3, threads=1.5)),  # type: ignore[arg-type]
        ("relu", lambda: ops.relu(X3, threads=-1)),
        ("relu", lambda: ops.relu(object())),  # type: ignore[arg-type]
        ("add", lambda: ops.add(X3, object())),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_phi_errors(op: str, call: BinaryCall) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[{op}\]"):
        call()


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({1: 0.5}, "attribute names must be strings"),
        ({"alpha": b"\x01"}, "unsupported type bytes"),
        ({"alpha": 2**64}, "does not fit in a 64-bit integer"),
        ({"alpha": [2**64]}, "does not fit in a 64-bit integer"),
        ({"alpha": [[1.0]]}, "must be a list of numbers"),
        ({"alpha": object()}, "unsupported type object"),
        ({"alpha": float("nan")}, "must be finite"),
        ({"alpha": np.float32("inf")}, "must be finite"),
    ],
)
def test_attribute_conversion_errors(attrs: dict[Any, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[leaky_relu\] .*{match}"):
        require_core().run_op("leaky_relu", [X3], attrs, 0)


def test_core_call_arguments_are_checked() -> None:
    core = require_core()
    with pytest.raises(InvalidRequestError, match=r"^\[relu\] inputs must be a list"):
        core.run_op("relu", X3, {}, 0)
    with pytest.raises(InvalidRequestError, match=r"^\[relu\] attrs must be a dict"):
        core.run_op("relu", [X3], [("a", 1)], 0)
    with pytest.raises(InvalidRequestError, match=r"^\[relu\] threads"):
        core.run_op("relu", [X3], {}, True)


def test_runtime_thread_arguments() -> None:
    core = require_core()
    # 2**40 did not fit pybind11's int conversion (TypeError); it now means "all CPUs".
    phi_engine.set_num_threads(2**40)
    try:
        np.testing.assert_array_equal(ops.relu(np.array([-1.0, 2.0], F32)), [0, 2])
    finally:
        phi_engine.set_num_threads(0)
    # An infinite or NaN duration never returned (or returned at once); too many threads queued.
    for seconds in (float("inf"), float("nan"), 0.0):
        with pytest.raises(InvalidRequestError, match=r"^\[measure_fma_peak\] seconds"):
            core.measure_fma_peak(1, seconds)
    assert core.measure_fma_peak(2**40, 0.01) > 0


def test_numpy_scalars_and_arrays_are_attributes() -> None:
    x = np.array([-2.0, 3.0], F32)
    core = require_core()
    np.testing.assert_array_equal(
        core.run_op("leaky_relu", [x], {"alpha": np.float32(0.5)})[0], [-1, 3]
    )
    np.testing.assert_array_equal(
        core.run_op("clip", [x], {"min": np.int64(-1), "max": np.array(1.0)})[0], [-1, 1]
    )
    # More threads than exist means all of them, not an overflow of the native int.
    np.testing.assert_array_equal(ops.relu(x, threads=2**40), [0, 3])


def test_broadcast_past_the_tensor_size_limit_is_a_resource_error() -> None:
    core = require_core()
    # (2^24, 1) against (1, 2^24) is 2^48 elements: the product was never checked before.
    with pytest.raises(ResourceError, match=r"^\[add\] .*would span more than"):
        core.infer("add", [("float32", (1 << 24, 1)), ("float32", (1, 1 << 24))], {})
    with pytest.raises(ResourceError, match=r"^\[relu\] input 0"):
        core.infer("relu", [("float32", (1 << 40, 1 << 40))], {})
    with pytest.raises(InvalidRequestError, match=r"^\[relu\] .*does not fit"):
        core.infer("relu", [("float32", (2**64,))], {})
    with pytest.raises(InvalidRequestError, match=r"^\[relu\] .*non-negative"):
        core.infer("relu", [("float32", (-1,))], {})


FUZZ_UNARY = EXACT_UNARY + APPROX_UNARY
FUZZ_BINARY = EXACT_F32_OPS + COMPARISONS + ["pow"]


def fuzz_shapes(rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """Three shapes that broadcast together, mostly: random ranks 0-4, size-0 and size-1 dims."""
    full = tuple(int(d) for d in rng.choice([0, 1, 1, 2, 3, 5], rng.integers(0, 5)))
    out = []
    for _ in range(3):
        s = [1 if rng.random() < 0.3 else d for d in full]
        if rng.random() < 0.05:
            s = [d + 1 for d in s]  # sometimes they do not broadcast at all
        out.append(tuple(s[rng.integers(0, len(s) + 1) :]))
    return tuple(out)


def fuzz_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normals with NaN, +inf and -inf sprinkled in: native must propagate them as numpy does."""
    x = rng.standard_normal(shape) * 3
    u = rng.random(shape)
    x = np.where(u < 0.05, np.nan, np.where(u < 0.08, np.inf, np.where(u < 0.11, -np.inf, x)))
    return np.asarray(x, F32)


def test_fuzz_matches_reference_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Random shapes (0-d, empty, broadcast or not), dtypes and values: either numpy's result or
    an InvalidRequestError naming the op; never a crash or another exception type."""
    for _ in range(1000):
        sa, sb, sc = fuzz_shapes(rng)
        kind = rng.integers(0, 3)
        if kind == 0:
            op = str(rng.choice(FUZZ_UNARY))
            args: tuple[Any, ...] = (fuzz_values(rng, sa),)
        elif kind == 1:
            op = str(rng.choice(FUZZ_BINARY))
            args = (fuzz_values(rng, sa), fuzz_values(rng, sb))
        else:
            op = "where"
            args = (rng.random(sa) < 0.5, fuzz_values(rng, sb), fuzz_values(rng, sc))
        try:
            out = getattr(ops, op)(*args, threads=int(rng.integers(0, 4)))
        except InvalidRequestError as e:
            assert str(e).startswith(f"[{op}]")
            continue
        expected = getattr(ref, op)(*args)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        if op in APPROX_UNARY or op == "pow":
            np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6, equal_nan=True)
        else:
            np.testing.assert_array_equal(out, expected)
