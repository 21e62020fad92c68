"""Fused ops (domain ``phi``), created by the fusion passes, never found in an ONNX file.

- ``phi::Linear(x, w, bias?, residual?)``: ``act(alpha * x @ w' + bias + residual)`` where
  ``w'`` is ``w`` or, with ``trans_b``, ``w`` with its last two axes swapped; numpy matmul
  broadcasting. One native ``matmul`` with its epilogue.
- ``phi::Softmax(x, mask?)``: ``softmax(scale * x + mask)`` along ``axis``: one native pass.
- ``phi::Attention(q, k, v, mask?)``: ``softmax(alpha * q·kᵀ + mask)·v`` per batch and head on
  (batch, seq, heads, dim) tensors, giving (batch, seq_q, heads, dim_v): one native pass.
- ``phi::Gelu(x)``: ``x * Φ(x)`` with the erf, as exporters spell it in five nodes.
- ``phi::LayerNorm(x, gamma, beta?, residual?)``: ONNX LayerNormalization of ``x + residual``.

The references compute in float64 and round once, as the native kernels' tests expect.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._util import F32, axis_of, broadcast, tt
from phi_engine.graph.registry import InferContext, OpContext, op
from phi_engine.runtime import reference
from phi_engine.runtime.reference import _activations

DOMAIN = "phi"


def _float32_only(ctx: InferContext) -> None:
    for i in range(ctx.num_inputs):
        if ctx.has(i) and ctx.type(i).dtype != F32:
            ctx.fail(f"input {i} must be float32, got {ctx.type(i).dtype.name}")


def _linear_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    a, b = ctx.type(0).shape, ctx.type(1).shape
    if a is None or b is None:
        return [tt(F32, None)]
    if len(a) < 2 or len(b) < 2:
        ctx.fail("phi::Linear needs operands of rank >= 2")
    if ctx.attr("trans_b", 0):
        b = (*b[:-2], b[-1], b[-2])
    batch = broadcast(ctx, a[:-2], b[:-2]) or ()
    out: tuple[Dim, ...] = (*batch, a[-2], b[-1])
    return [tt(F32, out)]


def _linear_lower(ctx: LowerContext) -> list[int] | None:
    attrs = {
        "activation": ctx.attr("activation", "none"),
        "alpha": float(ctx.attr("alpha", 1.0)),
        "trans_b": bool(ctx.attr("trans_b", 0)),
    }
    weights = ctx.attr("weights", "float32")  # "bfloat16": compile(precision="bf16") on the CPU
    if weights != "float32":
        attrs["weights"] = weights
    return ctx.step("matmul", [ctx.slot(0), ctx.slot(1), ctx.slot(2), ctx.slot(3)], attrs)


@op("Linear", (1,), infer=_linear_infer, lower=_linear_lower, domain=DOMAIN)
def linear(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    a, b = (np.asarray(v, np.float64) for v in x[:2])
    if ctx.attr("trans_b", 0):
        b = np.swapaxes(b, -1, -2)
    y = float(ctx.attr("alpha", 1.0)) * np.matmul(a, b)
    for extra in x[2:4]:
        if extra is not None:
            y = y + np.asarray(extra, np.float64)
    y = _activations.apply_activation(y, ctx.attr("activation", "none"))
    return [y.astype(F32)]


def _softmax_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    x = ctx.type(0)
    if ctx.has(1) and x.shape is not None:
        shape = broadcast(ctx, x.shape, ctx.type(1).shape)
        if shape is not None and len(shape) != len(x.shape):
            ctx.fail("the mask has more dimensions than the scores")
    return [x]


def _softmax_lower(ctx: LowerContext) -> list[int] | None:
    attrs = {"axis": int(ctx.attr("axis", -1)), "scale": float(ctx.attr("scale", 1.0))}
    return ctx.step("softmax", [ctx.slot(0), ctx.slot(1)], attrs)


@op("Softmax", (1,), infer=_softmax_infer, lower=_softmax_lower, domain=DOMAIN)
def softmax(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    t = float(ctx.attr("scale", 1.0)) * np.asarray(x[0], np.float64)
    if len(x) > 1 and x[1] is not None:
        t = t + np.asarray(x[1], np.float64)
    axis = int(ctx.attr("axis", -1))
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(t - np.max(t, axis=axis, keepdims=True))
        return [(e / e.sum(axis=axis, keepdims=True)).astype(F32)]


def _attention_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    q, k, v = (ctx.type(i).shape for i in range(3))
    if q is None or k is None or v is None:
        return [tt(F32, None)]
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        ctx.fail("phi::Attention needs q, k, v of rank 4 (batch, seq, heads, dim)")
    return [tt(F32, (q[0], q[1], q[2], v[3]))]


def _attention_lower(ctx: LowerContext) -> list[int] | None:
    inputs = [ctx.slot(0), ctx.slot(1), ctx.slot(2), ctx.slot(3)]
    return ctx.step("attention", inputs, {"alpha": float(ctx.attr("alpha", 1.0))})


@op("Attention", (1,), infer=_attention_infer, lower=_attention_lower, domain=DOMAIN)
def attention(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    mask = x[3] if len(x) > 3 else None
    return [reference.attention(x[0], x[1], x[2], mask, float(ctx.attr("alpha", 1.0)))]


def _gelu_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    return [ctx.type(0)]


def _gelu_lower(ctx: LowerContext) -> list[int] | None:
    return ctx.step("gelu", [ctx.slot(0)])


@op("Gelu", (1,), infer=_gelu_infer, lower=_gelu_lower, domain=DOMAIN)
def gelu(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    v = np.asarray(x[0], np.float64)
    return [(0.5 * v * (1.0 + _activations.erf(v / math.sqrt(2.0)))).astype(F32)]


def _layer_norm_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    x = ctx.type(0)
    if x.rank is not None:
        axis_of(ctx, int(ctx.attr("axis", -1)), x.rank)
    return [x]


def _layer_norm_lower(ctx: LowerContext) -> list[int] | None:
    attrs = {"axis": int(ctx.attr("axis", -1)), "epsilon": float(ctx.attr("epsilon", 1e-5))}
    inputs = [ctx.slot(0), ctx.slot(1), ctx.slot(2), ctx.slot(3)]
    return ctx.step("layer_norm", inputs, attrs)


@op("LayerNorm", (1,), infer=_layer_norm_infer, lower=_layer_norm_lower, domain=DOMAIN)
def layer_norm(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    h = np.asarray(x[0], np.float64)
    if len(x) > 3 and x[3] is not None:
        h = h + np.asarray(x[3], np.float64)
    axis = axis_of(ctx, int(ctx.attr("axis", -1)), h.ndim)
    axes = tuple(range(axis, h.ndim))
    with np.errstate(invalid="ignore", over="ignore"):
        mean = h.mean(axis=axes, keepdims=True)
        var = ((h - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (h - mean) / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
        y = y * np.asarray(x[1], np.float64)
        if len(x) > 2 and x[2] is not None:
            y = y + np.asarray(x[2], np.float64)
    return [y.astype(F32)]


def _conv_attrs(ctx: OpContext) -> dict[str, Any]:
    return {
        "strides": list(ctx.attr("strides")),
        "pads": list(ctx.attr("pads")),
        "dilations": list(ctx.attr("dilations")),
        "groups": int(ctx.attr("group", 1)),
        "activation": ctx.attr("activation", "none"),
        "clip_min": ctx.attr("clip_min", None),
        "clip_max": ctx.attr("clip_max", None),
    }


def _conv_infer(ctx: InferContext) -> list[TensorType]:
    _float32_only(ctx)
    x, w = ctx.type(0).shape, ctx.type(1).shape
    if x is None or w is None:
        return [tt(F32, None)]
    if len(x) != 4 or len(w) != 4:
        ctx.fail("phi::Conv is 2-D: input and weight must have rank 4")
    a = _conv_attrs(ctx)
    spatial: list[Dim] = []
    for i in range(2):
        size, k = x[2 + i], w[2 + i]
        if isinstance(size, int) and isinstance(k, int):
            span = a["dilations"][i] * (k - 1) + 1
            spatial.append((size + a["pads"][i] + a["pads"][i + 2] - span) // a["strides"][i] + 1)
        else:
            spatial.append(f"{ctx.node.label}:d{2 + i}")
    return [tt(F32, (x[0], w[0], *spatial))]


def _conv_lower(ctx: LowerContext) -> list[int] | None:
    inputs = [ctx.slot(0), ctx.slot(1), ctx.slot(2), ctx.slot(3)]
    return ctx.step("conv2d", inputs, _conv_attrs(ctx))


@op("Conv", (1,), infer=_conv_infer, lower=_conv_lower, domain=DOMAIN)
def conv(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    from phi_engine.runtime.reference import conv2d

    a = _conv_attrs(ctx)
    padded = [*x, None, None]
    y = conv2d(
        padded[0],
        padded[1],
        padded[2],
        a["activation"],
        residual=padded[3],
        strides=a["strides"],
        pads=a["pads"],
        dilations=a["dilations"],
        groups=a["groups"],
        clip_min=a["clip_min"],
        clip_max=a["clip_max"],
    )
    return [np.asarray(y, F32)]
