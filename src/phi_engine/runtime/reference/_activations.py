"""Activations in float64 numpy: the oracle for fused epilogues."""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def apply_activation(
    x: np.ndarray, activation: str | None, clip_min: float | None = None, clip_max: float | None = None
) -> np.ndarray:
    """Apply a named activation (see :data:`phi_engine.ops._base.ACTIVATIONS`) to ``x``."""
    x = np.asarray(x, dtype=np.float64)
    match activation or "none":
        case "none" | "identity":
            return x
        case "relu":
            return np.maximum(x, 0.0)
        case "gelu":
            return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))
        case "gelu_tanh":
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
        case "tanh":
            return np.tanh(x)
        case "sigmoid":
            return 1.0 / (1.0 + np.exp(-x))
        case "clip":
            lo = -np.inf if clip_min is None else clip_min
            hi = np.inf if clip_max is None else clip_max
            return np.clip(x, lo, hi)
    raise ValueError(f"unknown activation {activation!r}")
