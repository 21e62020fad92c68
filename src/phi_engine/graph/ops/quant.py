"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
ConvInteger, QLinearMatMul and QLinearConv.

Quantizing rounds ``x / scale`` half to even in the division's precision (the ``precision``
attribute, else the scale's dtype), then adds the zero point and saturates; float8 targets
saturate to their largest finite value unless ``saturate=0``, float4 and float6 always do.
Dequantizing computes ``(x - zero_point) * scale`` in float64 and rounds once to the output
dtype. Scales and zero points are per tensor (a scalar), per axis (1-D along ``axis``) or
blocked (the input's rank, ``block_size`` consecutive elements along ``axis`` per value).
Integer products accumulate exactly in int64 (float64 for float8 operands); the requantizing
multiplier ``a_scale * b_scale / y_scale`` is formed in the scales' dtype, as ONNX Runtime does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._elementwise_util import FLOAT8, cast
from phi_engine.graph.ops._nn_util import Window, conv, fresh, known, parse_window
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import axis_of, onnx_dtype, tt
from phi_engine.graph.ops.nn import matmul_shape
from phi_engine.graph.registry import InferContext, OpContext, op

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
U8 = np.dtype(np.uint8)
I32 = np.dtype(np.int32)

# Saturation ranges of the integer quantized types (QuantizeLinear-25).
_INT_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "uint4": (0, 15),
    "int4": (-8, 7),
    "uint2": (0, 3),
    "int2": (-2, 1),
}
_NO_INF_FLOATS = frozenset({"float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"})
_QUANTIZED = frozenset(_INT_RANGES) | FLOAT8 | _NO_INF_FLOATS
_WIDE_FLOATS = frozenset({"float16", "float32", "float64", "bfloat16"})
_INT8S = frozenset({"int8", "uint8"})


def _is_float_q(dtype: np.dtype[Any]) -> bool:
    return dtype.name in FLOAT8 or dtype.name in _NO_INF_FLOATS


def as_f64(x: np.ndarray) -> np.ndarray:
    """Any numeric array (ml_dtypes narrow floats and sub-byte ints included) as float64."""
    if x.dtype.name in _INT_RANGES or x.dtype.kind in "iu":
        return x.astype(np.int64).astype(F64)
    return x.astype(F32).astype(F64) if x.dtype.itemsize < 4 else x.astype(F64)


# ---- granularity ---------------------------------------------------------------------------------


def expand_param(
    ctx: OpContext, p: np.ndarray, shape: tuple[int, ...], axis: int, block: int, what: str
) -> np.ndarray:
    """A scale or zero point broadcastable against an input of ``shape``."""
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1):
        return p.reshape(())
    rank = len(shape)
    a = axis_of(ctx, axis, rank)
    if block <= 0:
        if p.ndim != 1 or p.size != shape[a]:
            ctx.fail(f"{what} of shape {list(p.shape)} is not per-axis along axis {a} of {shape}")
        dims = [1] * rank
        dims[a] = p.size
        return p.reshape(dims)
    expect = list(shape)
    expect[a] = -(-shape[a] // block)
    if list(p.shape) != expect:
        ctx.fail(
            f"{what} of shape {list(p.shape)} does not block input {list(shape)} along axis {a} "
            f"by {block} (expected {expect})"
        )
    return np.repeat(p, block, axis=a).take(np.arange(shape[a]), axis=a)


def _granularity(ctx: OpContext) -> tuple[int, int]:
    axis = int(ctx.attr("axis", 1)) if ctx.version >= 13 else 1
    block = int(ctx.attr("block_size", 0)) if ctx.version >= 21 else 0
    if block < 0:
        ctx.fail(f"block_size {block} must be positive")
    return axis, block


# ---- QuantizeLinear ------------------------------------------------------------------------------


def _quantized_dtype(ctx: OpContext, zp: np.dtype[Any] | None) -> np.dtype[Any]:
    code = int(ctx.attr("output_dtype", 0)) if ctx.version >= 21 else 0
    declared = onnx_dtype(code) if code else None
    if zp is not None and declared is not None and zp != declared:
        ctx.fail(f"output_dtype {declared.name} differs from the zero point's {zp.name}")
    out = zp if zp is not None else declared if declared is not None else U8
    if out.name not in _QUANTIZED:
        ctx.fail(f"cannot quantize to {out.name}", UnsupportedError)
    return out


def _precision(ctx: OpContext, scale: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype ``x / scale`` is computed in: QuantizeLinear-23 says the scale's dtype (or the
    ``precision`` attribute); earlier versions leave it open and ONNX Runtime divides float16
    and bfloat16 in float32. A non-float precision divides in float64."""
    code = int(ctx.attr("precision", 0)) if ctx.version >= 23 else 0
    dtype = onnx_dtype(code) if code else scale
    if ctx.version < 23 and dtype.name in ("float16", "bfloat16"):
        return F32
    if dtype.name in _WIDE_FLOATS:
        return dtype
    return F32 if dtype.name == "float8_e8m0fnu" else F64


def _divide(x: np.ndarray, scale: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``x / scale`` rounded to ``dtype`` (bfloat16 divides in float32 and rounds once)."""
    work = F32 if dtype.name == "bfloat16" else dtype
    q: np.ndarray = as_f64(x).astype(work) / as_f64(scale).astype(work)
    return q.astype(dtype) if dtype != work else q


def saturate(
    v: np.ndarray, zp: np.ndarray | None, out: np.dtype[Any], *, saturating: bool = True
) -> np.ndarray:
    """Quantized values ``v`` (a float array, not yet rounded) plus ``zp``, in ``out``."""
    if out.name in _INT_RANGES:
        lo, hi = _INT_RANGES[out.name]
        r = np.nan_to_num(np.rint(as_f64(v)), nan=0.0, posinf=2.0**40, neginf=-(2.0**40))
        q = np.clip(r, -(2.0**40), 2.0**40).astype(np.int64)
        if zp is not None:
            q = q + as_f64(zp).astype(np.int64)
        result: np.ndarray = np.clip(q, lo, hi).astype(out)
        return result
    f = as_f64(v)
    if zp is not None:
        z = as_f64(zp)
        f = np.where(z == 0, f, f + z)  # a zero zero-point keeps the sign of zero
    return cast(
        f.astype(F32), out, saturate=saturating or out.name in _NO_INF_FLOATS, round_mode="up"
    )


def _quantize_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.dtype.name not in _WIDE_FLOATS and x.dtype != I32:
        ctx.fail(f"x must be a float or int32 tensor, got {x.dtype.name}")
    zp = ctx.type(2).dtype if ctx.has(2) else None
    _granularity(ctx)
    return [tt(_quantized_dtype(ctx, zp), x.shape)]


@op("QuantizeLinear", (10, 13, 19, 21, 23, 24, 25, 28), infer=_quantize_infer)
def quantize_linear(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, scale, zp = x[0], x[1], arg(x, 2)
    out = _quantized_dtype(ctx, None if zp is None else zp.dtype)
    axis, block = _granularity(ctx)
    s = expand_param(ctx, scale, data.shape, axis, block, "y_scale")
    z = None if zp is None else expand_param(ctx, zp, data.shape, axis, block, "y_zero_point")
    v = _divide(data, s, _precision(ctx, scale.dtype))
    saturating = bool(ctx.attr("saturate", 1)) if ctx.version >= 19 else True
    return [np.asarray(saturate(v, z, out, saturating=saturating)).reshape(data.shape)]


# ---- DequantizeLinear ----------------------------------------------------------------------------


def _dequantized_dtype(ctx: OpContext, scale: np.dtype[Any]) -> np.dtype[Any]:
    code = int(ctx.attr("output_dtype", 0)) if ctx.version >= 23 else 0
    out = onnx_dtype(code) if code else scale
    if out.name not in ("float32", "float16", "bfloat16"):
        if code or out.name != "float8_e8m0fnu":
            ctx.fail(f"cannot dequantize to {out.name}", UnsupportedError)
        ctx.fail("a float8e8m0 x_scale needs the output_dtype attribute")
    return out


def _dequantize_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.dtype.name not in _QUANTIZED and x.dtype != I32:
        ctx.fail(f"cannot dequantize {x.dtype.name}")
    if ctx.has(2) and ctx.type(2).dtype != x.dtype:
        ctx.fail(f"x_zero_point has dtype {ctx.type(2).dtype.name}, x {x.dtype.name}")
    _granularity(ctx)
    return [tt(_dequantized_dtype(ctx, ctx.type(1).dtype), x.shape)]


@op("DequantizeLinear", (10, 13, 19, 21, 23, 24, 25, 28), infer=_dequantize_infer)
def dequantize_linear(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, scale, zp = x[0], x[1], arg(x, 2)
    axis, block = _granularity(ctx)
    s = expand_param(ctx, scale, data.shape, axis, block, "x_scale")
    v = as_f64(data)
    if zp is not None:
        v = v - as_f64(expand_param(ctx, zp, data.shape, axis, block, "x_zero_point"))
    y = v * as_f64(s)
    return [np.asarray(y.astype(_dequantized_dtype(ctx, scale.dtype))).reshape(data.shape)]


# ---- DynamicQuantizeLinear -----------------------------------------------------------------------


def _dynamic_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if x.dtype != F32:
        ctx.fail(f"x must be float32, got {x.dtype.name}")
    return [tt(U8, x.shape), tt(F32, ()), tt(U8, ())]


@op("DynamicQuantizeLinear", (11,), infer=_dynamic_infer)
def dynamic_quantize_linear(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """uint8 asymmetric quantization over [min(0, min x), max(0, max x)], in float32
    (DynamicQuantizeLinear-11); a constant-zero input gets scale 1 / 255 (as ONNX Runtime)."""
    data = x[0]
    hi = np.float32(max(0.0, float(data.max()))) if data.size else np.float32(0)
    lo = np.float32(min(0.0, float(data.min()))) if data.size else np.float32(0)
    scale = np.float32(hi - lo if hi != lo else 1.0) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(data / scale) + zp, 0, 255)
    return [y.astype(U8), np.array(scale, F32), np.array(zp, U8)]


# ---- integer products ----------------------------------------------------------------------------


def _check_int8(ctx: InferContext, *indices: int) -> None:
    for i in indices:
        if ctx.has(i) and ctx.type(i).dtype.name not in _INT8S:
            ctx.fail(f"input {i} must be int8 or uint8, got {ctx.type(i).dtype.name}")


def _matmul_out_shape(ctx: InferContext, a: int, b: int) -> tuple[Dim, ...] | None:
    sa, sb = ctx.type(a).shape, ctx.type(b).shape
    return None if sa is None or sb is None else matmul_shape(ctx, sa, sb)


def _row_param(p: np.ndarray | None, rank: int) -> np.ndarray | None:
    """A per-row (M,) parameter of a matrix operand as (M, 1); anything else unchanged."""
    if p is not None and p.ndim == 1 and p.size > 1 and rank >= 2:
        return p.reshape(-1, 1)
    return p


def _centered(x: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """``x - zp`` exactly: int64 for integers, float64 for float8."""
    if x.dtype.kind in "iu":
        v = x.astype(np.int64)
        return v if zp is None else v - zp.astype(np.int64)
    f = as_f64(x)
    return f if zp is None else f - as_f64(zp)


def _matmul_infer(ctx: InferContext) -> list[TensorType]:
    _check_int8(ctx, 0, 1, 2, 3)
    return [tt(I32, _matmul_out_shape(ctx, 0, 1))]


@op("MatMulInteger", (10,), infer=_matmul_infer)
def matmul_integer(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    a, b = x[0], x[1]
    azp, bzp = _row_param(arg(x, 2), a.ndim), arg(x, 3)
    product = np.matmul(_centered(a, azp), _centered(b, bzp))
    return [np.asarray(product).astype(I32)]


def _multiplier(*scales: np.ndarray) -> np.ndarray:
    """``s0 * s1 / s2`` in the scales' dtype (bfloat16 through float32), then float64."""
    s0, s1, s2 = (s.astype(F32) if s.dtype.name == "bfloat16" else s for s in scales)
    m = s0 * s1 / s2
    if scales[0].dtype.name == "bfloat16":
        m = m.astype(scales[0].dtype)
    return as_f64(np.asarray(m))


def _qlinear_matmul_infer(ctx: InferContext) -> list[TensorType]:
    for i in (1, 4, 6):
        if ctx.type(i).dtype.name not in ("float32", "float16", "bfloat16"):
            ctx.fail(f"input {i} (a scale) must be a float tensor, got {ctx.type(i).dtype.name}")
    allowed = _INT8S | (FLOAT8 if ctx.version >= 21 else frozenset())
    for i in (0, 2, 3, 5, 7):
        if ctx.type(i).dtype.name not in allowed:
            ctx.fail(f"input {i} has dtype {ctx.type(i).dtype.name}")
    return [tt(ctx.type(7).dtype, _matmul_out_shape(ctx, 0, 3))]


@op("QLinearMatMul", (10, 21), infer=_qlinear_matmul_infer)
def qlinear_matmul(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = x[:8]
    acc = np.matmul(_centered(a, _row_param(a_zp, a.ndim)), _centered(b, b_zp))
    m = _multiplier(_row_param(a_scale, a.ndim), b_scale, y_scale)  # type: ignore[arg-type]
    return [np.asarray(saturate(as_f64(np.asarray(acc)) * m, y_zp, y_zp.dtype))]


# ---- integer convolutions ------------------------------------------------------------------------


def _window(ctx: OpContext, w_shape: tuple[Dim, ...], rank: int) -> Window:
    kernel = w_shape[2:] if known(*w_shape[2:]) else None
    return parse_window(ctx, rank, [int(k) for k in kernel] if kernel is not None else None)


def _conv_shape(ctx: InferContext, xi: int, wi: int) -> tuple[Dim, ...] | None:
    xs, ws = ctx.type(xi).shape, ctx.type(wi).shape
    if xs is None or ws is None:
        return None
    if len(xs) < 3 or len(ws) != len(xs):
        ctx.fail(f"x of shape {list(xs)} and w of shape {list(ws)} do not fit a convolution")
    group = int(ctx.attr("group", 1))
    if known(xs[1], ws[1]) and int(xs[1]) != int(ws[1]) * group:
        ctx.fail(f"x has {xs[1]} channels, w expects {ws[1]} per group x {group} groups")
    if not known(*ws[2:]) and ctx.attr("kernel_shape", None) is None:
        return (xs[0], ws[0], *(fresh(ctx, f"o{i}") for i in range(len(xs) - 2)))
    return (xs[0], ws[0], *_window(ctx, ws, len(xs) - 2).out_dims(ctx, xs[2:]))


def _channel_param(p: np.ndarray | None, rank: int) -> np.ndarray | None:
    """A per-output-channel (M,) parameter of a weight (M, C, k...) as (M, 1, 1...)."""
    if p is None or p.ndim == 0 or p.size == 1:
        return None if p is None else p.reshape(())
    return p.reshape((-1,) + (1,) * (rank - 1))


def _int_conv(ctx: OpContext, xc: np.ndarray, wc: np.ndarray) -> np.ndarray:
    geo = _window(ctx, wc.shape, xc.ndim - 2).resolve(ctx, xc.shape[2:])
    group = int(ctx.attr("group", 1))
    if group < 1 or xc.shape[1] != wc.shape[1] * group or wc.shape[0] % group:
        ctx.fail(f"x {list(xc.shape)} and w {list(wc.shape)} do not fit group {group}")
    return conv(xc, wc, None, geo, group)


def _conv_integer_infer(ctx: InferContext) -> list[TensorType]:
    _check_int8(ctx, 0, 1, 2, 3)
    return [tt(I32, _conv_shape(ctx, 0, 1))]


@op("ConvInteger", (10,), infer=_conv_integer_infer)
def conv_integer(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, w = x[0], x[1]
    xc = _centered(data, arg(x, 2))
    wc = _centered(w, _channel_param(arg(x, 3), w.ndim))
    return [_int_conv(ctx, xc, wc).astype(I32)]


def _qlinear_conv_infer(ctx: InferContext) -> list[TensorType]:
    _check_int8(ctx, 0, 2, 3, 5, 7)
    for i in (1, 4, 6):
        if ctx.type(i).dtype != F32:
            ctx.fail(f"input {i} (a scale) must be float32, got {ctx.type(i).dtype.name}")
    if ctx.has(8) and ctx.type(8).dtype != I32:
        ctx.fail(f"B must be int32, got {ctx.type(8).dtype.name}")
    return [tt(ctx.type(7).dtype, _conv_shape(ctx, 0, 3))]


@op("QLinearConv", (10,), infer=_qlinear_conv_infer)
def qlinear_conv(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = x[:8]
    bias = arg(x, 8)
    acc = _int_conv(ctx, _centered(data, x_zp), _centered(w, _channel_param(w_zp, w.ndim)))
    r = data.ndim - 2
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape((1, -1) + (1,) * r)
    ws = w_scale.reshape((1, -1) + (1,) * r) if w_scale.size > 1 else w_scale.reshape(())
    m = _multiplier(x_scale.reshape(()), ws, y_scale.reshape(()))
    return [np.asarray(saturate(acc.astype(F64) * m, y_zp, y_zp.dtype))]
