"""Indexing ops: gathers, scatters, NonZero, Compress, Unique, and CumSum and TopK along an axis.

NonZero, Compress and Unique have output shapes that depend on the data. Gather lowers to the
native gather (which checks the index range as ONNX does); the others run the reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, Shape, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    INDEX_DTYPES,
    arg,
    check_dtype,
    check_indices,
    dim_product,
    fresh,
    index_grid,
    native_ready,
    scalar_int,
)
from phi_engine.graph.ops._util import BOOL, I64, axis_of, tt
from phi_engine.graph.registry import InferContext, OpContext, op

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
