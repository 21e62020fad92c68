"""Image ops: Resize and Upsample (the arithmetic is in :mod:`._resize`), CenterCropPad, Col2Im
and MaxUnpool.

Nearest resizing gathers and is exact for every dtype; linear and cubic compute in float64
(complex128 for complex inputs) and round once to the input dtype (integers half to even,
saturating). Native lowering: nearest as one gather per resized axis (any native dtype); float32
linear and cubic as one matmul per resized axis with the constant interpolation matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops import _resize as rs
from phi_engine.graph.ops._nn_util import fresh
from phi_engine.graph.ops._tensor_util import arg, emit_reshape, emit_take, native_ready, norm_axes
from phi_engine.graph.ops._util import F32, tt
from phi_engine.graph.registry import InferContext, OpContext, op

_POLICIES = ("stretch", "not_larger", "not_smaller")
_MAX_MATRIX = 1 << 22  # elements of one axis's dense (out, in) float32 interpolation matrix

# ---- attributes and inputs -------------------------------------------------------------------


def _legacy(ctx: OpContext) -> bool:
    """Upsample and Resize-10: asymmetric coordinates, scales only."""
    return ctx.node.op_type == "Upsample" or ctx.version < 11


def _choice(ctx: OpContext, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = str(ctx.attr(name, default))
    if value not in allowed:
        ctx.fail(f"{name} {value!r} is not one of {list(allowed)}", UnsupportedError)
    return value


def _mode(ctx: OpContext) -> rs.Mode:
    modes = ("nearest", "linear") if _legacy(ctx) else ("nearest", "linear", "cubic")
    mode = _choice(ctx, "mode", "nearest", modes)
    if _legacy(ctx):
        return rs.Mode(mode, "asymmetric", rs.LEGACY)
    coords: tuple[str, ...] = rs.COORDINATE_MODES
    if ctx.version < 19:
        coords = tuple(c for c in coords if c != "half_pixel_symmetric")
    if ctx.version == 11:
        coords = (*coords, "tf_half_pixel_for_nn")
    antialias = bool(ctx.attr("antialias", 0)) if ctx.version >= 18 else False
    if antialias and mode == "nearest":
        ctx.fail("antialias applies to the linear and cubic modes only")
    return rs.Mode(
        mode,
        _choice(ctx, "coordinate_transformation_mode", "half_pixel", coords),
        _choice(ctx, "nearest_mode", "round_prefer_floor", rs.NEAREST_MODES),
        float(ctx.attr("cubic_coeff_a", -0.75)),
        bool(ctx.attr("exclude_outside", 0)),
        antialias,
        float(ctx.attr("extrapolation_value", 0.0)),
    )


def _policy(ctx: OpContext) -> str:
    if ctx.node.op_type == "Upsample" or ctx.version < 18:
        return "stretch"
    return _choice(ctx, "keep_aspect_ratio_policy", "stretch", _POLICIES)


def _axes(ctx: OpContext, rank: int) -> list[int]:
    axes = ctx.attr("axes", None) if ctx.node.op_type == "Resize" and ctx.version >= 18 else None
    return list(range(rank)) if axes is None else norm_axes(ctx, [int(a) for a in axes], rank)


def _slots(ctx: OpContext) -> tuple[int | None, int | None, int | None]:
    """Input indices of roi, scales and sizes (None where the version has no such input)."""
    if ctx.node.op_type == "Upsample":
        return None, (1 if ctx.version >= 9 else None), None
    return (None, 1, None) if ctx.version < 11 else (1, 2, 3)


def _request(
    ctx: OpContext, x: list[Any], n: int
) -> tuple[list[float] | None, list[int] | None, list[tuple[float, float]]]:
    """(scales, sizes, roi per axis) for ``n`` resized axes, validated."""
    roi_i, scales_i, sizes_i = _slots(ctx)

    def given(i: int | None) -> np.ndarray | None:
        value = x[i] if i is not None and i < len(x) else None
        return None if value is None or value.size == 0 else np.asarray(value).reshape(-1)

    scales_v = given(scales_i) if scales_i is not None else np.asarray(ctx.attr("scales"))
    sizes_v, roi_v = given(sizes_i), given(roi_i)
    if (scales_v is None) == (sizes_v is None):
        ctx.fail("exactly one of scales and sizes must be given")
    found = scales_v if scales_v is not None else sizes_v
    assert found is not None
    if found.size != n:
        what = "scales" if scales_v is not None else "sizes"
        ctx.fail(f"{what} has {found.size} values for {n} resized axes")
    scales = sizes = None
    if scales_v is not None:
        scales = [float(s) for s in scales_v.astype(np.float64)]
        if not all(s > 0 for s in scales):
            ctx.fail(f"scales {scales} must be positive")
    if sizes_v is not None:
        sizes = [int(s) for s in sizes_v]
        if any(s < 0 for s in sizes):
            ctx.fail(f"sizes {sizes} must be non-negative")
    roi = [(0.0, 1.0)] * n
    if roi_v is not None:
        if roi_v.size != 2 * n:
            ctx.fail(f"roi has {roi_v.size} values, expected {2 * n}")
        r = [float(v) for v in roi_v.astype(np.float64)]
        roi = list(zip(r[:n], r[n:], strict=True))
    return scales, sizes, roi


def _plan(ctx: OpContext, x: list[Any]) -> tuple[list[int], dict[int, rs.Taps]]:
    """The output shape and the taps of every axis that changes."""
    data, mode = x[0], _mode(ctx)
    axes = _axes(ctx, data.ndim)
    scales, sizes, roi = _request(ctx, x, len(axes))
    out, scale = rs.output_sizes(data.shape, axes, scales, sizes, _policy(ctx))
    crop = mode.coordinates == "tf_crop_and_resize"
    taps = {}
    for a, r in zip(axes, roi, strict=True):
        if out[a] == data.shape[a] and scale[a] == 1 and (not crop or r == (0.0, 1.0)):
            continue
        if data.shape[a] == 0 and out[a] > 0:
            ctx.fail(f"cannot resize the empty axis {a} to {out[a]}")
        taps[a] = rs.axis_taps(mode, data.shape[a], out[a], scale[a], r)
    return out, taps


# ---- type inference --------------------------------------------------------------------------


def _interpolates(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "iufc" or dtype.name == "bfloat16"


def _known(ctx: InferContext, i: int | None) -> tuple[bool, np.ndarray | None]:
    """Whether input ``i`` is given (present, not empty) if that is known, and its value."""
    if i is None or not ctx.has(i):
        return False, None
    value = ctx.value(i)
    if value is not None:
        return value.size > 0, np.asarray(value).reshape(-1)
    t = ctx.type(i)
    if t.is_static:
        return int(np.prod(t.static_shape())) > 0, None
    return True, None


def _resize_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    mode = _mode(ctx)
    _policy(ctx)
    if mode.mode != "nearest" and not _interpolates(x.dtype):
        ctx.fail(f"{mode.mode} interpolation of {x.dtype.name} is not defined", UnsupportedError)
    roi_i, scales_i, sizes_i = _slots(ctx)
    for i, kinds in ((roi_i, "f"), (scales_i, "f"), (sizes_i, "i")):
        if i is not None and ctx.has(i) and ctx.type(i).dtype.kind != kinds:
            ctx.fail(f"input {i} has dtype {ctx.type(i).dtype.name}")
    if x.shape is None:
        return [tt(x.dtype, None)]
    axes = _axes(ctx, len(x.shape))
    out: list[Dim] = list(x.shape)
    has_scales, scales = _known(ctx, scales_i)
    if scales_i is None:
        has_scales, scales = True, np.asarray(ctx.attr("scales"), np.float64).reshape(-1)
    has_sizes, sizes = _known(ctx, sizes_i)
    if has_scales and scales is not None and not has_sizes:
        for a, s in zip(axes, scales, strict=False):
            if s != 1:
                d = x.shape[a]
                out[a] = int(np.floor(d * float(s))) if isinstance(d, int) else fresh(ctx, a)
        return [tt(x.dtype, out)]
    dims = [x.shape[a] for a in axes]
    if has_sizes and sizes is not None and has_scales is False:
        if _policy(ctx) == "stretch":
            for a, n in zip(axes, sizes, strict=False):
                out[a] = int(n)
            return [tt(x.dtype, out)]
        if all(isinstance(d, int) and d > 0 for d in dims):
            static = [int(d) if isinstance(d, int) else 1 for d in x.shape]
            shape, _ = rs.output_sizes(static, axes, None, [int(n) for n in sizes], _policy(ctx))
            return [tt(x.dtype, [shape[a] if a in axes else d for a, d in enumerate(out)])]
    for a in axes:
        out[a] = fresh(ctx, a)
    return [tt(x.dtype, out)]


# ---- reference -------------------------------------------------------------------------------


def _store(y: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """The computed values in the output dtype: integers round half to even and saturate."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(y.real), info.min, info.max).astype(dtype)
    return y.astype(dtype)


def _resize(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, mode = x[0], _mode(ctx)
    out, taps = _plan(ctx, x)
    if mode.mode == "nearest":
        y, outside = rs.resample(data, taps, out)
    else:
        if not _interpolates(data.dtype):
            ctx.fail(f"{mode.mode} interpolation of {data.dtype.name} is not defined")
        wide = np.complex128 if data.dtype.kind == "c" else np.float64
        y, outside = rs.resample(data.astype(wide), taps, out)
        y = _store(y, data.dtype)
    if outside is not None:
        fill = _store(np.asarray(mode.extrapolation, np.float64), data.dtype)
        y = np.where(outside, fill, y)
    return [np.ascontiguousarray(y, dtype=data.dtype).reshape(out)]


# ---- lowering --------------------------------------------------------------------------------


def _lower_resize(ctx: LowerContext) -> list[int] | None:
    if not native_ready(ctx, 0):
        return None
    x = [ctx.value(i) for i in range(len(ctx.node.inputs))]
    if any(v is None for v, name in zip(x[1:], ctx.node.inputs[1:], strict=True) if name):
        return None  # scales or sizes computed at run time
    shape = ctx.shape(0)
    x[0] = np.empty(shape, ctx.dtype(0))  # _plan reads the data's shape only
    out, taps = _plan(ctx, x)
    if 0 in shape or 0 in out:
        return None
    if any(out[a] * shape[a] > _MAX_MATRIX for a in taps) and _mode(ctx).mode != "nearest":
        return None  # a huge interpolation matrix: the reference's taps are cheaper
    if any(t.outside is not None and t.outside.any() for t in taps.values()):
        return None  # extrapolated positions: the reference fills them
    nearest = _mode(ctx).mode == "nearest"
    if not nearest and ctx.dtype(0) != F32:
        return None
    slot = ctx.slot(0)
    if not taps:
        return [emit_reshape(ctx, slot, out)]
    current = list(shape)
    for axis, t in taps.items():
        if nearest:
            slot = emit_take(ctx, slot, t.index[:, 0], axis)
        else:
            slot = _emit_axis_matmul(ctx, slot, current, axis, _matrix(t, current[axis]))
        current[axis] = out[axis]
    assert slot is not None
    return [slot]


def _matrix(t: rs.Taps, size_in: int) -> np.ndarray:
    """The (out, in) interpolation matrix of one axis's taps."""
    assert t.weights is not None
    m = np.zeros((t.index.shape[0], size_in), np.float64)
    rows = np.repeat(np.arange(t.index.shape[0]), t.index.shape[1])
    np.add.at(m, (rows, t.index.reshape(-1)), t.weights.reshape(-1))
    return m.astype(F32)


def _emit_axis_matmul(
    ctx: LowerContext, slot: int | None, shape: list[int], axis: int, m: np.ndarray
) -> int:
    """``slot`` with ``axis`` contracted against the (out, in) matrix ``m``."""
    rank = len(shape)
    if axis == rank - 2:
        return ctx.step("matmul", [ctx.constant(m), slot])[0]
    if axis == rank - 1:
        return ctx.step("matmul", [slot, ctx.constant(np.ascontiguousarray(m.T))])[0]
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = ctx.step("transpose", [slot], {"perm": perm})[0]
    product = ctx.step("matmul", [moved, ctx.constant(np.ascontiguousarray(m.T))])[0]
    back = [perm.index(a) for a in range(rank)]
    return ctx.step("transpose", [product], {"perm": back})[0]


@op("Resize", (10, 11, 13, 18, 19), infer=_resize_infer, lower=_lower_resize)
def resize(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _resize(ctx, x)


@op("Upsample", (7, 9, 10), infer=_resize_infer, lower=_lower_resize)
def upsample(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _resize(ctx, x)


# ---- CenterCropPad -------------------------------------------------------------------------------


def _crop_axes(ctx: OpContext, rank: int, n: int) -> list[int]:
    axes = ctx.attr("axes", None)
    found = list(range(rank)) if axes is None else norm_axes(ctx, [int(a) for a in axes], rank)
    if len(found) != n:
        ctx.fail(f"shape has {n} values for {len(found)} axes")
    return found


def _center_crop_pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if ctx.type(1).dtype.kind != "i":
        ctx.fail(f"shape must be int32 or int64, got {ctx.type(1).dtype.name}")
    value = ctx.value(1)
    if x.shape is None:
        return [tt(x.dtype, None)]
    out: list[Dim] = list(x.shape)
    if value is None:
        axes = ctx.attr("axes", None)
        for a in range(len(out)) if axes is None else norm_axes(ctx, axes, len(out)):
            out[a] = fresh(ctx, a)
        return [tt(x.dtype, out)]
    sizes = [int(v) for v in np.ravel(value)]
    for a, n in zip(_crop_axes(ctx, len(out), len(sizes)), sizes, strict=True):
        if n < 0:
            ctx.fail(f"shape {sizes} has a negative size")
        out[a] = n
    return [tt(x.dtype, out)]


@op("CenterCropPad", (18,), infer=_center_crop_pad_infer)
def center_crop_pad(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Each listed axis cropped or zero-padded to its size around the centre; an odd
    difference leaves the extra element at the end (CenterCropPad-18)."""
    data, sizes = x[0], [int(v) for v in np.ravel(x[1])]
    out = list(data.shape)
    src = [slice(None)] * data.ndim
    dst = [slice(None)] * data.ndim
    for a, n in zip(_crop_axes(ctx, data.ndim, len(sizes)), sizes, strict=True):
        if n < 0:
            ctx.fail(f"shape {sizes} has a negative size")
        d = data.shape[a]
        start = abs(d - n) // 2
        if n < d:
            src[a] = slice(start, start + n)
        elif n > d:
            dst[a] = slice(start, start + d)
        out[a] = n
    y = np.zeros(out, data.dtype) if data.dtype.kind != "O" else np.full(out, "", object)
    y[tuple(dst)] = data[tuple(src)]
    return [y]


# ---- Col2Im --------------------------------------------------------------------------------------


def _col2im_attrs(ctx: OpContext, r: int) -> tuple[list[int], list[int], list[int]]:
    dilations = [int(v) for v in ctx.attr("dilations", None) or [1] * r]
    pads = [int(v) for v in ctx.attr("pads", None) or [0] * (2 * r)]
    strides = [int(v) for v in ctx.attr("strides", None) or [1] * r]
    if len(dilations) != r or len(strides) != r or len(pads) != 2 * r:
        ctx.fail(f"dilations, strides and pads must have {r}, {r} and {2 * r} values")
    if min(dilations) < 1 or min(strides) < 1 or min(pads) < 0:
        ctx.fail("dilations and strides must be positive and pads non-negative")
    return dilations, pads, strides


def _col2im_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    for i in (1, 2):
        if ctx.type(i).dtype != np.int64:
            ctx.fail(f"input {i} must be int64, got {ctx.type(i).dtype.name}")
    image, block = ctx.value(1), ctx.value(2)
    if x.shape is not None and len(x.shape) != 3:
        ctx.fail(f"input must be (N, C * prod(block_shape), L), got {list(x.shape)}")
    n: Dim = x.shape[0] if x.shape is not None else fresh(ctx, "n")
    c: Dim = fresh(ctx, "c")
    if block is not None and x.shape is not None and isinstance(x.shape[1], int):
        size = int(np.prod(block))
        if size <= 0 or x.shape[1] % size:
            ctx.fail(f"input dimension 1 ({x.shape[1]}) is not a multiple of {size}")
        c = x.shape[1] // size
    if image is None:
        image_shape = ctx.type(1).shape
        r = image_shape[0] if image_shape else None
        if not isinstance(r, int):
            return [tt(x.dtype, None)]
        return [tt(x.dtype, (n, c, *(fresh(ctx, f"s{i}") for i in range(r))))]
    return [tt(x.dtype, (n, c, *(int(v) for v in np.ravel(image))))]


@op("Col2Im", (18,), infer=_col2im_infer)
def col2im(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Sum each column's block back into the (padded) image (Col2Im-18, torch ``fold``)."""
    data = x[0]
    image = [int(v) for v in np.ravel(x[1])]
    block = [int(v) for v in np.ravel(x[2])]
    r = len(image)
    if len(block) != r or min(block, default=1) < 1:
        ctx.fail(f"block_shape {block} must have {r} positive values")
    dilations, pads, strides = _col2im_attrs(ctx, r)
    counts = [
        (image[i] + pads[i] + pads[r + i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
        for i in range(r)
    ]
    n, cols, length = data.shape
    size = int(np.prod(block))
    if cols % size or length != int(np.prod(counts)) or min(counts) < 1:
        ctx.fail(
            f"input of shape {list(data.shape)} does not fit image {image}, block {block} "
            f"({counts} sliding blocks)"
        )
    c = cols // size
    # Image position of every (kernel offset, block) pair, per spatial axis.
    grids = np.meshgrid(
        *[np.arange(b) for b in block], *[np.arange(k) for k in counts], indexing="ij"
    )
    pos = [grids[r + i] * strides[i] - pads[i] + grids[i] * dilations[i] for i in range(r)]
    inside = np.logical_and.reduce([(p >= 0) & (p < image[i]) for i, p in enumerate(pos)])
    flat = np.ravel_multi_index([np.where(inside, p, 0) for p in pos], image).reshape(size, length)
    keep = inside.reshape(size, length)
    y = np.zeros((n, c, int(np.prod(image))), data.dtype)
    cols_v = data.reshape(n, c, size, length)
    target: Any = (slice(None), slice(None), flat[keep])
    np.add.at(y, target, cols_v[:, :, keep])
    return [y.reshape(n, c, *image)]


# ---- MaxUnpool -----------------------------------------------------------------------------------


def _unpool_shape(ctx: OpContext, x_shape: tuple[Dim, ...]) -> list[Dim]:
    """The shape MaxPool's attributes imply for the unpooled tensor."""
    r = len(x_shape) - 2
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = [int(s) for s in ctx.attr("strides", None) or [1] * r]
    pads = [int(p) for p in ctx.attr("pads", None) or [0] * (2 * r)]
    if len(kernel) != r or len(strides) != r or len(pads) != 2 * r:
        ctx.fail(f"kernel_shape, strides and pads must have {r}, {r} and {2 * r} values")
    out: list[Dim] = list(x_shape[:2])
    for i, d in enumerate(x_shape[2:]):
        if isinstance(d, int):
            out.append((d - 1) * strides[i] - pads[i] - pads[r + i] + kernel[i])
        else:
            out.append(fresh(ctx, f"o{i}"))
    return out


def _max_unpool_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if ctx.type(1).dtype != np.int64:
        ctx.fail(f"I must be int64, got {ctx.type(1).dtype.name}")
    if x.shape is None:
        return [tt(x.dtype, None)]
    if len(x.shape) < 3:
        ctx.fail(f"X must be (N, C, spatial...), got {list(x.shape)}")
    if ctx.has(2):
        value = ctx.value(2)
        if value is None:
            return [tt(x.dtype, [fresh(ctx, i) for i in range(len(x.shape))])]
        return [tt(x.dtype, [int(v) for v in np.ravel(value)])]
    return [tt(x.dtype, _unpool_shape(ctx, x.shape))]


@op("MaxUnpool", (9, 11, 22), infer=_max_unpool_infer)
def max_unpool(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Scatter X to the flat positions I (MaxPool's, over the whole implied tensor); a larger
    ``output_shape`` keeps that tensor at its start and zero-fills the rest (the ONNX
    reference's and the conformance data's reading)."""
    data, index = x[0], x[1]
    implied = [int(d) for d in _unpool_shape(ctx, data.shape)]
    if index.shape != data.shape:
        ctx.fail(f"I of shape {list(index.shape)} differs from X's {list(data.shape)}")
    total = int(np.prod(implied))
    flat_i = index.reshape(-1).astype(np.int64)
    if flat_i.size and (flat_i.min() < 0 or flat_i.max() >= total):
        ctx.fail(f"index {int(flat_i.max())} is out of range for the output of {total} elements")
    y = np.zeros(total, data.dtype)
    y[flat_i] = data.reshape(-1)
    y = y.reshape(implied)
    shape = arg(x, 2)
    if shape is None:
        return [y]
    want = [int(v) for v in np.ravel(shape)]
    if len(want) != len(implied) or any(w < d for w, d in zip(want, implied, strict=True)):
        ctx.fail(f"output_shape {want} is smaller than the pooled input implies ({implied})")
    out = np.zeros(want, data.dtype)
    out[tuple(slice(0, d) for d in implied)] = y
    return [out]
