"""Normalisations and reductions: softmax, fused attention, layer/RMS/batch norm, reduce_* and
argmax/argmin.

All take float32. Reductions follow ONNX: ``axes`` (default all) and ``keepdims`` (default
True); an empty reduction gives 0 (sum), 1 (prod), -inf (max), +inf (min) or NaN (mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.ops._base import flag_attr, float_attr, int_attr, run1


def softmax(
    x: ArrayLike,
    mask: ArrayLike | None = None,
    axis: int = -1,
    scale: float = 1.0,
    *,
    threads: int = 0,
) -> np.ndarray:
    """``softmax(scale * x + mask)`` along ``axis``, in one pass over memory.

    The attention pattern ``softmax(Q·Kᵀ/√d + mask)``: ``scale`` is ``1/√d`` and ``mask`` holds
    0 for kept and a large negative value or ``-inf`` for masked positions. A row whose maximum
    is not finite (all ``-inf``, or holding ``+inf`` or NaN) gives NaN, as numpy does.

    Args:
        x: A float32 array of rank >= 1.
        mask: float32, broadcastable to ``x``'s shape (e.g. ``(B, 1, 1, S)`` or ``(S, S)``).
        axis: The axis to normalise (negative counts from the end).
        scale: Factor applied to ``x`` before the mask is added.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: a non-float32 input, a bad axis, a mask that does not broadcast to
            ``x``, or a non-finite scale.
    """
    attrs = {
        "axis": int_attr("softmax", "axis", axis),
        "scale": float_attr("softmax", "scale", scale),
    }
    return run1("softmax", [x, mask], attrs, threads)


def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    mask: ArrayLike | None = None,
    alpha: float = 1.0,
    *,
    threads: int = 0,
) -> np.ndarray:
    """Multi-head attention ``softmax(alpha * Q·Kᵀ + mask)·V``, fused: the scores never reach
    memory.

    Operands are in the layout a projection writes, ``(batch, seq, heads, head_dim)``, and so is
    the result: splitting heads is a reshape, with no transpose before or after. Per batch and
    head, ``out[b, i, h] = Σ_j p[b, h, i, j] · v[b, j, h]`` with
    ``p[b, h, i] = softmax_j(alpha · q[b, i, h]·k[b, j, h] + mask[b, h, i, j])``.

    Args:
        q: float32 ``(B, Sq, H, D)``.
        k: float32 ``(B, Sk, H, D)``; its batch or heads may be 1, shared by all of q's (one
            key/value head is multi-query attention).
        v: float32 ``(B, Sk, H, Dv)``, with the same sharing.
        mask: float32, broadcastable to the scores' shape ``(B, H, Sq, Sk)`` (e.g. ``(B, 1, 1,
            Sk)`` for padding, ``(Sq, Sk)`` for a causal mask); 0 keeps, a large negative value
            or ``-inf`` drops.
        alpha: Factor of the scores, usually ``1/√D``.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Trailing keys that a row's mask drops (-1e4 or lower: padding, a causal block's future) are
    not computed when their probabilities are provably exactly 0 whatever the scores, and every
    skipped key and value is finite; the result is the same, in proportionately less time.

    Returns:
        A new float32 array ``(B, Sq, H, Dv)``. A query whose scores are all ``-inf`` (or hold
        NaN) gives NaN, as the unfused softmax does; with no keys (``Sk = 0``) the result is 0.

    Raises:
        InvalidRequestError: a non-float32 operand, shapes that do not match as above, a mask
            that does not broadcast, or a non-finite alpha.
    """
    return run1(
        "attention", [q, k, v, mask], {"alpha": float_attr("attention", "alpha", alpha)}, threads
    )


def log_softmax(
    x: ArrayLike,
    axis: int = -1,
    *,
    mask: ArrayLike | None = None,
    scale: float = 1.0,
    threads: int = 0,
) -> np.ndarray:
    """``log(softmax(scale * x + mask))`` along ``axis``, computed as ``t - max - log Σ e^(t-max)``.

    Args:
        x: A float32 array of rank >= 1.
        axis: The axis to normalise.
        mask: As in :func:`softmax`.
        scale: As in :func:`softmax`.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: as in :func:`softmax`.
    """
    attrs = {
        "axis": int_attr("log_softmax", "axis", axis),
        "scale": float_attr("log_softmax", "scale", scale),
    }
    return run1("log_softmax", [x, mask], attrs, threads)


def layer_norm(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike | None = None,
    axis: int = -1,
    epsilon: float = 1e-5,
    residual: ArrayLike | None = None,
    *,
    threads: int = 0,
) -> np.ndarray:
    """ONNX LayerNormalization over ``x.shape[axis:]``, with an optional fused residual add.

    ``h = x + residual`` (or ``x``); ``y = (h - mean) / sqrt(var + epsilon) * gamma + beta``, the
    statistics taken over the dimensions ``axis..ndim-1`` of each leading index.

    Args:
        x: A float32 array of rank >= 1.
        gamma: float32 of shape ``x.shape[axis:]`` (leading 1s allowed).
        beta: Like ``gamma``; absent means 0.
        axis: First normalised dimension.
        epsilon: Added to the variance; finite and > 0.
        residual: float32 of ``x``'s shape, added to ``x`` before normalising (post-LN blocks).
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: wrong dtypes or shapes, a bad axis, or a bad epsilon.
    """
    attrs = {
        "axis": int_attr("layer_norm", "axis", axis),
        "epsilon": float_attr("layer_norm", "epsilon", epsilon),
    }
    return run1("layer_norm", [x, gamma, beta, residual], attrs, threads)


def rms_norm(
    x: ArrayLike,
    gamma: ArrayLike,
    axis: int = -1,
    epsilon: float = 1e-6,
    *,
    threads: int = 0,
) -> np.ndarray:
    """RMS normalisation over ``x.shape[axis:]``: ``x / sqrt(mean(x²) + epsilon) * gamma``.

    Args:
        x: A float32 array of rank >= 1.
        gamma: float32 of shape ``x.shape[axis:]`` (leading 1s allowed).
        axis: First normalised dimension.
        epsilon: Added to the mean square; finite and > 0.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: wrong dtypes or shapes, a bad axis, or a bad epsilon.
    """
    attrs = {
        "axis": int_attr("rms_norm", "axis", axis),
        "epsilon": float_attr("rms_norm", "epsilon", epsilon),
    }
    return run1("rms_norm", [x, gamma], attrs, threads)


def batch_norm(
    x: ArrayLike,
    scale: ArrayLike,
    bias: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    epsilon: float = 1e-5,
    *,
    threads: int = 0,
) -> np.ndarray:
    """ONNX BatchNormalization, inference form, channels on axis 1 (NCHW).

    ``y = (x - mean[c]) / sqrt(var[c] + epsilon) * scale[c] + bias[c]``.

    Args:
        x: float32 of shape ``(N, C, ...)``.
        scale: float32 of shape ``(C,)``.
        bias: float32 of shape ``(C,)``.
        mean: float32 of shape ``(C,)``, the running mean.
        var: float32 of shape ``(C,)``, the running variance.
        epsilon: Added to the variance; finite and > 0.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: wrong dtypes or shapes, or a bad epsilon.
    """
    attrs = {"epsilon": float_attr("batch_norm", "epsilon", epsilon)}
    return run1("batch_norm", [x, scale, bias, mean, var], attrs, threads)


def _reduce(
    op: str,
    x: ArrayLike,
    axes: int | Sequence[int] | None,
    keepdims: bool,
    noop_with_empty_axes: bool,
    threads: int,
) -> np.ndarray:
    attrs: dict[str, Any] = {
        "keepdims": flag_attr(op, "keepdims", keepdims),
        "noop_with_empty_axes": flag_attr(op, "noop_with_empty_axes", noop_with_empty_axes),
    }
    if axes is not None:
        if isinstance(axes, (Sequence, np.ndarray)) and not isinstance(axes, str):
            attrs["axes"] = [int_attr(op, "axes", a) for a in axes]
        else:
            attrs["axes"] = [int_attr(op, "axes", axes)]
    return run1(op, [x], attrs, threads)


def reduce_sum(
    x: ArrayLike,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Sum over ``axes`` (ONNX ReduceSum), float32 with blocked float32 accumulation.

    Args:
        x: A float32 array.
        axes: Axes to reduce (negative count from the end); ``None`` or ``[]`` reduce all,
            unless ``noop_with_empty_axes``, which makes ``[]`` return ``x`` unchanged.
        keepdims: Keep reduced axes as size 1.
        noop_with_empty_axes: See ``axes``.
        threads: Threads to use (0: the default). Results do not depend on it.

    Returns:
        A new float32 array.

    Raises:
        InvalidRequestError: ``x`` is not float32, or an axis is out of range or repeated.
    """
    return _reduce("reduce_sum", x, axes, keepdims, noop_with_empty_axes, threads)


def reduce_mean(
    x: ArrayLike,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Mean over ``axes`` (ONNX ReduceMean): the sum divided by the number of reduced elements.

    Args:
        x: A float32 array.
        axes: As in :func:`reduce_sum`.
        keepdims: Keep reduced axes as size 1.
        noop_with_empty_axes: As in :func:`reduce_sum`.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array.

    Raises:
        InvalidRequestError: as in :func:`reduce_sum`.
    """
    return _reduce("reduce_mean", x, axes, keepdims, noop_with_empty_axes, threads)


def reduce_max(
    x: ArrayLike,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Maximum over ``axes`` (ONNX ReduceMax; NaN if any element is NaN).

    Args:
        x: A float32 array.
        axes: As in :func:`reduce_sum`.
        keepdims: Keep reduced axes as size 1.
        noop_with_empty_axes: As in :func:`reduce_sum`.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array.

    Raises:
        InvalidRequestError: as in :func:`reduce_sum`.
    """
    return _reduce("reduce_max", x, axes, keepdims, noop_with_empty_axes, threads)


def reduce_min(
    x: ArrayLike,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Minimum over ``axes`` (ONNX ReduceMin; NaN if any element is NaN).

    Args:
        x: A float32 array.
        axes: As in :func:`reduce_sum`.
        keepdims: Keep reduced axes as size 1.
        noop_with_empty_axes: As in :func:`reduce_sum`.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array.

    Raises:
        InvalidRequestError: as in :func:`reduce_sum`.
    """
    return _reduce("reduce_min", x, axes, keepdims, noop_with_empty_axes, threads)


def reduce_prod(
    x: ArrayLike,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Product over ``axes`` (ONNX ReduceProd).

    Args:
        x: A float32 array.
        axes: As in :func:`reduce_sum`.
        keepdims: Keep reduced axes as size 1.
        noop_with_empty_axes: As in :func:`reduce_sum`.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array.

    Raises:
        InvalidRequestError: as in :func:`reduce_sum`.
    """
    return _reduce("reduce_prod", x, axes, keepdims, noop_with_empty_axes, threads)


def _arg(
    op: str, x: ArrayLike, axis: int, keepdims: bool, select_last_index: bool, threads: int
) -> np.ndarray:
    attrs = {
        "axis": int_attr(op, "axis", axis),
        "keepdims": flag_attr(op, "keepdims", keepdims),
        "select_last_index": flag_attr(op, "select_last_index", select_last_index),
    }
    return run1(op, [x], attrs, threads)


def argmax(
    x: ArrayLike,
    axis: int = 0,
    keepdims: bool = True,
    *,
    select_last_index: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Index of the maximum along ``axis`` (ONNX ArgMax): the first on ties, like numpy.

    A NaN counts as the maximum (numpy returns the first NaN).

    Args:
        x: A float32 array of rank >= 1.
        axis: The axis to search (ONNX default 0).
        keepdims: Keep the axis as size 1.
        select_last_index: Return the last index on ties instead of the first.
        threads: Threads to use (0: the default).

    Returns:
        A new int64 array.

    Raises:
        InvalidRequestError: ``x`` is not float32, a bad axis, or an empty axis.
    """
    return _arg("argmax", x, axis, keepdims, select_last_index, threads)


def argmin(
    x: ArrayLike,
    axis: int = 0,
    keepdims: bool = True,
    *,
    select_last_index: bool = False,
    threads: int = 0,
) -> np.ndarray:
    """Index of the minimum along ``axis`` (ONNX ArgMin): the first on ties; NaN counts as minimum.

    Args:
        x: A float32 array of rank >= 1.
        axis: The axis to search (ONNX default 0).
        keepdims: Keep the axis as size 1.
        select_last_index: Return the last index on ties instead of the first.
        threads: Threads to use (0: the default).

    Returns:
        A new int64 array.

    Raises:
        InvalidRequestError: ``x`` is not float32, a bad axis, or an empty axis.
    """
    return _arg("argmin", x, axis, keepdims, select_last_index, threads)
