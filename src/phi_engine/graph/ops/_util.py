"""Helpers shared by the op definitions: symbolic shapes, axes, dtypes, lowering checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, Shape, TensorType
from phi_engine.graph.registry import InferContext, OpContext

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
BOOL = np.dtype(np.bool_)


def tt(dtype: Any, shape: Sequence[Dim] | None) -> TensorType:
    """A TensorType from any dtype-like and a shape (None: unknown rank)."""
    return TensorType(np.dtype(dtype), None if shape is None else tuple(shape))


def same_as(i: int = 0) -> Any:
    """An infer function: one output of input ``i``'s type."""

    def infer(ctx: InferContext) -> list[TensorType]:
        return [ctx.type(i)]

    return infer


def broadcast(ctx: OpContext, *shapes: Shape | None) -> Shape | None:
    """numpy broadcasting over shapes that may hold symbols (None: unknown rank).

    A symbol against 1 gives the symbol; a symbol against a size > 1 gives the size (the model
    is only valid if they agree); two different symbols give the first.
    """
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes if s is not None), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [
            s[len(s) - rank + axis] for s in shapes if s is not None and len(s) - rank + axis >= 0
        ]
        result: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if result == 1:
                result = d
            elif isinstance(result, int) and isinstance(d, int) and result != d:
                ctx.fail(f"shapes {[list(s or ()) for s in shapes]} do not broadcast")
            elif isinstance(result, str) and isinstance(d, int):
                result = d
        out.append(result)
    return tuple(out)


def axis_of(ctx: OpContext, axis: int, rank: int, *, extra: int = 0) -> int:
    """``axis`` in ``[-rank - extra, rank + extra)`` as a non-negative index."""
    n = rank + extra
    if not -n <= axis < n:
        ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis + n if axis < 0 else axis


def is_static(t: TensorType | None) -> bool:
    return t is not None and t.is_static


def static_shape_of(ctx: InferContext, i: int) -> tuple[int, ...] | None:
    t = ctx.type(i)
    return t.static_shape() if t.is_static else None


def onnx_dtype(code: int) -> np.dtype[Any]:
    """The numpy dtype of an ONNX TensorProto element type code."""
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(code)))


def all_float32(ctx: Any, *indices: int) -> bool:
    """Lowering guard: the given inputs (default: all present ones) are float32."""
    idx = indices or tuple(i for i in range(len(ctx.node.inputs)) if ctx.has(i))
    return all(ctx.dtype(i) == F32 for i in idx)
