"""The elementwise ops of the graph compiler (phi_engine.graph.ops.elementwise).

Every case builds a one-node ONNX model on random inputs and runs it compiled for "cpu" (native
kernels where the op lowers) and for "reference" (numpy only); both must match an independent
expectation computed here (float64 numpy, or Python integers), and float32 cases of lowerable
ops must run without reference nodes.

Tolerances (float32): exact for moves, selections, comparisons, integer arithmetic and IEEE
add/sub/mul/div/max/min/sqrt/reciprocal/abs/neg/relu/clip; rtol 1e-5, atol 1e-6 otherwise
(native polynomial approximations have < 5e-7 relative error; the references round a float32
or float64 computation once). float16/bfloat16 results compute in float32 and round once:
compared with rtol 2**-10 (float16) and 2**-7 (bfloat16), one unit in the last place.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph import CompiledModel, compile
from phi_test_models.onnx_nodes import Arg, Const, node_model

F32, F64, F16 = np.float32, np.float64, np.float16
BF16 = np.dtype(ml_dtypes.bfloat16)
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
RTOL, ATOL = 1e-5, 1e-6  # float32/float64 results that are not exact (see the docstring)


model = functools.partial(node_model, opset=28)


def feeds(args: list[Arg]) -> dict[str, np.ndarray]:
    return {f"x{i}": a for i, a in enumerate(args) if isinstance(a, np.ndarray)}


def run(
    op_type: str,
    args: list[Arg],
    attrs: dict[str, Any] | None = None,
    *,
    outputs: int = 1,
    opset: int = 28,
    native: bool | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(cpu, reference) results per output; ``native``: whether cpu must be all native."""
    m = model(op_type, args, attrs, outputs=outputs, opset=opset)
    cpu, ref = compile(m), compile(m, device="reference")
    given = feeds(args)
    got, want = cpu.run(given), ref.run(given)
    if native is not None:
        program = cpu.program({k: v.shape for k, v in given.items()})
        assert (program.reference_nodes == []) is native, program.reference_nodes
    return [(got[f"y{j}"], want[f"y{j}"]) for j in range(outputs)]


def check(
    op_type: str,
    args: list[Arg],
    expected: np.ndarray,
    attrs: dict[str, Any] | None = None,
    *,
    exact: bool = True,
    opset: int = 28,
    native: bool | None = None,
) -> None:
    """Both devices equal ``expected`` (dtype, shape, values; exactly or within RTOL/ATOL)."""
    for actual in run(op_type, args, attrs, opset=opset, native=native)[0]:
        close(actual, expected, exact=exact)


def close(actual: np.ndarray, expected: np.ndarray, *, exact: bool = True) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if exact or expected.dtype.kind not in "fV":
        np.testing.assert_array_equal(actual, expected)
        return
    rtol, atol = {"float16": (2**-10, 2**-10), "bfloat16": (2**-7, 2**-7)}.get(
        expected.dtype.name, (RTOL, ATOL)
    )
    np.testing.assert_allclose(actual.astype(F64), expected.astype(F64), rtol=rtol, atol=atol)


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = F32) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * 3).astype(dtype)


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Random values of any numeric or bool dtype (floats via float32 normals)."""
    if np.dtype(dtype) == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    return rand_int(rng, shape, dtype) if np.dtype(dtype).kind in "iu" else randn(rng, shape, dtype)


def rand_int(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    small = rng.integers(max(info.min, -20), 21, shape)
    big = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
    return np.asarray(np.where(rng.random(shape) < 0.7, small, big)).astype(dtype)


# ---- binary arithmetic -------------------------------------------------------------------------

BROADCASTS = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((), (2, 3)), ((), ())]


@pytest.mark.parametrize(("sa", "sb"), BROADCASTS)
@pytest.mark.parametrize(
    ("op_type", "fn"),
    [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide)],
)
def test_arithmetic_float32_is_native_and_exact(
    rng: np.random.Generator, op_type: str, fn: Any, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = randn(rng, sa), randn(rng, sb)
    check(op_type, [a, b], np.asarray(fn(a.astype(F64), b.astype(F64))).astype(F32), native=True)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint16, np.uint64])
@pytest.mark.parametrize(
    ("op_type", "fn"), [("Add", int.__add__), ("Sub", int.__sub__), ("Mul", int.__mul__)]
)
def test_integer_arithmetic_wraps(
    rng: np.random.Generator, op_type: str, fn: Any, dtype: Any
) -> None:
    a, b = rand_int(rng, (4, 5), dtype), rand_int(rng, (5,), dtype)
    bits = np.dtype(dtype).itemsize * 8
    want = [[fn(int(x), int(y)) for x, y in zip(row, b, strict=True)] for row in a]
    expected = np.array([[v % 2**bits for v in row] for row in want], np.uint64).astype(dtype)
    native = np.dtype(dtype).name in ("int32", "int64")
    check(op_type, [a, b], expected, native=native)


def _trunc_div(x: int, y: int) -> int:
    q = abs(x) // abs(y)
    return q if (x < 0) == (y < 0) else -q


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_div_truncates_toward_zero(rng: np.random.Generator, dtype: Any) -> None:
    a = rand_int(rng, (6, 7), dtype)
    b = np.where((rb := rand_int(rng, (6, 7), dtype)) == 0, 3, rb).astype(dtype)
    info = np.iinfo(dtype)
    want = [_trunc_div(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel(), strict=True)]
    wrapped = [(v - info.min) % (info.max - info.min + 1) + info.min for v in want]
    check("Div", [a, b], np.array(wrapped).astype(dtype).reshape(a.shape))


@pytest.mark.parametrize("dtype", [F16, F64, BF16])
def test_float_arithmetic_other_dtypes_round_once(rng: np.random.Generator, dtype: Any) -> None:
    a, b = randn(rng, (3, 4), dtype), randn(rng, (4,), dtype)
    for op_type, fn in (("Add", np.add), ("Mul", np.multiply), ("Div", np.divide)):
        expected = fn(a.astype(F64), b.astype(F64)).astype(dtype)
        check(op_type, [a, b], expected, exact=False, native=False)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.int64])
def test_mod_integers_sign_rules(rng: np.random.Generator, dtype: Any, fmod: int) -> None:
    a = rand_int(rng, (5, 6), dtype)
    b = np.where((rb := rand_int(rng, (6,), dtype)) == 0, 7, rb).astype(dtype)
    pairs = [(int(x), int(y)) for row in a for x, y in zip(row, b, strict=True)]
    # fmod=1: the dividend's sign (C fmod); fmod=0: the divisor's sign (Python %).
    vals = [x - _trunc_div(x, y) * y if fmod else x % y for x, y in pairs]
    check("Mod", [a, b], np.array(vals).astype(dtype).reshape(a.shape), {"fmod": fmod})


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_float_special_values(fmod: int) -> None:
    x = np.array([5.5, -5.5, 5.5, -5.5, 0.0, -0.0, 3.0, -3.0, np.inf, 1.0, np.nan, 1.0], F32)
    y = np.array([2.0, 2.0, -2.0, -2.0, -2.0, 2.0, np.inf, np.inf, 2.0, 0.0, 2.0, np.nan], F32)
    want = np.array([_mod(float(a), float(b), fmod) for a, b in zip(x, y, strict=True)], F32)
    for got in run("Mod", [x, y], {"fmod": fmod})[0]:
        np.testing.assert_array_equal(got, want)
        numbers = ~np.isnan(want)  # the sign of zero results is specified too
        np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))


def _mod(a: float, b: float, fmod: int) -> float:
    """Mod-28's special cases: NaN for a NaN operand, an infinite dividend or a zero divisor;
    else C fmod (fmod=1) or Python's % (fmod=0, the divisor's sign)."""
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or b == 0:
        return math.nan
    return math.fmod(a, b) if fmod else a % b


def test_pow_float32_native_also_with_constant_integer_exponent(rng: np.random.Generator) -> None:
    x = np.abs(randn(rng, (4, 5))) + F32(0.1)
    y = randn(rng, (5,))
    check("Pow", [x, y], (x.astype(F64) ** y.astype(F64)).astype(F32), exact=False, native=True)
    cube = Const(np.array(3, np.int64))
    check("Pow", [x, cube], (x.astype(F64) ** 3).astype(F32), exact=False, native=True)


def test_pow_integer_base_float_exponent_truncates(rng: np.random.Generator) -> None:
    base = rng.integers(0, 9, (3, 4)).astype(np.int64)
    exponent = (rng.random((4,)) * 3).astype(F32)
    want = np.trunc(base.astype(F64) ** exponent.astype(F64)).astype(np.int64)
    check("Pow", [base, exponent], want, native=False)


def test_pow_integers_with_negative_exponents(rng: np.random.Generator) -> None:
    base = rng.integers(-3, 4, (3, 4)).astype(np.int32)
    exponent = rng.integers(-2, 5, (3, 4)).astype(np.int32)
    want = [_int_pow(int(b), int(e)) for b, e in zip(base.ravel(), exponent.ravel(), strict=True)]
    check("Pow", [base, exponent], np.array(want, np.int32).reshape(base.shape))


def _int_pow(b: int, e: int) -> int:
    """b ** e with 1 / b**-e truncated toward zero for negative e (0 for a zero base)."""
    if e >= 0:
        return b**e
    if b == 1:
        return 1
    return (1 if e % 2 == 0 else -1) if b == -1 else 0


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize(
    ("op_type", "fn"), [("Sum", np.add), ("Max", np.maximum), ("Min", np.minimum), ("Mean", None)]
)
def test_variadic_float32_native(rng: np.random.Generator, op_type: str, fn: Any, n: int) -> None:
    shapes = [(2, 3, 4), (3, 1), (4,)][:n]
    xs = [randn(rng, s) for s in shapes]
    xs[0].flat[0] = np.nan  # Max and Min propagate NaN like numpy
    acc = xs[0].astype(F64)
    for x in xs[1:]:
        acc = (fn or np.add)(acc, x.astype(F64))
    want = (acc / n if fn is None else acc).astype(F32)
    check(op_type, list(xs), np.broadcast_to(want, (2, 3, 4)).copy(), exact=False, native=True)


@pytest.mark.parametrize("dtype", [np.int8, np.uint32, np.int64, F16])
def test_max_min_other_dtypes(rng: np.random.Generator, dtype: Any) -> None:
    a, b, c = rand(rng, (3, 4), dtype), rand(rng, (4,), dtype), rand(rng, (1, 4), dtype)
    check("Max", [a, b, c], np.maximum(np.maximum(a, b), c))
    check("Min", [a, b, c], np.minimum(np.minimum(a, b), c))


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_bitshift_including_out_of_range_shifts(
    rng: np.random.Generator, dtype: Any, direction: str
) -> None:
    bits = np.dtype(dtype).itemsize * 8
    x = rand_int(rng, (4, 6), dtype)
    lo = -3 if np.dtype(dtype).kind == "i" else 0
    shift = rng.integers(lo, bits + 3, (6,)).astype(dtype)
    want = [
        _shift(int(v), int(s), bits, direction)
        for row in x
        for v, s in zip(row, shift, strict=True)
    ]
    expected = np.array([w % 2**bits for w in want], np.uint64).astype(dtype).reshape(x.shape)
    check("BitShift", [x, shift], expected, {"direction": direction})


def _shift(v: int, s: int, bits: int, direction: str) -> int:
    """BitShift-28 on Python ints: outside [0, bits) only the sign fill remains."""
    if not 0 <= s < bits:
        return -1 if direction == "RIGHT" and v < 0 else 0
    return v << s if direction == "LEFT" else v >> s


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int64, np.uint64])
def test_bitwise_ops(rng: np.random.Generator, dtype: Any) -> None:
    a, b = rand_int(rng, (3, 5), dtype), rand_int(rng, (5,), dtype)
    check("BitwiseAnd", [a, b], a & b)
    check("BitwiseOr", [a, b], a | b)
    check("BitwiseXor", [a, b], a ^ b)
    check("BitwiseNot", [a], ~a)


def test_prelu_per_channel_and_scalar_slopes_native(rng: np.random.Generator) -> None:
    x = randn(rng, (2, 3, 4, 4))
    for slope in (randn(rng, (3, 1, 1)), np.array([0.25], F32)):
        want = np.where(x < 0, x.astype(F64) * slope, x).astype(F32)
        check("PRelu", [x, Const(slope)], want, native=True)
        check("PRelu", [x, slope], want, native=True)
    ints = rand_int(rng, (3, 4), np.int32)
    check("PRelu", [ints, np.array([2], np.int32)], np.where(ints < 0, ints * 2, ints))


# ---- comparisons, logic, Where -----------------------------------------------------------------

COMPARISONS = [
    ("Equal", np.equal),
    ("Less", np.less),
    ("Greater", np.greater),
    ("LessOrEqual", np.less_equal),
    ("GreaterOrEqual", np.greater_equal),
]


@pytest.mark.parametrize("dtype", [F32, np.int32, np.int64, np.int8, np.uint64, F16, BF16])
@pytest.mark.parametrize(("op_type", "fn"), COMPARISONS)
def test_comparisons(rng: np.random.Generator, op_type: str, fn: Any, dtype: Any) -> None:
    if np.dtype(dtype).kind in "iu":
        a, b = rand_int(rng, (4, 5), dtype) % 4, rand_int(rng, (5,), dtype) % 4
    else:
        a = (np.round(rng.standard_normal((4, 5)) * 2) / 2).astype(dtype)
        b = (np.round(rng.standard_normal((5,)) * 2) / 2).astype(dtype)
        a.flat[3] = np.nan  # unordered and unequal
    want = fn(a.astype(F64), b.astype(F64))
    native = np.dtype(dtype).name in ("float32", "int32", "int64")
    check(op_type, [a, b], want, native=native)


def test_equal_strings_broadcast() -> None:
    a = np.array([["ab", "c"], ["d", "ab"]], dtype=object)
    b = np.array(["ab", "d"], dtype=object)
    check("Equal", [a, b], np.array([[True, False], [False, False]]))


@pytest.mark.parametrize("shape_b", [(3, 4), (4,), ()])
def test_logic_ops_native(rng: np.random.Generator, shape_b: tuple[int, ...]) -> None:
    a, b = rng.random((3, 4)) < 0.5, np.asarray(rng.random(shape_b) < 0.5)
    check("And", [a, b], a & b, native=True)
    check("Or", [a, b], a | b, native=True)
    check("Xor", [a, b], a ^ b, native=True)
    check("Not", [b], ~b, native=True)


@pytest.mark.parametrize("dtype", [F32, np.int64, np.int32, np.bool_, F16, np.uint8])
def test_where_broadcasts_three_ways(rng: np.random.Generator, dtype: Any) -> None:
    cond = rng.random((3, 1, 5)) < 0.5
    x, y = rand(rng, (4, 1), dtype), rand(rng, (5,), dtype)
    native = np.dtype(dtype).name in ("float32", "int64", "int32", "bool")
    check("Where", [cond, x, y], np.where(cond, x, y), native=native)


def test_where_scalars_and_strings() -> None:
    check(
        "Where",
        [np.array(True), np.array(1.5, F32), np.array(2.5, F32)],
        np.array(1.5, F32),
        native=True,
    )
    x, y = np.array(["a", "b"], dtype=object), np.array(["c", "d"], dtype=object)
    check("Where", [np.array([True, False]), x, y], np.array(["a", "d"], dtype=object))


# ---- unary math --------------------------------------------------------------------------------


def _domain(op_type: str, x: np.ndarray) -> np.ndarray:
    """Inputs inside the function's domain (NaN-producing inputs are tested separately)."""
    if op_type in ("Log", "Sqrt"):
        return np.abs(x) + 0.05
    if op_type == "Acosh":
        return np.abs(x) + 1.0
    if op_type in ("Asin", "Acos", "Atanh"):
        return np.tanh(x) * 0.95
    return x


_ERF = np.vectorize(math.erf, otypes=[F64])

UNARY: dict[str, Any] = {
    "Abs": np.abs,
    "Neg": np.negative,
    "Relu": lambda x: np.maximum(x, 0),
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Reciprocal": lambda x: 1 / x,
    "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Erf": _ERF,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sign": np.sign,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
}
NATIVE_UNARY = {"Abs", "Neg", "Relu", "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sigmoid", "Erf"}
EXACT_UNARY = {"Abs", "Neg", "Relu", "Sqrt", "Reciprocal", "Floor", "Ceil", "Sign"}


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16])
@pytest.mark.parametrize("op_type", sorted(UNARY))
def test_unary_math(rng: np.random.Generator, op_type: str, dtype: Any) -> None:
    x = _domain(op_type, randn(rng, (3, 7)).astype(F64)).astype(dtype)
    want = UNARY[op_type](x.astype(F64)).astype(dtype)
    native = op_type in NATIVE_UNARY if dtype == F32 else False
    exact = op_type in EXACT_UNARY and dtype in (F32, F64)
    check(op_type, [x], want, exact=exact, native=native)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_unary_integer_ops(rng: np.random.Generator, dtype: Any) -> None:
    x = rand_int(rng, (4, 5), dtype)
    check("Abs", [x], np.abs(x))
    check("Neg", [x], -x)
    check("Sign", [x], np.sign(x))
    check("Relu", [x], np.maximum(x, 0).astype(dtype))


def test_round_is_half_to_even_and_nan_passes_through() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6, np.nan, np.inf], F32)
    want = np.array([0, 2, 2, -0.0, -2, 2, -3, np.nan, np.inf], F32)
    check("Round", [x], want)
    for op_type in ("Exp", "Tanh", "Sigmoid", "Relu", "Abs", "Sqrt", "Erf"):
        (got, ref) = run(op_type, [np.array([np.nan, 1.0], F32)], native=True)[0]
        assert np.isnan(got[0]) and np.isnan(ref[0]), op_type


def test_isnan_isinf(rng: np.random.Generator) -> None:
    x = randn(rng, (4, 6))
    x.flat[[1, 5, 9]] = [np.nan, np.inf, -np.inf]
    check("IsNaN", [x], np.isnan(x), native=True)
    check("IsNaN", [x.astype(F16)], np.isnan(x))
    check("IsInf", [x], np.isinf(x))
    check("IsInf", [x], np.isposinf(x), {"detect_negative": 0})
    check("IsInf", [x], np.isneginf(x), {"detect_positive": 0})
    e4m3 = x.astype(ml_dtypes.float8_e4m3fn)  # no infinities in this format: inf became NaN
    check("IsInf", [e4m3], np.zeros(x.shape, bool))
    check("IsNaN", [e4m3], np.isnan(e4m3.astype(F32)))


# ---- activations with attributes ---------------------------------------------------------------


def _f32(v: float) -> float:
    """An attribute value as ONNX stores it (float32)."""
    return float(np.float32(v))


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0, 1)


SELU_A, SELU_G = 1.6732632423543772, 1.0507009873554805
ACTIVATIONS: list[tuple[str, dict[str, Any], Any, bool]] = [
    ("LeakyRelu", {"alpha": 0.1}, lambda x: np.where(x < 0, _f32(0.1) * x, x), True),
    ("LeakyRelu", {}, lambda x: np.where(x < 0, _f32(0.01) * x, x), True),
    ("Elu", {"alpha": 0.7}, lambda x: np.where(x < 0, _f32(0.7) * np.expm1(x), x), False),
    ("Selu", {}, lambda x: SELU_G * np.where(x > 0, x, SELU_A * np.expm1(x)), False),
    (
        "Celu",
        {"alpha": 1.5},
        lambda x: np.maximum(x, 0) + np.minimum(0, 1.5 * np.expm1(x / 1.5)),
        False,
    ),
    (
        "HardSigmoid",
        {"alpha": 0.3, "beta": 0.4},
        lambda x: _hard_sigmoid(x, _f32(0.3), _f32(0.4)),
        True,
    ),
    ("HardSwish", {}, lambda x: x * _hard_sigmoid(x, 1 / 6, 0.5), True),
    ("Gelu", {}, lambda x: 0.5 * x * (1 + _ERF(x / math.sqrt(2))), True),
    (
        "Gelu",
        {"approximate": "tanh"},
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        True,
    ),
    ("Swish", {}, lambda x: x / (1 + np.exp(-x)), True),
    ("Swish", {"alpha": 0.5}, lambda x: x / (1 + np.exp(-0.5 * x)), True),
    ("ThresholdedRelu", {"alpha": 0.8}, lambda x: np.where(x > _f32(0.8), x, 0), False),
    (
        "Shrink",
        {"lambd": 0.7, "bias": 0.2},
        lambda x: np.where(
            x < -_f32(0.7), x + _f32(0.2), np.where(x > _f32(0.7), x - _f32(0.2), 0)
        ),
        False,
    ),
]


@pytest.mark.parametrize("dtype", [F32, F64, F16])
@pytest.mark.parametrize(("op_type", "attrs", "fn", "lowers"), ACTIVATIONS)
def test_activations(
    rng: np.random.Generator, op_type: str, attrs: dict[str, Any], fn: Any, lowers: bool, dtype: Any
) -> None:
    x = randn(rng, (3, 8)).astype(dtype)
    want = fn(x.astype(F64)).astype(dtype)
    check(op_type, [x], want, attrs, exact=False, native=lowers and dtype == F32)


def test_shrink_integers(rng: np.random.Generator) -> None:
    x = rand_int(rng, (4, 5), np.int32) % 7
    want = np.where(x < -2, x + 1, np.where(x > 2, x - 1, 0)).astype(np.int32)
    check("Shrink", [x], want, {"lambd": 2.0, "bias": 1.0})


# ---- Clip --------------------------------------------------------------------------------------


def test_clip_constant_bounds_native(rng: np.random.Generator) -> None:
    x = randn(rng, (4, 6))
    x.flat[2] = np.nan
    lo, hi = Const(np.array(-1.5, F32)), Const(np.array(2.0, F32))
    check("Clip", [x, lo, hi], np.minimum(np.maximum(x, F32(-1.5)), F32(2.0)), native=True)
    check("Clip", [x, lo], np.maximum(x, F32(-1.5)), native=True)
    check("Clip", [x, None, hi], np.minimum(x, F32(2.0)), native=True)
    check("Clip", [x], x, native=True)


def test_clip_min_above_max_gives_max_and_runtime_bounds(rng: np.random.Generator) -> None:
    x = randn(rng, (3, 5))
    hi = np.array(-1.0, F32)
    check("Clip", [x, Const(np.array(1.0, F32)), Const(hi)], np.full(x.shape, hi), native=True)
    lo, hi = np.array(-0.5, F32), np.array(0.5, F32)
    check("Clip", [x, lo, hi], np.clip(x, lo, hi), native=True)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64, F16])
def test_clip_other_dtypes(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (4, 5), dtype)
    lo, hi = np.array(2, dtype), np.array(9, dtype)
    check("Clip", [x, lo, hi], np.minimum(np.maximum(x, lo), hi))


def test_clip_6_attributes(rng: np.random.Generator) -> None:
    x = randn(rng, (3, 4))
    want = np.minimum(np.maximum(x, F32(-0.5)), F32(1.0))
    check("Clip", [x], want, {"min": -0.5, "max": 1.0}, opset=6, native=True)


# ---- Identity, Dropout -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F16, F64, np.int64, np.int8, np.uint8, np.bool_])
def test_identity_copies_natively(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (3, 4), dtype)
    check("Identity", [x], x.copy(), native=True)


def test_identity_strings() -> None:
    x = np.array(["a", "bc"], dtype=object)
    check("Identity", [x], x.copy())


def test_dropout_inference_is_identity(rng: np.random.Generator) -> None:
    x = randn(rng, (4, 5))
    check("Dropout", [x, np.array(0.5, F32)], x.copy(), native=True)  # no training mode input
    check("Dropout", [x], x.copy(), native=True)
    (y, ref_y), (mask, ref_mask) = run("Dropout", [x], outputs=2, native=False)
    close(y, x)
    close(ref_y, x)
    close(mask, np.ones(x.shape, bool))
    close(ref_mask, mask)
    check("Dropout", [x], x.copy(), {"ratio": 0.3}, opset=10, native=True)


def test_dropout_training_is_seeded_and_scaled(rng: np.random.Generator) -> None:
    x = np.abs(randn(rng, (40, 50))) + F32(0.5)
    args = [x, Const(np.array(0.4, F32)), Const(np.array(True))]
    (y, ref_y), (mask, ref_mask) = run("Dropout", args, {"seed": 3}, outputs=2)
    close(ref_y, y)  # one seed, one mask, on both devices
    close(ref_mask, mask)
    assert 0.54 < mask.mean() < 0.66
    np.testing.assert_allclose(y[mask], x[mask] / F32(0.6), rtol=1e-6)
    assert not y[~mask].any()
    zero_ratio = [x, Const(np.array(0.0, F32)), Const(np.array(True))]
    check("Dropout", zero_ratio, x.copy())


# ---- Cast, CastLike ----------------------------------------------------------------------------

NATIVE_CASTS = [F32, F64, np.int8, np.uint8, np.int32, np.int64, np.bool_]


@pytest.mark.parametrize("dst", NATIVE_CASTS)
@pytest.mark.parametrize("src", [F32, np.int64, np.bool_, np.uint8])
def test_cast_native_pairs(rng: np.random.Generator, src: Any, dst: Any) -> None:
    if src == F32:
        x = (rng.random((5, 6)) * 200 - 100).astype(F32)  # in range of every target but uint8
        x = np.abs(x) if dst == np.uint8 else x
        x.flat[:2] = [0.0, -0.0]
    else:
        x = rand(rng, (5, 6), src)
    if np.dtype(dst).kind in "iu" and np.dtype(src).kind in "iu":
        x = (x % 100).astype(src)  # the wrap-around of narrowing is tested elsewhere
    want = np.array([_scalar_cast(v, dst) for v in x.ravel().tolist()], dst).reshape(x.shape)
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    check("Cast", [x], want, {"to": to}, native=True)


def _scalar_cast(v: Any, dst: Any) -> Any:
    """Python's conversion: bool is ``!= 0``, floats truncate toward zero into integers."""
    if dst == np.bool_:
        return v != 0
    return math.trunc(v) if np.dtype(dst).kind in "iu" else float(v)


def test_cast_float_to_bool_treats_nan_as_true() -> None:
    x = np.array([0.0, -0.0, np.nan, 1e-30, -np.inf], F32)
    check("Cast", [x], np.array([False, False, True, True, True]), {"to": onnx.TensorProto.BOOL})


def test_cast_integer_narrowing_wraps(rng: np.random.Generator) -> None:
    x = rand_int(rng, (4, 6), np.int64)
    want = np.array([(v + 128) % 256 - 128 for v in x.ravel().tolist()], np.int8).reshape(x.shape)
    check("Cast", [x], want, {"to": onnx.TensorProto.INT8}, native=True)


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 by rounding the bit pattern to nearest even (NaN kept)."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.float32(np.nan), (rounded.astype(np.uint32) << 16).view(F32))


def test_cast_to_and_from_bfloat16_and_float16(rng: np.random.Generator) -> None:
    x = randn(rng, (4, 8))
    x.flat[:3] = [np.nan, np.inf, -np.inf]
    (got, ref) = run("Cast", [x], {"to": onnx.TensorProto.BFLOAT16})[0]
    for out in (got, ref):
        assert out.dtype == BF16
        np.testing.assert_array_equal(out.astype(F32), _bf16_rne(x))
    back = _bf16_rne(x).astype(BF16)
    check("Cast", [back], _bf16_rne(x), {"to": onnx.TensorProto.FLOAT})
    check("Cast", [x], x.astype(F16), {"to": onnx.TensorProto.FLOAT16})


def _float8_table(fmt: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, codes) of every finite value of an 8-bit float format, sorted by value."""
    codes = np.arange(256, dtype=np.uint8)
    values = codes.view(fmt).astype(F64)
    keep = np.isfinite(values)
    order = np.argsort(values[keep], kind="stable")
    return values[keep][order], codes[keep][order]


def _nearest_even(v: float, values: np.ndarray, codes: np.ndarray) -> float:
    """Round to the nearest representable value, ties to the even code (RNE)."""
    d = np.abs(values - v)
    best = np.flatnonzero(d == d.min())
    even = [i for i in best if codes[i] % 2 == 0]
    return float(values[(even or list(best))[0]])


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize(
    "fmt", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fnuz]
)
def test_cast_to_float8(rng: np.random.Generator, fmt: Any, saturate: int) -> None:
    values, codes = _float8_table(fmt)
    top = float(values.max())
    x = (rng.standard_normal(40) * top / 6).astype(F32)
    x[:4] = [np.inf, -np.inf, top * 4, np.nan]
    want = []
    for v in x.tolist():
        if math.isnan(v):
            want.append(math.nan)
        elif abs(v) > top:  # only inputs far outside the range: rounding at the edge aside
            inf_ok = fmt == ml_dtypes.float8_e5m2  # the only format here with infinities
            far = math.copysign(math.inf, v) if inf_ok else math.nan
            want.append(math.copysign(top, v) if saturate else far)
        else:
            want.append(_nearest_even(v, values, codes))
    to = helper.np_dtype_to_tensor_dtype(np.dtype(fmt))
    for out in run("Cast", [x], {"to": to, "saturate": saturate})[0]:
        assert out.dtype == np.dtype(fmt)
        np.testing.assert_array_equal(out.astype(F64), np.array(want))


@pytest.mark.parametrize(
    ("mode", "saturate", "want"),
    [
        ("up", 1, [2**-3, 2, 1, 4, 2, 2, 2**-127, 2**127]),
        ("down", 1, [2**-4, 1, 0.5, 2, 2, 1, 2**-127, 2**127]),
        ("nearest", 1, [2**-3, 1, 1, 4, 2, 2, 2**-127, 2**127]),
        ("nearest", 0, [2**-3, 1, 1, 4, 2, 2, math.nan, math.nan]),
    ],
)
def test_cast_to_float8e8m0_rounding(mode: str, saturate: int, want: list[float]) -> None:
    x = np.array([0.124, 1.1, 0.75, 3.0, 2.0, 1.5, 0.0, np.inf], F32)
    attrs = {"to": onnx.TensorProto.FLOAT8E8M0, "round_mode": mode, "saturate": saturate}
    for out in run("Cast", [x], attrs)[0]:
        assert out.dtype == np.dtype(ml_dtypes.float8_e8m0fnu)
        np.testing.assert_array_equal(out.astype(F64), np.array(want))


@pytest.mark.parametrize(
    ("to", "bits", "signed"),
    [
        (onnx.TensorProto.INT4, 4, True),
        (onnx.TensorProto.UINT4, 4, False),
        (onnx.TensorProto.INT2, 2, True),
        (onnx.TensorProto.UINT2, 2, False),
    ],
)
def test_cast_to_sub_byte_integers_wraps(to: int, bits: int, signed: bool) -> None:
    x = np.arange(-9, 16, dtype=F32).reshape(5, 5)
    wrapped = [int(v) % 2**bits for v in x.ravel()]
    if signed:
        wrapped = [w - 2**bits if w >= 2 ** (bits - 1) else w for w in wrapped]
    for out in run("Cast", [x], {"to": to})[0]:
        np.testing.assert_array_equal(out.astype(np.int64).ravel(), wrapped)


def test_cast_strings_both_ways() -> None:
    x = np.array([1.5, -0.25, 100.0, np.nan, np.inf], F32)
    want = np.array(["1.5", "-0.25", "100.0", "nan", "inf"], dtype=object)
    check("Cast", [x], want, {"to": onnx.TensorProto.STRING})
    s = np.array(["3.5", "1e-5", "+INF", "-inf", "NaN", " 7 "], dtype=object)
    floats = np.array([3.5, 1e-5, np.inf, -np.inf, np.nan, 7.0], F32)
    check("Cast", [s], floats, {"to": onnx.TensorProto.FLOAT})
    ints = np.array(["100", "-7", "100.5"], dtype=object)
    check("Cast", [ints], np.array([100, -7, 100], np.int64), {"to": onnx.TensorProto.INT64})


def test_castlike_takes_the_second_inputs_dtype(rng: np.random.Generator) -> None:
    x = randn(rng, (3, 4))
    like = np.zeros((1,), np.int32)
    want = np.trunc(x).astype(np.int32)
    check("CastLike", [x, like], want, native=True)
    check("CastLike", [x, np.zeros((), F16)], x.astype(F16))


# ---- types, symbolic shapes, errors ------------------------------------------------------------


def _compiled(
    op_type: str, inputs: list[tuple[Any, list[Any] | None]], **attrs: Any
) -> CompiledModel:
    """A one-node model over declared inputs (dtype, shape with symbols; None: unknown rank)."""
    infos = [
        helper.make_tensor_value_info(f"x{i}", helper.np_dtype_to_tensor_dtype(np.dtype(d)), s)
        for i, (d, s) in enumerate(inputs)
    ]
    node = helper.make_node(
        op_type, [f"x{i}" for i in range(len(inputs))], ["y0"], name="node_under_test", **attrs
    )
    graph = helper.make_graph([node], "g", infos, [helper.make_tensor_value_info("y0", 0, None)])
    return compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28)]))


def test_symbolic_broadcast_shapes_and_dtypes() -> None:
    out = _compiled("Add", [(F32, ["N", 3]), (F32, [3])]).outputs["y0"]
    assert (out.dtype, out.shape) == (np.dtype(F32), ("N", 3))
    out = _compiled("Less", [(np.int64, ["N", 1]), (np.int64, [1, "M"])]).outputs["y0"]
    assert (out.dtype, out.shape) == (np.dtype(np.bool_), ("N", "M"))
    out = _compiled("Max", [(F32, ["B", 1, 4]), (F32, [5, 1]), (F32, [])]).outputs["y0"]
    assert out.shape == ("B", 5, 4)
    out = _compiled("Sqrt", [(F16, None)]).outputs["y0"]
    assert (out.dtype, out.shape) == (np.dtype(F16), None)
    out = _compiled("Cast", [(F32, ["N"])], to=onnx.TensorProto.INT8).outputs["y0"]
    assert (out.dtype, out.shape) == (np.dtype(np.int8), ("N",))
    out = _compiled("Pow", [(np.int32, ["N"]), (F32, [])]).outputs["y0"]
    assert (out.dtype, out.shape) == (np.dtype(np.int32), ("N",))


def test_symbolic_batch_runs_native_for_each_size(rng: np.random.Generator) -> None:
    cm = _compiled("Mul", [(F32, ["N", 3]), (F32, [3])])
    b = randn(rng, (3,))
    for n in (1, 5):
        a = randn(rng, (n, 3))
        close(cm.run({"x0": a, "x1": b})["y0"], a * b)
        assert cm.program({"x0": (n, 3), "x1": (3,)}).reference_nodes == []


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs", "message"),
    [
        ("Add", [(F32, [3]), (np.int64, [3])], {}, "different dtypes"),
        ("Add", [(F32, [3]), (F32, [4])], {}, "do not broadcast"),
        ("Sqrt", [(np.int32, [3])], {}, "dtype int32"),
        ("Not", [(F32, [3])], {}, "dtype float32"),
        ("Where", [(F32, [3]), (F32, [3]), (F32, [3])], {}, "dtype float32"),
        ("BitShift", [(np.uint8, [3]), (np.uint8, [3])], {"direction": "UP"}, "direction"),
        ("BitShift", [(F32, [3]), (F32, [3])], {"direction": "LEFT"}, "dtype float32"),
        ("Mod", [(np.int32, [3]), (np.int32, [3])], {"fmod": 2}, "fmod"),
        ("Clip", [(F32, [3]), (F32, [2])], {}, "must be a scalar"),
        ("PRelu", [(F32, [3, 5]), (F32, [4])], {}, "broadcast"),
        ("Pow", [(np.int8, [3]), (np.int8, [3])], {}, "dtype int8"),
        ("Sum", [(np.int32, [3])], {}, "dtype int32"),
        ("Gelu", [(F32, [3])], {"approximate": "fast"}, "approximate"),
        (
            "Cast",
            [(F32, [3])],
            {"to": onnx.TensorProto.FLOAT8E8M0, "round_mode": "odd"},
            "round_mode",
        ),
    ],
)
def test_invalid_nodes_are_refused_naming_the_node(
    op_type: str, inputs: list[tuple[Any, list[Any]]], attrs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as info:
        _compiled(op_type, inputs, **attrs)
    assert "node_under_test" in str(info.value)


def test_unknown_cast_target_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="element type 999"):
        _compiled("Cast", [(F32, [3])], to=999)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_run_time_errors_name_the_node(device: str) -> None:
    text = np.array(["1.5", "hello"], dtype=object)
    m = model("Cast", [text], {"to": onnx.TensorProto.FLOAT})
    with pytest.raises(InvalidRequestError, match="node_under_test"):
        compile(m, device=device).run(feeds([text]))
    x = np.ones((2, 3), F32)
    args = [x, np.array(1.5, F32), np.array(True)]
    with pytest.raises(InvalidRequestError, match=r"ratio must be in \[0, 1\]"):
        compile(model("Dropout", args), device=device).run(feeds(args))


def test_zero_d_constants_keep_scalar_shapes() -> None:
    """Plans hold 0-d initializers as shape (1,); lowered results keep the ONNX shape ()."""
    x, c = np.array(2.5, F32), Const(np.array(1.5, F32))
    check("Add", [x, c], np.array(4.0, F32), native=True)
    check("Cast", [np.array(True)], np.array(1.0, F32), {"to": onnx.TensorProto.FLOAT}, native=True)
    check("Where", [np.array(False), c, x], np.array(2.5, F32), native=True)
    check("Max", [x, c, Const(np.array(9.0, F32))], np.array(9.0, F32), native=True)
