"""The arithmetic of ONNX Resize (opset 19) and Upsample: output sizes, source coordinates and
per-axis interpolation taps.

Resize is separable: along each resized axis, output position ``x`` reads a few input positions
(``taps``) with weights; the N-d result applies the axes one after the other in float64. Where
the spec is ambiguous the choices follow the ONNX reference's conformance data (which ONNX
Runtime agrees with):

- ``length_resized`` in the coordinate formulas is the real ``scale * length_original`` (it is
  ``sizes[i]`` when sizes are given), so ``align_corners`` on a fractional scale divides by
  ``scale * in - 1``;
- the output size from scales is ``floor(in * scale)``, without the roi factor the spec's
  summary line mentions (ONNX shape inference and ONNX Runtime ignore roi there too);
- integer outputs round half to even and saturate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COORDINATE_MODES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
LEGACY = "legacy"
"""Resize-10 and Upsample: asymmetric coordinates, nearest rounds down when upsampling an axis
and up when downsampling it (what ONNX Runtime does; those versions do not say)."""


@dataclass(frozen=True)
class Mode:
    """A node's interpolation attributes."""

    mode: str  # nearest, linear, cubic
    coordinates: str
    nearest: str  # one of NEAREST_MODES, or LEGACY
    cubic_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False
    extrapolation: float = 0.0


@dataclass(frozen=True)
class Taps:
    """Along one axis: output ``o`` is ``sum_j weights[o, j] * x[index[o, j]]`` (one tap and no
    weights for nearest); ``outside`` marks outputs that take the extrapolation value."""

    index: np.ndarray  # int64 (out, n), within [0, in)
    weights: np.ndarray | None  # float64 (out, n)
    outside: np.ndarray | None  # bool (out,)


def output_sizes(
    in_shape: Sequence[int],
    axes: Sequence[int],
    scales: Sequence[float] | None,
    sizes: Sequence[int] | None,
    policy: str,
) -> tuple[list[int], list[float]]:
    """The output shape and every axis's scale (1 on axes not resized).

    ``scales``/``sizes`` hold one value per entry of ``axes``.
    """
    out, scale = list(in_shape), [1.0] * len(in_shape)
    if scales is not None:
        for a, s in zip(axes, scales, strict=True):
            scale[a] = float(s)
            out[a] = math.floor(in_shape[a] * float(s))
        return out, scale
    assert sizes is not None
    if policy == "stretch":
        for a, n in zip(axes, sizes, strict=True):
            out[a] = int(n)
            scale[a] = int(n) / in_shape[a] if in_shape[a] else 1.0
        return out, scale
    ratios = [int(n) / in_shape[a] for a, n in zip(axes, sizes, strict=True)]
    common = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        scale[a] = common
        out[a] = math.floor(common * in_shape[a] + 0.5)  # round half up (Resize-18)
    return out, scale


def source_coordinates(
    mode: Mode, size_in: int, size_out: int, scale: float, roi: tuple[float, float]
) -> np.ndarray:
    """``x_original`` of every output position (float64), per coordinate_transformation_mode."""
    x = np.arange(size_out, dtype=np.float64)
    length = scale * size_in  # the real resized length (Resize-19 "output_width")
    kind = mode.coordinates
    if kind == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if kind == "half_pixel_symmetric":
        offset = size_in / 2 * (1 - size_out / length)
        return offset + (x + 0.5) / scale - 0.5
    if kind == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if length > 1 else np.zeros_like(x)
    if kind == "align_corners":
        return x * (size_in - 1) / (length - 1) if length != 1 else np.zeros_like(x)
    if kind == "asymmetric":
        return x / scale
    if kind == "tf_half_pixel_for_nn":  # Resize-11 only
        return (x + 0.5) / scale
    start, end = roi  # tf_crop_and_resize
    if length > 1:
        return start * (size_in - 1) + x * (end - start) * (size_in - 1) / (length - 1)
    return np.full_like(x, 0.5 * (start + end) * (size_in - 1))


def axis_taps(
    mode: Mode, size_in: int, size_out: int, scale: float, roi: tuple[float, float]
) -> Taps:
    """The taps of one resized axis."""
    x = source_coordinates(mode, size_in, size_out, scale, roi)
    outside = None
    if mode.coordinates == "tf_crop_and_resize":
        outside = (x < 0) | (x > size_in - 1)
        x = np.where(outside, 0.0, x)
    base = np.floor(x)
    frac = x - base  # in [0, 1)
    if mode.mode == "nearest":
        step = _nearest_step(mode.nearest, frac, scale)
        index = np.clip(base.astype(np.int64) + step, 0, size_in - 1)[:, None]
        return Taps(index, None, outside)
    offsets, weights = _kernel_weights(mode, frac, scale)
    index = base.astype(np.int64)[:, None] + offsets[None, :]
    if mode.exclude_outside:
        weights = np.where((index < 0) | (index >= size_in), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return Taps(np.clip(index, 0, size_in - 1), weights, outside)


def _nearest_step(kind: str, frac: np.ndarray, scale: float) -> np.ndarray:
    """0 to take the position at or below ``x``, 1 for the one above."""
    if kind == LEGACY:
        kind = "ceil" if scale < 1 else "floor"
    if kind == "round_prefer_floor":
        up = frac > 0.5
    elif kind == "round_prefer_ceil":
        up = frac >= 0.5
    else:
        up = frac > 0 if kind == "ceil" else np.zeros(frac.shape, bool)
    return up.astype(np.int64)


def _kernel_weights(mode: Mode, frac: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Tap offsets from ``floor(x)`` and their weights, for linear or cubic.

    With antialias on a downscaled axis the kernel is stretched by ``1 / scale`` (Resize-18
    ``antialias``): more taps, weights normalised to sum to 1.
    """
    support = 1 if mode.mode == "linear" else 2
    stretch = min(scale, 1.0) if mode.antialias else 1.0
    start = math.floor(-support / stretch) + 1
    offsets = np.arange(start, 1 - start + 1, dtype=np.int64)
    distance = np.abs((offsets[None, :] - frac[:, None]) * stretch)
    if mode.mode == "linear":
        weights = np.maximum(1 - distance, 0.0)
    else:
        weights = _cubic(distance, mode.cubic_a)
    if mode.antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    return offsets, weights


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel (IEEE TASSP 1981, eq. 4) at distances ``d >= 0``."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def resample(
    x: np.ndarray, taps: dict[int, Taps], out_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply each axis's taps to ``x`` (already in the compute dtype); also returns the mask of
    outputs that take the extrapolation value (None when there are none)."""
    outside = None
    if any(t.outside is not None and t.outside.any() for t in taps.values()):
        outside = np.zeros(tuple(out_shape), bool)
    for axis, t in taps.items():
        gathered = np.take(x, t.index, axis=axis)  # axis -> (out, n)
        if t.weights is None:
            x = np.squeeze(gathered, axis=axis + 1)
        else:
            shape = (1,) * axis + t.weights.shape + (1,) * (x.ndim - axis - 1)
            x = np.sum(gathered * t.weights.reshape(shape), axis=axis + 1)
        if outside is not None and t.outside is not None:
            outside |= t.outside.reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1))
    return x, outside
