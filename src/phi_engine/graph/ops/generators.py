"""Generator ops: ConstantOfShape, Range, EyeLike, OneHot, and Trilu's triangular mask.

EyeLike publishes its value when the input shape is static (up to the fold limit). A ConstantOfShape
too large to fold lowers to a native gather of its one element; Trilu lowers to a native ``where``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    LATE,
    WHERE_DTYPES,
    arg,
    check_dtype,
    emit_reshape,
    emit_take,
    fresh,
    fresh_dims,
    native_ready,
    scalar_int,
    static_len,
    zero_of,
)
from phi_engine.graph.ops._util import I64, onnx_dtype, tt
from phi_engine.graph.passes import FOLD_LIMIT_BYTES
from phi_engine.graph.registry import InferContext, OpContext, op


def _fill_value(ctx: OpContext) -> np.ndarray:
    value = ctx.attr("value", None)
    if value is None:
        return np.zeros((), dtype=np.float32)
    found = np.asarray(value)
    if found.size != 1:
        ctx.fail(f"value must hold one element, got shape {list(found.shape)}")
    return found.reshape(())


def _dims_value(ctx: OpContext, value: Any) -> tuple[int, ...]:
    dims = tuple(int(d) for d in np.ravel(value))
    if any(d < 0 for d in dims):
        ctx.fail(f"shape {list(dims)} has a negative dimension")
    return dims


def _constant_of_shape_infer(ctx: InferContext) -> list[TensorType]:
    check_dtype(ctx, 0, frozenset({I64}), "shape")
    dtype, value = _fill_value(ctx).dtype, ctx.value(0)
    if value is not None:
        return [tt(dtype, _dims_value(ctx, value))]
    n = static_len(ctx, 0)
    return [tt(dtype, None if n is None else fresh_dims(ctx, n))]


def _lower_constant_of_shape(ctx: LowerContext) -> list[int] | None:
    # Only reached when too large to fold: one gather of a single element, then a reshape.
    out = ctx.out_types[0]
    if not native_ready(ctx):
        return None
    fill = ctx.constant(_fill_value(ctx).reshape(1))
    row = emit_take(ctx, fill, np.zeros(math.prod(out.static_shape()), np.int64), 0)
    return [emit_reshape(ctx, row, out.static_shape())]


@op(
    "ConstantOfShape",
    (9, 20, *LATE),
    infer=_constant_of_shape_infer,
    lower=_lower_constant_of_shape,
)
def constant_of_shape(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.full(_dims_value(ctx, x[0]), _fill_value(ctx))]


_LOW_PRECISION = frozenset({np.dtype(np.float16), onnx_dtype(16)})  # float16, bfloat16


def _range_count(ctx: OpContext, start: Any, limit: Any, delta: Any) -> int:
    """``max(ceil((limit - start) / delta), 0)``, exact for integers."""
    if np.asarray(start).dtype.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        if d == 0:
            ctx.fail("delta must not be 0")
        return max(-((s - lim) // d), 0)
    n = (float(limit) - float(start)) / float(delta) if float(delta) else math.nan
    if not math.isfinite(n):
        ctx.fail(f"start {start}, limit {limit}, delta {delta} give no finite count")
    return max(math.ceil(n), 0)


def _range_infer(ctx: InferContext) -> list[TensorType]:
    types = [ctx.type(i) for i in range(3)]
    scalars = all(t.shape is None or t.shape in ((), (1,)) for t in types)
    if len({t.dtype for t in types}) > 1 or not scalars:
        ctx.fail(f"start, limit and delta must be scalars of one dtype, got {types}")
    values = [ctx.value(i) for i in range(3)]
    if any(v is None for v in values):
        return [tt(types[0].dtype, (fresh(ctx, "n"),))]
    return [tt(types[0].dtype, (_range_count(ctx, *values),))]


@op("Range", (11, 27), infer=_range_infer)
def range_(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in x[:3])
    dtype = work = start.dtype
    if ctx.version >= 27 and dtype in _LOW_PRECISION:
        work = onnx_dtype(int(ctx.attr("stash_type", 1)))  # opset 27: float16 steps in float32
    n = _range_count(ctx, start.astype(work), limit.astype(work), delta.astype(work))
    steps = np.arange(n, dtype=work) * delta.astype(work)
    return [(start.astype(work) + steps).astype(dtype)]


def _eye_dtype(ctx: OpContext, input_dtype: np.dtype[Any]) -> np.dtype[Any]:
    code = ctx.attr("dtype", None)
    return input_dtype if code is None else onnx_dtype(int(code))


def _eye(ctx: OpContext, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    return np.eye(shape[0], shape[1], k=int(ctx.attr("k", 0)), dtype=dtype)


def _eye_like_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.rank not in (2, None):
        ctx.fail(f"input must have rank 2, got {x}")
    dtype = _eye_dtype(ctx, x.dtype)
    if x.is_static and math.prod(x.static_shape()) * dtype.itemsize <= FOLD_LIMIT_BYTES:
        ctx.set_value(0, _eye(ctx, x.static_shape(), dtype))
    return [tt(dtype, x.shape)]


@op("EyeLike", (9, 22), infer=_eye_like_infer)
def eye_like(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    if x[0].ndim != 2:
        ctx.fail(f"input must have rank 2, got shape {list(x[0].shape)}")
    return [_eye(ctx, x[0].shape, _eye_dtype(ctx, x[0].dtype))]


def _trilu_mask(ctx: OpContext, rows: int, cols: int, k: int) -> np.ndarray:
    """Where Trilu keeps elements: ``j - i >= k`` (upper) or ``j - i <= k`` (lower)."""
    diag = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    return diag >= k if int(ctx.attr("upper", 1)) else diag <= k


def _trilu_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.rank is not None and x.rank < 2:
        ctx.fail(f"input must have rank >= 2, got {x}")
    if ctx.has(1):
        check_dtype(ctx, 1, frozenset({I64}), "k")
    return [x]


def _lower_trilu(ctx: LowerContext) -> list[int] | None:
    k = ctx.value(1) if ctx.has(1) else np.array(0)
    if k is None or not native_ready(ctx, 0) or ctx.dtype(0) not in WHERE_DTYPES:
        return None
    shape = ctx.shape(0)
    mask = ctx.constant(_trilu_mask(ctx, shape[-2], shape[-1], scalar_int(ctx, k, "k")))
    zero = ctx.constant(zero_of(ctx.dtype(0)))
    return ctx.step("where", [mask, ctx.slot(0), zero])


@op("Trilu", (14,), infer=_trilu_infer, lower=_lower_trilu)
def trilu(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, k = x[0], arg(x, 1)
    k_value = 0 if k is None else scalar_int(ctx, k, "k")
    mask = _trilu_mask(ctx, data.shape[-2], data.shape[-1], k_value)
    return [np.where(mask, data, zero_of(data.dtype))]


def _one_hot_axis(ctx: OpContext, rank: int) -> int:
    axis = int(ctx.attr("axis", -1))
    if not -rank - 1 <= axis <= rank:
        ctx.fail(f"axis {axis} is out of range for an output of rank {rank + 1}")
    return axis + rank + 1 if axis < 0 else axis


def _depth(ctx: OpContext, value: Any) -> int:
    found = np.asarray(value)
    if found.size != 1:
        ctx.fail(f"depth must hold one value, got shape {list(found.shape)}")
    depth = int(found.reshape(()))
    if depth < 0:
        ctx.fail(f"depth {depth} is negative")
    return depth


def _one_hot_infer(ctx: InferContext) -> list[TensorType]:
    indices, values = ctx.type(0), ctx.type(2)
    if indices.shape is None:
        return [tt(values.dtype, None)]
    axis = _one_hot_axis(ctx, len(indices.shape))
    found = ctx.value(1)
    depth: Dim = fresh(ctx, "depth") if found is None else _depth(ctx, found)
    return [tt(values.dtype, (*indices.shape[:axis], depth, *indices.shape[axis:]))]


@op("OneHot", (9, 11, 28), infer=_one_hot_infer)
def one_hot(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    indices, depth, values = x[0], _depth(ctx, x[1]), x[2]
    if values.size != 2:
        ctx.fail(f"values must hold [off, on], got shape {list(values.shape)}")
    axis = _one_hot_axis(ctx, indices.ndim)
    idx = indices.astype(np.int64)  # float indices truncate, as a C cast does
    if ctx.version >= 11:
        idx = np.where(idx < 0, idx + depth, idx)  # opset 11: negative indices count back
    classes = np.arange(depth).reshape((depth,) + (1,) * (indices.ndim - axis))
    hot = classes == np.expand_dims(idx, axis)
    off, on = values.reshape(-1)
    return [np.where(hot, on, off).astype(values.dtype)]
