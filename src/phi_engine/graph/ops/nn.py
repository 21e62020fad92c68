"""Neural-network ops: MatMul, Gemm, Einsum, Conv, ConvTranspose, pooling and Attention.

Softmax, normalisations and reductions are in :mod:`.reduce`. The numpy references compute
float16 and bfloat16 products and windows in float32 and round once (Attention computes float16
in float16, as the ONNX reference does); native lowering covers float32, 1-D convolutions and
pools running on the 2-D kernels through a reshape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._nn_util import (
    Geometry,
    TransposeGeometry,
    Window,
    attention_bias,
    attention_masks,
    attention_qkv,
    avg_pool,
    conv,
    conv_transpose,
    fresh,
    is_float,
    known,
    lp_pool,
    masked_softmax,
    max_pool,
    parse_window,
    require_float,
    shared_heads,
    upcast,
)
from phi_engine.graph.ops._util import F32, all_float32, broadcast, onnx_dtype, tt
from phi_engine.graph.registry import InferContext, OpContext, op

# ---- MatMul / Gemm / Einsum ----------------------------------------------------------------------


def present(ctx: InferContext, *indices: int) -> list[int]:
    """The given inputs that the node has."""
    return [i for i in indices if ctx.has(i)]


def _numeric(ctx: InferContext, *indices: int) -> np.dtype[Any]:
    dtype = ctx.type(indices[0]).dtype
    for i in indices:
        t = ctx.type(i).dtype
        if t != dtype:
            ctx.fail(f"inputs have different dtypes {dtype.name} and {t.name}")
    if not (is_float(dtype) or dtype.kind in "iu"):
        ctx.fail(f"dtype {dtype.name} is not supported")
    return dtype


def matmul_shape(ctx: OpContext, sa: tuple[Dim, ...], sb: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy.matmul's output shape (1-D operands promoted, then their axis dropped)."""
    if not sa or not sb:
        ctx.fail("operands must have rank >= 1")
    a = (1, *sa) if len(sa) == 1 else sa
    b = (*sb, 1) if len(sb) == 1 else sb
    if known(a[-1], b[-2]) and a[-1] != b[-2]:
        ctx.fail(f"inner dimensions differ: {list(sa)} @ {list(sb)}")
    out = list(broadcast(ctx, a[:-2], b[:-2]) or ())
    if len(sa) > 1:
        out.append(a[-2])
    if len(sb) > 1:
        out.append(b[-1])
    return tuple(out)


def _matmul_infer(ctx: InferContext) -> list[TensorType]:
    dtype = _numeric(ctx, 0, 1)
    sa, sb = ctx.type(0).shape, ctx.type(1).shape
    if sa is None or sb is None:
        return [tt(dtype, None)]
    return [tt(dtype, matmul_shape(ctx, sa, sb))]


def nonempty(ctx: LowerContext, *indices: int) -> bool:
    """Lowering guard: the inputs and outputs hold no zero-size dimension."""
    shapes = [ctx.shape(i) for i in indices] + [t.static_shape() for t in ctx.out_types]
    return all(d > 0 for s in shapes for d in s)


def _lower_matmul(ctx: LowerContext) -> list[int] | None:
    if not all_float32(ctx) or not nonempty(ctx, 0, 1):
        return None
    return ctx.step("matmul", [ctx.slot(0), ctx.slot(1)])


@op("MatMul", (1, 9, 13), infer=_matmul_infer, lower=_lower_matmul)
def matmul(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.matmul(upcast(x[0]), upcast(x[1])).astype(x[0].dtype, copy=False)]


def _gemm_attrs(ctx: OpContext) -> tuple[float, float, bool, bool]:
    return (
        float(ctx.attr("alpha", 1.0)),
        float(ctx.attr("beta", 1.0)),
        bool(ctx.attr("transA", 0)),
        bool(ctx.attr("transB", 0)),
    )


def _gemm_infer(ctx: InferContext) -> list[TensorType]:
    dtype = _numeric(ctx, *present(ctx, 0, 1, 2))
    _, _, ta, tb = _gemm_attrs(ctx)
    sa, sb = ctx.type(0).shape, ctx.type(1).shape
    if sa is None or sb is None:
        return [tt(dtype, None)]
    if len(sa) != 2 or len(sb) != 2:
        ctx.fail(f"A and B must be 2-D, got shapes {list(sa)} and {list(sb)}")
    (m, k), (kb, n) = sa[::-1] if ta else sa, sb[::-1] if tb else sb
    if known(k, kb) and k != kb:
        ctx.fail(f"inner dimensions differ: op(A) is {m}x{k}, op(B) is {kb}x{n}")
    sc = ctx.type(2).shape if ctx.has(2) else None
    if sc is not None and known(m, n, *sc) and broadcast(ctx, sc, (m, n)) != (m, n):
        ctx.fail(f"C of shape {list(sc)} does not broadcast to ({m}, {n})")
    return [tt(dtype, (m, n))]


def _lower_gemm(ctx: LowerContext) -> list[int] | None:
    alpha, beta, ta, tb = _gemm_attrs(ctx)
    if not all_float32(ctx) or not nonempty(ctx, 0, 1) or not np.isfinite(np.float32(alpha)):
        return None
    m, n = ctx.out_types[0].static_shape()
    bias = residual = None
    if ctx.has(2) and beta != 0:
        c = ctx.shape(2)
        if len(c) <= 1 or (len(c) == 2 and c[0] == 1):
            bias = _scaled(ctx, 2, beta)
        elif c == (m, n):
            residual = _scaled(ctx, 2, beta)
        elif (value := ctx.value(2)) is not None:
            residual = ctx.constant(np.broadcast_to(value * np.float32(beta), (m, n)))
        else:
            return None
    attrs = {"alpha": alpha, "trans_a": int(ta), "trans_b": int(tb)}
    return ctx.step("gemm", [ctx.slot(0), ctx.slot(1), bias, residual], attrs)


def _scaled(ctx: LowerContext, i: int, factor: float) -> int | None:
    """Input ``i`` times ``factor`` (folded into a constant when the input is one)."""
    if factor == 1:
        return ctx.slot(i)
    value = ctx.value(i)
    if value is not None:
        return ctx.constant((value * np.float32(factor)).astype(F32))
    return ctx.step("mul", [ctx.slot(i), ctx.constant(np.array(factor, F32))])[0]


@op("Gemm", (7, 9, 11, 13), infer=_gemm_infer, lower=_lower_gemm)
def gemm(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    alpha, beta, ta, tb = _gemm_attrs(ctx)
    a, b = upcast(x[0]), upcast(x[1])
    y = (a.T if ta else a) @ (b.T if tb else b)
    if alpha != 1:
        y = y * alpha
    c = x[2] if len(x) > 2 else None
    if c is not None and beta != 0:  # beta = 0 ignores C, as ONNX Runtime does
        y = y + (upcast(c) if beta == 1 else upcast(c) * beta)
    return [np.asarray(y).astype(x[0].dtype, copy=False)]


def _einsum_parse(ctx: OpContext, ranks: Sequence[int]) -> tuple[list[list[str]], list[str]]:
    """The equation as label lists ("." is the ellipsis) and the output labels.

    Implicit output: the ellipsis, then the labels used exactly once in ASCII order.
    """
    eq = str(ctx.attr("equation")).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        ctx.fail(f"equation {eq!r} has {len(terms)} operands, the node {len(ranks)} inputs")
    parsed = [_einsum_term(ctx, t) for t in terms]
    for labels, rank in zip(parsed, ranks, strict=True):
        extra = rank - len(labels) + ("." in labels)
        if extra < 0 or (extra > 0 and "." not in labels):
            ctx.fail(f"term {''.join(labels)!r} does not fit an input of rank {rank}")
    if arrow:
        out = _einsum_term(ctx, rhs)
        if len(set(out)) != len(out) or not set(out) <= {c for t in parsed for c in t} | {"."}:
            ctx.fail(f"bad output term {rhs!r}")
    else:
        flat = [c for t in parsed for c in t if c != "."]
        out = ["."] * any("." in t for t in parsed) + sorted(
            c for c in set(flat) if flat.count(c) == 1
        )
    return parsed, out


def _einsum_term(ctx: OpContext, term: str) -> list[str]:
    if term.count("...") > 1 or "." in term.replace("...", ""):
        ctx.fail(f"bad einsum term {term!r}")
    labels = list(term.replace("...", "."))
    if not all(c == "." or (c.isascii() and c.isalpha()) for c in labels):
        ctx.fail(f"einsum labels must be letters, got {term!r}")
    return labels


def _einsum_infer(ctx: InferContext) -> list[TensorType]:
    dtype = _numeric(ctx, *range(ctx.num_inputs))
    shapes = [ctx.type(i).shape for i in range(ctx.num_inputs)]
    if any(s is None for s in shapes):
        return [tt(dtype, None)]
    parsed, out = _einsum_parse(ctx, [len(s or ()) for s in shapes])
    dims: dict[str, list[tuple[Dim]]] = {}
    ell_shapes = []
    for labels, shape in zip(parsed, shapes, strict=True):
        shape = shape or ()
        extra = len(shape) - len(labels) + ("." in labels)
        pos = 0
        for c in labels:
            if c == ".":
                ell_shapes.append(shape[pos : pos + extra])
                pos += extra
            else:
                dims.setdefault(c, []).append((shape[pos],))
                pos += 1
    result: list[Dim] = []
    for c in out:
        if c == ".":
            result.extend(broadcast(ctx, *ell_shapes) or ())
        else:
            result.extend(broadcast(ctx, *dims[c]) or ())
    return [tt(dtype, result)]


@op("Einsum", (12, 28), infer=_einsum_infer)
def einsum(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    parsed, out = _einsum_parse(ctx, [a.ndim for a in x])
    eq = ",".join("".join(t) for t in parsed) + "->" + "".join(out)
    result = np.einsum(eq.replace(".", "..."), *(upcast(a) for a in x))
    return [np.asarray(result).astype(x[0].dtype, copy=False)]


# ---- convolution ---------------------------------------------------------------------------------


def _conv_window(ctx: OpContext, w_shape: Sequence[Dim] | None, rank: int) -> Window:
    kernel = w_shape[2:] if w_shape is not None and known(*w_shape[2:]) else None
    return parse_window(ctx, rank, [int(k) for k in kernel] if kernel is not None else None)


def _spatial_input(ctx: InferContext) -> tuple[Dim, ...] | None:
    shape = ctx.type(0).shape
    if shape is not None and len(shape) < 3:
        ctx.fail(f"input must be (N, C, spatial...) of rank >= 3, got shape {list(shape)}")
    return shape


def _conv_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, *present(ctx, 0, 1, 2))
    xs, ws = _spatial_input(ctx), ctx.type(1).shape
    group = int(ctx.attr("group", 1))
    if xs is None or ws is None:
        return [tt(dtype, None)]
    if len(ws) != len(xs):
        ctx.fail(f"W of shape {list(ws)} does not match X of shape {list(xs)}")
    if group < 1 or (known(ws[0]) and int(ws[0]) % group):
        ctx.fail(f"group {group} must be positive and divide the {ws[0]} output channels")
    if known(xs[1], ws[1]) and int(xs[1]) != int(ws[1]) * group:
        ctx.fail(f"X has {xs[1]} channels, W expects {ws[1]} per group x {group} groups")
    _check_bias(ctx, ws[0])
    if _unknown_kernel(ctx, ws):
        return [tt(dtype, (xs[0], ws[0], *(fresh(ctx, f"o{i}") for i in range(len(xs) - 2))))]
    win = _conv_window(ctx, ws, len(xs) - 2)
    return [tt(dtype, (xs[0], ws[0], *win.out_dims(ctx, xs[2:])))]


def _unknown_kernel(ctx: InferContext, ws: Sequence[Dim]) -> bool:
    """The kernel's size is not known yet (a symbolic weight and no kernel_shape)."""
    return not known(*ws[2:]) and ctx.attr("kernel_shape", None) is None


def _check_bias(ctx: InferContext, m: Dim) -> None:
    bias = ctx.type(2).shape if ctx.has(2) else None
    if bias is not None and (len(bias) != 1 or (known(m, bias[0]) and bias[0] != m)):
        ctx.fail(f"B must have shape ({m},), one value per output channel, got {list(bias)}")


def _lower_conv(ctx: LowerContext) -> list[int] | None:
    x, w = ctx.shape(0), ctx.shape(1)
    if not all_float32(ctx) or len(x) not in (3, 4) or not nonempty(ctx, 0, 1):
        return None
    geo = _conv_window(ctx, w, len(x) - 2).resolve(ctx, x[2:])
    attrs = {"groups": int(ctx.attr("group", 1)), **_native_window(geo)}
    if len(x) == 4:
        return ctx.step("conv2d", [ctx.slot(0), ctx.slot(1), ctx.slot(2)], attrs)
    wv = ctx.value(1)
    w2 = (
        ctx.constant(wv.reshape(*w[:2], 1, w[2]))
        if wv is not None
        else _reshape(ctx, ctx.slot(1), (*w[:2], 1, w[2]))
    )
    (y,) = ctx.step(
        "conv2d", [_reshape(ctx, ctx.slot(0), (*x[:2], 1, x[2])), w2, ctx.slot(2)], attrs
    )
    return [_reshape(ctx, y, ctx.out_types[0].static_shape())]


def _native_window(geo: Geometry) -> dict[str, list[int]]:
    """A 1-D or 2-D geometry as the 2-D kernels' attributes (1-D runs as height 1)."""
    w = geo.win
    if w.rank == 1:
        return {
            "strides": [1, w.strides[0]],
            "pads": [0, geo.begin[0], 0, geo.end[0]],
            "dilations": [1, w.dilations[0]],
        }
    return {
        "strides": list(w.strides),
        "pads": [*geo.begin, *geo.end],
        "dilations": list(w.dilations),
    }


def _reshape(ctx: LowerContext, slot: int | None, shape: Sequence[int]) -> int:
    return ctx.step("reshape", [slot], {"shape": [int(d) for d in shape]})[0]


@op("Conv", (1, 11, 22), infer=_conv_infer, lower=_lower_conv)
def conv_op(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    geo = _conv_window(ctx, x[1].shape, x[0].ndim - 2).resolve(ctx, x[0].shape[2:])
    b = x[2] if len(x) > 2 else None
    return [conv(x[0], x[1], b, geo, int(ctx.attr("group", 1)))]


def _transpose_geometry(ctx: OpContext, win: Window, sizes: Sequence[int]) -> TransposeGeometry:
    """ConvTranspose's output sizes and begin pads (ONNX ConvTranspose-22)."""
    r = len(sizes)
    extra = ctx.attr("output_padding", None) or [0] * r
    shape = ctx.attr("output_shape", None)
    if len(extra) != r or (shape is not None and len(shape) < r):
        ctx.fail(f"output_padding / output_shape must have {r} values")
    out, begin = [], []
    for i, n in enumerate(sizes):
        full = win.strides[i] * (n - 1) + extra[i] + win.extent(i)
        if shape is not None or win.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = int(shape[len(shape) - r + i]) if shape is not None else n * win.strides[i]
            # An output longer than the full result gets zeros at the end (ONNX Runtime's rule).
            total = max(0, full - o)
            b = total // 2 if win.auto_pad == "SAME_UPPER" else total - total // 2
        elif win.auto_pad == "VALID":
            o, b = full, 0
        else:
            b = win.pads[i]
            o = full - b - win.pads[r + i]
        if o < 0:
            ctx.fail(f"output size {o} along spatial axis {i} is negative")
        out.append(o)
        begin.append(b)
    return TransposeGeometry(tuple(out), tuple(begin))


def _conv_transpose_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, *present(ctx, 0, 1, 2))
    xs, ws = _spatial_input(ctx), ctx.type(1).shape
    group = int(ctx.attr("group", 1))
    if xs is None or ws is None:
        return [tt(dtype, None)]
    if len(ws) != len(xs) or group < 1 or (known(xs[1], ws[0]) and xs[1] != ws[0]):
        ctx.fail(f"W of shape {list(ws)} does not fit X of shape {list(xs)} in {group} groups")
    m = _dim_op(ctx, ws[1], group, int.__mul__, "m")
    _check_bias(ctx, m)
    spatial: list[Dim] = [fresh(ctx, f"o{i}") for i in range(len(xs) - 2)]
    if known(*xs[2:]) and not _unknown_kernel(ctx, ws):
        win = _conv_window(ctx, ws, len(xs) - 2)
        spatial = list(_transpose_geometry(ctx, win, [int(d) for d in xs[2:]]).out)
    return [tt(dtype, (xs[0], m, *spatial))]


@op("ConvTranspose", (1, 11, 22), infer=_conv_transpose_infer)
def conv_transpose_op(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    win = _conv_window(ctx, x[1].shape, x[0].ndim - 2)
    geo = _transpose_geometry(ctx, win, x[0].shape[2:])
    b = x[2] if len(x) > 2 else None
    return [conv_transpose(x[0], x[1], b, win, geo, int(ctx.attr("group", 1)))]


# ---- pooling -------------------------------------------------------------------------------------


def _pool_window(ctx: OpContext, rank: int) -> Window:
    return parse_window(ctx, rank, ceil=True)


def _pool_infer(ctx: InferContext, dtypes: str) -> list[TensorType]:
    t = ctx.type(0)
    if not (is_float(t.dtype) or t.dtype.kind in dtypes):
        ctx.fail(f"dtype {t.dtype.name} is not supported")
    xs = _spatial_input(ctx)
    if xs is None:
        return [tt(t.dtype, None)]
    win = _pool_window(ctx, len(xs) - 2)
    return [tt(t.dtype, (*xs[:2], *win.out_dims(ctx, xs[2:])))]


def _maxpool_infer(ctx: InferContext) -> list[TensorType]:
    (y,) = _pool_infer(ctx, "iu")
    return [y, tt(np.int64, y.shape)]


def _float_pool_infer(ctx: InferContext) -> list[TensorType]:
    return _pool_infer(ctx, "")


def _lower_pool(native: str, extra: Any) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        x = ctx.shape(0)
        if ctx.dtype(0) != F32 or len(x) not in (3, 4) or not nonempty(ctx, 0):
            return None
        if len([o for o in ctx.node.outputs if o]) > 1:  # MaxPool's Indices
            return None
        geo = _pool_window(ctx, len(x) - 2).resolve(ctx, x[2:])
        # The native pools refuse a pad as wide as the window (it could see padding only).
        if any(max(geo.begin[i], geo.end[i]) >= geo.win.extent(i) for i in range(geo.win.rank)):
            return None
        attrs = {**_native_window(geo), **extra(ctx)}
        kernel = list(geo.win.kernel)
        attrs["kernel_shape"] = kernel if len(x) == 4 else [1, *kernel]
        attrs["ceil_mode"] = int(geo.win.ceil_mode)
        if len(x) == 4:
            return ctx.step(native, [ctx.slot(0)], attrs)
        (y,) = ctx.step(native, [_reshape(ctx, ctx.slot(0), (*x[:2], 1, x[2]))], attrs)
        return [_reshape(ctx, y, ctx.out_types[0].static_shape())]

    return lower


def _no_attrs(ctx: OpContext) -> dict[str, int]:
    return {}


def _count_include_pad(ctx: OpContext) -> dict[str, int]:
    return {"count_include_pad": int(ctx.attr("count_include_pad", 0))}


@op(
    "MaxPool",
    (1, 8, 10, 11, 12, 22),
    infer=_maxpool_infer,
    lower=_lower_pool("max_pool2d", _no_attrs),
)
def max_pool_op(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    geo = _pool_window(ctx, x[0].ndim - 2).resolve(ctx, x[0].shape[2:])
    want = len(ctx.node.outputs) > 1 and bool(ctx.node.outputs[1])
    column_major = int(ctx.attr("storage_order", 0)) == 1
    y, indices = max_pool(x[0], geo, indices=want, column_major=column_major)
    return [y] if indices is None else [y, indices]


@op(
    "AveragePool",
    (1, 7, 10, 11, 19, 22),
    infer=_float_pool_infer,
    lower=_lower_pool("avg_pool2d", _count_include_pad),
)
def average_pool(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    geo = _pool_window(ctx, x[0].ndim - 2).resolve(ctx, x[0].shape[2:])
    return [avg_pool(x[0], geo, include_pad=bool(ctx.attr("count_include_pad", 0)))]


@op("LpPool", (2, 11, 18, 22), infer=_float_pool_infer)
def lp_pool_op(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    geo = _pool_window(ctx, x[0].ndim - 2).resolve(ctx, x[0].shape[2:])
    return [lp_pool(x[0], geo, float(ctx.attr("p", 2)))]


def _global_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if not (is_float(t.dtype) or (ctx.node.op_type == "GlobalMaxPool" and t.dtype.kind in "iu")):
        ctx.fail(f"dtype {t.dtype.name} is not supported")
    xs = _spatial_input(ctx)
    return [tt(t.dtype, None if xs is None else (*xs[:2], *[1] * (len(xs) - 2)))]


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _lower_global_avg(ctx: LowerContext) -> list[int] | None:
    if ctx.dtype(0) != F32 or len(ctx.shape(0)) < 3 or not nonempty(ctx, 0):
        return None
    return ctx.step("global_avg_pool", [ctx.slot(0)])


def _lower_global_max(ctx: LowerContext) -> list[int] | None:
    rank = len(ctx.shape(0))
    if ctx.dtype(0) != F32 or rank < 3 or not nonempty(ctx, 0):
        return None
    return ctx.step("reduce_max", [ctx.slot(0)], {"axes": list(range(2, rank)), "keepdims": 1})


@op("GlobalAveragePool", (1, 22), infer=_global_infer, lower=_lower_global_avg)
def global_average_pool(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    y = upcast(x[0]).mean(axis=_spatial_axes(x[0]), keepdims=True)
    return [y.astype(x[0].dtype, copy=False)]


@op("GlobalMaxPool", (1, 22), infer=_global_infer, lower=_lower_global_max)
def global_max_pool(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [x[0].max(axis=_spatial_axes(x[0]), keepdims=True)]


@op("GlobalLpPool", (2, 22), infer=_global_infer)
def global_lp_pool(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    p = float(ctx.attr("p", 2))
    total = (np.abs(upcast(x[0])) ** p).sum(axis=_spatial_axes(x[0]), keepdims=True)
    return [(total ** (1.0 / p)).astype(x[0].dtype, copy=False)]


# ---- Attention -----------------------------------------------------------------------------------


def _attention_infer(ctx: InferContext) -> list[TensorType]:
    q, k, v = ctx.type(0), ctx.type(1), ctx.type(2)
    if not all(is_float(t.dtype) for t in (q, k, v)) or q.dtype != k.dtype:
        ctx.fail(f"Q, K, V must be float tensors (Q and K alike), got {q}, {k}, {v}")
    if q.shape is None or k.shape is None or v.shape is None:
        return [tt(q.dtype, None), tt(k.dtype, None), tt(v.dtype, None), tt(q.dtype, None)]
    if not len(q.shape) == len(k.shape) == len(v.shape) or len(q.shape) not in (3, 4):
        ctx.fail(f"Q, K and V must all be 3-D or all 4-D, got {q}, {k}, {v}")
    b, sq, skv = q.shape[0], q.shape[-2], k.shape[-2]
    if len(q.shape) == 4:
        hq, hkv, dk, dv = q.shape[1], k.shape[1], k.shape[3], v.shape[3]
    else:
        sq, skv = q.shape[1], k.shape[1]
        hq, hkv = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
        dk, dv = _per_head(ctx, k.shape[2], hkv, "dk"), _per_head(ctx, v.shape[2], hkv, "dv")
    past = ctx.type(4).shape if ctx.has(4) else None
    total = skv if past is None else _dim_op(ctx, past[2], skv, int.__add__, "kv")
    y = (b, hq, sq, dv) if len(q.shape) == 4 else (b, sq, _dim_op(ctx, hq, dv, int.__mul__, "hd"))
    return [
        tt(q.dtype, y),
        tt(k.dtype, (b, hkv, total, dk)),
        tt(v.dtype, (b, hkv, total, dv)),
        tt(q.dtype, (b, hq, sq, total)),
    ]


def _per_head(ctx: OpContext, hidden: Dim, heads: int, tag: str) -> Dim:
    return hidden // heads if isinstance(hidden, int) else fresh(ctx, tag)


def _dim_op(ctx: OpContext, a: Dim, b: Dim, fn: Callable[[int, int], int], tag: str) -> Dim:
    """``fn(a, b)`` for known dims, else a fresh symbol."""
    return fn(a, b) if isinstance(a, int) and isinstance(b, int) else fresh(ctx, tag)


@op("Attention", (23, 24, 25), infer=_attention_infer)
def attention(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Scaled dot-product attention (ONNX Attention), computed in the inputs' dtype as the ONNX
    reference does (bfloat16 in float32)."""
    q, present_k, present_v = attention_qkv(ctx, x)
    k, v = (shared_heads(ctx, q.shape[1], a) for a in (present_k, present_v))
    # Q and K are each scaled by sqrt(scale) before the product, to keep it in range.
    scale = ctx.attr("scale", None)
    root = q.dtype.type(np.sqrt(1 / np.sqrt(q.shape[3]) if scale is None else scale))
    raw = scores = np.matmul(q * root, np.swapaxes(k * root, 2, 3))
    cap = float(ctx.attr("softcap", 0.0))
    if cap > 0:
        scores = np.tanh(scores / q.dtype.type(cap)) * q.dtype.type(cap)
    past = x[4].shape[2] if len(x) > 4 and x[4] is not None else 0
    bias = attention_bias(attention_masks(ctx, x, past), q.shape[2], k.shape[2], q.dtype)
    biased = scores + bias
    precision = ctx.attr("softmax_precision", None)
    probs = masked_softmax(biased if precision is None else biased.astype(onnx_dtype(precision)))
    # A query that may attend no key gives a zero row (decided on the bias, not the scores).
    probs = np.where(np.isneginf(np.max(bias, axis=-1, keepdims=True)), 0, probs)
    y = np.matmul(probs.astype(q.dtype), v)
    if x[0].ndim == 3:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    if not 0 <= mode <= 3:
        ctx.fail(f"qk_matmul_output_mode must be 0..3, got {mode}")
    qk = (raw, scores, biased, probs)[mode]
    return [
        y.astype(x[0].dtype, copy=False),
        present_k.astype(x[1].dtype, copy=False),
        present_v.astype(x[2].dtype, copy=False),
        qk.astype(x[0].dtype, copy=False),
    ]
