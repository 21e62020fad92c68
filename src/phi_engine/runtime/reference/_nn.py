"""numpy references of softmax, the normalisations and the reductions (float64 math)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

F32 = np.float32


def _f64(x: np.ndarray | None) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _row_max(t: np.ndarray, axis: int) -> np.ndarray:
    # `initial` lets an empty tensor (a size-0 axis or batch) through: there is nothing to
    # normalise, and numpy's max would refuse the zero-size reduction.
    return np.asarray(t.max(axis=axis, keepdims=True, initial=-np.inf))


def softmax(
    x: np.ndarray, mask: np.ndarray | None = None, axis: int = -1, scale: float = 1.0
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.softmax`."""
    t = scale * _f64(x) + (0.0 if mask is None else _f64(mask))
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(t - _row_max(t, axis))
        return np.asarray((e / e.sum(axis=axis, keepdims=True)).astype(F32))


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.attention`: the unfused form in float64, rounded once."""
    qh, kh, vh = (np.swapaxes(_f64(t), 1, 2) for t in (q, k, v))  # (B, H, S, D)
    t = alpha * np.matmul(qh, np.swapaxes(kh, -1, -2)) + (0.0 if mask is None else _f64(mask))
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(t - _row_max(t, -1))
        probs = e / e.sum(axis=-1, keepdims=True)
        return np.asarray(np.swapaxes(np.matmul(probs, vh), 1, 2).astype(F32))


def log_softmax(
    x: np.ndarray,
    axis: int = -1,
    *,
    mask: np.ndarray | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.log_softmax`."""
    t = scale * _f64(x) + (0.0 if mask is None else _f64(mask))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        d = t - _row_max(t, axis)
        return np.asarray((d - np.log(np.exp(d).sum(axis=axis, keepdims=True))).astype(F32))


def _norm_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    start = axis % x.ndim
    return tuple(range(start, x.ndim))


def layer_norm(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray | None = None,
    axis: int = -1,
    epsilon: float = 1e-5,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.layer_norm`."""
    h = _f64(x) if residual is None else _f64(x) + _f64(residual)
    if h.size == 0:
        return np.zeros(h.shape, F32)  # no row to normalise (numpy would warn on the empty mean)
    axes = _norm_axes(h, axis)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN rows give NaN, quietly
        mean = h.mean(axis=axes, keepdims=True)
        var = ((h - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (h - mean) / np.sqrt(var + epsilon) * _f64(gamma)
        if beta is not None:
            y = y + _f64(beta)
        return np.asarray(y.astype(F32))


def rms_norm(x: np.ndarray, gamma: np.ndarray, axis: int = -1, epsilon: float = 1e-6) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.rms_norm`."""
    x64 = _f64(x)
    if x64.size == 0:
        return np.zeros(x64.shape, F32)
    with np.errstate(invalid="ignore", over="ignore"):
        ms = (x64**2).mean(axis=_norm_axes(x64, axis), keepdims=True)
        return np.asarray((x64 / np.sqrt(ms + epsilon) * _f64(gamma)).astype(F32))


def batch_norm(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    epsilon: float = 1e-5,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.batch_norm`."""
    x64 = _f64(x)
    shape = (1, -1) + (1,) * (x64.ndim - 2)

    def per_channel(v: np.ndarray) -> np.ndarray:
        return _f64(v).reshape(shape)

    with np.errstate(invalid="ignore", over="ignore"):
        y = (x64 - per_channel(mean)) / np.sqrt(per_channel(var) + epsilon)
        return np.asarray((y * per_channel(scale) + per_channel(bias)).astype(F32))


def _axes(
    x: np.ndarray, axes: int | Sequence[int] | None, noop_with_empty_axes: bool
) -> tuple[int, ...]:
    if axes is None or (not isinstance(axes, int) and len(axes) == 0):
        return () if noop_with_empty_axes else tuple(range(x.ndim))
    listed = [axes] if isinstance(axes, int) else list(axes)
    return tuple(a % x.ndim for a in listed)


def _reduce(
    kind: str,
    x: np.ndarray,
    axes: int | Sequence[int] | None,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> np.ndarray:
    x64 = _f64(x)
    ax = _axes(x64, axes, noop_with_empty_axes)
    # ONNX gives the identity for an empty reduction where numpy would raise (max, min).
    with np.errstate(invalid="ignore", over="ignore"):
        if kind == "sum":
            y = x64.sum(axis=ax, keepdims=keepdims)
        elif kind == "mean":
            count = int(np.prod([x64.shape[a] for a in ax]))
            y = x64.sum(axis=ax, keepdims=keepdims) / (count if count else np.nan)
        elif kind == "prod":
            y = x64.prod(axis=ax, keepdims=keepdims)
        elif kind == "max":
            y = x64.max(axis=ax, keepdims=keepdims, initial=-np.inf)
        else:
            y = x64.min(axis=ax, keepdims=keepdims, initial=np.inf)
        return np.asarray(y).astype(F32)


def reduce_sum(
    x: np.ndarray,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reduce_sum`."""
    return _reduce("sum", x, axes, keepdims, noop_with_empty_axes)


def reduce_mean(
    x: np.ndarray,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reduce_mean`."""
    return _reduce("mean", x, axes, keepdims, noop_with_empty_axes)


def reduce_max(
    x: np.ndarray,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reduce_max`."""
    return _reduce("max", x, axes, keepdims, noop_with_empty_axes)


def reduce_min(
    x: np.ndarray,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reduce_min`."""
    return _reduce("min", x, axes, keepdims, noop_with_empty_axes)


def reduce_prod(
    x: np.ndarray,
    axes: int | Sequence[int] | None = None,
    keepdims: bool = True,
    *,
    noop_with_empty_axes: bool = False,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reduce_prod`."""
    return _reduce("prod", x, axes, keepdims, noop_with_empty_axes)


def _arg(
    find: str, x: np.ndarray, axis: int, keepdims: bool, select_last_index: bool
) -> np.ndarray:
    a = np.asarray(x)
    fn = np.argmax if find == "max" else np.argmin
    if select_last_index:
        flipped = fn(np.flip(a, axis=axis), axis=axis)
        idx = a.shape[axis] - 1 - flipped
    else:
        idx = fn(a, axis=axis)
    idx = np.asarray(idx, dtype=np.int64)
    return np.expand_dims(idx, axis) if keepdims else idx


def argmax(
    x: np.ndarray, axis: int = 0, keepdims: bool = True, *, select_last_index: bool = False
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.argmax` (numpy: first index on ties, NaN wins)."""
    return _arg("max", x, axis, keepdims, select_last_index)


def argmin(
    x: np.ndarray, axis: int = 0, keepdims: bool = True, *, select_last_index: bool = False
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.argmin`."""
    return _arg("min", x, axis, keepdims, select_last_index)
