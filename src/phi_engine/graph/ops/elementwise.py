"""Elementwise ops: arithmetic with numpy broadcasting, comparisons, logic, unary math, casts.

References follow the ONNX operator descriptions for every dtype an op allows; float16, bfloat16
and float8 inputs compute in float32 and round once (see ``_elementwise_util``). float32 nodes
lower to the native elementwise kernels (``csrc/core/elementwise.cpp``), directly or as a short
chain of them (HardSwish, PRelu, boolean logic through ``where``); the rest run the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._elementwise_util import (
    BOOL,
    F32,
    F64,
    FLOAT8,
    FLOATS,
    INTS,
    NUMERIC,
    SIGNED,
    WHERE_DTYPES,
    Compute,
    as_dtype,
    cast,
    check_dtype,
    check_same,
    const,
    copy,
    dtypes_are,
    erf,
    quiet_op,
    widen,
)
from phi_engine.graph.ops._util import broadcast, onnx_dtype, tt
from phi_engine.graph.registry import InferContext, InferFn, LowerFn, OpContext

ArrayFn = Callable[..., Any]

ALL = NUMERIC | {"bool", "object"}
F32_ONLY = frozenset({"float32"})
F32_INTS = frozenset({"float32", "int32", "int64"})
BOOL_ONLY = frozenset({"bool"})
FLOAT_LIKE = FLOATS | FLOAT8
NATIVE_CAST = frozenset({"float32", "float64", "int8", "uint8", "int32", "int64", "bool"})


# ---- type inference ----------------------------------------------------------------------------


def _present(ctx: InferContext) -> list[int]:
    indices = [i for i in range(ctx.num_inputs) if ctx.has(i)]
    if not indices:
        ctx.fail("at least one input is required")
    return indices


def _broadcast_infer(allowed: frozenset[str], out: np.dtype[Any] | None = None) -> InferFn:
    """All present inputs of one dtype in ``allowed``; one output of their broadcast shape."""

    def infer(ctx: InferContext) -> list[TensorType]:
        indices = _present(ctx)
        t = check_same(ctx, indices, allowed)
        shape = broadcast(ctx, *(ctx.type(i).shape for i in indices))
        return [tt(out if out is not None else t.dtype, shape)]

    return infer


def _unary_infer(allowed: frozenset[str], out: np.dtype[Any] | None = None) -> InferFn:
    def infer(ctx: InferContext) -> list[TensorType]:
        t = check_dtype(ctx, 0, allowed)
        return [tt(out if out is not None else t.dtype, t.shape)]

    return infer


# ---- lowering ----------------------------------------------------------------------------------


def _lower_binary(native: str, allowed: frozenset[str] = F32_ONLY) -> LowerFn:
    def lower(ctx: LowerContext) -> list[int] | None:
        if not dtypes_are(ctx, allowed, 0, 1):
            return None
        return ctx.step(native, [ctx.slot(0), ctx.slot(1)])

    return lower


def _lower_unary(native: str, attrs: Callable[[LowerContext], dict[str, Any] | None]) -> LowerFn:
    def lower(ctx: LowerContext) -> list[int] | None:
        found = attrs(ctx) if dtypes_are(ctx, F32_ONLY, 0) else None
        return None if found is None else ctx.step(native, [ctx.slot(0)], found)

    return lower


def _no_attrs(ctx: LowerContext) -> dict[str, Any]:
    return {}


def _lower_fold(native: str) -> LowerFn:
    """Variadic Max/Min/Sum as a chain of binary steps (one input: a copy)."""

    def lower(ctx: LowerContext) -> list[int] | None:
        indices = [i for i in range(len(ctx.node.inputs)) if ctx.has(i)]
        if not dtypes_are(ctx, F32_ONLY, *indices):
            return None
        if len(indices) == 1:
            return copy(ctx, indices[0])
        acc = ctx.slot(indices[0])
        for i in indices[1:]:
            (acc,) = ctx.step(native, [acc, ctx.slot(i)])
        assert acc is not None
        return [acc]

    return lower


def _lower_mean(ctx: LowerContext) -> list[int] | None:
    indices = [i for i in range(len(ctx.node.inputs)) if ctx.has(i)]
    if not dtypes_are(ctx, F32_ONLY, *indices):
        return None
    acc = ctx.slot(indices[0])
    for i in indices[1:]:
        (acc,) = ctx.step("add", [acc, ctx.slot(i)])
    return ctx.step("div", [acc, const(ctx, len(indices), F32)])


# ---- references --------------------------------------------------------------------------------


def _arith(fn: ArrayFn) -> Compute:
    """A binary reference on widened floats, rounded back to the first input's dtype."""

    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        return [as_dtype(fn(widen(x[0]), widen(x[1])), x[0].dtype)]

    return compute


def _compare(fn: ArrayFn) -> Compute:
    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        return [as_dtype(fn(widen(x[0]), widen(x[1])), BOOL)]

    return compute


def _unary(fn: ArrayFn) -> Compute:
    """A unary reference on widened floats, rounded back to the input's dtype."""

    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        return [as_dtype(fn(widen(x[0])), x[0].dtype)]

    return compute


def _fold(fn: ArrayFn, *, mean: bool = False) -> Compute:
    """Variadic Max/Min/Sum/Mean: ``fn`` applied left to right over the present inputs."""

    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        values = [widen(v) for v in x if v is not None]
        acc = values[0]
        for v in values[1:]:
            acc = fn(acc, v)
        if mean:
            acc = acc / np.asarray(len(values), dtype=acc.dtype)
        result = as_dtype(acc, x[0].dtype)
        return [result.copy() if result is x[0] else result]

    return compute


def _int_div(a: np.ndarray, b: np.ndarray) -> Any:
    """Integer division truncating toward zero (C semantics, as ONNX's Div tests expect)."""
    q = np.floor_divide(a, b)
    if a.dtype.kind == "i":
        q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
    return q


def _div(a: np.ndarray, b: np.ndarray) -> Any:
    return _int_div(a, b) if a.dtype.kind in "iu" else np.true_divide(a, b)


# ---- binary arithmetic -------------------------------------------------------------------------


def _binary(
    name: str,
    versions: tuple[int, ...],
    allowed: frozenset[str],
    fn: ArrayFn,
    lower: LowerFn | None = None,
    out: np.dtype[Any] | None = None,
) -> None:
    """Register a broadcasting binary op; ``out=BOOL`` makes it a comparison."""
    compute = _compare(fn) if out == BOOL else _arith(fn)
    quiet_op(name, versions, infer=_broadcast_infer(allowed, out), lower=lower)(compute)


_binary("Add", (7, 13, 14), NUMERIC, np.add, _lower_binary("add", F32_INTS))
_binary("Sub", (7, 13, 14), NUMERIC, np.subtract, _lower_binary("sub", F32_INTS))
_binary("Mul", (7, 13, 14), NUMERIC, np.multiply, _lower_binary("mul", F32_INTS))
_binary("Div", (7, 13, 14), NUMERIC, _div, _lower_binary("div"))
quiet_op("Max", (8, 12, 13), infer=_broadcast_infer(NUMERIC), lower=_lower_fold("maximum"))(
    _fold(np.maximum)
)
quiet_op("Min", (8, 12, 13), infer=_broadcast_infer(NUMERIC), lower=_lower_fold("minimum"))(
    _fold(np.minimum)
)

quiet_op("Sum", (8, 13), infer=_broadcast_infer(FLOATS), lower=_lower_fold("add"))(_fold(np.add))
quiet_op("Mean", (8, 13), infer=_broadcast_infer(FLOATS), lower=_lower_mean)(
    _fold(np.add, mean=True)
)


def _pow_infer(ctx: InferContext) -> list[TensorType]:
    base = check_dtype(ctx, 0, FLOATS | {"int32", "int64"})
    exponent = check_dtype(ctx, 1, NUMERIC)
    if ctx.version < 12 and exponent.dtype != base.dtype:
        ctx.fail("base and exponent must have the same dtype before Pow-12")
    return [tt(base.dtype, broadcast(ctx, base.shape, exponent.shape))]


def _lower_pow(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, F32_ONLY, 0):
        return None
    if ctx.dtype(1) == F32:
        return ctx.step("pow", [ctx.slot(0), ctx.slot(1)])
    value = ctx.value(1)  # a constant exponent that float32 holds exactly still lowers
    if value is None or not np.array_equal(value.astype(F32).astype(value.dtype), value):
        return None
    return ctx.step("pow", [ctx.slot(0), ctx.constant(value.astype(F32))])


@quiet_op("Pow", (7, 12, 13, 15), infer=_pow_infer, lower=_lower_pow)
def pow_(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """The result has the base's dtype; float bases compute in float64 and round once."""
    base, exponent = x[0], x[1]
    if base.dtype.kind in "iu" and exponent.dtype.kind in "iu":
        return [_int_pow(base, exponent.astype(np.int64))]
    result = np.power(widen(base).astype(F64), widen(exponent).astype(F64))
    return [as_dtype(result, base.dtype)]


def _int_pow(base: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Integer powers (wrapping); a negative exponent truncates 1 / base**-e toward zero."""
    b = base.astype(np.int64)
    result = np.power(b, np.maximum(exponent, 0))
    inverse = np.where(b == 1, 1, np.where(b == -1, np.where(exponent % 2 == 0, 1, -1), 0))
    return as_dtype(np.where(exponent < 0, inverse, result), base.dtype)


def _mod_infer(ctx: InferContext) -> list[TensorType]:
    if ctx.attr("fmod", 0) not in (0, 1):
        ctx.fail(f"fmod must be 0 or 1, got {ctx.attr('fmod')}")
    return _broadcast_infer(NUMERIC)(ctx)


@quiet_op("Mod", (10, 13, 28), infer=_mod_infer)
def mod(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """fmod=0: the sign of the divisor (floor); fmod=1: the sign of the dividend (C fmod)."""
    fn = np.fmod if ctx.attr("fmod", 0) else np.mod
    return [as_dtype(fn(widen(x[0]), widen(x[1])), x[0].dtype)]


def _bitshift_infer(ctx: InferContext) -> list[TensorType]:
    if ctx.attr("direction") not in ("LEFT", "RIGHT"):
        ctx.fail(f"direction must be 'LEFT' or 'RIGHT', got {ctx.attr('direction')!r}")
    return _broadcast_infer(INTS)(ctx)


@quiet_op("BitShift", (11, 28), infer=_bitshift_infer)
def bit_shift(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """BitShift-28: shifts outside [0, bits) leave only the sign fill (-1 or 0)."""
    a, shift = x[0], x[1].astype(np.int64)
    inside = (shift >= 0) & (shift < a.dtype.itemsize * 8)
    amount = np.where(inside, shift, 0).astype(a.dtype)
    if ctx.attr("direction") == "LEFT":
        return [as_dtype(np.where(inside, np.left_shift(a, amount), 0), a.dtype)]
    fill = np.where(a < 0, -1, 0) if a.dtype.kind == "i" else 0
    return [as_dtype(np.where(inside, np.right_shift(a, amount), fill), a.dtype)]


_binary("BitwiseAnd", (18,), INTS, np.bitwise_and)
_binary("BitwiseOr", (18,), INTS, np.bitwise_or)
_binary("BitwiseXor", (18,), INTS, np.bitwise_xor)
quiet_op("BitwiseNot", (18,), infer=_unary_infer(INTS))(_unary(np.invert))


# ---- comparisons, logic, Where -----------------------------------------------------------------

_binary("Equal", (7, 11, 13, 19), ALL, np.equal, _lower_binary("equal", F32_INTS), BOOL)
_binary("Less", (7, 9, 13), NUMERIC, np.less, _lower_binary("less", F32_INTS), BOOL)
_binary("Greater", (7, 9, 13), NUMERIC, np.greater, _lower_binary("greater", F32_INTS), BOOL)
_binary(
    "LessOrEqual", (12, 16), NUMERIC, np.less_equal, _lower_binary("less_equal", F32_INTS), BOOL
)
_binary(
    "GreaterOrEqual",
    (12, 16),
    NUMERIC,
    np.greater_equal,
    _lower_binary("greater_equal", F32_INTS),
    BOOL,
)


def _where3(ctx: LowerContext, cond: int | None, a: int | None, b: int | None) -> list[int]:
    return ctx.step("where", [cond, a, b])


def _lower_logic(kind: str) -> LowerFn:
    """And, Or, Xor and Not on bools as native ``where`` selections."""

    def lower(ctx: LowerContext) -> list[int] | None:
        if not dtypes_are(ctx, BOOL_ONLY, *range(len(ctx.node.inputs))):
            return None
        a = ctx.slot(0)
        if kind == "Not":
            return _where3(ctx, a, const(ctx, False, BOOL), const(ctx, True, BOOL))
        b = ctx.slot(1)
        if kind == "And":
            return _where3(ctx, a, b, const(ctx, False, BOOL))
        if kind == "Or":
            return _where3(ctx, a, const(ctx, True, BOOL), b)
        (not_b,) = ctx.step("where", [b, const(ctx, False, BOOL), const(ctx, True, BOOL)])
        return _where3(ctx, a, not_b, b)

    return lower


_binary("And", (7,), BOOL_ONLY, np.logical_and, _lower_logic("And"), BOOL)
_binary("Or", (7,), BOOL_ONLY, np.logical_or, _lower_logic("Or"), BOOL)
_binary("Xor", (7,), BOOL_ONLY, np.logical_xor, _lower_logic("Xor"), BOOL)
quiet_op("Not", (1,), infer=_unary_infer(BOOL_ONLY), lower=_lower_logic("Not"))(
    _unary(np.logical_not)
)


def _where_infer(ctx: InferContext) -> list[TensorType]:
    check_dtype(ctx, 0, BOOL_ONLY)
    t = check_same(ctx, [1, 2], ALL)
    return [tt(t.dtype, broadcast(ctx, ctx.type(0).shape, t.shape, ctx.type(2).shape))]


def _lower_where(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, BOOL_ONLY, 0) or not dtypes_are(ctx, WHERE_DTYPES, 1, 2):
        return None
    return _where3(ctx, ctx.slot(0), ctx.slot(1), ctx.slot(2))


@quiet_op("Where", (9, 16), infer=_where_infer, lower=_lower_where)
def where(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [as_dtype(np.where(x[0], x[1], x[2]), x[1].dtype)]


# ---- unary math --------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> Any:
    # exp of a non-positive argument only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> Any:
    return np.logaddexp(np.zeros_like(x), x)  # log(exp(x) + 1) without overflow


_UNARY: list[tuple[str, tuple[int, ...], frozenset[str], ArrayFn, str | None]] = [
    ("Abs", (6, 13), NUMERIC, np.abs, "abs"),
    ("Neg", (6, 13), FLOATS | SIGNED, np.negative, "neg"),
    ("Sign", (9, 13), NUMERIC, np.sign, None),
    ("Relu", (6, 13, 14), FLOATS | SIGNED, lambda x: np.maximum(x, 0), "relu"),
    ("Exp", (6, 13), FLOATS, np.exp, "exp"),
    ("Log", (6, 13), FLOATS, np.log, "log"),
    ("Sqrt", (6, 13), FLOATS, np.sqrt, "sqrt"),
    ("Reciprocal", (6, 13), FLOATS, np.reciprocal, "reciprocal"),
    ("Tanh", (6, 13), FLOATS, np.tanh, "tanh"),
    ("Sigmoid", (6, 13), FLOATS, _sigmoid, "sigmoid"),
    ("Erf", (9, 13), FLOATS, erf, "erf"),
    ("Floor", (6, 13), FLOATS, np.floor, None),
    ("Ceil", (6, 13), FLOATS, np.ceil, None),
    ("Round", (11, 22), FLOATS, np.round, None),  # half to even, like numpy
    ("Sin", (7, 22), FLOATS, np.sin, None),
    ("Cos", (7, 22), FLOATS, np.cos, None),
    ("Tan", (7, 22), FLOATS, np.tan, None),
    ("Asin", (7, 22), FLOATS, np.arcsin, None),
    ("Acos", (7, 22), FLOATS, np.arccos, None),
    ("Atan", (7, 22), FLOATS, np.arctan, None),
    ("Sinh", (9, 22), FLOATS, np.sinh, None),
    ("Cosh", (9, 22), FLOATS, np.cosh, None),
    ("Asinh", (9, 22), FLOATS, np.arcsinh, None),
    ("Acosh", (9, 22), FLOATS, np.arccosh, None),
    ("Atanh", (9, 22), FLOATS, np.arctanh, None),
    ("Softplus", (1, 22), FLOATS, _softplus, None),
    ("Softsign", (1, 22), FLOATS, lambda x: x / (1 + np.abs(x)), None),
    ("Mish", (18, 22), FLOATS, lambda x: x * np.tanh(_softplus(x)), None),
]

for _name, _versions, _allowed, _fn, _native in _UNARY:
    quiet_op(
        _name,
        _versions,
        infer=_unary_infer(_allowed),
        lower=None if _native is None else _lower_unary(_native, _no_attrs),
    )(_unary(_fn))


def _lower_is_nan(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, F32_ONLY, 0):
        return None
    (same,) = ctx.step("equal", [ctx.slot(0), ctx.slot(0)])  # false exactly for NaN
    return _where3(ctx, same, const(ctx, False, BOOL), const(ctx, True, BOOL))


@quiet_op("IsNaN", (9, 13, 20), infer=_unary_infer(FLOAT_LIKE, BOOL), lower=_lower_is_nan)
def is_nan(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [as_dtype(np.isnan(widen(x[0])), BOOL)]


@quiet_op("IsInf", (10, 20), infer=_unary_infer(FLOAT_LIKE, BOOL))
def is_inf(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    v = widen(x[0])
    positive = np.isposinf(v) if ctx.attr("detect_positive", 1) else np.zeros(v.shape, BOOL)
    negative = np.isneginf(v) if ctx.attr("detect_negative", 1) else np.zeros(v.shape, BOOL)
    return [as_dtype(positive | negative, BOOL)]


# ---- activations with attributes ---------------------------------------------------------------


def _activation(
    name: str,
    versions: tuple[int, ...],
    fn: Callable[[OpContext, np.ndarray], Any],
    lower: LowerFn | None = None,
    infer: InferFn | None = None,
) -> None:
    """Register a float activation ``fn(ctx, widened x)`` whose result keeps x's dtype."""

    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        return [as_dtype(fn(ctx, widen(x[0])), x[0].dtype)]

    quiet_op(name, versions, infer=infer or _unary_infer(FLOATS), lower=lower)(compute)


def _f32_attr(ctx: OpContext, name: str, default: float) -> float | None:
    """A float attribute as the native kernels take it (None: not finite in float32)."""
    value = float(np.float32(ctx.attr(name, default)))
    return value if np.isfinite(value) else None


def _lower_leaky(ctx: LowerContext) -> dict[str, Any] | None:
    alpha = _f32_attr(ctx, "alpha", 0.01)
    return None if alpha is None else {"alpha": alpha}


def _lower_gelu(ctx: LowerContext) -> list[int] | None:
    native = {"none": "gelu", "tanh": "gelu_tanh"}.get(ctx.attr("approximate", "none"))
    if native is None or not dtypes_are(ctx, F32_ONLY, 0):
        return None
    return ctx.step(native, [ctx.slot(0)])


def _hard_sigmoid_steps(ctx: LowerContext, alpha: float, beta: float) -> int:
    (scaled,) = ctx.step("mul", [ctx.slot(0), const(ctx, alpha, F32)])
    attrs = {"activation": "clip", "clip_min": 0.0, "clip_max": 1.0}
    (out,) = ctx.step("add", [scaled, const(ctx, beta, F32)], attrs)
    return out


def _lower_hard_sigmoid(ctx: LowerContext) -> list[int] | None:
    alpha, beta = _f32_attr(ctx, "alpha", 0.2), _f32_attr(ctx, "beta", 0.5)
    if alpha is None or beta is None or not dtypes_are(ctx, F32_ONLY, 0):
        return None
    return [_hard_sigmoid_steps(ctx, alpha, beta)]


_SIXTH = float(np.float32(1 / 6))


def _lower_hard_swish(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, F32_ONLY, 0):
        return None
    gate = _hard_sigmoid_steps(ctx, _SIXTH, 0.5)
    return ctx.step("mul", [ctx.slot(0), gate])


def _lower_swish(ctx: LowerContext) -> list[int] | None:
    alpha = _f32_attr(ctx, "alpha", 1.0)
    if alpha is None or not dtypes_are(ctx, F32_ONLY, 0):
        return None
    scaled = ctx.slot(0)
    if alpha != 1.0:
        (scaled,) = ctx.step("mul", [scaled, const(ctx, alpha, F32)])
    (gate,) = ctx.step("sigmoid", [scaled])
    return ctx.step("mul", [ctx.slot(0), gate])


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> Any:
    return np.clip(x * np.asarray(alpha, x.dtype) + np.asarray(beta, x.dtype), 0, 1)


def _gelu_infer(ctx: InferContext) -> list[TensorType]:
    if ctx.attr("approximate", "none") not in ("none", "tanh"):
        ctx.fail(f"approximate must be 'none' or 'tanh', got {ctx.attr('approximate')!r}")
    return _unary_infer(FLOATS)(ctx)


def _gelu(ctx: OpContext, x: np.ndarray) -> Any:
    if ctx.attr("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _celu(ctx: OpContext, x: np.ndarray) -> Any:
    alpha = ctx.attr("alpha", 1.0)
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


def _selu(ctx: OpContext, x: np.ndarray) -> Any:
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    return np.where(x > 0, gamma * x, gamma * alpha * np.expm1(x))


def _shrink_attrs(ctx: OpContext) -> tuple[float, float]:
    return float(ctx.attr("lambd", 0.5)), float(ctx.attr("bias", 0.0))


_activation(
    "LeakyRelu",
    (6, 16),
    lambda c, x: np.where(x < 0, x * c.attr("alpha", 0.01), x),
    _lower_unary("leaky_relu", _lower_leaky),
)
_activation("Elu", (6, 22), lambda c, x: np.where(x < 0, c.attr("alpha", 1.0) * np.expm1(x), x))
_activation("Selu", (6, 22), _selu)
_activation("Celu", (12, 28), _celu)
_activation(
    "HardSigmoid",
    (6, 22),
    lambda c, x: _hard_sigmoid(x, c.attr("alpha", 0.2), c.attr("beta", 0.5)),
    _lower_hard_sigmoid,
)
_activation("HardSwish", (14, 22), lambda c, x: x * _hard_sigmoid(x, 1 / 6, 0.5), _lower_hard_swish)
_activation("Gelu", (20,), _gelu, _lower_gelu, _gelu_infer)
_activation(
    "Swish",
    (24,),
    lambda c, x: x * _sigmoid(x * np.asarray(c.attr("alpha", 1.0), x.dtype)),
    _lower_swish,
)
_activation("ThresholdedRelu", (10, 22), lambda c, x: np.where(x > c.attr("alpha", 1.0), x, 0))


@quiet_op("Shrink", (9,), infer=_unary_infer(NUMERIC))
def shrink(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Integer inputs compute in float64 and convert back, as the float attributes require."""
    lambd, bias = _shrink_attrs(ctx)
    v = widen(x[0]) if x[0].dtype.name in FLOATS else x[0].astype(F64)
    y = np.where(v < -lambd, v + bias, np.where(v > lambd, v - bias, 0))
    return [as_dtype(y, x[0].dtype)]


def _prelu_infer(ctx: InferContext) -> list[TensorType]:
    t = check_same(ctx, [0, 1], FLOATS | {"int32", "int64", "uint32", "uint64"})
    out = broadcast(ctx, t.shape, ctx.type(1).shape)
    if t.is_static and ctx.type(1).is_static and out != t.shape:
        ctx.fail(
            f"slope {list(ctx.type(1).shape or ())} does not broadcast to X {list(t.shape or ())}"
        )
    return [t]


def _lower_prelu(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, F32_ONLY, 0, 1):
        return None
    slope = ctx.value(1)
    if slope is not None and slope.size == 1 and np.isfinite(slope).all():
        return ctx.step("leaky_relu", [ctx.slot(0)], {"alpha": float(slope.flat[0])})
    (negative,) = ctx.step("less", [ctx.slot(0), const(ctx, 0.0, F32)])
    (scaled,) = ctx.step("mul", [ctx.slot(0), ctx.slot(1)])
    return _where3(ctx, negative, scaled, ctx.slot(0))


@quiet_op("PRelu", (7, 9, 16), infer=_prelu_infer, lower=_lower_prelu)
def prelu(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    v, slope = widen(x[0]), widen(x[1])
    return [as_dtype(np.broadcast_to(np.where(v < 0, v * slope, v), v.shape), x[0].dtype)]


# ---- Clip --------------------------------------------------------------------------------------

_FLT_MAX = float(np.finfo(np.float32).max)  # Clip-6's default bounds


def _clip_infer(ctx: InferContext) -> list[TensorType]:
    t = check_dtype(ctx, 0, NUMERIC if ctx.version >= 12 else FLOATS)
    for i in (1, 2):
        if ctx.has(i):
            check_same(ctx, [0, i], NUMERIC)
            bound = ctx.type(i)
            if bound.is_static and int(np.prod(bound.static_shape())) != 1:
                ctx.fail(f"input {i} must be a scalar, got shape {list(bound.static_shape())}")
    return [t]


def _clip_bounds(ctx: OpContext, x: list[Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(min, max) as 0-d arrays of x's dtype, None when absent (Clip-6: attributes)."""
    if ctx.version < 11:
        lo, hi = ctx.attr("min", -_FLT_MAX), ctx.attr("max", _FLT_MAX)
        return np.asarray(lo, x[0].dtype), np.asarray(hi, x[0].dtype)
    bounds = [x[i].reshape(()) if len(x) > i and x[i] is not None else None for i in (1, 2)]
    return bounds[0], bounds[1]


def _lower_clip(ctx: LowerContext) -> list[int] | None:
    present = [i for i in (0, 1, 2) if ctx.has(i)]
    if not dtypes_are(ctx, F32_ONLY, *present):
        return None
    if ctx.version < 11:
        lo, hi = float(ctx.attr("min", -_FLT_MAX)), float(ctx.attr("max", _FLT_MAX))
    elif all(ctx.value(i) is not None for i in present[1:]):
        values = [ctx.value(i) if ctx.has(i) else None for i in (1, 2)]
        lo = -np.inf if values[0] is None else float(values[0].reshape(()))
        hi = np.inf if values[1] is None else float(values[1].reshape(()))
    else:
        return _lower_clip_dynamic(ctx)
    if np.isnan(lo) or np.isnan(hi) or lo == np.inf or hi == -np.inf:
        return None  # every element becomes the bound: rare, and the reference is exact
    attrs = {k: v for k, v in (("min", min(lo, hi)), ("max", hi)) if np.isfinite(v)}
    return ctx.step("clip", [ctx.slot(0)], attrs)


def _lower_clip_dynamic(ctx: LowerContext) -> list[int]:
    """Bounds known only at run time: native maximum then minimum, as the reference does."""
    out = ctx.slot(0)
    if ctx.has(1):
        (out,) = ctx.step("maximum", [out, ctx.slot(1)])
    if ctx.has(2):
        (out,) = ctx.step("minimum", [out, ctx.slot(2)])
    assert out is not None
    return [out]


@quiet_op("Clip", (6, 11, 12, 13), infer=_clip_infer, lower=_lower_clip)
def clip(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """``min(max(x, lo), hi)``: NaN stays NaN, and lo > hi gives hi everywhere (Clip-13)."""
    lo, hi = _clip_bounds(ctx, x)
    y = widen(x[0])
    if lo is not None:
        y = np.maximum(y, widen(lo))
    if hi is not None:
        y = np.minimum(y, widen(hi))
    result = as_dtype(y, x[0].dtype)
    return [result.copy() if result is x[0] else result]


# ---- Identity, Dropout, Cast -------------------------------------------------------------------


def _same_infer(ctx: InferContext) -> list[TensorType]:
    return [ctx.type(0)]


def _lower_copy(ctx: LowerContext) -> list[int] | None:
    return copy(ctx, 0)


@quiet_op("Identity", (1, 13, 14, 16, 19, 21, 23, 24, 25), infer=_same_infer, lower=_lower_copy)
def identity(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.array(x[0], copy=True)]


def _dropout_infer(ctx: InferContext) -> list[TensorType]:
    t = check_dtype(ctx, 0, FLOAT_LIKE)
    if ctx.has(1):
        check_dtype(ctx, 1, FLOAT_LIKE)
    if ctx.has(2):
        check_dtype(ctx, 2, BOOL_ONLY)
    mask = t.dtype if ctx.version < 10 else BOOL  # Dropout-7's mask has the data's type
    return [t, tt(mask, t.shape)]


def _dropout_ratio(ctx: OpContext, x: list[Any]) -> tuple[float, bool]:
    """(ratio, training): before Dropout-12 there is no training mode (inference only)."""
    if ctx.version < 12:
        return float(ctx.attr("ratio", 0.5)), False
    ratio = float(x[1].reshape(-1)[0]) if len(x) > 1 and x[1] is not None else 0.5
    training = bool(x[2].reshape(-1)[0]) if len(x) > 2 and x[2] is not None else False
    if training and not 0 <= ratio <= 1:
        ctx.fail(f"ratio must be in [0, 1], got {ratio}")
    return ratio, training


def _lower_dropout(ctx: LowerContext) -> list[int] | None:
    mask_used = len(ctx.node.outputs) > 1 and bool(ctx.node.outputs[1])
    training = ctx.value(2) if ctx.version >= 12 and ctx.has(2) else np.asarray(False)
    if mask_used or training is None or bool(training):
        return None
    return copy(ctx, 0)


@quiet_op(
    "Dropout", (7, 10, 12, 13, 22), infer=_dropout_infer, lower=_lower_dropout, deterministic=False
)
def dropout(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Training mode draws the mask from numpy's RandomState(seed) when ``seed`` is given (as
    the ONNX reference does, so seeded runs agree), else from fresh entropy."""
    data = x[0]
    ratio, training = _dropout_ratio(ctx, x)
    mask_dtype = data.dtype if ctx.version < 10 else BOOL
    if not training or ratio == 0:
        return [np.array(data, copy=True), np.ones(data.shape, mask_dtype)]
    seed = ctx.attr("seed", None)
    rng = np.random.RandomState(None if seed is None else int(seed) % 2**32)
    keep = rng.uniform(0.0, 1.0, data.shape) >= ratio
    scale = 1 / (1 - ratio) if ratio < 1 else 0.0
    y = widen(data) * keep * np.asarray(scale, widen(data).dtype)
    return [as_dtype(y, data.dtype), keep.astype(mask_dtype)]


def _cast_target(ctx: OpContext) -> np.dtype[Any]:
    code = ctx.attr("to")
    try:
        return onnx_dtype(code)
    except Exception:
        unknown: np.dtype[Any] = ctx.fail(f"cannot cast to element type {code}", UnsupportedError)
        return unknown


def _cast_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if ctx.attr("round_mode", "up") not in ("up", "down", "nearest"):
        ctx.fail(f"round_mode must be 'up', 'down' or 'nearest', got {ctx.attr('round_mode')!r}")
    to = _cast_target(ctx) if ctx.node.op_type == "Cast" else ctx.type(1).dtype
    return [tt(to, t.shape)]


def _lower_cast(ctx: LowerContext) -> list[int] | None:
    """The native ``cast`` (numpy ``astype`` semantics, which Cast has between these dtypes)."""
    dst = ctx.out_types[0].dtype
    if not dtypes_are(ctx, NATIVE_CAST, 0) or dst.name not in NATIVE_CAST:
        return None
    return ctx.step("cast", [ctx.slot(0)], {"to": dst.name})


def _cast_compute(ctx: OpContext, x: np.ndarray, to: np.dtype[Any]) -> list[np.ndarray]:
    saturate = bool(ctx.attr("saturate", 1))
    try:
        return [cast(x, to, saturate=saturate, round_mode=ctx.attr("round_mode", "up"))]
    except (ValueError, OverflowError) as exc:
        failed: list[np.ndarray] = ctx.fail(f"cannot cast to {to.name}: {exc}")
        return failed


@quiet_op("Cast", (6, 9, 13, 19, 21, 23, 24, 25, 28), infer=_cast_infer, lower=_lower_cast)
def cast_op(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _cast_compute(ctx, x[0], _cast_target(ctx))


@quiet_op("CastLike", (15, 19, 21, 23, 24, 25), infer=_cast_infer, lower=_lower_cast)
def cast_like(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _cast_compute(ctx, x[0], x[1].dtype)
