"""GEMM and batched matmul with fused epilogues."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.ops._base import flag_attr, float_attr, optional_float_attr, run1


def gemm(
    a: ArrayLike,
    b: ArrayLike,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    alpha: float = 1.0,
    trans_a: bool = False,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``activation(alpha * op(a) @ op(b) + bias + residual)`` in one fused float32 pass.

    Args:
        a: ``(M, K)`` float32 (``(K, M)`` when ``trans_a``).
        b: ``(K, N)`` float32 (``(N, K)`` when ``trans_b``: the layout of a linear layer's weight).
        bias: ``(N,)`` or a scalar, added to every row.
        activation: ``none``, ``relu``, ``gelu`` (erf), ``gelu_tanh``, ``tanh``, ``sigmoid`` or
            ``clip`` (with ``clip_min``/``clip_max``; ``relu6`` is clip 0..6).
        residual: ``(M, N)``, added before the activation.
        alpha: Scale of the product.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        The ``(M, N)`` float32 result.

    Raises:
        InvalidRequestError: wrong dtype, rank, or mismatched shapes (the message says which),
            or a non-finite ``alpha`` or clip bound.
    """
    attrs = {
        "activation": activation or "none",
        "alpha": float_attr("gemm", "alpha", alpha),
        "trans_a": flag_attr("gemm", "trans_a", trans_a),
        "trans_b": flag_attr("gemm", "trans_b", trans_b),
        "clip_min": optional_float_attr("gemm", "clip_min", clip_min),
        "clip_max": optional_float_attr("gemm", "clip_max", clip_max),
    }
    return run1("gemm", [a, b, bias, residual], attrs, threads)


def matmul(
    a: ArrayLike,
    b: ArrayLike,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    alpha: float = 1.0,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``numpy.matmul`` (broadcast batch dimensions) with the fused epilogue of :func:`gemm`.

    Args:
        a: ``(..., M, K)`` float32, or ``(K,)``.
        b: ``(..., K, N)`` float32 (``(..., N, K)`` when ``trans_b``), or ``(K,)``.
        bias, activation, residual, alpha, clip_min, clip_max, threads: as in :func:`gemm`;
            ``residual`` has the output's shape.

    Returns:
        The float32 product with numpy's output shape.

    Raises:
        InvalidRequestError: wrong dtype, rank, or shapes that do not broadcast, or a
            non-finite ``alpha`` or clip bound.
    """
    attrs = {
        "activation": activation or "none",
        "alpha": float_attr("matmul", "alpha", alpha),
        "trans_b": flag_attr("matmul", "trans_b", trans_b),
        "clip_min": optional_float_attr("matmul", "clip_min", clip_min),
        "clip_max": optional_float_attr("matmul", "clip_max", clip_max),
    }
    return run1("matmul", [a, b, bias, residual], attrs, threads)
