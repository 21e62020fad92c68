"""Layout ops: transpose, gather, concat and slice, for every dtype the core stores.

They move bytes and never look at values, so results are bit-exact copies of the input's
elements, whatever the dtype (bool, int8/uint8, int32/int64, float16/32/64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.ops._base import int_attr, ints_attr, run, run1


def transpose(x: ArrayLike, perm: Sequence[int] | None = None, *, threads: int = 0) -> np.ndarray:
    """Permute the axes of ``x`` into a new contiguous array (``numpy.transpose`` semantics).

    Args:
        x: An array of any supported dtype.
        perm: The input axis for each output axis (negative values count from the end); ``None``
            reverses the axes.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        ``x`` with its axes permuted, C-contiguous, same dtype.

    Raises:
        InvalidRequestError: ``perm`` is not a permutation of ``x``'s axes.
    """
    attrs = {} if perm is None else {"perm": ints_attr("transpose", "perm", perm)}
    return run1("transpose", [x], attrs, threads)


def gather(data: ArrayLike, indices: ArrayLike, axis: int = 0, *, threads: int = 0) -> np.ndarray:
    """Pick slices of ``data`` along ``axis`` by index (ONNX Gather; an embedding lookup at axis 0).

    Args:
        data: An array of any supported dtype, rank >= 1.
        indices: int32 or int64 indices of any shape; a negative index counts from the end.
        axis: The axis of ``data`` to index.
        threads: Threads to use (0: the default).

    Returns:
        An array of shape ``data.shape[:axis] + indices.shape + data.shape[axis + 1:]``.

    Raises:
        InvalidRequestError: an index outside ``[-n, n)`` (checked before anything is written),
            indices that are not int32/int64, or a bad axis.
    """
    attrs = {"axis": int_attr("gather", "axis", axis)}
    return run1("gather", [data, indices], attrs, threads)


def concat(*inputs: ArrayLike, axis: int, threads: int = 0) -> np.ndarray:
    """Join arrays along an existing axis (ONNX Concat, ``numpy.concatenate``).

    Args:
        *inputs: One or more arrays of one dtype, with equal shapes except along ``axis``.
        axis: The axis to join along (negative counts from the end).
        threads: Threads to use (0: the default).

    Returns:
        The joined array.

    Raises:
        InvalidRequestError: no inputs, mixed dtypes or ranks, shapes that differ off ``axis``.
    """
    attrs = {"axis": int_attr("concat", "axis", axis)}
    return run("concat", list(inputs), attrs, threads)[0]


def slice(
    x: ArrayLike,
    starts: Sequence[int],
    ends: Sequence[int],
    axes: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    *,
    threads: int = 0,
) -> np.ndarray:
    """Take a strided sub-array (ONNX Slice semantics).

    Negative ``starts``/``ends`` count from the end of the axis; out-of-range values clamp (so
    ``2**63 - 1`` means "to the end" and ``-2**63`` "to the beginning" with a negative step).

    Args:
        x: An array of any supported dtype, rank >= 1.
        starts: First index per sliced axis.
        ends: One past the last index per sliced axis.
        axes: The axes ``starts``/``ends`` refer to (default ``0 .. len(starts) - 1``).
        steps: Non-zero step per sliced axis (default 1); negative steps walk backwards.
        threads: Threads to use (0: the default).

    Returns:
        The slice as a new contiguous array.

    Raises:
        InvalidRequestError: lengths that differ, a zero step, a repeated or bad axis.
    """
    attrs: dict[str, Any] = {
        "starts": ints_attr("slice", "starts", starts),
        "ends": ints_attr("slice", "ends", ends),
    }
    if axes is not None:
        attrs["axes"] = ints_attr("slice", "axes", axes)
    if steps is not None:
        attrs["steps"] = ints_attr("slice", "steps", steps)
    return run1("slice", [x], attrs, threads)
