"""Elementwise ops: binary arithmetic with numpy broadcasting, comparisons, logic, Where.

References follow the ONNX operator descriptions for every dtype an op allows; float16, bfloat16
and float8 inputs compute in float32 and round once (see ``_elementwise_util``). float32 nodes
lower to the native elementwise kernels (``csrc/core/elementwise.cpp``), directly or as a short
chain of them (variadic Max/Min/Sum/Mean, boolean logic through ``where``); the rest run the
reference. The unary math and activations are in ``activations``, the casts and copies in
``cast``; importing this module registers them too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops import activations, cast  # noqa: F401  (they register on import)
from phi_engine.graph.ops._elementwise_util import (
    BOOL,
    BOOL_ONLY,
    F32,
    F32_ONLY,
    F64,
    FLOATS,
    INTS,
    NUMERIC,
    WHERE_DTYPES,
    ArrayFn,
    Compute,
    as_dtype,
    check_dtype,
    check_same,
    const,
    copy,
    dtypes_are,
    quiet_op,
    unary,
    unary_infer,
    where3,
    widen,
)
from phi_engine.graph.ops._util import broadcast, tt
from phi_engine.graph.registry import InferContext, InferFn, LowerFn, OpContext

ALL = NUMERIC | {"bool", "object"}
F32_INTS = frozenset({"float32", "int32", "int64"})


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


# ---- lowering ----------------------------------------------------------------------------------


def _lower_binary(native: str, allowed: frozenset[str] = F32_ONLY) -> LowerFn:
    def lower(ctx: LowerContext) -> list[int] | None:
        if not dtypes_are(ctx, allowed, 0, 1):
            return None
        return ctx.step(native, [ctx.slot(0), ctx.slot(1)])

    return lower


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
quiet_op("BitwiseNot", (18,), infer=unary_infer(INTS))(unary(np.invert))


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


def _lower_logic(kind: str) -> LowerFn:
    """And, Or, Xor and Not on bools as native ``where`` selections."""

    def lower(ctx: LowerContext) -> list[int] | None:
        if not dtypes_are(ctx, BOOL_ONLY, *range(len(ctx.node.inputs))):
            return None
        a = ctx.slot(0)
        if kind == "Not":
            return where3(ctx, a, const(ctx, False, BOOL), const(ctx, True, BOOL))
        b = ctx.slot(1)
        if kind == "And":
            return where3(ctx, a, b, const(ctx, False, BOOL))
        if kind == "Or":
            return where3(ctx, a, const(ctx, True, BOOL), b)
        (not_b,) = ctx.step("where", [b, const(ctx, False, BOOL), const(ctx, True, BOOL)])
        return where3(ctx, a, not_b, b)

    return lower


_binary("And", (7,), BOOL_ONLY, np.logical_and, _lower_logic("And"), BOOL)
_binary("Or", (7,), BOOL_ONLY, np.logical_or, _lower_logic("Or"), BOOL)
_binary("Xor", (7,), BOOL_ONLY, np.logical_xor, _lower_logic("Xor"), BOOL)
quiet_op("Not", (1,), infer=unary_infer(BOOL_ONLY), lower=_lower_logic("Not"))(
    unary(np.logical_not)
)


def _where_infer(ctx: InferContext) -> list[TensorType]:
    check_dtype(ctx, 0, BOOL_ONLY)
    t = check_same(ctx, [1, 2], ALL)
    return [tt(t.dtype, broadcast(ctx, ctx.type(0).shape, t.shape, ctx.type(2).shape))]


def _lower_where(ctx: LowerContext) -> list[int] | None:
    if not dtypes_are(ctx, BOOL_ONLY, 0) or not dtypes_are(ctx, WHERE_DTYPES, 1, 2):
        return None
    return where3(ctx, ctx.slot(0), ctx.slot(1), ctx.slot(2))


@quiet_op("Where", (9, 16), infer=_where_infer, lower=_lower_where)
def where(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [as_dtype(np.where(x[0], x[1], x[2]), x[1].dtype)]
