"""numpy reference of the shape-only ops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike


def reshape(x: np.ndarray, shape: Sequence[int], *, allowzero: bool = False) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reshape` (ONNX Reshape)."""
    x = np.asarray(x)
    target = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    return x.reshape(target).copy()


def cast(x: np.ndarray, dtype: DTypeLike) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.cast`."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(x).astype(dtype)
