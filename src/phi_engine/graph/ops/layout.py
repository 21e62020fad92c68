"""Layout ops: Transpose, Concat, Split, Slice, DepthToSpace, SpaceToDepth, ReverseSequence.

They move elements without changing them, so their native lowerings (transpose; concat; slices
for Slice and Split; reshape-transpose-reshape for DepthToSpace and SpaceToDepth) are exact for
every dtype the core stores. ReverseSequence runs the reference.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, Shape, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    INDEX_DTYPES,
    LATE,
    arg,
    check_dtype,
    dim_sum,
    emit_reshape,
    fresh,
    fresh_dims,
    native_ready,
    norm_axes,
    slice_dim,
    slice_of,
)
from phi_engine.graph.ops._util import I64, axis_of, tt
from phi_engine.graph.registry import InferContext, OpContext, op

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


@op("Transpose", (1, 13, *LATE), infer=_transpose_infer, lower=_lower_transpose)
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
