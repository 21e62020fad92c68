"""numpy reference of the shape-only ops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reshape(x: np.ndarray, shape: Sequence[int], *, allowzero: bool = False) -> np.ndarray:
    """Reference of :func:`phi_engine.ops.reshape` (ONNX Reshape)."""
    x = np.asarray(x)
    target = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    return x.reshape(target).copy()
