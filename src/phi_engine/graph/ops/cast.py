"""Casts and copies: Cast, CastLike, Identity and Dropout.

Cast follows ``_elementwise_util.cast`` (the ONNX conversion tables, float8 and sub-byte
integers included) and lowers to the native ``cast`` between the dtypes where it has numpy
``astype`` semantics. Identity, and Dropout in inference mode without its mask, lower to a native
copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._elementwise_util import (
    BOOL,
    BOOL_ONLY,
    FLOAT_LIKE,
    as_dtype,
    cast,
    check_dtype,
    copy,
    dtypes_are,
    quiet_op,
    widen,
)
from phi_engine.graph.ops._util import onnx_dtype, tt
from phi_engine.graph.registry import InferContext, OpContext

NATIVE_CAST = frozenset({"float32", "float64", "int8", "uint8", "int32", "int64", "bool"})


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
