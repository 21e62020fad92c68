"""Numeric ops outside the elementwise and reduction families: CumProd (the product twin of
CumSum), Det and BitCast.

Both compute float16 and bfloat16 in float32 and round once; Det factorises in float64 (LU, as
``numpy.linalg.det``) and rounds to the input dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.ops._nn_util import is_float, require_float, upcast
from phi_engine.graph.ops._tensor_util import scalar_int
from phi_engine.graph.ops._util import axis_of, onnx_dtype, tt
from phi_engine.graph.registry import InferContext, OpContext, op

_CUMPROD_DTYPES = frozenset({"uint32", "uint64", "int32", "int64"})


def _cumprod_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not (is_float(x.dtype) or x.dtype.name in _CUMPROD_DTYPES):
        ctx.fail(f"x has dtype {x.dtype.name}, not a float or 32/64-bit integer")
    if ctx.type(1).dtype.name not in ("int32", "int64"):
        ctx.fail(f"axis must be int32 or int64, got {ctx.type(1).dtype.name}")
    if ctx.type(1).rank not in (0, 1, None):
        ctx.fail(f"axis must be a scalar, got {ctx.type(1)}")
    return [x]


@op("CumProd", (26,), infer=_cumprod_infer)
def cumprod(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Running products along ``axis`` (integers wrap); ``exclusive`` starts from 1,
    ``reverse`` runs from the end."""
    data = x[0]
    axis = axis_of(ctx, scalar_int(ctx, x[1], "axis"), max(data.ndim, 1))
    if data.ndim == 0:
        return [data.copy()]
    work = upcast(data)
    flip = bool(ctx.attr("reverse", 0))
    if flip:
        work = np.flip(work, axis)
    if ctx.attr("exclusive", 0):  # shift by one: the first product is empty
        one = np.ones_like(np.take(work, [0], axis=axis))
        work = np.concatenate([one, np.take(work, np.arange(work.shape[axis] - 1), axis)], axis)
    out = np.multiply.accumulate(work, axis=axis, dtype=work.dtype)
    return [(np.flip(out, axis) if flip else out).astype(data.dtype)]


def _det_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0)
    shape = ctx.type(0).shape
    if shape is None:
        return [tt(dtype, None)]
    if len(shape) < 2:
        ctx.fail(f"X must be (*, M, M), got shape {list(shape)}")
    m, n = shape[-2], shape[-1]
    if isinstance(m, int) and isinstance(n, int) and m != n:
        ctx.fail(f"the inner matrices of shape {list(shape)} are not square")
    return [tt(dtype, shape[:-2])]


@op("Det", (11, 22), infer=_det_infer)
def det(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    if data.ndim < 2 or data.shape[-1] != data.shape[-2]:
        ctx.fail(f"X must be (*, M, M), got shape {list(data.shape)}")
    return [np.asarray(np.linalg.det(data.astype(np.float64))).astype(data.dtype)]


# ---- BitCast -------------------------------------------------------------------------------------

_NARROW_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def _bits(dtype: np.dtype[Any]) -> int:
    return _NARROW_BITS.get(dtype.name, dtype.itemsize * 8)


def _bitcast_target(ctx: OpContext, source: np.dtype[Any]) -> np.dtype[Any]:
    to = onnx_dtype(int(ctx.attr("to")))
    if to.kind == "O" or source.kind == "O":
        ctx.fail("BitCast does not take or make strings")
    if _bits(to) != _bits(source):
        ctx.fail(f"{source.name} ({_bits(source)} bits) and {to.name} ({_bits(to)} bits) differ")
    return to


def _bitcast_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    return [tt(_bitcast_target(ctx, x.dtype), x.shape)]


@op("BitCast", (26,), infer=_bitcast_infer)
def bitcast(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """The same bits read as another type of the same width (numpy arrays are little endian
    here; ml_dtypes keeps a 4- or 2-bit value in the low bits of a byte)."""
    data = x[0]
    to = _bitcast_target(ctx, data.dtype)
    raw = data.copy(order="C")  # ascontiguousarray would make a 0-d input 1-d
    if data.dtype.name in _NARROW_BITS:
        raw = raw.view(np.uint8) & np.uint8((1 << _bits(to)) - 1)
    if to == np.bool_:
        return [raw.view(np.uint8) != 0]  # numpy booleans hold only 0 and 1
    return [raw.view(to)]
