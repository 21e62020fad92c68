"""Convolution and pooling on NCHW float32 (ONNX Conv, MaxPool, AveragePool, GlobalAveragePool)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.ops._base import flag_attr, int_attr, ints_attr, optional_float_attr, run1

IntOrPair = int | Sequence[int]
IntOrQuad = int | Sequence[int]


def _window_attrs(
    op: str, strides: IntOrPair, pads: IntOrQuad, dilations: IntOrPair
) -> dict[str, Any]:
    return {
        "strides": ints_attr(op, "strides", strides, repeat=2),
        "pads": ints_attr(op, "pads", pads, repeat=4),
        "dilations": ints_attr(op, "dilations", dilations, repeat=2),
    }


def conv2d(
    x: ArrayLike,
    w: ArrayLike,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    strides: IntOrPair = 1,
    pads: IntOrQuad = 0,
    dilations: IntOrPair = 1,
    groups: int = 1,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``activation(conv(x, w) + bias + residual)`` in one fused float32 pass (ONNX Conv, NCHW).

    Args:
        x: ``(N, C, H, W)`` float32.
        w: ``(M, C / groups, kh, kw)`` float32.
        bias: ``(M,)``, one value per output channel.
        activation: ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``tanh``, ``sigmoid`` or
            ``clip`` (with ``clip_min``/``clip_max``; ``relu6`` is clip 0..6).
        residual: ``(N, M, OH, OW)``, added before the activation (a ResNet skip connection).
        strides: ``(sh, sw)`` or one int for both.
        pads: ``(top, left, bottom, right)`` (ONNX order) or one int for all four.
        dilations: ``(dh, dw)`` or one int for both.
        groups: Channel groups; ``groups == C == M`` is a depthwise convolution.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        The ``(N, M, OH, OW)`` float32 result, with
        ``OH = (H + top + bottom - dh * (kh - 1) - 1) // sh + 1`` (and ``OW`` alike).

    Raises:
        InvalidRequestError: wrong dtype or rank, channels that do not match ``w`` and
            ``groups``, a non-positive stride or dilation, a negative pad, a kernel larger than
            the padded input, or bias/residual of the wrong shape.
    """
    attrs = _window_attrs("conv2d", strides, pads, dilations)
    attrs.update(
        groups=int_attr("conv2d", "groups", groups),
        activation=activation or "none",
        clip_min=optional_float_attr("conv2d", "clip_min", clip_min),
        clip_max=optional_float_attr("conv2d", "clip_max", clip_max),
    )
    return run1("conv2d", [x, w, bias, residual], attrs, threads)


def max_pool2d(
    x: ArrayLike,
    kernel_shape: IntOrPair,
    *,
    strides: IntOrPair = 1,
    pads: IntOrQuad = 0,
    dilations: IntOrPair = 1,
    ceil_mode: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Max over sliding windows (ONNX MaxPool on NCHW float32; padding never wins).

    A window holding a NaN gives NaN, as numpy's max and PyTorch's ``max_pool2d`` do (ONNX
    Runtime skips NaN instead); a plane with no NaN takes a plain vector max.

    Args:
        x: ``(N, C, H, W)`` float32.
        kernel_shape: ``(kh, kw)`` or one int for both.
        strides: ``(sh, sw)`` or one int; 1 by default, as in ONNX (not the kernel size).
        pads: ``(top, left, bottom, right)`` or one int; each smaller than the dilated kernel.
        dilations: ``(dh, dw)`` or one int.
        ceil_mode: Round the output size up, keeping only windows that start inside the input
            or its leading pad.
        threads: Threads to use (0: the default).

    Returns:
        The ``(N, C, OH, OW)`` float32 result.

    Raises:
        InvalidRequestError: wrong dtype or rank, a non-positive kernel, stride or dilation, a
            pad as wide as the kernel, or a kernel larger than the padded input.
    """
    attrs = _window_attrs("max_pool2d", strides, pads, dilations)
    attrs.update(
        kernel_shape=ints_attr("max_pool2d", "kernel_shape", kernel_shape, repeat=2),
        ceil_mode=flag_attr("max_pool2d", "ceil_mode", ceil_mode),
    )
    return run1("max_pool2d", [x], attrs, threads)


def avg_pool2d(
    x: ArrayLike,
    kernel_shape: IntOrPair,
    *,
    strides: IntOrPair = 1,
    pads: IntOrQuad = 0,
    dilations: IntOrPair = 1,
    count_include_pad: bool = False,
    ceil_mode: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Mean over sliding windows (ONNX AveragePool on NCHW float32).

    Args:
        x: ``(N, C, H, W)`` float32.
        kernel_shape, strides, pads, dilations, ceil_mode, threads: as in :func:`max_pool2d`.
        count_include_pad: Divide by the window's taps inside the padded input (True) or inside
            the input only (False, the ONNX default). Cells a ceil-mode window hangs past the
            end pad never count; a window with no tap that counts gives NaN (0 / 0).

    Returns:
        The ``(N, C, OH, OW)`` float32 result.

    Raises:
        InvalidRequestError: as :func:`max_pool2d`.
    """
    attrs = _window_attrs("avg_pool2d", strides, pads, dilations)
    attrs.update(
        kernel_shape=ints_attr("avg_pool2d", "kernel_shape", kernel_shape, repeat=2),
        ceil_mode=flag_attr("avg_pool2d", "ceil_mode", ceil_mode),
        count_include_pad=flag_attr("avg_pool2d", "count_include_pad", count_include_pad),
    )
    return run1("avg_pool2d", [x], attrs, threads)


def global_avg_pool(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Mean of each ``(n, c)`` plane (ONNX GlobalAveragePool).

    Args:
        x: ``(N, C, spatial...)`` float32 of rank >= 3, non-empty spatial dimensions.
        threads: Threads to use (0: the default).

    Returns:
        ``(N, C, 1, ...)`` float32, with as many 1s as ``x`` has spatial dimensions.

    Raises:
        InvalidRequestError: wrong dtype, rank < 3, or empty spatial dimensions.
    """
    return run1("global_avg_pool", [x], {}, threads)
