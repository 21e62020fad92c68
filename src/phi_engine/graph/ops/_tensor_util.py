"""Helpers for the tensor ops: symbolic dimension arithmetic, index checks, native lowering steps.

Symbolic dimensions are strings (see :mod:`phi_engine.graph.ir`). Arithmetic on them stays exact
where it can (a symbol times 1 is the symbol, equal symbols cancel in a division) and otherwise
yields ``None``, for which the caller invents a fresh symbol: an unknown size, never a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.graph.ir import Dim, Shape
from phi_engine.graph.ops._util import axis_of
from phi_engine.graph.registry import InferContext, OpContext

if TYPE_CHECKING:
    from phi_engine.graph.lower import LowerContext

# Op versions that only widened the type lists: same semantics.
LATE = (21, 23, 24, 25)
INT64_MAX = 2**63 - 1
# Slice ends at or past this mean "to the end of the axis" whatever its (symbolic) length.
HUGE = 2**62
I32 = np.dtype(np.int32)
INDEX_DTYPES = frozenset({I32, np.dtype(np.int64)})
# The dtypes the native layout kernels store (csrc/python/convert.cpp dtype_from_numpy).
NATIVE_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_)
)
# The dtypes the native "where" kernel selects between (csrc/core/elementwise.cpp).
WHERE_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.int32, np.int64, np.bool_))


def arg(x: Sequence[Any], i: int) -> Any:
    """Input ``i`` of a compute call, or None when absent (trailing absent inputs may be cut)."""
    return x[i] if i < len(x) else None


def fresh(ctx: OpContext, tag: str | int) -> str:
    """A new symbol for a dimension of this node's outputs that only running it can tell."""
    return f"{ctx.node.label}:{tag}"


def fresh_dims(ctx: OpContext, n: int, tag: str = "d") -> Shape:
    return tuple(fresh(ctx, f"{tag}{i}") for i in range(n))


def ints_of(ctx: OpContext, value: Any, what: str) -> list[int]:
    """A 0-d or 1-d integer tensor as a list of ints, or an error naming ``what``."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu" or a.ndim > 1:
        ctx.fail(f"{what} must be a 0-d or 1-d integer tensor, got {a.dtype.name}{list(a.shape)}")
    return [int(v) for v in a.reshape(-1)]


def scalar_int(ctx: OpContext, value: Any, what: str) -> int:
    """A one-element integer tensor as an int."""
    found = ints_of(ctx, value, what)
    if len(found) != 1:
        ctx.fail(f"{what} must have exactly one element, got {len(found)}")
    return found[0]


def known_ints(ctx: InferContext | LowerContext, i: int, what: str) -> list[int] | None:
    """Input ``i`` as ints if its value is known now, else None."""
    value = ctx.value(i)
    return None if value is None else ints_of(ctx, value, what)


def static_len(ctx: InferContext, i: int) -> int | None:
    """The length of 1-d input ``i`` if its shape says it, else None."""
    shape = ctx.type(i).shape
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
        return None
    return shape[0]


def check_dtype(ctx: InferContext, i: int, allowed: frozenset[Any], what: str) -> None:
    dtype = ctx.type(i).dtype
    if dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        ctx.fail(f"{what} must be one of {names}, got {dtype.name}")


def norm_axes(ctx: OpContext, axes: Sequence[int], rank: int) -> list[int]:
    """Axes normalized against ``rank``; a repeated axis is an error."""
    result = [axis_of(ctx, int(a), rank) for a in axes]
    if len(set(result)) != len(result):
        ctx.fail(f"axes {list(axes)} repeat an axis")
    return result


# ---- symbolic dimension arithmetic ----------------------------------------------------------


def split_dims(dims: Sequence[Dim]) -> tuple[int, Counter[str]]:
    """The product of the integer dims and the multiset of symbols."""
    known = 1
    symbols: Counter[str] = Counter()
    for d in dims:
        if isinstance(d, int):
            known *= d
        else:
            symbols[d] += 1
    return known, symbols


def dim_product(dims: Sequence[Dim]) -> Dim | None:
    """The product as a Dim where it is one (ints, or one symbol times 1), else None."""
    known, symbols = split_dims(dims)
    if not symbols or known == 0:
        return known
    if known == 1 and sum(symbols.values()) == 1:
        return next(iter(symbols))
    return None


def dim_sum(dims: Sequence[Dim]) -> Dim | None:
    """The sum as a Dim where it is one (ints, or one symbol plus zeros), else None."""
    symbols = [d for d in dims if isinstance(d, str)]
    total = sum(d for d in dims if isinstance(d, int))
    if not symbols:
        return total
    return symbols[0] if len(symbols) == 1 and total == 0 else None


def dim_quotient(ctx: OpContext, num: Sequence[Dim], den: Sequence[Dim]) -> Dim | None:
    """``prod(num) / prod(den)`` where symbols cancel out; an inexact integer division fails."""
    n, ns = split_dims(num)
    d, ds = split_dims(den)
    if d == 0:
        ctx.fail(f"cannot infer -1 next to a 0 dimension ({list(den)})")
    common = ns & ds
    ns, ds = ns - common, ds - common
    if ds:
        return None
    if not ns:
        if n % d:
            ctx.fail(f"cannot split {list(num)} ({n} elements) into {list(den)} and the rest")
        return n // d
    return next(iter(ns)) if n == d and sum(ns.values()) == 1 else None


def same_count(num: Sequence[Dim], den: Sequence[Dim]) -> bool | None:
    """Whether two shapes hold as many elements (None: the symbols leave it open)."""
    n, ns = split_dims(num)
    d, ds = split_dims(den)
    common = ns & ds
    if ns - common or ds - common:
        return None
    return n == d


def reshape_dims(ctx: OpContext, shape: Shape, target: Sequence[Dim], allowzero: bool) -> Shape:
    """ONNX Reshape's output shape for input ``shape`` (may hold symbols) and ``target``.

    ``0`` copies the input's dimension unless ``allowzero``; one ``-1`` takes what is left. A
    symbol in ``target`` (a dimension taken from a shape at inference) is that dimension.
    """
    if sum(1 for d in target if d == -1) > 1:
        ctx.fail(f"shape {list(target)} has more than one -1")
    if allowzero and -1 in target and 0 in target:
        ctx.fail(f"shape {list(target)} has both 0 and -1, which allowzero=1 forbids")
    dims: list[Dim] = []
    for i, d in enumerate(target):
        if isinstance(d, str):
            dims.append(d)
            continue
        if d < -1:
            ctx.fail(f"shape {list(target)} has a negative dimension {d}")
        if d == 0 and not allowzero:
            if i >= len(shape):
                ctx.fail(f"shape {list(target)}: 0 at index {i} has no input dimension to copy")
            dims.append(shape[i])
        else:
            dims.append(d)
    if -1 in target:
        at = list(target).index(-1)
        rest = dims[:at] + dims[at + 1 :]
        missing = dim_quotient(ctx, shape, rest)
        dims[at] = fresh(ctx, f"d{at}") if missing is None else missing
    elif same_count(shape, dims) is False:
        ctx.fail(f"cannot reshape {list(shape)} into {list(target)}")
    return tuple(dims)


# ---- slicing --------------------------------------------------------------------------------


def slice_range(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """(first index, length) of ONNX Slice along an axis of length ``dim``.

    ONNX clamps starts/ends to ``[0, dim]`` for positive steps and starts to ``[0, dim - 1]``,
    ends to ``[-1, dim - 1]`` for negative ones, after adding ``dim`` to negative values
    (Python's slice clamps a too-negative start to -1 instead, so it is not used).
    """
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        length = (end - start - 1) // step + 1 if end > start else 0
    else:
        start, end = min(max(start, 0), max(dim - 1, 0)), min(max(end, -1), dim - 1)
        length = (start - end - 1) // -step + 1 if dim > 0 and start > end else 0
    return (start if length else 0), length


def slice_of(dim: int, start: int, end: int, step: int) -> slice:
    """The Python slice that takes ``slice_range``'s elements."""
    first, length = slice_range(dim, start, end, step)
    if length == 0:
        return slice(0, 0)
    stop = first + length * step
    return slice(first, stop if stop >= 0 else None, step)


def slice_dim(ctx: OpContext, dim: Dim, start: int, end: int, step: int, tag: str) -> Dim:
    """The sliced length of ``dim``; a symbol survives only a whole-axis slice."""
    if isinstance(dim, int):
        return slice_range(dim, start, end, step)[1]
    whole_forward = step == 1 and start == 0 and end >= HUGE
    whole_backward = step == -1 and start >= HUGE and end <= -HUGE
    return dim if whole_forward or whole_backward else fresh(ctx, tag)


# ---- values ---------------------------------------------------------------------------------


def zero_of(dtype: np.dtype[Any]) -> np.ndarray:
    """The 0-d "zero" of a dtype: 0, False, or the empty string for strings."""
    if dtype.kind == "O":
        return np.array("", dtype=object)
    return np.zeros((), dtype=dtype)


def check_indices(ctx: OpContext, indices: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Indices in ``[-dim, dim)`` as non-negative int64, or an error naming the first bad one."""
    idx = np.asarray(indices).astype(np.int64, copy=False)
    bad = (idx < -dim) | (idx >= dim)
    if bad.any():
        ctx.fail(f"{what} {int(idx[bad].reshape(-1)[0])} is out of range [{-dim}, {dim})")
    return np.where(idx < 0, idx + dim, idx)


def index_grid(indices: np.ndarray, axis: int, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Coordinates addressing ``indices``' positions with ``axis`` replaced by its values
    (GatherElements/ScatterElements addressing)."""
    grid = list(np.indices(shape, sparse=True))
    grid[axis] = indices
    return tuple(grid)


# ---- lowering -------------------------------------------------------------------------------


def native_ready(ctx: LowerContext, *inputs: int) -> bool:
    """The given inputs (when present) and all outputs are static and of native dtypes."""
    types = [ctx.type(i) for i in inputs if ctx.has(i)] + ctx.out_types
    return all(t.is_static and t.dtype in NATIVE_DTYPES for t in types)


def emit_reshape(ctx: LowerContext, slot: int | None, shape: Sequence[int]) -> int:
    return ctx.step("reshape", [slot], {"shape": [int(d) for d in shape], "allowzero": 1})[0]


def emit_take(ctx: LowerContext, slot: int | None, indices: np.ndarray, axis: int) -> int:
    """Native gather of constant (non-negative) ``indices`` along ``axis``: any dtype, exact."""
    index = ctx.constant(np.ascontiguousarray(indices, dtype=np.int64))
    return ctx.step("gather", [slot, index], {"axis": int(axis)})[0]
