"""Shape-only ops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.ops._base import flag_attr, ints_attr, run1


def reshape(
    x: ArrayLike, shape: Sequence[int], *, allowzero: bool = False, threads: int = 0
) -> np.ndarray:
    """The same elements under a new shape, with ONNX Reshape semantics.

    Args:
        x: Any array.
        shape: The new shape; one ``-1`` is inferred, and ``0`` copies the input's dimension at
            that index unless ``allowzero``.
        allowzero: Treat ``0`` as a literal zero-length dimension.
        threads: Unused (a copy at memory speed); accepted for a uniform signature.

    Returns:
        A new array with the requested shape.

    Raises:
        InvalidRequestError: the element counts differ or the shape is malformed.
    """
    attrs = {
        "shape": ints_attr("reshape", "shape", shape),
        "allowzero": flag_attr("reshape", "allowzero", allowzero),
    }
    return run1("reshape", [x], attrs, threads)
