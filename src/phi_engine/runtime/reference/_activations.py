"""Activations in float64 numpy: the oracle for fused epilogues."""

from __future__ import annotations

import math

import numpy as np

_erf_ufunc = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64, element by element through the math module (numpy has no erf)."""
    return np.asarray(_erf_ufunc(np.asarray(x, np.float64)), dtype=np.float64)


def apply_activation(
    x: np.ndarray,
    activation: str | None,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Apply a named activation (see :data:`phi_engine.ops._base.ACTIVATIONS`) to ``x``."""
    x = np.asarray(x, dtype=np.float64)
    y: np.ndarray
    match activation or "none":
        case "none" | "identity":
            y = x
        case "relu":
            y = np.maximum(x, 0.0)
        case "gelu":
            y = 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
        case "gelu_tanh":
            y = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
        case "tanh":
            y = np.tanh(x)
        case "sigmoid":
            y = 1.0 / (1.0 + np.exp(-x))
        case "clip":
            lo = -np.inf if clip_min is None else clip_min
            hi = np.inf if clip_max is None else clip_max
            y = np.clip(x, lo, hi)
        case _:
            raise ValueError(f"unknown activation {activation!r}")
    return y
