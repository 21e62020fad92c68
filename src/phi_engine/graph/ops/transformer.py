"""Transformer building blocks: RotaryEmbedding (RoPE, arXiv:2104.09864), SwiGLU and
TensorScatter (the KV-cache update).

float16 and bfloat16 compute in float32 and round once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import require_float, upcast
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op


def _rotary_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0, 1, 2)
    if ctx.has(3) and ctx.type(3).dtype != np.int64:
        ctx.fail(f"position_ids must be int64, got {ctx.type(3).dtype.name}")
    shape = ctx.type(0).shape
    if shape is not None and len(shape) not in (3, 4):
        ctx.fail(f"X must be 3-D or 4-D, got shape {list(shape)}")
    if shape is not None and len(shape) == 3 and int(ctx.attr("num_heads", 0)) <= 0:
        ctx.fail("a 3-D input needs the num_heads attribute")
    return [tt(dtype, shape)]


def _heads_layout(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    """X as (batch, sequence, heads, head_size)."""
    if x.ndim == 4:
        return np.transpose(x, (0, 2, 1, 3))
    heads = int(ctx.attr("num_heads", 0))
    if x.ndim != 3 or heads <= 0 or x.shape[2] % heads:
        ctx.fail(f"X of shape {list(x.shape)} does not split into num_heads={heads} heads")
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)


@op("RotaryEmbedding", (23,), infer=_rotary_infer)
def rotary_embedding(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Rotate pairs of the first ``rotary_embedding_dim`` features of every head by the angle
    whose cosine and sine the caches hold (pairs are the two halves, or neighbours when
    ``interleaved``)."""
    data = x[0]
    h = _heads_layout(ctx, upcast(data))
    head_size = h.shape[3]
    dim = int(ctx.attr("rotary_embedding_dim", 0)) or head_size
    if dim % 2 or dim > head_size:
        ctx.fail(f"rotary_embedding_dim {dim} must be even and at most head_size {head_size}")
    cos, sin, positions = upcast(x[1]), upcast(x[2]), arg(x, 3)
    if positions is not None:
        if positions.min(initial=0) < 0 or positions.max(initial=0) >= cos.shape[0]:
            ctx.fail(f"position_ids must lie in [0, {cos.shape[0]})")
        cos, sin = cos[positions], sin[positions]
    want = (h.shape[0], h.shape[1], dim // 2)
    if cos.shape != want or sin.shape != want:
        ctx.fail(f"the caches give shape {list(cos.shape)}, the input needs {list(want)}")
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotate = h[..., :dim]
    if int(ctx.attr("interleaved", 0)):
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2 :]
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if int(ctx.attr("interleaved", 0)):
        rotated = np.stack([real, imag], axis=-1).reshape(rotate.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rotated, h[..., dim:]], axis=-1)
    y = y.reshape(data.shape) if data.ndim == 3 else np.transpose(y, (0, 2, 1, 3))
    return [np.ascontiguousarray(y).astype(data.dtype)]


def _same_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> bool:
    """The shapes may be equal (symbols match anything)."""
    return len(a) == len(b) and all(
        not (isinstance(p, int) and isinstance(q, int)) or p == q for p, q in zip(a, b, strict=True)
    )


def _swiglu_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0, 1)
    a, b = ctx.type(0).shape, ctx.type(1).shape
    if a is not None and b is not None and not _same_dims(a, b):
        ctx.fail(f"A of shape {list(a)} and B of shape {list(b)} must have one shape")
    return [tt(dtype, a if a is not None else b)]


@op("SwiGLU", (28,), infer=_swiglu_infer)
def swiglu(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """``A * sigmoid(alpha * A) * B`` (SwiGLU-28; no broadcasting)."""
    a, b = x[0], x[1]
    if a.shape != b.shape:
        ctx.fail(f"A of shape {list(a.shape)} and B of shape {list(b.shape)} differ")
    alpha = float(ctx.attr("alpha", 1.0))
    wa = upcast(a)
    gate = wa / (1 + np.exp(-alpha * wa))
    return [(gate * upcast(b)).astype(a.dtype)]


def _tensor_scatter_infer(ctx: InferContext) -> list[TensorType]:
    past, update = ctx.type(0), ctx.type(1)
    if update.dtype != past.dtype:
        ctx.fail(f"update has dtype {update.dtype.name}, past_cache {past.dtype.name}")
    if ctx.has(2) and ctx.type(2).dtype != np.int64:
        ctx.fail(f"write_indices must be int64, got {ctx.type(2).dtype.name}")
    if str(ctx.attr("mode", "linear")) not in ("linear", "circular"):
        ctx.fail(f"mode {ctx.attr('mode')!r} is not 'linear' or 'circular'")
    if past.shape is not None and update.shape is not None and len(past.shape) != len(update.shape):
        ctx.fail(f"update of shape {list(update.shape)} does not fit {list(past.shape)}")
    return [past]


@op("TensorScatter", (24,), infer=_tensor_scatter_infer)
def tensor_scatter(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """The cache with each batch entry's update written along ``axis`` from its write index
    (TensorScatter-24; ``circular`` wraps the positions)."""
    past, update, index = x[0], x[1], arg(x, 2)
    rank = past.ndim
    axis = int(ctx.attr("axis", -2))
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        ctx.fail(f"axis {ctx.attr('axis', -2)} must name a non-batch axis of rank {rank}")
    shape = list(past.shape)
    shape[axis] = update.shape[axis] if update.ndim == rank else -1
    if update.ndim != rank or list(update.shape) != shape:
        ctx.fail(f"update of shape {list(update.shape)} does not fit cache {list(past.shape)}")
    batch, length, capacity = past.shape[0], update.shape[axis], past.shape[axis]
    start = np.zeros(batch, np.int64) if index is None else index.reshape(-1).astype(np.int64)
    if start.shape != (batch,):
        ctx.fail(f"write_indices must hold {batch} values, got {start.size}")
    pos = start[:, None] + np.arange(length)[None, :]  # (batch, length)
    if str(ctx.attr("mode", "linear")) == "circular":
        pos = pos % capacity if capacity else pos
    elif length and (start.min() < 0 or pos.max() >= capacity):
        ctx.fail(f"write positions {start.tolist()} + {length} exceed the cache length {capacity}")
    out = past.copy()
    moved_out, moved_up = np.moveaxis(out, axis, 1), np.moveaxis(update, axis, 1)
    moved_out[np.arange(batch)[:, None], pos] = moved_up
    return [out]
