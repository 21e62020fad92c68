"""numpy references of conv2d and pooling (float64 arithmetic, float32 results).

Written for obviousness, not speed: the convolution is a sum over kernel offsets of strided views
of the zero-padded input contracted with the weights; pooling reduces sliding-window views of the
input padded with -inf (max) or 0 (average).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from phi_engine.runtime.reference._activations import apply_activation

IntOrSeq = int | Sequence[int]


def _seq(value: IntOrSeq, n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, (int, np.integer)) else [int(v) for v in value]


def _out_size(size: int, extent: int, stride: int, begin: int, end: int, ceil_mode: bool) -> int:
    # ONNX Conv/MaxPool/AveragePool; in ceil mode the last window must start inside the input
    # or its leading pad (PyTorch, ONNX Runtime).
    span = size + begin + end - extent
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    *,
    residual: np.ndarray | None = None,
    strides: IntOrSeq = 1,
    pads: IntOrSeq = 0,
    dilations: IntOrSeq = 1,
    groups: int = 1,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.conv2d` (ONNX Conv, NCHW)."""
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (dh, dw) = _seq(strides, 2), _seq(dilations, 2)
    pt, pl, pb, pr = _seq(pads, 4)
    n, _, h, wd = x64.shape
    m, cg, kh, kw = w64.shape
    oh = _out_size(h, (kh - 1) * dh + 1, sh, pt, pb, False)
    ow = _out_size(wd, (kw - 1) * dw + 1, sw, pl, pr, False)
    xp = np.pad(x64, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = w64.reshape(groups, m // groups, cg, kh, kw)
    y = np.zeros((n, groups, m // groups, oh, ow))
    for i in range(kh):
        for j in range(kw):
            taps = xg[
                ...,
                i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                j * dw : j * dw + (ow - 1) * sw + 1 : sw,
            ]
            y += np.einsum("ngchw,gmc->ngmhw", taps, wg[..., i, j])
    y = y.reshape(n, m, oh, ow)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(1, m, 1, 1)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return apply_activation(y, activation, clip_min, clip_max).astype(np.float32)


def _windows(
    x: np.ndarray,
    kernel_shape: IntOrSeq,
    strides: IntOrSeq,
    pads: IntOrSeq,
    dilations: IntOrSeq,
    ceil_mode: bool,
    pad_value: float,
    tail_value: float,
) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) views of x padded with pad_value, ceil-mode overhang tail_value."""
    (kh, kw), (sh, sw), (dh, dw) = _seq(kernel_shape, 2), _seq(strides, 2), _seq(dilations, 2)
    pt, pl, pb, pr = _seq(pads, 4)
    h, w = x.shape[2:]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh = _out_size(h, eh, sh, pt, pb, ceil_mode)
    ow = _out_size(w, ew, sw, pl, pr, ceil_mode)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    tail_h = max(0, (oh - 1) * sh + eh - xp.shape[2])
    tail_w = max(0, (ow - 1) * sw + ew - xp.shape[3])
    xp = np.pad(xp, ((0, 0), (0, 0), (0, tail_h), (0, tail_w)), constant_values=tail_value)
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, ::dh, ::dw]


def max_pool2d(
    x: np.ndarray,
    kernel_shape: IntOrSeq,
    *,
    strides: IntOrSeq = 1,
    pads: IntOrSeq = 0,
    dilations: IntOrSeq = 1,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.max_pool2d` (ONNX MaxPool)."""
    x64 = np.asarray(x, np.float64)
    win = _windows(x64, kernel_shape, strides, pads, dilations, ceil_mode, -np.inf, -np.inf)
    out: np.ndarray = win.max(axis=(-2, -1)).astype(np.float32)
    return out


def avg_pool2d(
    x: np.ndarray,
    kernel_shape: IntOrSeq,
    *,
    strides: IntOrSeq = 1,
    pads: IntOrSeq = 0,
    dilations: IntOrSeq = 1,
    count_include_pad: bool = False,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.avg_pool2d` (ONNX AveragePool)."""
    x64 = np.asarray(x, np.float64)
    args = (kernel_shape, strides, pads, dilations, ceil_mode)
    total = _windows(x64, *args, 0.0, 0.0).sum(axis=(-2, -1))
    # The divisor counts, per window, the taps on input cells (and pads if count_include_pad).
    ones = np.ones((1, 1, *x64.shape[2:]))
    count = _windows(ones, *args, 1.0 if count_include_pad else 0.0, 0.0).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore"):  # a window on padding only averages nothing: 0/0, NaN
        out: np.ndarray = (total / count).astype(np.float32)
    return out


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.global_avg_pool` (ONNX GlobalAveragePool)."""
    x64 = np.asarray(x, np.float64)
    out: np.ndarray = x64.mean(axis=tuple(range(2, x64.ndim)), keepdims=True).astype(np.float32)
    return out
