"""numpy references of transpose, gather, concat and slice (exact: they only move elements)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def transpose(x: np.ndarray, perm: Sequence[int] | None = None) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.transpose`."""
    # copy(order="C"), not ascontiguousarray, which would turn a 0-d result into shape (1,).
    return np.transpose(np.asarray(x), None if perm is None else tuple(perm)).copy(order="C")


def gather(data: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.gather` (ONNX Gather)."""
    data = np.asarray(data)
    idx = np.asarray(indices).astype(np.int64)
    n = data.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"gather index out of range [{-n}, {n})")
    return np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)


def concat(*inputs: np.ndarray, axis: int) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.concat`."""
    return np.concatenate([np.asarray(x) for x in inputs], axis=axis)


def _slice_indices(dim: int, start: int, end: int, step: int) -> np.ndarray:
    # ONNX Slice, opset 13: negatives count from the end, then clamp by the sign of the step.
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64) if dim > 0 else np.zeros(0, np.int64)


def slice(
    x: np.ndarray,
    starts: Sequence[int],
    ends: Sequence[int],
    axes: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.slice` (ONNX Slice), by explicit index lists."""
    out = np.asarray(x)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        out = np.take(out, _slice_indices(out.shape[axis], start, end, step), axis=axis)
    return np.ascontiguousarray(out)
