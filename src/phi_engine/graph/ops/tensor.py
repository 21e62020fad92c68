"""Tensor and shape ops: Shape, Reshape, Transpose, Concat, Slice, Gather, Expand, and friends.

Most of these only move elements, so their native lowerings (reshape, transpose, slice, gather,
concat) are exact for every dtype the core stores. Shape, Size and EyeLike publish their values
when the input shape is static, so shape arithmetic folds away per shape bucket.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, Shape, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    INDEX_DTYPES,
    WHERE_DTYPES,
    arg,
    check_dtype,
    check_indices,
    dim_product,
    dim_sum,
    emit_reshape,
    emit_take,
    fresh,
    fresh_dims,
    index_grid,
    known_ints,
    native_ready,
    norm_axes,
    reshape_dims,
    scalar_int,
    slice_dim,
    slice_of,
    static_len,
    zero_of,
)
from phi_engine.graph.ops._util import BOOL, I64, axis_of, broadcast, onnx_dtype, tt
from phi_engine.graph.passes import FOLD_LIMIT_BYTES
from phi_engine.graph.registry import InferContext, OpContext, op

# Versions that only widened the type lists: same semantics.
_LATE = (21, 23, 24, 25)

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


@op("Constant", (1, 9, 11, 12, 13, 19, *_LATE), infer=_constant_infer)
def constant(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_constant_value(ctx)]


def _shape_bounds(ctx: OpContext, rank: int) -> tuple[int, int]:
    """ONNX Shape's start/end (opset 15): negative counts from the end, clamped to [0, rank]."""

    def clamp(v: int) -> int:
        return min(max(v + rank if v < 0 else v, 0), rank)

    return clamp(int(ctx.attr("start", 0))), clamp(int(ctx.attr("end", rank)))


def _shape_infer(ctx: InferContext) -> list[TensorType]:
    shape = ctx.type(0).shape
    if shape is None:
        return [tt(I64, (fresh(ctx, "rank"),))]
    start, end = _shape_bounds(ctx, len(shape))
    dims = shape[start:end]
    if all(isinstance(d, int) for d in dims):
        ctx.set_value(0, np.array(dims, dtype=np.int64))
    return [tt(I64, (len(dims),))]


@op("Shape", (1, 13, 15, 19, *_LATE), infer=_shape_infer)
def shape(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    start, end = _shape_bounds(ctx, x[0].ndim)
    return [np.array(x[0].shape[start:end], dtype=np.int64)]


def _size_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if t.is_static:
        ctx.set_value(0, np.array(math.prod(t.static_shape()), dtype=np.int64))
    return [tt(I64, ())]


@op("Size", (1, 13, 19, *_LATE), infer=_size_infer)
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
        n = static_len(ctx, 1)
        return [tt(x.dtype, None if n is None else fresh_dims(ctx, n))]
    if x.shape is None:
        dims = [
            d if d > 0 or (d == 0 and _allowzero(ctx)) else fresh(ctx, f"d{i}")
            for i, d in enumerate(target)
        ]
        return [tt(x.dtype, dims)]
    return [tt(x.dtype, reshape_dims(ctx, x.shape, target, _allowzero(ctx)))]


@op("Reshape", (5, 13, 14, 19, *_LATE), infer=_reshape_infer, lower=_lower_as_reshape)
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


@op("Flatten", (1, 9, 11, 13, *_LATE), infer=_flatten_infer, lower=_lower_as_reshape)
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


@op("Squeeze", (1, 11, 13, *_LATE), infer=_squeeze_infer, lower=_lower_as_reshape)
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


@op("Unsqueeze", (1, 11, 13, *_LATE), infer=_unsqueeze_infer, lower=_lower_as_reshape)
def unsqueeze(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    axes = _axes_param(ctx, arg(x, 1) is not None, arg(x, 1))
    if axes is _ALL:
        ctx.fail("axes are required")
    return [x[0].reshape(tuple(int(d) for d in _unsqueezed(ctx, x[0].shape, axes)))]


# ---- Transpose, Concat, Split, Slice ---------------------------------------------------------


def _perm(ctx: OpContext, rank: int) -> list[int]:
    perm = ctx.attr("perm", None)
    if perm is None:
        return list(range(rank))[::-1]
    result = [int(p) for p in perm]
    if sorted(result) != list(range(rank)):
        ctx.fail(f"perm {result} is not a permutation of {rank} axes")
    return result


def _transpose_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.shape is None:
        return [x]
    return [tt(x.dtype, [x.shape[p] for p in _perm(ctx, len(x.shape))])]


def _lower_transpose(ctx: LowerContext) -> list[int] | None:
    if not native_ready(ctx, 0):
        return None
    return ctx.step("transpose", [ctx.slot(0)], {"perm": _perm(ctx, len(ctx.shape(0)))})


@op("Transpose", (1, 13, *_LATE), infer=_transpose_infer, lower=_lower_transpose)
def transpose(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.transpose(x[0], _perm(ctx, x[0].ndim))]


def _concat_axis(ctx: OpContext, rank: int) -> int:
    axis = int(ctx.attr("axis") if ctx.version >= 4 else ctx.attr("axis", 1))
    if rank == 0:
        ctx.fail("inputs must have rank >= 1")
    return axis_of(ctx, axis, rank)


def _merge_dims(ctx: OpContext, dims: list[Dim], where: str) -> Dim:
    """Dimensions that must agree: the integer if any, else the first symbol."""
    ints = {d for d in dims if isinstance(d, int)}
    if len(ints) > 1:
        ctx.fail(f"{where}: sizes {sorted(ints)} differ")
    return ints.pop() if ints else dims[0]


def _concat_infer(ctx: InferContext) -> list[TensorType]:
    types = [ctx.type(i) for i in range(ctx.num_inputs)]
    if not types:
        ctx.fail("needs at least one input")
    if len({t.dtype for t in types}) > 1:
        ctx.fail(f"inputs have different dtypes {[t.dtype.name for t in types]}")
    shapes = [t.shape for t in types if t.shape is not None]
    if not shapes:
        return [tt(types[0].dtype, None)]
    if len({len(s) for s in shapes}) > 1:
        ctx.fail(f"inputs have different ranks: shapes {[list(s) for s in shapes]}")
    axis = _concat_axis(ctx, len(shapes[0]))
    dims: list[Dim] = []
    for d in range(len(shapes[0])):
        if d == axis:
            total = dim_sum([s[d] for s in shapes]) if len(shapes) == len(types) else None
            dims.append(fresh(ctx, f"d{d}") if total is None else total)
        else:
            dims.append(_merge_dims(ctx, [s[d] for s in shapes], f"dimension {d}"))
    return [tt(types[0].dtype, dims)]


def _lower_concat(ctx: LowerContext) -> list[int] | None:
    inputs = range(len(ctx.node.inputs))
    if not native_ready(ctx, *inputs):
        return None
    axis = _concat_axis(ctx, len(ctx.shape(0)))
    return ctx.step("concat", [ctx.slot(i) for i in inputs], {"axis": axis})


@op("Concat", (1, 4, 11, 13), infer=_concat_infer, lower=_lower_concat)
def concat(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    if len({a.dtype for a in x}) > 1:
        ctx.fail(f"inputs have different dtypes {[a.dtype.name for a in x]}")
    axis = _concat_axis(ctx, x[0].ndim)
    try:
        out = np.concatenate(x, axis=axis)
    except ValueError:
        ctx.fail(f"shapes {[list(a.shape) for a in x]} differ outside axis {axis}")
    return [out]


def _split_param(ctx: OpContext, present: bool, value: Any) -> tuple[bool, list[int] | None]:
    """(known, sizes): Split's ``split`` sizes, an attribute before opset 13, an input since."""
    if ctx.version < 13:
        found = ctx.attr("split", None)
        return True, None if found is None else [int(s) for s in found]
    if not present:
        return True, None
    return value is not None, None if value is None else [int(s) for s in np.ravel(value)]


def _split_sizes(ctx: OpContext, dim: Dim, split: list[int] | None, n: int) -> list[Dim]:
    if split is not None:
        if len(split) != n or any(s < 0 for s in split):
            ctx.fail(f"split {split} must have {n} non-negative sizes")
        if isinstance(dim, int) and sum(split) != dim:
            ctx.fail(f"split {split} does not add up to the axis length {dim}")
        return list(split)
    parts = ctx.attr("num_outputs", None) if ctx.version >= 18 else None
    if parts is not None and int(parts) != n:
        ctx.fail(f"num_outputs={parts} but the node has {n} outputs")
    if isinstance(dim, str):
        return [fresh(ctx, f"split{i}") for i in range(n)]
    if parts is None:
        if dim % n:
            ctx.fail(f"axis length {dim} does not split into {n} equal parts")
        return [dim // n] * n
    chunk = -(-dim // n)  # opset 18: ceil-sized chunks, the last one smaller
    sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if sizes[-1] < 0:
        ctx.fail(f"axis length {dim} does not split into {n} parts of {chunk}")
    return list(sizes)


def _split_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    n = len(ctx.node.outputs)
    if x.shape is None:
        return [x] * n
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), len(x.shape))
    known, split = _split_param(ctx, ctx.has(1), ctx.value(1))
    sizes = _split_sizes(ctx, x.shape[axis], split, n) if known else fresh_dims(ctx, n, "split")
    return [tt(x.dtype, (*x.shape[:axis], s, *x.shape[axis + 1 :])) for s in sizes]


def _lower_split(ctx: LowerContext) -> list[int] | None:
    known, sizes = _split_param(ctx, ctx.has(1), ctx.value(1))
    if not known or not native_ready(ctx, 0):
        return None
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), len(ctx.shape(0)))
    dims = _split_sizes(ctx, ctx.shape(0)[axis], sizes, len(ctx.node.outputs))
    slots, start = [], 0
    for name, size in zip(ctx.node.outputs, dims, strict=True):
        end = start + int(size)
        if name:
            attrs = {"starts": [start], "ends": [end], "axes": [axis]}
            slots += ctx.step("slice", [ctx.slot(0)], attrs)
        start = end
    return slots


@op("Split", (2, 11, 13, 18), infer=_split_infer, lower=_lower_split)
def split(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), x[0].ndim)
    _, sizes = _split_param(ctx, arg(x, 1) is not None, arg(x, 1))
    ints = [int(s) for s in _split_sizes(ctx, x[0].shape[axis], sizes, len(ctx.node.outputs))]
    offsets = np.cumsum([0, *ints])
    lead = (slice(None),) * axis
    return [x[0][(*lead, slice(int(a), int(b)))] for a, b in itertools.pairwise(offsets)]


_Params = list[list[int] | None]


def _slice_params(ctx: OpContext, present: list[bool], values: list[Any]) -> _Params | None:
    """[starts, ends, axes, steps] (None: absent); None if a present input's value is unknown.

    Before opset 10 they are attributes, and there are no steps.
    """
    if ctx.version < 10:
        axes = ctx.attr("axes", None)
        return [
            [int(v) for v in ctx.attr("starts")],
            [int(v) for v in ctx.attr("ends")],
            None if axes is None else [int(v) for v in axes],
            None,
        ]
    params: _Params = []
    for i, what in enumerate(("starts", "ends", "axes", "steps"), start=1):
        if not present[i]:
            if i < 3:
                ctx.fail(f"input {what} is required")
            params.append(None)
        elif values[i] is None:
            return None
        else:
            params.append([int(v) for v in np.ravel(values[i])])
    return params


def _slice_plan(ctx: OpContext, params: _Params, rank: int) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, validated."""
    starts, ends, axes, steps = params
    assert starts is not None and ends is not None
    n = len(starts)
    axes = list(range(n)) if axes is None else axes
    steps = [1] * n if steps is None else steps
    if not len(ends) == len(axes) == len(steps) == n:
        ctx.fail(f"starts, ends, axes and steps differ in length: {params}")
    if 0 in steps:
        ctx.fail(f"steps {steps} contain 0")
    return list(zip(norm_axes(ctx, axes, rank), starts, ends, steps, strict=True))


def _slice_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    for i in range(1, min(ctx.num_inputs, 5)):
        if ctx.has(i):
            check_dtype(ctx, i, INDEX_DTYPES, "starts, ends, axes and steps")
    present = [ctx.has(i) for i in range(5)]
    params = _slice_params(ctx, present, [ctx.value(i) for i in range(5)])
    if x.shape is None:
        return [x]
    if params is None:
        return [tt(x.dtype, fresh_dims(ctx, len(x.shape)))]
    dims = list(x.shape)
    for axis, start, end, step in _slice_plan(ctx, params, len(dims)):
        dims[axis] = slice_dim(ctx, dims[axis], start, end, step, f"d{axis}")
    return [tt(x.dtype, dims)]


def _lower_slice(ctx: LowerContext) -> list[int] | None:
    present = [ctx.has(i) for i in range(5)]
    params = _slice_params(ctx, present, [ctx.value(i) for i in range(5)])
    if params is None or not native_ready(ctx, 0) or not ctx.shape(0):
        return None
    plan = _slice_plan(ctx, params, len(ctx.shape(0)))
    attrs = {key: [p[k] for p in plan] for k, key in enumerate(("axes", "starts", "ends", "steps"))}
    return ctx.step("slice", [ctx.slot(0)], attrs)


@op("Slice", (1, 10, 11, 13), infer=_slice_infer, lower=_lower_slice)
def slice_(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    values = [arg(x, i) for i in range(5)]
    params = _slice_params(ctx, [v is not None for v in values], values)
    assert params is not None
    index = [slice(None)] * x[0].ndim
    for axis, start, end, step in _slice_plan(ctx, params, x[0].ndim):
        index[axis] = slice_of(x[0].shape[axis], start, end, step)
    return [x[0][tuple(index)]]


# ---- Gather, GatherElements, GatherND --------------------------------------------------------


def _gather_infer(ctx: InferContext) -> list[TensorType]:
    data, indices = ctx.type(0), ctx.type(1)
    check_dtype(ctx, 1, INDEX_DTYPES, "indices")
    if data.shape is None or indices.shape is None:
        return [tt(data.dtype, None)]
    if not data.shape:
        ctx.fail("data must have rank >= 1")
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), len(data.shape))
    dim, value = data.shape[axis], ctx.value(1)
    if value is not None and isinstance(dim, int):
        check_indices(ctx, value, dim, "index")
    return [tt(data.dtype, data.shape[:axis] + indices.shape + data.shape[axis + 1 :])]


def _lower_gather(ctx: LowerContext) -> list[int] | None:
    # The native kernel takes negative indices and checks the range like ONNX does.
    if not native_ready(ctx, 0, 1):
        return None
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), len(ctx.shape(0)))
    return ctx.step("gather", [ctx.slot(0), ctx.slot(1)], {"axis": axis})


@op("Gather", (1, 11, 13), infer=_gather_infer, lower=_lower_gather)
def gather(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    if x[0].ndim == 0:
        ctx.fail("data must have rank >= 1")
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), x[0].ndim)
    picked = np.take(x[0], check_indices(ctx, x[1], x[0].shape[axis], "index"), axis=axis)
    return [np.asarray(picked)]  # a 0-d result comes back as a numpy scalar


def _elements_infer(ctx: InferContext) -> list[TensorType]:
    """GatherElements: the output has the indices' shape."""
    data, indices = ctx.type(0), ctx.type(1)
    check_dtype(ctx, 1, INDEX_DTYPES, "indices")
    if data.shape is not None and indices.shape is not None:
        if len(data.shape) != len(indices.shape) or not data.shape:
            ctx.fail(f"data {data} and indices {indices} must have the same rank >= 1")
        axis_of(ctx, int(ctx.attr("axis", 0)), len(data.shape))
    return [tt(data.dtype, indices.shape)]


def _elements_index(ctx: OpContext, data: np.ndarray, indices: np.ndarray) -> tuple[Any, ...]:
    """The coordinates GatherElements/ScatterElements address in ``data``."""
    if data.ndim != indices.ndim or data.ndim == 0:
        ctx.fail(f"data {list(data.shape)} and indices {list(indices.shape)} differ in rank")
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), data.ndim)
    for d, (n, m) in enumerate(zip(data.shape, indices.shape, strict=True)):
        if d != axis and m > n:
            ctx.fail(f"indices {list(indices.shape)} exceed data {list(data.shape)} on axis {d}")
    idx = check_indices(ctx, indices, data.shape[axis], "index")
    return index_grid(idx, axis, indices.shape)


@op("GatherElements", (11, 13), infer=_elements_infer)
def gather_elements(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [x[0][_elements_index(ctx, x[0], x[1])]]


def _gather_nd_infer(ctx: InferContext) -> list[TensorType]:
    data, indices = ctx.type(0), ctx.type(1)
    check_dtype(ctx, 1, frozenset({I64}), "indices")
    b = int(ctx.attr("batch_dims", 0))
    if data.shape is None or indices.shape is None or not indices.shape:
        return [tt(data.dtype, None)]
    k = indices.shape[-1]
    if not isinstance(k, int):
        return [tt(data.dtype, None)]
    if not 0 <= b < min(len(data.shape), len(indices.shape)) or k > len(data.shape) - b:
        ctx.fail(f"batch_dims={b} and indices {indices} do not fit data {data}")
    return [tt(data.dtype, indices.shape[:-1] + data.shape[b + k :])]


@op("GatherND", (11, 12, 13), infer=_gather_nd_infer)
def gather_nd(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, indices, b = x[0], x[1], int(ctx.attr("batch_dims", 0))
    k = indices.shape[-1] if indices.ndim else -1
    if not 0 <= b < min(data.ndim, indices.ndim) or k > data.ndim - b:
        ctx.fail(f"batch_dims={b} and indices {list(indices.shape)} do not fit {list(data.shape)}")
    if indices.shape[:b] != data.shape[:b]:
        ctx.fail(f"indices {list(indices.shape)} and data {list(data.shape)} differ in batch dims")
    nb, m = math.prod(data.shape[:b]), math.prod(indices.shape[b:-1])
    idx = indices.reshape(nb, m, k)
    coords = [check_indices(ctx, idx[..., j], data.shape[b + j], "index") for j in range(k)]
    batch = np.broadcast_to(np.arange(nb).reshape(-1, 1), (nb, m))
    picked = data.reshape((nb, *data.shape[b:]))[(batch, *coords)]
    return [picked.reshape(indices.shape[:-1] + data.shape[b + k :])]


# ---- Expand, Tile, Pad: broadcasts and repeats as native gathers of constant indices ----------


def _target_shape(ctx: InferContext, x: TensorType) -> Shape | None:
    """Expand's output: the target (known, or fresh symbols) broadcast both ways with ``x``."""
    check_dtype(ctx, 1, frozenset({I64}), "shape")
    target = known_ints(ctx, 1, "shape")
    if target is not None and any(d < 0 for d in target):
        ctx.fail(f"shape {target} has a negative dimension")
    n = len(target) if target is not None else static_len(ctx, 1)
    if x.shape is None or n is None:
        return None
    if target is not None:
        return broadcast(ctx, x.shape, tuple(target))
    # Only a size > 1 on the input's side is known to survive; the rest are fresh symbols.
    lead = (1,) * (n - len(x.shape)) + x.shape
    return tuple(
        d if isinstance(d, int) and d > 1 else fresh(ctx, f"d{i}") for i, d in enumerate(lead)
    )


def _expand_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    return [tt(x.dtype, _target_shape(ctx, x))]


def _emit_broadcast(ctx: LowerContext, shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    """``x`` broadcast to ``out``: one gather of zeros per stretched axis (a reshape first if
    the rank grows, or if nothing else would copy)."""
    slot = ctx.slot(0)
    lead = (1,) * (len(out) - len(shape)) + shape
    stretched = [a for a, (d, o) in enumerate(zip(lead, out, strict=True)) if d != o]
    if lead != shape or not stretched:
        slot = emit_reshape(ctx, slot, lead)
    for axis in stretched:
        slot = emit_take(ctx, slot, np.zeros(out[axis], dtype=np.int64), axis)
    assert slot is not None
    return slot


def _lower_expand(ctx: LowerContext) -> list[int] | None:
    if not native_ready(ctx, 0):
        return None
    return [_emit_broadcast(ctx, ctx.shape(0), ctx.out_types[0].static_shape())]


@op("Expand", (8, 13), infer=_expand_infer, lower=_lower_expand)
def expand(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    target = tuple(int(d) for d in np.ravel(x[1]))
    try:
        out = np.broadcast_shapes(x[0].shape, target)
    except ValueError:
        ctx.fail(f"input {list(x[0].shape)} does not broadcast with shape {list(target)}")
    return [np.array(np.broadcast_to(x[0], out))]


def _repeats(ctx: OpContext, value: Any, rank: int) -> list[int]:
    reps = [int(r) for r in np.ravel(value)]
    if len(reps) != rank or any(r < 0 for r in reps):
        ctx.fail(f"repeats {reps} must be {rank} non-negative counts")
    return reps


def _tile_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    check_dtype(ctx, 1, frozenset({I64}), "repeats")
    value = ctx.value(1)
    if x.shape is None or value is None:
        return [tt(x.dtype, None if x.shape is None else fresh_dims(ctx, len(x.shape)))]
    dims = [
        dim_product([d, r])
        for d, r in zip(x.shape, _repeats(ctx, value, len(x.shape)), strict=True)
    ]
    return [tt(x.dtype, [fresh(ctx, f"d{i}") if d is None else d for i, d in enumerate(dims)])]


def _lower_tile(ctx: LowerContext) -> list[int] | None:
    value = ctx.value(1)
    if value is None or not native_ready(ctx, 0):
        return None
    shape = ctx.shape(0)
    reps = _repeats(ctx, value, len(shape))
    slot = ctx.slot(0)
    if all(r == 1 for r in reps):
        return [emit_reshape(ctx, slot, shape)]
    for axis, (d, r) in enumerate(zip(shape, reps, strict=True)):
        if r != 1:
            slot = emit_take(ctx, slot, np.tile(np.arange(d), r), axis)
    assert slot is not None
    return [slot]


@op("Tile", (6, 13), infer=_tile_infer, lower=_lower_tile)
def tile(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.tile(x[0], _repeats(ctx, x[1], x[0].ndim))]


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_mode(ctx: OpContext) -> str:
    mode = str(ctx.attr("mode", "constant"))
    if mode not in _PAD_MODES or (mode == "wrap" and ctx.version < 19):
        ctx.fail(f"mode {mode!r} is not one of {_PAD_MODES[: 3 if ctx.version < 19 else 4]}")
    return mode


def _pad_widths(
    ctx: OpContext, rank: int, present: list[bool], values: list[Any]
) -> list[tuple[int, int]] | None:
    """(before, after) per axis; None while the pads or axes are unknown."""
    if ctx.version < 11:
        pads: Any = ctx.attr("pads")
        axes: Any = list(range(rank))
    else:
        pads = values[1]
        axes = values[3] if present[3] else np.arange(rank)
        if pads is None or axes is None:
            return None
    pads, axes = [int(p) for p in np.ravel(pads)], norm_axes(ctx, np.ravel(axes).tolist(), rank)
    if len(pads) != 2 * len(axes):
        ctx.fail(f"pads {pads} must have 2 values per padded axis ({len(axes)} axes)")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    return widths


def _pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    _pad_mode(ctx)
    if ctx.version >= 11:
        check_dtype(ctx, 1, frozenset({I64}), "pads")
    present = [ctx.has(i) for i in range(4)]
    if x.shape is None:
        return [x]
    widths = _pad_widths(ctx, len(x.shape), present, [ctx.value(i) for i in range(4)])
    if widths is None:
        return [tt(x.dtype, fresh_dims(ctx, len(x.shape)))]
    _check_crop(ctx, x.shape, widths)
    dims = [
        d + b + e if isinstance(d, int) else d if b == e == 0 else fresh(ctx, f"d{axis}")
        for axis, (d, (b, e)) in enumerate(zip(x.shape, widths, strict=True))
    ]
    return [tt(x.dtype, dims)]


def _pad_value(ctx: OpContext, dtype: np.dtype[Any], present: bool, value: Any) -> np.ndarray:
    """The constant mode's fill as a 0-d array of ``dtype``."""
    if ctx.version < 11:
        return np.asarray(ctx.attr("value", 0.0)).astype(dtype)
    if not present:
        return zero_of(dtype)
    found = np.asarray(value)
    if found.size != 1 or found.dtype != dtype:
        ctx.fail(f"constant_value must be one {dtype.name} value, got {found.dtype}{found.shape}")
    return found.reshape(())


def _pad_index(ctx: OpContext, dim: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source positions along one axis for reflect/edge/wrap (negative pads crop first)."""
    kept = np.arange(max(-before, 0), dim - max(-after, 0))
    if kept.size == 0 and (before > 0 or after > 0):
        ctx.fail(f"cannot pad an axis of {dim} elements cropped to none in mode {mode!r}")
    index: np.ndarray = np.pad(kept, (max(before, 0), max(after, 0)), mode=mode)  # type: ignore[call-overload]
    return index


def _check_crop(ctx: OpContext, shape: Shape, widths: list[tuple[int, int]]) -> None:
    for axis, (d, (b, e)) in enumerate(zip(shape, widths, strict=True)):
        if isinstance(d, int) and max(-b, 0) + max(-e, 0) > d:
            ctx.fail(f"pads ({b}, {e}) crop more than axis {axis}'s {d} elements")


def _crop(data: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    dims = zip(data.shape, widths, strict=True)
    return data[tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in dims)]


def _emit_constant_pad(
    ctx: LowerContext, shape: tuple[int, ...], widths: list[tuple[int, int]], fill: np.ndarray
) -> int:
    """Crop with one native slice, then per padded axis concat constant blocks around it."""
    slot, cur = ctx.slot(0), list(shape)
    if any(b < 0 or e < 0 for b, e in widths):
        attrs = {
            "starts": [max(-b, 0) for b, _ in widths],
            "ends": [d - max(-e, 0) for d, (_, e) in zip(shape, widths, strict=True)],
        }
        slot = ctx.step("slice", [slot], attrs)[0]
        cur = [d - max(-b, 0) - max(-e, 0) for d, (b, e) in zip(shape, widths, strict=True)]
    for axis, (b, e) in enumerate(widths):
        if b <= 0 and e <= 0:
            continue
        blocks = [[*cur[:axis], n, *cur[axis + 1 :]] for n in (max(b, 0), max(e, 0))]
        parts = [
            ctx.constant(np.full(blocks[0], fill)),
            slot,
            ctx.constant(np.full(blocks[1], fill)),
        ]
        keep = [p for p, n in zip(parts, (b, 1, e), strict=True) if n > 0]
        slot = ctx.step("concat", keep, {"axis": axis})[0]
        cur[axis] += max(b, 0) + max(e, 0)
    if slot == ctx.slot(0):
        slot = emit_reshape(ctx, slot, shape)
    assert slot is not None
    return slot


def _lower_pad(ctx: LowerContext) -> list[int] | None:
    present, mode = [ctx.has(i) for i in range(4)], _pad_mode(ctx)
    fill_unknown = mode == "constant" and present[2] and ctx.value(2) is None
    if fill_unknown or not native_ready(ctx, 0):
        return None
    shape = ctx.shape(0)
    widths = _pad_widths(ctx, len(shape), present, [ctx.value(i) for i in range(4)])
    if widths is None:
        return None
    if mode == "constant":
        fill = _pad_value(ctx, ctx.dtype(0), present[2], ctx.value(2))
        return [_emit_constant_pad(ctx, shape, widths, fill)]
    slot = ctx.slot(0)
    for axis, (d, (b, e)) in enumerate(zip(shape, widths, strict=True)):
        if b or e:
            slot = emit_take(ctx, slot, _pad_index(ctx, d, b, e, mode), axis)
    if slot == ctx.slot(0):
        slot = emit_reshape(ctx, slot, shape)
    assert slot is not None
    return [slot]


@op("Pad", (2, 11, 13, 18, 19, *_LATE), infer=_pad_infer, lower=_lower_pad)
def pad(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, mode = x[0], _pad_mode(ctx)
    values = [arg(x, i) for i in range(4)]
    widths = _pad_widths(ctx, data.ndim, [v is not None for v in values], values)
    assert widths is not None
    _check_crop(ctx, data.shape, widths)
    if mode != "constant":
        for axis, (d, (b, e)) in enumerate(zip(data.shape, widths, strict=True)):
            if b or e:
                data = np.take(data, _pad_index(ctx, d, b, e, mode), axis=axis)
        return [data]
    fill = _pad_value(ctx, data.dtype, values[2] is not None, values[2])
    grow = [(max(b, 0), max(e, 0)) for b, e in widths]
    return [np.pad(_crop(data, widths), grow, mode="constant", constant_values=fill)]


# ---- generators: ConstantOfShape, Range, EyeLike, Trilu, OneHot -------------------------------


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
    (9, 20, *_LATE),
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


# ---- data-dependent shapes: NonZero, Compress, Unique; scans and sorts: CumSum, TopK ----------


def _non_zero_infer(ctx: InferContext) -> list[TensorType]:
    rank = ctx.type(0).rank
    return [tt(I64, (fresh(ctx, "rank") if rank is None else rank, fresh(ctx, "n")))]


@op("NonZero", (9, 13), infer=_non_zero_infer)
def non_zero(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    if x[0].ndim == 0:  # (rank, count) = (0, 0 or 1) by the spec's output shape
        return [np.zeros((0, int(bool(x[0]))), dtype=np.int64)]
    return [np.array(np.nonzero(x[0]), dtype=np.int64).reshape(x[0].ndim, -1)]


def _compress_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    check_dtype(ctx, 1, frozenset({BOOL}), "condition")
    axis = ctx.attr("axis", None)
    cond = ctx.value(1)
    count: Dim = fresh(ctx, "n") if cond is None else int(np.count_nonzero(cond))
    if axis is None:
        return [tt(x.dtype, (count,))]
    if x.shape is None:
        return [tt(x.dtype, None)]
    a = axis_of(ctx, int(axis), len(x.shape))
    return [tt(x.dtype, (*x.shape[:a], count, *x.shape[a + 1 :]))]


@op("Compress", (9, 11, 28), infer=_compress_infer)
def compress(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, cond, axis = x[0], np.ravel(x[1]), ctx.attr("axis", None)
    if axis is None:
        data, a = data.reshape(-1), 0
    else:
        a = axis_of(ctx, int(axis), data.ndim)
    if cond.size > data.shape[a] and cond[data.shape[a] :].any():
        ctx.fail(f"condition selects past the {data.shape[a]} elements of the axis")
    return [np.compress(cond[: data.shape[a]], data, axis=a)]


def _unique_infer(ctx: InferContext) -> list[TensorType]:
    x, axis = ctx.type(0), ctx.attr("axis", None)
    n = fresh(ctx, "unique")
    if axis is None:
        total = dim_product(x.shape) if x.shape is not None else None
        y: Shape | None = (n,)
    elif x.shape is None:
        total, y = None, None
    else:
        a = axis_of(ctx, int(axis), len(x.shape))
        total, y = x.shape[a], (*x.shape[:a], n, *x.shape[a + 1 :])
    inverse = (fresh(ctx, "total") if total is None else total,)
    return [tt(x.dtype, y), tt(I64, (n,)), tt(I64, inverse), tt(I64, (n,))]


@op("Unique", (11, 28), infer=_unique_infer)
def unique(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, axis = x[0], ctx.attr("axis", None)
    a = None if axis is None else axis_of(ctx, int(axis), data.ndim)
    y, first, inverse, counts = np.unique(
        data, return_index=True, return_inverse=True, return_counts=True, axis=a
    )
    outputs = (y, first, inverse.reshape(-1), counts)
    if not int(ctx.attr("sorted", 1)):
        outputs = _by_first_occurrence(*outputs, axis=a or 0)
    return [outputs[0], *(v.astype(np.int64) for v in outputs[1:])]


def _by_first_occurrence(
    y: np.ndarray, first: np.ndarray, inverse: np.ndarray, counts: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """np.unique's sorted results reordered by where each value first occurs."""
    order = np.argsort(first, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return np.take(y, order, axis=axis), first[order], position[inverse], counts[order]


def _cumsum_infer(ctx: InferContext) -> list[TensorType]:
    check_dtype(ctx, 1, INDEX_DTYPES, "axis")
    if ctx.type(1).rank not in (0, 1, None):
        ctx.fail(f"axis must be a scalar, got {ctx.type(1)}")
    return [ctx.type(0)]


@op("CumSum", (11, 14), infer=_cumsum_infer)
def cumsum(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    axis = axis_of(ctx, scalar_int(ctx, x[1], "axis"), max(data.ndim, 1))
    if data.ndim == 0:
        return [data.copy()]
    flip = bool(ctx.attr("reverse", 0))
    work = np.flip(data, axis) if flip else data
    if ctx.attr("exclusive", 0):  # shift by one: the first sum is empty
        zero = np.zeros_like(np.take(work, [0], axis=axis))
        work = np.concatenate([zero, np.take(work, np.arange(work.shape[axis] - 1), axis)], axis)
    out = np.add.accumulate(work, axis=axis, dtype=data.dtype)
    return [np.flip(out, axis) if flip else out]


def _top_k_params(ctx: OpContext, k_value: Any, rank: int) -> tuple[int | None, int]:
    """(k, axis); k is None while unknown. Before opset 10 k is an attribute."""
    axis = int(ctx.attr("axis", -1))
    axis = axis_of(ctx, axis, rank) if rank else axis
    if ctx.version < 10:
        return int(ctx.attr("k")), axis
    if k_value is None:
        return None, axis
    k = scalar_int(ctx, k_value, "K")
    if k < 0:
        ctx.fail(f"K {k} is negative")
    return k, axis


def _top_k_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if ctx.version >= 10:
        check_dtype(ctx, 1, frozenset({I64}), "K")
    if x.shape is None:
        return [x, tt(I64, None)]
    if not x.shape:
        ctx.fail("input must have rank >= 1")
    k, axis = _top_k_params(ctx, ctx.value(1) if ctx.version >= 10 else None, len(x.shape))
    dim = x.shape[axis]
    if k is not None and isinstance(dim, int) and k > dim:
        ctx.fail(f"K {k} exceeds axis {axis}'s {dim} elements")
    dims = (*x.shape[:axis], fresh(ctx, "k") if k is None else k, *x.shape[axis + 1 :])
    return [tt(x.dtype, dims), tt(I64, dims)]


@op("TopK", (1, 10, 11, 24), infer=_top_k_infer)
def top_k(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    if data.ndim == 0:
        ctx.fail("input must have rank >= 1")
    k, axis = _top_k_params(ctx, arg(x, 1), data.ndim)
    assert k is not None
    if k > data.shape[axis]:
        ctx.fail(f"K {k} exceeds axis {axis}'s {data.shape[axis]} elements")
    largest = ctx.version < 11 or bool(ctx.attr("largest", 1))
    order = _stable_order(data, axis, largest)
    index = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(data, index, axis=axis), index.astype(np.int64)]


def _stable_order(data: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Positions sorting ``data`` along ``axis``; equal values keep the lower index first."""
    if not descending:
        return np.argsort(data, axis=axis, kind="stable")
    # Descending and stable: sort the reversed axis ascending, reverse, map positions back.
    n = data.shape[axis]
    ascending = np.argsort(np.flip(data, axis), axis=axis, kind="stable")
    order: np.ndarray = n - 1 - np.flip(ascending, axis)
    return order


# ---- ScatterElements, Scatter, ScatterND ------------------------------------------------------

_REDUCTIONS: dict[str, Any] = {
    "add": np.add,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}


def _reduction(ctx: OpContext) -> Any:
    """The ufunc combining duplicates (None: plain assignment, the last update wins)."""
    name = str(ctx.attr("reduction", "none")) if ctx.version >= 16 else "none"
    allowed = ("none", "add", "mul") + (("max", "min") if ctx.version >= 18 else ())
    if name not in allowed:
        ctx.fail(f"reduction {name!r} is not one of {allowed}")
    return _REDUCTIONS.get(name)


def _scatter(out: np.ndarray, where: tuple[Any, ...], updates: np.ndarray, ufunc: Any) -> None:
    if ufunc is None:
        out[where] = updates
    else:
        ufunc.at(out, where, updates)


def _scatter_infer(ctx: InferContext) -> list[TensorType]:
    data, updates = ctx.type(0), ctx.type(2)
    check_dtype(ctx, 1, INDEX_DTYPES, "indices")
    _reduction(ctx)
    if updates.dtype != data.dtype:
        ctx.fail(f"updates are {updates.dtype.name} but data is {data.dtype.name}")
    return [data]


def _scatter_elements(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, indices, updates = x[0], x[1], x[2]
    if updates.shape != indices.shape:
        ctx.fail(f"updates {list(updates.shape)} must have the shape of indices {indices.shape}")
    out = data.copy()
    _scatter(out, _elements_index(ctx, data, indices), updates, _reduction(ctx))
    return [out]


op("ScatterElements", (11, 13, 16, 18), infer=_scatter_infer)(_scatter_elements)
op("Scatter", (9, 11), infer=_scatter_infer)(_scatter_elements)


@op("ScatterND", (11, 13, 16, 18), infer=_scatter_infer)
def scatter_nd(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, indices, updates = x[0], x[1], x[2]
    k = indices.shape[-1] if indices.ndim else -1
    if not 0 <= k <= data.ndim:
        ctx.fail(f"indices {list(indices.shape)} do not fit data {list(data.shape)}")
    rows = indices.shape[:-1]
    if updates.shape != rows + data.shape[k:]:
        ctx.fail(f"updates {list(updates.shape)} must be {list(rows + data.shape[k:])}")
    out = data.copy()
    flat = updates.reshape((math.prod(rows), *data.shape[k:]))
    ufunc = _reduction(ctx)
    if k == 0:  # every index tuple addresses the whole tensor
        for update in flat:
            out[...] = update if ufunc is None else ufunc(out, update)
        return [out]
    idx = indices.reshape(-1, k)
    where = tuple(check_indices(ctx, idx[:, j], data.shape[j], "index") for j in range(k))
    _scatter(out, where, flat, ufunc)
    return [out]


# ---- DepthToSpace, SpaceToDepth: reshape, transpose, reshape --------------------------------


def _block_plan(ctx: OpContext, shape: tuple[int, ...], to_space: bool) -> tuple[Any, ...]:
    """(split shape, perm, output shape) of the spec's reshape-transpose-reshape."""
    if len(shape) != 4:
        ctx.fail(f"input must have rank 4, got shape {list(shape)}")
    b, c, h, w = shape
    s = int(ctx.attr("blocksize"))
    crd = str(ctx.attr("mode", "DCR")) == "CRD"
    if s <= 0:
        ctx.fail(f"blocksize {s} must be positive")
    if to_space:
        if c % (s * s):
            ctx.fail(f"channels {c} are not a multiple of blocksize² {s * s}")
        split = (b, c // (s * s), s, s, h, w) if crd else (b, s, s, c // (s * s), h, w)
        perm = (0, 1, 4, 2, 5, 3) if crd else (0, 3, 4, 1, 5, 2)
        return split, perm, (b, c // (s * s), h * s, w * s)
    if h % s or w % s:
        ctx.fail(f"height {h} and width {w} are not multiples of blocksize {s}")
    perm = (0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4)
    return (b, c, h // s, s, w // s, s), perm, (b, c * s * s, h // s, w // s)


def _block_dims(ctx: OpContext, shape: Shape, to_space: bool) -> Shape:
    """The output shape. Each output dimension follows from the same input dimension alone, so
    a stand-in 0 per symbol computes the rest; the batch symbol stays, the others become fresh."""
    stand_in = tuple(d if isinstance(d, int) else 0 for d in shape)
    out = _block_plan(ctx, stand_in, to_space)[2]
    rest = [
        o if isinstance(d, int) else fresh(ctx, f"d{i}")
        for i, (d, o) in enumerate(zip(shape, out, strict=True))
    ]
    return (shape[0], *rest[1:])


def _block_infer(to_space: bool) -> Any:
    def infer(ctx: InferContext) -> list[TensorType]:
        x = ctx.type(0)
        mode = str(ctx.attr("mode", "DCR"))
        if mode not in ("DCR", "CRD"):
            ctx.fail(f"mode {mode!r} is not DCR or CRD")
        if x.rank not in (4, None):
            ctx.fail(f"input must have rank 4, got {x}")
        return [x if x.shape is None else tt(x.dtype, _block_dims(ctx, x.shape, to_space))]

    return infer


def _block_lower(to_space: bool) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        if not native_ready(ctx, 0):
            return None
        split, perm, out = _block_plan(ctx, ctx.shape(0), to_space)
        slot = emit_reshape(ctx, ctx.slot(0), split)
        slot = ctx.step("transpose", [slot], {"perm": list(perm)})[0]
        return [emit_reshape(ctx, slot, out)]

    return lower


def _block_compute(to_space: bool) -> Any:
    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        split, perm, out = _block_plan(ctx, x[0].shape, to_space)
        return [np.transpose(x[0].reshape(split), perm).reshape(out)]

    return compute


op("DepthToSpace", (1, 11, 13, 28), infer=_block_infer(True), lower=_block_lower(True))(
    _block_compute(True)
)
op("SpaceToDepth", (1, 13, 28), infer=_block_infer(False), lower=_block_lower(False))(
    _block_compute(False)
)


# ---- ReverseSequence ------------------------------------------------------------------------


def _sequence_axes(ctx: OpContext, rank: int) -> tuple[int, int]:
    if rank < 2:
        ctx.fail(f"input must have rank >= 2, got rank {rank}")
    time, batch = (int(ctx.attr(name, d)) for name, d in (("time_axis", 0), ("batch_axis", 1)))
    if {time, batch} != {0, 1}:
        ctx.fail(f"time_axis {time} and batch_axis {batch} must be 0 and 1")
    return time, batch


def _reverse_sequence_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    check_dtype(ctx, 1, frozenset({I64}), "sequence_lens")
    if x.rank is not None:
        _sequence_axes(ctx, x.rank)
    return [x]


@op("ReverseSequence", (10, 28), infer=_reverse_sequence_infer)
def reverse_sequence(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, lens = x[0], np.ravel(x[1]).astype(np.int64)
    time, batch = _sequence_axes(ctx, data.ndim)
    steps = data.shape[time]
    if lens.shape != (data.shape[batch],) or ((lens < 0) | (lens > steps)).any():
        ctx.fail(f"sequence_lens {lens.tolist()} must be one length in [0, {steps}] per batch")
    t = np.arange(steps).reshape(-1, 1)
    source = np.where(t < lens, lens - 1 - t, t)  # [time, batch]
    if time == 1:
        source = source.T
    source = source.reshape(source.shape + (1,) * (data.ndim - 2))
    return [np.take_along_axis(data, np.broadcast_to(source, data.shape), axis=time)]
