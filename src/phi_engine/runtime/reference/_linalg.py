"""numpy references of gemm and matmul (computed in float64, returned as float32)."""

from __future__ import annotations

import numpy as np

from phi_engine.runtime.reference._activations import apply_activation


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    *,
    residual: np.ndarray | None = None,
    alpha: float = 1.0,
    trans_a: bool = False,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.gemm`."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    y = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(-1)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return apply_activation(y, activation, clip_min, clip_max).astype(np.float32)


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    *,
    residual: np.ndarray | None = None,
    alpha: float = 1.0,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.matmul`."""
    b64 = np.asarray(b, np.float64)
    y = alpha * np.matmul(np.asarray(a, np.float64), np.swapaxes(b64, -1, -2) if trans_b else b64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(-1)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return apply_activation(y, activation, clip_min, clip_max).astype(np.float32)
