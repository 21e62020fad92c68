"""Unary math and activations: the unary ufunc ops, IsNaN, IsInf, parametric activations, Clip.

The unary ops are one table (Abs, Neg, Relu, Exp, Log, Sigmoid, Erf, the trigonometric ops,
Softplus, Mish, ...); the activations with attributes are LeakyRelu, Elu, Selu, Celu, HardSigmoid,
HardSwish, Gelu, Swish, ThresholdedRelu, Shrink and PRelu. Float references compute on widened
floats and round back to the input's dtype (see ``_elementwise_util``). float32 nodes lower to the
native unary kernels, or to a short chain of native steps (HardSigmoid, HardSwish, Swish, PRelu,
IsNaN, Clip with run-time bounds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._elementwise_util import (
    BOOL,
    F32,
    F32_ONLY,
    F64,
    FLOAT_LIKE,
    FLOATS,
    NUMERIC,
    SIGNED,
    ArrayFn,
    as_dtype,
    check_dtype,
    check_same,
    const,
    dtypes_are,
    erf,
    lower_unary,
    no_attrs,
    quiet_op,
    unary,
    unary_infer,
    where3,
    widen,
)
from phi_engine.graph.ops._util import broadcast
from phi_engine.graph.registry import InferContext, InferFn, LowerFn, OpContext

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
        infer=unary_infer(_allowed),
        lower=None if _native is None else lower_unary(_native, no_attrs),
    )(unary(_fn))


def _lower_is_nan(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, F32_ONLY, 0):
        return None
    (same,) = ctx.step("equal", [ctx.slot(0), ctx.slot(0)])  # false exactly for NaN
    return where3(ctx, same, const(ctx, False, BOOL), const(ctx, True, BOOL))


@quiet_op("IsNaN", (9, 13, 20), infer=unary_infer(FLOAT_LIKE, BOOL), lower=_lower_is_nan)
def is_nan(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [as_dtype(np.isnan(widen(x[0])), BOOL)]


@quiet_op("IsInf", (10, 20), infer=unary_infer(FLOAT_LIKE, BOOL))
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

    quiet_op(name, versions, infer=infer or unary_infer(FLOATS), lower=lower)(compute)


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
    return unary_infer(FLOATS)(ctx)


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
    lower_unary("leaky_relu", _lower_leaky),
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


@quiet_op("Shrink", (9,), infer=unary_infer(NUMERIC))
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
    return where3(ctx, negative, scaled, ctx.slot(0))


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
