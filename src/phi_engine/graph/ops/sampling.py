"""Sampling ops: GridSample, AffineGrid, RoiAlign and DeformConv.

GridSample follows PyTorch's ``grid_sampler`` (as ONNX Runtime does): coordinates are
unnormalised in the grid's precision (float32 for float16 and float32 grids), an out-of-range
point is clamped or reflected (not for bicubic), ``nearest`` rounds half to even, and each
interpolation tap is then fetched with the padding mode (zeros, clamped, reflected). RoiAlign
follows the Mask R-CNN / ONNX Runtime kernel the spec was written from: roi coordinates in the
rois' precision, samples beyond one pixel outside the map weigh 0, and ``max`` takes the largest
*weighted corner* of every sample (ONNX Runtime's definition, which the conformance data pins).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import fresh, is_float, require_float
from phi_engine.graph.ops._resize import _cubic
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)


def coordinate_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The precision coordinates are computed in: float32 unless the tensor is float64."""
    return F64 if dtype == F64 else F32


def store(y: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Computed values in the output dtype: integers round half to even and saturate."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(y.real), info.min, info.max).astype(dtype)
    return y.astype(dtype)


# ---- GridSample ----------------------------------------------------------------------------------

_GRID_MODES = {16: ("bilinear", "nearest", "bicubic"), 20: ("linear", "nearest", "cubic")}
_PADDINGS = ("zeros", "border", "reflection")


def _grid_attrs(ctx: OpContext) -> tuple[str, str, bool]:
    modes = _GRID_MODES[16 if ctx.version < 20 else 20]
    mode = str(ctx.attr("mode", modes[0]))
    if mode not in modes:
        ctx.fail(f"mode {mode!r} is not one of {list(modes)}", UnsupportedError)
    padding = str(ctx.attr("padding_mode", "zeros"))
    if padding not in _PADDINGS:
        ctx.fail(f"padding_mode {padding!r} is not one of {list(_PADDINGS)}", UnsupportedError)
    canonical = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    return canonical, padding, bool(ctx.attr("align_corners", 0))


def _grid_sample_infer(ctx: InferContext) -> list[TensorType]:
    x, grid = ctx.type(0), ctx.type(1)
    mode, _, _ = _grid_attrs(ctx)
    if not is_float(grid.dtype):
        ctx.fail(f"grid must be a float tensor, got {grid.dtype.name}")
    if mode != "nearest" and not (x.dtype.kind in "iufc" or is_float(x.dtype)):
        ctx.fail(f"{mode} interpolation of {x.dtype.name} is not defined", UnsupportedError)
    if x.shape is None or grid.shape is None:
        return [tt(x.dtype, None)]
    r = len(x.shape) - 2
    if r < 1 or (ctx.version < 20 and r != 2):
        ctx.fail(f"X must have rank {'4' if ctx.version < 20 else '>= 3'}, got {list(x.shape)}")
    if len(grid.shape) != r + 2 or (isinstance(grid.shape[-1], int) and grid.shape[-1] != r):
        ctx.fail(f"grid of shape {list(grid.shape)} does not fit X of shape {list(x.shape)}")
    n: Dim = x.shape[0] if isinstance(x.shape[0], int) else grid.shape[0]
    return [tt(x.dtype, (n, x.shape[1], *grid.shape[1:-1]))]


def reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` reflected by the borders ``lo`` and ``hi`` until it lies between them (float64)."""
    x = x.astype(F64)
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, x - hi)
    flips = np.floor(dx / span)
    rest = dx - flips * span
    even = flips % 2 == 0
    from_below = np.where(even, lo + rest, hi - rest)
    from_above = np.where(even, hi - rest, lo + rest)
    return np.where(below, from_below, np.where(above, from_above, x))


def _grid_axis(
    g: np.ndarray, size: int, mode: str, padding: str, align: bool
) -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray | None]]:
    """Along one spatial axis: per tap, the (clamped) index, weight (None: 1) and validity."""
    one = g.dtype.type(1)
    x = (g + one) / 2 * (size - 1) if align else ((g + one) * size - one) / 2
    if mode == "nearest":
        x = np.rint(x)
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    out = (x < lo) | (x > hi)
    if mode == "cubic":
        pass  # bicubic pads each tap, not the point (PyTorch grid_sampler_2d)
    elif padding == "border":
        x = np.where(out, np.clip(x, 0, size - 1), x)
    elif padding == "reflection":
        x = np.where(out, reflect(x, lo, hi).astype(x.dtype), x)
    taps: list[np.ndarray]
    weights: list[np.ndarray | None] = [None]
    if mode == "nearest":
        taps = [x.astype(np.int64)]
    else:
        base = np.floor(x)
        frac = (x - base).astype(F64)
        start = base.astype(np.int64)
        if mode == "linear":
            taps, weights = [start, start + 1], [1 - frac, frac]
        else:
            taps = [start + k for k in (-1, 0, 1, 2)]
            weights = [_cubic(np.abs(frac - k), -0.75) for k in (-1, 0, 1, 2)]
    index: list[np.ndarray] = []
    valid: list[np.ndarray | None] = []
    for t in taps:
        if padding == "zeros":
            ok = (t >= 0) & (t < size)
            index.append(np.clip(t, 0, size - 1))
            valid.append(ok)
        elif padding == "border":
            index.append(np.clip(t, 0, size - 1))
            valid.append(None)
        else:
            index.append(np.clip(reflect(t, lo, hi).astype(np.int64), 0, size - 1))
            valid.append(None)
    return index, weights, valid


@op("GridSample", (16, 20, 22), infer=_grid_sample_infer)
def grid_sample(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, grid = x[0], x[1]
    mode, padding, align = _grid_attrs(ctx)
    n, c, *dims = data.shape
    r = len(dims)
    if grid.shape[0] != n or grid.ndim != r + 2 or grid.shape[-1] != r:
        ctx.fail(f"grid of shape {list(grid.shape)} does not fit X of shape {list(data.shape)}")
    out_dims = grid.shape[1:-1]
    g = grid.astype(coordinate_dtype(grid.dtype))
    # grid[..., 0] addresses the innermost (last) axis.
    axes = [_grid_axis(g[..., r - 1 - i], dims[i], mode, padding, align) for i in range(r)]
    flat = data.reshape(n, c, -1)
    strides = [int(np.prod(dims[i + 1 :])) for i in range(r)]
    interpolated = mode != "nearest"
    work = flat.astype(np.complex128 if data.dtype.kind == "c" else F64) if interpolated else flat
    total: Any = None
    for combo in itertools.product(*(range(len(a[0])) for a in axes)):
        pos: np.ndarray = np.sum([axes[i][0][k] * strides[i] for i, k in enumerate(combo)], 0)
        picked = np.take_along_axis(work, pos.reshape(n, 1, -1), axis=2)
        ok = _all_valid([axes[i][2][k] for i, k in enumerate(combo)])
        if not interpolated:
            total = picked if ok is None else np.where(ok.reshape(n, 1, -1), picked, _zero(data))
            continue
        w = np.ones(pos.shape, F64)
        for i, k in enumerate(combo):
            wk = axes[i][1][k]
            w = w if wk is None else w * wk
        if ok is not None:
            w = np.where(ok, w, 0.0)
        term = picked * w.reshape(n, 1, -1)
        total = term if total is None else total + term
    y = total.reshape(n, c, *out_dims)
    return [store(y, data.dtype) if interpolated else y.astype(data.dtype, copy=False)]


def _all_valid(masks: list[np.ndarray | None]) -> np.ndarray | None:
    found = [m for m in masks if m is not None]
    return None if not found else np.logical_and.reduce(found)


def _zero(data: np.ndarray) -> np.ndarray:
    return np.array("", dtype=object) if data.dtype.kind == "O" else np.zeros((), data.dtype)


# ---- AffineGrid ----------------------------------------------------------------------------------


def _affine_grid_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0)
    if ctx.type(1).dtype != np.int64:
        ctx.fail(f"size must be int64, got {ctx.type(1).dtype.name}")
    theta = ctx.type(0).shape
    size = ctx.value(1)
    if size is not None:
        s = [int(v) for v in np.ravel(size)]
        if len(s) not in (4, 5):
            ctx.fail(f"size {s} must be (N, C, H, W) or (N, C, D, H, W)")
        return [tt(dtype, (s[0], *s[2:], len(s) - 2))]
    if theta is not None and len(theta) == 3 and isinstance(theta[1], int):
        r = theta[1]
        n = theta[0]
        return [tt(dtype, (n, *(fresh(ctx, i) for i in range(r)), r))]
    return [tt(dtype, None)]


def _base_coordinates(size: int, align: bool) -> np.ndarray:
    """Pixel centres in [-1, 1] (PyTorch's ``linspace_from_neg_one``, which the spec cites):
    ``linspace(-1, 1, size)``, pulled in by ``(size - 1) / size`` without align_corners; a
    single pixel sits at 0."""
    if size <= 1:
        return np.zeros(max(size, 0), F64)
    steps = np.linspace(-1.0, 1.0, size)
    return steps if align else steps * (size - 1) / size


@op("AffineGrid", (20,), infer=_affine_grid_infer)
def affine_grid(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    theta, size = x[0], [int(v) for v in np.ravel(x[1])]
    align = bool(ctx.attr("align_corners", 0))
    if len(size) not in (4, 5):
        ctx.fail(f"size {size} must be (N, C, H, W) or (N, C, D, H, W)")
    r = len(size) - 2
    if theta.shape != (size[0], r, r + 1):
        ctx.fail(f"theta of shape {list(theta.shape)} must be ({size[0]}, {r}, {r + 1})")
    spatial = size[2:]
    axes = [_base_coordinates(d, align) for d in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")  # (D,) H, W
    # Homogeneous points list the innermost axis first: (x, y[, z], 1).
    points = np.stack([*mesh[::-1], np.ones(spatial, F64)], axis=-1).reshape(-1, r + 1)
    t = theta.astype(F64)
    grid = np.einsum("pk,nrk->npr", points, t)
    return [grid.reshape(size[0], *spatial, r).astype(theta.dtype)]


# ---- RoiAlign ------------------------------------------------------------------------------------


def _roi_attrs(ctx: OpContext) -> tuple[str, bool, int, int, int, float]:
    mode = str(ctx.attr("mode", "avg"))
    if mode not in ("avg", "max"):
        ctx.fail(f"mode {mode!r} is not 'avg' or 'max'", UnsupportedError)
    coords = "output_half_pixel" if ctx.version < 16 else "half_pixel"
    coords = str(ctx.attr("coordinate_transformation_mode", coords))
    if coords not in ("half_pixel", "output_half_pixel"):
        ctx.fail(f"coordinate_transformation_mode {coords!r} is not supported", UnsupportedError)
    height, width = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))
    ratio = int(ctx.attr("sampling_ratio", 0))
    if height < 1 or width < 1 or ratio < 0:
        ctx.fail(f"output size {height}x{width} and sampling_ratio {ratio} must be positive")
    scale = float(ctx.attr("spatial_scale", 1.0))
    return mode, coords == "half_pixel", height, width, ratio, scale


def _roi_align_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0, 1)
    if ctx.type(2).dtype != np.int64:
        ctx.fail(f"batch_indices must be int64, got {ctx.type(2).dtype.name}")
    _, _, height, width, _, _ = _roi_attrs(ctx)
    x, rois = ctx.type(0).shape, ctx.type(1).shape
    if x is not None and len(x) != 4:
        ctx.fail(f"X must be 4-D (N, C, H, W), got shape {list(x)}")
    if rois is not None and (len(rois) != 2 or (isinstance(rois[1], int) and rois[1] != 4)):
        ctx.fail(f"rois must have shape (num_rois, 4), got {list(rois)}")
    batch = ctx.type(2).shape
    num = rois[0] if rois is not None else batch[0] if batch else None
    c = x[1] if x is not None else fresh(ctx, "c")
    return [tt(dtype, (num if num is not None else fresh(ctx, "n"), c, height, width))]


def _roi_samples(
    box: np.ndarray, size: tuple[int, int], out: tuple[int, int], ratio: int, half: bool, scale: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """The bilinear corners of every sample of one roi: flat positions (out_h, out_w, S, 4),
    weights of the same shape (float64), and S (samples per bin)."""
    ct = box.dtype.type
    offset = ct(0.5 if half else 0.0)
    x0, y0, x1, y1 = (box * scale - offset).astype(box.dtype)
    roi_w, roi_h = x1 - x0, y1 - y0
    if not half:
        roi_w, roi_h = max(roi_w, ct(1)), max(roi_h, ct(1))
    bin_h, bin_w = roi_h / ct(out[0]), roi_w / ct(out[1])
    grid_h = ratio if ratio > 0 else max(math.ceil(roi_h / ct(out[0])), 0)
    grid_w = ratio if ratio > 0 else max(math.ceil(roi_w / ct(out[1])), 0)
    ph, iy = np.arange(out[0], dtype=box.dtype)[:, None], np.arange(grid_h, dtype=box.dtype)
    pw, ix = np.arange(out[1], dtype=box.dtype)[:, None], np.arange(grid_w, dtype=box.dtype)
    ys = (y0 + ph * bin_h + (iy[None, :] + ct(0.5)) * bin_h / ct(grid_h)).astype(box.dtype)
    xs = (x0 + pw * bin_w + (ix[None, :] + ct(0.5)) * bin_w / ct(grid_w)).astype(box.dtype)
    y = np.broadcast_to(ys[:, None, :, None], (out[0], out[1], grid_h, grid_w))
    x = np.broadcast_to(xs[None, :, None, :], (out[0], out[1], grid_h, grid_w))
    pos, w = _bilinear_corners(y.astype(F64), x.astype(F64), *size)
    return pos.reshape(out[0], out[1], -1, 4), w.reshape(out[0], out[1], -1, 4), grid_h * grid_w


def _bilinear_corners(
    y: np.ndarray, x: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions and weights of the 4 corners around each (y, x); samples more than one
    pixel outside the map weigh 0."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = np.maximum(y, 0), np.maximum(x, 0)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low = np.where(y_edge, height - 1, y_low)
    x_low = np.where(x_edge, width - 1, x_low)
    y = np.where(y_edge, y_low, y)
    x = np.where(x_edge, x_low, x)
    y_high = np.where(y_edge, y_low, y_low + 1)
    x_high = np.where(x_edge, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    pos = np.stack(
        [
            y_low * width + x_low,
            y_low * width + x_high,
            y_high * width + x_low,
            y_high * width + x_high,
        ],
        axis=-1,
    )
    w = np.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)
    w = np.where(outside[..., None], 0.0, w)
    pos = np.where(outside[..., None], 0, pos)
    return pos, w


@op("RoiAlign", (10, 16, 22), infer=_roi_align_infer)
def roi_align(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, rois, batch = x[0], x[1], np.ravel(x[2]).astype(np.int64)
    mode, half, height, width, ratio, scale = _roi_attrs(ctx)
    n, c, h, w = data.shape
    if rois.ndim != 2 or rois.shape[1] != 4 or rois.shape[0] != batch.size:
        ctx.fail(f"rois of shape {list(rois.shape)} and {batch.size} batch indices do not fit")
    if np.any((batch < 0) | (batch >= n)):
        ctx.fail(f"batch index {int(batch[(batch < 0) | (batch >= n)][0])} is out of range")
    box_dtype = coordinate_dtype(rois.dtype)
    flat = data.reshape(n, c, h * w).astype(F64)
    y = np.empty((rois.shape[0], c, height, width), F64)
    for k in range(rois.shape[0]):
        pos, wts, count = _roi_samples(
            rois[k].astype(box_dtype),
            (h, w),
            (height, width),
            ratio,
            half,
            box_dtype.type(scale),
        )
        corners = flat[batch[k]][:, pos] * wts  # (c, out_h, out_w, S, 4)
        if mode == "avg":
            y[k] = corners.sum(axis=(3, 4)) / max(count, 1)
        else:
            y[k] = corners.max(axis=4).max(axis=3) if count else 0.0
    return [y.astype(data.dtype)]


# ---- DeformConv ----------------------------------------------------------------------------------


def _deform_attrs(ctx: OpContext, r: int) -> tuple[list[int], list[int], list[int], int, int]:
    strides = [int(v) for v in ctx.attr("strides", None) or [1] * r]
    pads = [int(v) for v in ctx.attr("pads", None) or [0] * (2 * r)]
    dilations = [int(v) for v in ctx.attr("dilations", None) or [1] * r]
    group, offset_group = int(ctx.attr("group", 1)), int(ctx.attr("offset_group", 1))
    if len(strides) != r or len(dilations) != r or len(pads) != 2 * r:
        ctx.fail(f"strides, dilations and pads must have {r}, {r} and {2 * r} values")
    if min(strides + dilations + [group, offset_group]) < 1 or min(pads) < 0:
        ctx.fail("strides, dilations and groups must be positive and pads non-negative")
    return strides, pads, dilations, group, offset_group


def _deform_out(
    sizes: tuple[Dim, ...], kernel: tuple[Dim, ...], attrs: tuple[Any, ...]
) -> list[Dim | None]:
    """Output spatial sizes (Conv's formula); None where an input or kernel size is unknown."""
    strides, pads, dilations = attrs[:3]
    r = len(sizes)
    out: list[Dim | None] = []
    for i, (n, k) in enumerate(zip(sizes, kernel, strict=True)):
        if isinstance(n, int) and isinstance(k, int):
            out.append((n + pads[i] + pads[r + i] - dilations[i] * (k - 1) - 1) // strides[i] + 1)
        else:
            out.append(None)
    return out


def _deform_conv_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, *(i for i in range(5) if ctx.has(i)))
    x, w, offset = ctx.type(0).shape, ctx.type(1).shape, ctx.type(2).shape
    if x is None or w is None:
        return [tt(dtype, None)]
    r = len(x) - 2
    if r < 1 or len(w) != r + 2:
        ctx.fail(f"X of shape {list(x)} and W of shape {list(w)} do not fit a convolution")
    out = _deform_out(x[2:], w[2:], _deform_attrs(ctx, r))
    dims: list[Dim] = [
        d if d is not None else offset[2 + i] if offset is not None else fresh(ctx, f"o{i}")
        for i, d in enumerate(out)
    ]
    return [tt(dtype, (x[0], w[0], *dims))]


@op("DeformConv", (19, 22), infer=_deform_conv_infer)
def deform_conv(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Convolution whose taps sample X bilinearly (zero outside) at their grid position plus a
    learned offset, times an optional mask (arXiv:1703.06211, 1811.11168; torchvision's
    ``deform_conv2d`` generalised to N-d)."""
    data, w, offset = x[0], x[1], x[2]
    bias, mask = arg(x, 3), arg(x, 4)
    n, c, *sizes = data.shape
    r = len(sizes)
    attrs = _deform_attrs(ctx, r)
    strides, pads, dilations, group, offset_group = attrs
    kernel = tuple(w.shape[2:])
    if ctx.attr("kernel_shape", None) is not None and list(ctx.attr("kernel_shape")) != list(
        kernel
    ):
        ctx.fail(f"kernel_shape {ctx.attr('kernel_shape')} differs from W's {list(kernel)}")
    out = [int(d) for d in _deform_out(tuple(sizes), kernel, attrs) if d is not None]
    taps, cells = int(np.prod(kernel)), int(np.prod(out))
    if c != w.shape[1] * group or w.shape[0] % group or c % offset_group:
        ctx.fail(f"X {list(data.shape)}, W {list(w.shape)} do not fit group {group}")
    if min(out, default=1) < 1 or offset.shape != (n, offset_group * taps * r, *out):
        ctx.fail(
            f"offset of shape {list(offset.shape)} must be {[n, offset_group * taps * r, *out]}"
        )
    offs = offset.astype(F64).reshape(n, offset_group, taps, r, cells)
    weight = np.ones((n, offset_group, taps, cells))
    if mask is not None:
        if mask.shape != (n, offset_group * taps, *out):
            ctx.fail(f"mask of shape {list(mask.shape)} must be {[n, offset_group * taps, *out]}")
        weight = mask.astype(F64).reshape(n, offset_group, taps, cells)
    k_idx = np.indices(kernel).reshape(r, taps)
    o_idx = np.indices(out).reshape(r, cells)
    pos = [
        (o_idx[i] * strides[i] - pads[i])[None, None, None, :]
        + (k_idx[i] * dilations[i])[None, None, :, None]
        + offs[:, :, :, i, :]
        for i in range(r)
    ]
    sampled = _deform_sample(data.reshape(n, c, -1).astype(F64), pos, sizes, weight, offset_group)
    wg = w.astype(F64).reshape(group, w.shape[0] // group, w.shape[1], taps)
    sg = sampled.reshape(n, group, w.shape[1], taps, cells)
    y = np.einsum("gock,ngckp->ngop", wg, sg).reshape(n, w.shape[0], *out)
    if bias is not None:
        y = y + bias.astype(F64).reshape((1, -1) + (1,) * r)
    return [y.astype(data.dtype)]


def _deform_sample(
    flat: np.ndarray, pos: list[np.ndarray], sizes: list[int], weight: np.ndarray, groups: int
) -> np.ndarray:
    """Bilinear samples (N, C, taps, cells) of ``flat`` (N, C, prod(sizes)) at ``pos`` (one
    (N, groups, taps, cells) coordinate array per axis), scaled by ``weight``."""
    n, c, _ = flat.shape
    _, _, taps, cells = weight.shape
    per = c // groups
    strides = [int(np.prod(sizes[i + 1 :])) for i in range(len(sizes))]
    base = [np.floor(p) for p in pos]
    out = np.zeros((n, c, taps, cells))
    for corner in itertools.product((0, 1), repeat=len(sizes)):
        w = weight.copy()
        flat_index = np.zeros(weight.shape, np.int64)
        for i, step in enumerate(corner):
            idx = base[i] + step
            frac = pos[i] - base[i]
            w = w * (frac if step else 1 - frac) * ((idx >= 0) & (idx < sizes[i]))
            flat_index += np.clip(idx, 0, sizes[i] - 1).astype(np.int64) * strides[i]
        for g in range(groups):
            chans = slice(g * per, (g + 1) * per)
            picked = np.take_along_axis(flat[:, chans], flat_index[:, g].reshape(n, 1, -1), 2)
            out[:, chans] += picked.reshape(n, per, taps, cells) * w[:, g, None]
    return out
