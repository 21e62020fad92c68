"""Helpers for the neural-network ops: dtypes, sliding-window geometry, and the numpy references
of convolution, pooling and attention masking (shared by :mod:`.nn` and :mod:`.reduce`).

Window geometry follows the ONNX Conv / MaxPool / AveragePool / ConvTranspose specs (opset 22):
``pads`` are ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``; ``auto_pad`` SAME_* pads so that
``out = ceil(in / stride)`` with the odd cell at the end (UPPER) or the beginning (LOWER); in
ceil mode a window that would start in the end padding is dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from phi_engine.graph.ir import Dim
from phi_engine.graph.registry import InferContext, OpContext

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ---- dtypes --------------------------------------------------------------------------------------


def is_float(dtype: np.dtype[Any]) -> bool:
    """A floating-point element type, bfloat16 (an ml_dtypes type numpy sees as void) included."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def wide(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype the reference computes a float type in: float16 and bfloat16 widen to float32
    (one rounding at the end instead of one per operation); everything else is itself."""
    return np.dtype(np.float32) if dtype.itemsize < 4 and is_float(dtype) else dtype


def upcast(x: np.ndarray) -> np.ndarray:
    return x.astype(wide(x.dtype), copy=False)


def arithmetic(x: np.ndarray) -> np.ndarray:
    """``x`` in a dtype numpy computes in: bfloat16 (storage only) widens to float32.

    Elementwise-heavy references (softmax, attention) compute float16 in float16 as numpy does,
    which is also how the ONNX reference and its conformance data compute it.
    """
    return x.astype(np.float32) if x.dtype.name == "bfloat16" else x


def require_float(ctx: InferContext, *indices: int) -> np.dtype[Any]:
    """Fail unless the given inputs are floats of one dtype; returns it."""
    dtype = ctx.type(indices[0]).dtype
    for i in indices:
        t = ctx.type(i).dtype
        if not is_float(t):
            ctx.fail(f"input {i} must be a float tensor, got {t.name}")
        if t != dtype:
            ctx.fail(f"inputs {indices[0]} and {i} have different dtypes {dtype.name}, {t.name}")
    return dtype


def fresh(ctx: OpContext, tag: str | int) -> str:
    """A new symbolic dimension owned by this node."""
    return f"{ctx.node.label}:{tag}"


def known(*dims: Dim) -> bool:
    return all(isinstance(d, int) for d in dims)


# ---- window geometry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A node's window attributes (sizes not yet resolved against an input)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX order: every begin, then every end
    auto_pad: str
    ceil_mode: bool

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def extent(self, i: int) -> int:
        """The dilated kernel's span along spatial axis ``i``."""
        return (self.kernel[i] - 1) * self.dilations[i] + 1

    def axis(self, ctx: OpContext, i: int, size: int) -> tuple[int, int, int]:
        """(output size, pad begin, pad end) along spatial axis ``i`` for input ``size``."""
        s, ext = self.strides[i], self.extent(i)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // s)
            total = max(0, (out - 1) * s + ext - size)
            small, big = total // 2, total - total // 2
            return (out, small, big) if self.auto_pad == "SAME_UPPER" else (out, big, small)
        valid = self.auto_pad == "VALID"
        begin, end = (0, 0) if valid else (self.pads[i], self.pads[i + self.rank])
        span = size + begin + end - ext
        if span < 0:
            ctx.fail(
                f"the (dilated) kernel {ext} is larger than the padded input {size + begin + end} "
                f"along spatial axis {i}"
            )
        if not self.ceil_mode:
            return span // s + 1, begin, end
        out = -(-span // s) + 1
        if (out - 1) * s >= size + begin:  # the last window would start in the end padding
            out -= 1
        return out, begin, end

    def out_dims(self, ctx: OpContext, dims: Sequence[Dim]) -> list[Dim]:
        """Output spatial dims; a symbolic input dim gives a fresh symbol."""
        return [
            self.axis(ctx, i, d)[0] if isinstance(d, int) else fresh(ctx, f"o{i}")
            for i, d in enumerate(dims)
        ]

    def resolve(self, ctx: OpContext, sizes: Sequence[int]) -> Geometry:
        axes = [self.axis(ctx, i, n) for i, n in enumerate(sizes)]
        return Geometry(
            self,
            tuple(sizes),
            tuple(a[0] for a in axes),
            tuple(a[1] for a in axes),
            tuple(a[2] for a in axes),
        )


@dataclass(frozen=True)
class Geometry:
    """A window resolved against concrete input sizes."""

    win: Window
    sizes: tuple[int, ...]
    out: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]

    def taps(self, i: int) -> np.ndarray:
        """Input position of every (output, kernel) tap along axis ``i``: shape (out, kernel)."""
        w = self.win
        o = np.arange(self.out[i])[:, None] * w.strides[i]
        return o + np.arange(w.kernel[i])[None, :] * w.dilations[i] - self.begin[i]

    def inside(self, i: int, *, with_pads: bool = False) -> np.ndarray:
        """Which taps along axis ``i`` land in the input (or in input + pads)."""
        t = self.taps(i)
        lo, hi = (-self.begin[i], self.sizes[i] + self.end[i]) if with_pads else (0, self.sizes[i])
        return (t >= lo) & (t < hi)


def parse_window(
    ctx: OpContext, rank: int, kernel: Sequence[int] | None = None, *, ceil: bool = False
) -> Window:
    """The window attributes of a Conv / pool node over ``rank`` spatial axes, checked.

    ``kernel`` is the kernel shape implied by a weight (Conv); it must agree with the attribute.
    """
    shape = ctx.attr("kernel_shape", None)
    if shape is None:
        if kernel is None:
            ctx.fail("attribute 'kernel_shape' is required")
        shape = list(kernel or ())
    elif kernel is not None and list(shape) != list(kernel):
        ctx.fail(f"kernel_shape {list(shape)} does not match the weight's {list(kernel)}")
    strides = ctx.attr("strides", None) or [1] * rank
    dilations = ctx.attr("dilations", None) or [1] * rank
    pads = ctx.attr("pads", None) or [0] * (2 * rank)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    for name, values, n in (
        ("kernel_shape", shape, rank),
        ("strides", strides, rank),
        ("dilations", dilations, rank),
        ("pads", pads, 2 * rank),
    ):
        if len(values) != n:
            ctx.fail(f"{name} must have {n} values for {rank} spatial axes, got {list(values)}")
    if min(shape) < 1 or min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
        ctx.fail("kernel_shape, strides and dilations must be positive and pads non-negative")
    if auto_pad not in AUTO_PADS:
        ctx.fail(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    # With auto_pad the output size is fixed (ceil(in / stride), or the VALID formula, which
    # the pooling spec gives the same in both modes): ceil_mode only matters for explicit pads.
    ceil_mode = ceil and bool(ctx.attr("ceil_mode", 0)) and auto_pad == "NOTSET"
    return Window(tuple(shape), tuple(strides), tuple(dilations), tuple(pads), auto_pad, ceil_mode)


# ---- sliding-window references -------------------------------------------------------------------


def windows(x: np.ndarray, geo: Geometry, fill: Any) -> np.ndarray:
    """A read-only view (N, C, *out, *kernel) of every window tap of ``x`` (N, C, *sizes),
    padded with ``fill`` (also past the end pad, where ceil mode needs it)."""
    w = geo.win
    pad = [(0, 0), (0, 0)]
    crop = [slice(None), slice(None)]
    for i, n in enumerate(geo.sizes):
        need = (geo.out[i] - 1) * w.strides[i] + w.extent(i) if geo.out[i] else 0
        after = need - n - geo.begin[i]
        pad.append((geo.begin[i], max(0, after)))
        crop.append(slice(0, max(need, 0)))
    xp = np.pad(x, pad, constant_values=fill)[tuple(crop)]
    st = xp.strides
    shape = xp.shape[:2] + geo.out + w.kernel
    strides = (
        st[:2]
        + tuple(st[2 + i] * s for i, s in enumerate(w.strides))
        + tuple(st[2 + i] * d for i, d in enumerate(w.dilations))
    )
    return as_strided(xp, shape, strides, writeable=False)


def _outer(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per-axis (out_i, k_i) arrays → one (*out, *kernel) array of their products."""
    r = len(parts)
    result = np.ones((1,) * (2 * r), dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        shape = [1] * (2 * r)
        shape[i], shape[r + i] = p.shape
        result = result * p.reshape(shape)
    return result


def _kernel_axes(geo: Geometry) -> tuple[int, ...]:
    return tuple(range(2 + geo.win.rank, 2 + 2 * geo.win.rank))


def conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geo: Geometry, group: int
) -> np.ndarray:
    """ONNX Conv: ``x`` (N, C, *sizes), ``w`` (M, C / group, *kernel), ``b`` (M,) or None."""
    xw, ww = upcast(x), upcast(w)
    v = windows(xw, geo, 0)
    r = geo.win.rank
    cg, mg = x.shape[1] // group, w.shape[0] // group
    axes_v = [1, *_kernel_axes(geo)]
    axes_w = list(range(1, 2 + r))
    parts = []
    for g in range(group):
        t = np.tensordot(v[:, g * cg : (g + 1) * cg], ww[g * mg : (g + 1) * mg], (axes_v, axes_w))
        parts.append(np.moveaxis(t, -1, 1))  # (N, *out, mg) -> (N, mg, *out)
    y = np.concatenate(parts, axis=1) if parts else np.zeros((x.shape[0], 0, *geo.out), xw.dtype)
    if b is not None:
        y = y + upcast(b).reshape((1, -1) + (1,) * r)
    return y.astype(x.dtype, copy=False)


def max_pool(
    x: np.ndarray, geo: Geometry, *, indices: bool = False, column_major: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """ONNX MaxPool: the max of each window (NaN if it holds one), and optionally the flat
    index of the first maximal tap inside the input (row- or column-major over N, C, *sizes)."""
    fill = -np.inf if is_float(x.dtype) else np.iinfo(x.dtype).min
    v = windows(x, geo, fill)
    y = v.max(axis=_kernel_axes(geo)) if v.size else np.full(v.shape[: 2 + geo.win.rank], fill)
    y = y.astype(x.dtype, copy=False)
    if not indices:
        return y, None
    return y, _argmax_index(v, y, geo, column_major)


def _argmax_index(v: np.ndarray, y: np.ndarray, geo: Geometry, column_major: bool) -> np.ndarray:
    r = geo.win.rank
    flat = v.reshape((*v.shape[: 2 + r], -1))
    inside = _outer([geo.inside(i) for i in range(r)]).reshape((*geo.out, -1))
    hit = flat == y[..., None]
    if is_float(v.dtype):
        hit |= np.isnan(flat) & np.isnan(y)[..., None]
    tap = np.argmax(hit & inside, axis=-1)  # the first maximal tap inside the input
    ks = np.unravel_index(tap, geo.win.kernel)
    index = np.zeros(y.shape, dtype=np.int64)
    scale = 1
    order = range(r) if column_major else range(r - 1, -1, -1)
    for i in order:
        o = np.arange(geo.out[i]).reshape((-1,) + (1,) * (r - 1 - i))
        pos = o * geo.win.strides[i] + ks[i] * geo.win.dilations[i] - geo.begin[i]
        index += pos * scale
        scale *= geo.sizes[i]
    planes = np.arange(y.shape[0] * y.shape[1], dtype=np.int64).reshape(y.shape[:2] + (1,) * r)
    return np.asarray(index + planes * scale)


def tap_counts(geo: Geometry, *, with_pads: bool) -> np.ndarray:
    """Taps of every window that count for an average: shape ``geo.out``."""
    counts = np.ones((), dtype=np.int64)
    for i in range(geo.win.rank):
        c = geo.inside(i, with_pads=with_pads).sum(axis=1)
        counts = np.multiply.outer(counts, c)
    return counts


def avg_pool(x: np.ndarray, geo: Geometry, *, include_pad: bool) -> np.ndarray:
    """ONNX AveragePool; a window with no tap that counts gives NaN (0 / 0)."""
    v = windows(upcast(x), geo, 0)
    total = v.sum(axis=_kernel_axes(geo))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = total / tap_counts(geo, with_pads=include_pad)
    return np.asarray(y.astype(x.dtype, copy=False))


def lp_pool(x: np.ndarray, geo: Geometry, p: float) -> np.ndarray:
    """ONNX LpPool: ``(Σ |x|^p) ^ (1/p)`` over each window (padding adds nothing)."""
    v = windows(np.abs(upcast(x)) ** p, geo, 0)
    return np.asarray((v.sum(axis=_kernel_axes(geo)) ** (1.0 / p)).astype(x.dtype, copy=False))


@dataclass(frozen=True)
class TransposeGeometry:
    """ConvTranspose's geometry for concrete sizes: output sizes and the pads cropped off."""

    out: tuple[int, ...]
    begin: tuple[int, ...]


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    win: Window,
    geo: TransposeGeometry,
    group: int,
) -> np.ndarray:
    """ONNX ConvTranspose: ``x`` (N, C, *sizes), ``w`` (C, M / group, *kernel).

    Every input cell scatters ``x * w`` to ``i * stride + k * dilation``; the result is then
    cropped by the begin pads to the output sizes (negative pads add zeros).
    """
    xw, ww = upcast(x), upcast(w)
    sizes = x.shape[2:]
    r = len(sizes)
    n, c = x.shape[:2]
    cg, mg = c // group, w.shape[1]
    front = [max(0, -bg) for bg in geo.begin]
    length = [
        front[i] + max((sizes[i] - 1) * win.strides[i] + win.extent(i), geo.begin[i] + geo.out[i])
        for i in range(r)
    ]
    full = np.zeros((n, mg * group, *length), dtype=xw.dtype)
    for g in range(group):
        t = np.tensordot(xw[:, g * cg : (g + 1) * cg], ww[g * cg : (g + 1) * cg], ([1], [0]))
        t = np.moveaxis(t, 1 + r, 1)  # (N, *sizes, mg, *kernel) -> (N, mg, *sizes, *kernel)
        for k in itertools.product(*(range(kk) for kk in win.kernel)):
            dst = tuple(
                slice(
                    front[i] + k[i] * win.dilations[i],
                    front[i] + k[i] * win.dilations[i] + (sizes[i] - 1) * win.strides[i] + 1,
                    win.strides[i],
                )
                for i in range(r)
            )
            tap: tuple[Any, ...] = (Ellipsis, *k)
            full[(slice(None), slice(g * mg, (g + 1) * mg), *dst)] += t[tap]
    crop = tuple(
        slice(front[i] + geo.begin[i], front[i] + geo.begin[i] + geo.out[i]) for i in range(r)
    )
    y = full[(slice(None), slice(None), *crop)]
    if b is not None:
        y = y + upcast(b).reshape((1, -1) + (1,) * r)
    return y.astype(x.dtype, copy=False)


# ---- attention (ONNX Attention-23/24/25) ---------------------------------------------------------


@dataclass(frozen=True)
class AttentionMasks:
    """What restricts the keys each query sees (everything but the QK product itself)."""

    mask: np.ndarray | None  # attn_mask: bool (True attends) or additive
    causal: bool
    offset: int | np.ndarray  # keys before the query block: past length, or per batch (B,)
    left: int  # sliding-window bounds, -1: unbounded
    right: int
    nonpad: np.ndarray | None  # nonpad_kv_seqlen (B,)


def _allowed_bias(allowed: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return np.asarray(np.where(allowed, dtype.type(0), dtype.type(-np.inf)))


def _offset_grid(sq: int, skv: int, offset: int | np.ndarray) -> np.ndarray:
    """``i + offset - j`` for query i and key j: (sq, skv), or (B, 1, sq, skv) per batch."""
    i = np.arange(sq)[:, None]
    j = np.arange(skv)[None, :]
    if np.ndim(offset) == 0:
        return i + int(offset) - j
    return np.asarray((i + np.reshape(offset, (-1, 1, 1)) - j)[:, None])


def attention_bias(masks: AttentionMasks, sq: int, skv: int, dtype: np.dtype[Any]) -> np.ndarray:
    """The additive bias: 0 where query i may attend key j, -inf where not, plus a float mask.

    A boolean mask intersects the allowed set; a mask shorter than the keys is padded as
    disallowed (``nonpad_kv_seqlen`` lets it stop at the longest valid length).
    """
    bias = np.zeros((sq, skv), dtype=dtype)
    mask = masks.mask
    if mask is not None:
        short = skv - mask.shape[-1]
        if short > 0:
            fill = False if mask.dtype == np.bool_ else -np.inf
            mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, short)], constant_values=fill)
        bias = bias + (_allowed_bias(mask, dtype) if mask.dtype == np.bool_ else mask)
    diff = _offset_grid(sq, skv, masks.offset)
    if masks.causal:
        bias = bias + _allowed_bias(diff >= 0, dtype)
    if masks.left >= 0:
        bias = bias + _allowed_bias(diff <= masks.left, dtype)
    if masks.right >= 0:
        bias = bias + _allowed_bias(-diff <= masks.right, dtype)
    if masks.nonpad is not None:
        valid = np.arange(skv)[None, :] < np.reshape(masks.nonpad, (-1, 1))
        bias = bias + _allowed_bias(valid, dtype)[:, None, None, :]
    return bias


def masked_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; a row that is all -inf gives zeros, not NaN."""
    top = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isneginf(top), x.dtype.type(0), top))
    total = np.sum(e, axis=-1, keepdims=True)
    return np.asarray(e / np.where(total == 0, x.dtype.type(1), total))


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, S, heads * D) -> (B, heads, S, D)."""
    b, s, hidden = x.shape
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def attention_masks(ctx: OpContext, x: list[Any], past: int) -> AttentionMasks:
    """An Attention node's masking inputs and attributes.

    The causal / window offset is the cache length ``past``, else per batch
    ``nonpad_kv_seqlen - q_sequence_length`` (an external cache), else 0 (Attention-24).
    """
    nonpad = x[6] if len(x) > 6 else None
    offset: int | np.ndarray = past
    if nonpad is not None and not past:
        offset = np.asarray(nonpad, dtype=np.int64).reshape(-1) - x[0].shape[-2]
    return AttentionMasks(
        mask=x[3] if len(x) > 3 else None,
        causal=bool(ctx.attr("is_causal", 0)),
        offset=offset,
        left=int(ctx.attr("left_window_size", -1)),
        right=int(ctx.attr("right_window_size", -1)),
        nonpad=None if nonpad is None else np.asarray(nonpad).reshape(-1),
    )


def attention_qkv(ctx: OpContext, x: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q, K, V as (B, heads, S, D), the past keys and values (the cache) prepended."""
    q, k, v = (arithmetic(a) for a in x[:3])
    if q.ndim == 3:
        q = split_heads(q, int(ctx.attr("q_num_heads")))
        k, v = (split_heads(a, int(ctx.attr("kv_num_heads"))) for a in (k, v))
    past_k, past_v = (x[i] if len(x) > i else None for i in (4, 5))
    if (past_k is None) != (past_v is None):
        ctx.fail("past_key and past_value must be given together")
    if past_k is not None and past_v is not None:
        k = np.concatenate([arithmetic(past_k), k], axis=2)
        v = np.concatenate([arithmetic(past_v), v], axis=2)
    return q, k, v


def shared_heads(ctx: OpContext, hq: int, kv: np.ndarray) -> np.ndarray:
    """Grouped-query attention: each key/value head serves hq / hkv query heads in a row."""
    hkv = kv.shape[1]
    if hkv == hq:
        return kv
    if hkv == 0 or hq % hkv:
        ctx.fail(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    return np.repeat(kv, hq // hkv, axis=1)
