"""numpy references of the elementwise ops.

Transcendental functions are computed in float64 and rounded to float32. Arithmetic and
comparisons are computed by numpy in the inputs' own dtype, which is exactly what IEEE float32
(and wrapping integer) arithmetic gives, so the native results can be compared bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.runtime.reference._activations import apply_activation
from phi_engine.runtime.reference._activations import erf as _erf64

F32 = np.float32


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _to32(y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # float64 values past float32's range round to inf / 0
        return y.astype(F32)


def neg(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.neg`."""
    return np.negative(np.asarray(x, F32))


def abs(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.abs`."""
    return np.abs(np.asarray(x, F32))


def exp(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.exp`."""
    with np.errstate(all="ignore"):
        return _to32(np.exp(_f64(x)))


def log(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.log`."""
    with np.errstate(all="ignore"):
        return _to32(np.log(_f64(x)))


def sqrt(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.sqrt`."""
    with np.errstate(all="ignore"):
        return np.sqrt(np.asarray(x, F32))


def reciprocal(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reciprocal`."""
    with np.errstate(all="ignore"):
        return np.reciprocal(np.asarray(x, F32))


def _act(
    x: np.ndarray, name: str | None, clip_min: float | None = None, clip_max: float | None = None
) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _to32(apply_activation(_f64(x), name, clip_min, clip_max))


def relu(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.relu`."""
    return _act(x, "relu")


def gelu(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.gelu`."""
    return _act(x, "gelu")


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.gelu_tanh`."""
    return _act(x, "gelu_tanh")


def tanh(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.tanh`."""
    return _act(x, "tanh")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.sigmoid`."""
    return _act(x, "sigmoid")


def erf(x: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.erf`."""
    return _to32(_erf64(_f64(x)))


def clip(x: np.ndarray, min: float | None = None, max: float | None = None) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.clip`."""
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    return np.clip(np.asarray(x, F32), F32(lo), F32(hi))


def leaky_relu(x: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.leaky_relu`."""
    x64 = _f64(x)
    with np.errstate(all="ignore"):
        return _to32(np.where(x64 < 0, alpha * x64, x64))


def _fused(
    y: np.ndarray, activation: str | None, clip_min: float | None, clip_max: float | None
) -> np.ndarray:
    if (activation or "none") == "none":
        return y
    return _act(y, activation, clip_min, clip_max)


def add(
    a: np.ndarray,
    b: np.ndarray,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.add`."""
    with np.errstate(all="ignore"):
        return _fused(np.asarray(np.add(a, b)), activation, clip_min, clip_max)


def mul(
    a: np.ndarray,
    b: np.ndarray,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.mul`."""
    with np.errstate(all="ignore"):
        return _fused(np.asarray(np.multiply(a, b)), activation, clip_min, clip_max)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.sub`."""
    with np.errstate(all="ignore"):
        return np.asarray(np.subtract(a, b))


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.div`."""
    with np.errstate(all="ignore"):
        return np.asarray(np.divide(a, b))


def pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.pow` (float64, rounded to float32)."""
    with np.errstate(all="ignore"):
        return _to32(np.power(_f64(a), _f64(b)))


def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.maximum`."""
    return np.asarray(np.maximum(a, b))


def minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.minimum`."""
    return np.asarray(np.minimum(a, b))


def equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.equal`."""
    return np.asarray(np.equal(a, b))


def less(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.less`."""
    return np.asarray(np.less(a, b))


def greater(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.greater`."""
    return np.asarray(np.greater(a, b))


def less_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.less_equal`."""
    return np.asarray(np.less_equal(a, b))


def greater_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.greater_equal`."""
    return np.asarray(np.greater_equal(a, b))


def where(condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.where`."""
    return np.where(condition, x, y)
