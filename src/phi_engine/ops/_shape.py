"""Shape-only ops and dtype conversion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from phi_engine.errors import InvalidRequestError
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


def cast(x: ArrayLike, dtype: DTypeLike, *, threads: int = 0) -> np.ndarray:
    """``x`` converted to ``dtype`` with numpy's ``astype`` semantics (ONNX Cast).

    float32, float64, int8, uint8, int32, int64 and bool convert in any direction: floats to
    integers truncate toward zero, integers wrap, ``!= 0`` gives bool. Values a float-to-int
    conversion cannot represent (NaN, infinities, out of range) give what numpy gives on x86-64.

    Args:
        x: An array of one of those dtypes.
        dtype: The target dtype (a numpy dtype or its name).
        threads: Threads to use (0: the default).

    Returns:
        A new array of ``x``'s shape and ``dtype``.

    Raises:
        InvalidRequestError: an unknown dtype, or a dtype pair not listed above.
    """
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise InvalidRequestError(f"[cast] unknown dtype {dtype!r}", field="dtype") from exc
    return run1("cast", [x], {"to": name}, threads)
