"""Shape ops: Constant, Shape and Size, and the reshapes Reshape, Flatten, Squeeze, Unsqueeze.

Constant publishes its value, and Shape and Size theirs when the input shape is static, so shape
arithmetic folds away per shape bucket. The reshapes only reinterpret a shape: each lowers to one
native reshape, exact for every dtype the core stores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Shape, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    LATE,
    arg,
    check_dtype,
    dim_product,
    emit_reshape,
    fresh,
    fresh_dims,
    known_ints,
    native_ready,
    norm_axes,
    reshape_dims,
    static_len,
)
from phi_engine.graph.ops._util import I64, tt
from phi_engine.graph.registry import InferContext, OpContext, op, shape_bounds

# ---- Constant, Shape, Size ------------------------------------------------------------------

_CONSTANT_ATTRS = (
    "value",
    "value_float",
    "value_floats",
    "value_int",
    "value_ints",
    "value_string",
    "value_strings",
    "sparse_value",
)


def _constant_value(ctx: OpContext) -> np.ndarray:
    given = [name for name in _CONSTANT_ATTRS if name in ctx.node.attrs]
    if len(given) != 1:
        ctx.fail(f"exactly one of {', '.join(_CONSTANT_ATTRS)} must be set, got {given}")
    name = given[0]
    value = ctx.node.attrs[name]
    if name == "sparse_value":
        ctx.fail("sparse_value is not supported", UnsupportedError)
    if name == "value":
        return np.asarray(value)
    dtype = {"float": np.float32, "int": np.int64, "string": object}[name.split("_")[1].rstrip("s")]
    array = np.array(value, dtype=dtype)
    return array.reshape(-1) if name.endswith("s") else array.reshape(())


def _constant_infer(ctx: InferContext) -> list[TensorType]:
    value = _constant_value(ctx)
    ctx.set_value(0, value)
    return [tt(value.dtype, value.shape)]


@op("Constant", (1, 9, 11, 12, 13, 19, *LATE), infer=_constant_infer)
def constant(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_constant_value(ctx)]


def _shape_infer(ctx: InferContext) -> list[TensorType]:
    shape = ctx.type(0).shape
    if shape is None:
        return [tt(I64, (fresh(ctx, "rank"),))]
    start, end = shape_bounds(ctx, len(shape))
    dims = shape[start:end]
    if all(isinstance(d, int) for d in dims):
        ctx.set_value(0, np.array(dims, dtype=np.int64))
    return [tt(I64, (len(dims),))]


@op("Shape", (1, 13, 15, 19, *LATE), infer=_shape_infer)
def shape(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    start, end = shape_bounds(ctx, x[0].ndim)
    return [np.array(x[0].shape[start:end], dtype=np.int64)]


def _size_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if t.is_static:
        ctx.set_value(0, np.array(math.prod(t.static_shape()), dtype=np.int64))
    return [tt(I64, ())]


@op("Size", (1, 13, 19, *LATE), infer=_size_infer)
def size(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.array(x[0].size, dtype=np.int64)]


# ---- Reshape, Flatten, Squeeze, Unsqueeze: one native reshape each -------------------------


def _lower_as_reshape(ctx: LowerContext) -> list[int] | None:
    if not native_ready(ctx, 0):
        return None
    return [emit_reshape(ctx, ctx.slot(0), ctx.out_types[0].static_shape())]


def _allowzero(ctx: OpContext) -> bool:
    return ctx.version >= 14 and bool(ctx.attr("allowzero", 0))


def _reshape_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    check_dtype(ctx, 1, frozenset({I64}), "shape")
    target = known_ints(ctx, 1, "shape")
    if target is None:
        # Computed from shapes (x.view(x.size(0), x.size(1), 12, 32)): their symbols carry over.
        found = ctx.shape_value(1)
        if found is not None and x.shape is not None:
            return [tt(x.dtype, reshape_dims(ctx, x.shape, found, _allowzero(ctx)))]
        n = static_len(ctx, 1)
        return [tt(x.dtype, None if n is None else fresh_dims(ctx, n))]
    if x.shape is None:
        dims = [
            d if d > 0 or (d == 0 and _allowzero(ctx)) else fresh(ctx, f"d{i}")
            for i, d in enumerate(target)
        ]
        return [tt(x.dtype, dims)]
    return [tt(x.dtype, reshape_dims(ctx, x.shape, target, _allowzero(ctx)))]


@op("Reshape", (5, 13, 14, 19, *LATE), infer=_reshape_infer, lower=_lower_as_reshape)
def reshape(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    target = [int(d) for d in np.asarray(x[1]).reshape(-1)]
    dims = reshape_dims(ctx, x[0].shape, target, _allowzero(ctx))
    return [x[0].reshape(tuple(int(d) for d in dims))]


def _flatten_axis(ctx: OpContext, rank: int) -> int:
    axis = int(ctx.attr("axis", 1))
    if not -rank <= axis <= rank:
        ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _flatten_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.shape is None:
        return [tt(x.dtype, fresh_dims(ctx, 2))]
    axis = _flatten_axis(ctx, len(x.shape))
    dims = (dim_product(x.shape[:axis]), dim_product(x.shape[axis:]))
    return [tt(x.dtype, [fresh(ctx, f"d{i}") if d is None else d for i, d in enumerate(dims)])]


@op("Flatten", (1, 9, 11, 13, *LATE), infer=_flatten_infer, lower=_lower_as_reshape)
def flatten(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    axis = _flatten_axis(ctx, x[0].ndim)
    return [x[0].reshape(math.prod(x[0].shape[:axis]), math.prod(x[0].shape[axis:]))]


_ALL = object()  # Squeeze without axes: every dimension of size 1


def _axes_param(ctx: OpContext, present: bool, value: Any) -> Any:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, an input since (None: unknown)."""
    if ctx.version < 13:
        found = ctx.attr("axes", None)
        return _ALL if found is None else [int(a) for a in found]
    if not present:
        return _ALL
    return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]


def _squeezed(ctx: OpContext, shape: Shape, axes: Any) -> Shape | None:
    if axes is _ALL:
        if any(isinstance(d, str) for d in shape):
            return None  # which symbols are 1 is known per shape bucket
        return tuple(d for d in shape if d != 1)
    drop = norm_axes(ctx, axes, len(shape))
    for a in drop:
        if isinstance(shape[a], int) and shape[a] != 1:
            ctx.fail(f"cannot squeeze axis {a} of size {shape[a]} (shape {list(shape)})")
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def _squeeze_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    axes = _axes_param(ctx, ctx.has(1), ctx.value(1))
    if x.shape is None or axes is None:
        n = static_len(ctx, 1) if axes is None and ctx.has(1) else None
        rank = None if x.shape is None or n is None else len(x.shape) - n
        return [tt(x.dtype, None if rank is None else fresh_dims(ctx, rank))]
    return [tt(x.dtype, _squeezed(ctx, x.shape, axes))]


@op("Squeeze", (1, 11, 13, *LATE), infer=_squeeze_infer, lower=_lower_as_reshape)
def squeeze(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    dims = _squeezed(ctx, x[0].shape, _axes_param(ctx, arg(x, 1) is not None, arg(x, 1)))
    assert dims is not None
    return [x[0].reshape(tuple(int(d) for d in dims))]


def _unsqueezed(ctx: OpContext, shape: Shape, axes: list[int]) -> Shape:
    rank = len(shape) + len(axes)
    added = set(norm_axes(ctx, axes, rank))
    rest = iter(shape)
    return tuple(1 if i in added else next(rest) for i in range(rank))


def _unsqueeze_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    axes = _axes_param(ctx, ctx.has(1), ctx.value(1))
    if axes is _ALL:
        ctx.fail("axes are required")
    if x.shape is None or axes is None:
        n = static_len(ctx, 1) if axes is None else len(axes)
        rank = None if x.shape is None or n is None else len(x.shape) + n
        return [tt(x.dtype, None if rank is None else fresh_dims(ctx, rank))]
    return [tt(x.dtype, _unsqueezed(ctx, x.shape, axes))]


@op("Unsqueeze", (1, 11, 13, *LATE), infer=_unsqueeze_infer, lower=_lower_as_reshape)
def unsqueeze(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    axes = _axes_param(ctx, arg(x, 1) is not None, arg(x, 1))
    if axes is _ALL:
        ctx.fail("axes are required")
    return [x[0].reshape(tuple(int(d) for d in _unsqueezed(ctx, x[0].shape, axes)))]
