"""Ops that grow a tensor from its own elements: Expand (broadcast), Tile (repeat) and Pad.

Each lowers to native gathers of constant indices along the grown axes (Pad's constant mode: one
slice for negative pads, then concats of constant blocks), exact for every dtype the core stores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import Shape, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._tensor_util import (
    LATE,
    arg,
    check_dtype,
    dim_product,
    emit_reshape,
    emit_take,
    fresh,
    fresh_dims,
    known_ints,
    native_ready,
    norm_axes,
    static_len,
    zero_of,
)
from phi_engine.graph.ops._util import I64, broadcast, tt
from phi_engine.graph.registry import InferContext, OpContext, op


def _target_shape(ctx: InferContext, x: TensorType) -> Shape | None:
    """Expand's output: the target (known, or fresh symbols) broadcast both ways with ``x``."""
    check_dtype(ctx, 1, frozenset({I64}), "shape")
    target = known_ints(ctx, 1, "shape")
    if target is not None and any(d < 0 for d in target):
        ctx.fail(f"shape {target} has a negative dimension")
    n = len(target) if target is not None else static_len(ctx, 1)
    if x.shape is None or n is None:
        return None
    if target is not None:
        return broadcast(ctx, x.shape, tuple(target))
    # Only a size > 1 on the input's side is known to survive; the rest are fresh symbols.
    lead = (1,) * (n - len(x.shape)) + x.shape
    return tuple(
        d if isinstance(d, int) and d > 1 else fresh(ctx, f"d{i}") for i, d in enumerate(lead)
    )


def _expand_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    return [tt(x.dtype, _target_shape(ctx, x))]


def _emit_broadcast(ctx: LowerContext, shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    """``x`` broadcast to ``out``: one gather of zeros per stretched axis (a reshape first if
    the rank grows, or if nothing else would copy)."""
    slot = ctx.slot(0)
    lead = (1,) * (len(out) - len(shape)) + shape
    stretched = [a for a, (d, o) in enumerate(zip(lead, out, strict=True)) if d != o]
    if lead != shape or not stretched:
        slot = emit_reshape(ctx, slot, lead)
    for axis in stretched:
        slot = emit_take(ctx, slot, np.zeros(out[axis], dtype=np.int64), axis)
    assert slot is not None
    return slot


def _lower_expand(ctx: LowerContext) -> list[int] | None:
    if not native_ready(ctx, 0):
        return None
    return [_emit_broadcast(ctx, ctx.shape(0), ctx.out_types[0].static_shape())]


@op("Expand", (8, 13), infer=_expand_infer, lower=_lower_expand)
def expand(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    target = tuple(int(d) for d in np.ravel(x[1]))
    try:
        out = np.broadcast_shapes(x[0].shape, target)
    except ValueError:
        ctx.fail(f"input {list(x[0].shape)} does not broadcast with shape {list(target)}")
    return [np.array(np.broadcast_to(x[0], out))]


def _repeats(ctx: OpContext, value: Any, rank: int) -> list[int]:
    reps = [int(r) for r in np.ravel(value)]
    if len(reps) != rank or any(r < 0 for r in reps):
        ctx.fail(f"repeats {reps} must be {rank} non-negative counts")
    return reps


def _tile_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    check_dtype(ctx, 1, frozenset({I64}), "repeats")
    value = ctx.value(1)
    if x.shape is None or value is None:
        return [tt(x.dtype, None if x.shape is None else fresh_dims(ctx, len(x.shape)))]
    dims = [
        dim_product([d, r])
        for d, r in zip(x.shape, _repeats(ctx, value, len(x.shape)), strict=True)
    ]
    return [tt(x.dtype, [fresh(ctx, f"d{i}") if d is None else d for i, d in enumerate(dims)])]


def _lower_tile(ctx: LowerContext) -> list[int] | None:
    value = ctx.value(1)
    if value is None or not native_ready(ctx, 0):
        return None
    shape = ctx.shape(0)
    reps = _repeats(ctx, value, len(shape))
    slot = ctx.slot(0)
    if all(r == 1 for r in reps):
        return [emit_reshape(ctx, slot, shape)]
    for axis, (d, r) in enumerate(zip(shape, reps, strict=True)):
        if r != 1:
            slot = emit_take(ctx, slot, np.tile(np.arange(d), r), axis)
    assert slot is not None
    return [slot]


@op("Tile", (6, 13), infer=_tile_infer, lower=_lower_tile)
def tile(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.tile(x[0], _repeats(ctx, x[1], x[0].ndim))]


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_mode(ctx: OpContext) -> str:
    mode = str(ctx.attr("mode", "constant"))
    if mode not in _PAD_MODES or (mode == "wrap" and ctx.version < 19):
        ctx.fail(f"mode {mode!r} is not one of {_PAD_MODES[: 3 if ctx.version < 19 else 4]}")
    return mode


def _pad_widths(
    ctx: OpContext, rank: int, present: list[bool], values: list[Any]
) -> list[tuple[int, int]] | None:
    """(before, after) per axis; None while the pads or axes are unknown."""
    if ctx.version < 11:
        pads: Any = ctx.attr("pads")
        axes: Any = list(range(rank))
    else:
        pads = values[1]
        axes = values[3] if present[3] else np.arange(rank)
        if pads is None or axes is None:
            return None
    pads, axes = [int(p) for p in np.ravel(pads)], norm_axes(ctx, np.ravel(axes).tolist(), rank)
    if len(pads) != 2 * len(axes):
        ctx.fail(f"pads {pads} must have 2 values per padded axis ({len(axes)} axes)")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    return widths


def _pad_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    _pad_mode(ctx)
    if ctx.version >= 11:
        check_dtype(ctx, 1, frozenset({I64}), "pads")
    present = [ctx.has(i) for i in range(4)]
    if x.shape is None:
        return [x]
    widths = _pad_widths(ctx, len(x.shape), present, [ctx.value(i) for i in range(4)])
    if widths is None:
        return [tt(x.dtype, fresh_dims(ctx, len(x.shape)))]
    _check_crop(ctx, x.shape, widths)
    dims = [
        d + b + e if isinstance(d, int) else d if b == e == 0 else fresh(ctx, f"d{axis}")
        for axis, (d, (b, e)) in enumerate(zip(x.shape, widths, strict=True))
    ]
    return [tt(x.dtype, dims)]


def _pad_value(ctx: OpContext, dtype: np.dtype[Any], present: bool, value: Any) -> np.ndarray:
    """The constant mode's fill as a 0-d array of ``dtype``."""
    if ctx.version < 11:
        return np.asarray(ctx.attr("value", 0.0)).astype(dtype)
    if not present:
        return zero_of(dtype)
    found = np.asarray(value)
    if found.size != 1 or found.dtype != dtype:
        ctx.fail(f"constant_value must be one {dtype.name} value, got {found.dtype}{found.shape}")
    return found.reshape(())


def _pad_index(ctx: OpContext, dim: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source positions along one axis for reflect/edge/wrap (negative pads crop first)."""
    kept = np.arange(max(-before, 0), dim - max(-after, 0))
    if kept.size == 0 and (before > 0 or after > 0):
        ctx.fail(f"cannot pad an axis of {dim} elements cropped to none in mode {mode!r}")
    index: np.ndarray = np.pad(kept, (max(before, 0), max(after, 0)), mode=mode)  # type: ignore[call-overload]
    return index


def _check_crop(ctx: OpContext, shape: Shape, widths: list[tuple[int, int]]) -> None:
    for axis, (d, (b, e)) in enumerate(zip(shape, widths, strict=True)):
        if isinstance(d, int) and max(-b, 0) + max(-e, 0) > d:
            ctx.fail(f"pads ({b}, {e}) crop more than axis {axis}'s {d} elements")


def _crop(data: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    dims = zip(data.shape, widths, strict=True)
    return data[tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in dims)]


def _emit_constant_pad(
    ctx: LowerContext, shape: tuple[int, ...], widths: list[tuple[int, int]], fill: np.ndarray
) -> int:
    """Crop with one native slice, then per padded axis concat constant blocks around it."""
    slot, cur = ctx.slot(0), list(shape)
    if any(b < 0 or e < 0 for b, e in widths):
        attrs = {
            "starts": [max(-b, 0) for b, _ in widths],
            "ends": [d - max(-e, 0) for d, (_, e) in zip(shape, widths, strict=True)],
        }
        slot = ctx.step("slice", [slot], attrs)[0]
        cur = [d - max(-b, 0) - max(-e, 0) for d, (b, e) in zip(shape, widths, strict=True)]
    for axis, (b, e) in enumerate(widths):
        if b <= 0 and e <= 0:
            continue
        blocks = [[*cur[:axis], n, *cur[axis + 1 :]] for n in (max(b, 0), max(e, 0))]
        parts = [
            ctx.constant(np.full(blocks[0], fill)),
            slot,
            ctx.constant(np.full(blocks[1], fill)),
        ]
        keep = [p for p, n in zip(parts, (b, 1, e), strict=True) if n > 0]
        slot = ctx.step("concat", keep, {"axis": axis})[0]
        cur[axis] += max(b, 0) + max(e, 0)
    if slot == ctx.slot(0):
        slot = emit_reshape(ctx, slot, shape)
    assert slot is not None
    return slot


def _lower_pad(ctx: LowerContext) -> list[int] | None:
    present, mode = [ctx.has(i) for i in range(4)], _pad_mode(ctx)
    fill_unknown = mode == "constant" and present[2] and ctx.value(2) is None
    if fill_unknown or not native_ready(ctx, 0):
        return None
    shape = ctx.shape(0)
    widths = _pad_widths(ctx, len(shape), present, [ctx.value(i) for i in range(4)])
    if widths is None:
        return None
    if mode == "constant":
        fill = _pad_value(ctx, ctx.dtype(0), present[2], ctx.value(2))
        return [_emit_constant_pad(ctx, shape, widths, fill)]
    slot = ctx.slot(0)
    for axis, (d, (b, e)) in enumerate(zip(shape, widths, strict=True)):
        if b or e:
            slot = emit_take(ctx, slot, _pad_index(ctx, d, b, e, mode), axis)
    if slot == ctx.slot(0):
        slot = emit_reshape(ctx, slot, shape)
    assert slot is not None
    return [slot]


@op("Pad", (2, 11, 13, 18, 19, *LATE), infer=_pad_infer, lower=_lower_pad)
def pad(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data, mode = x[0], _pad_mode(ctx)
    values = [arg(x, i) for i in range(4)]
    widths = _pad_widths(ctx, data.ndim, [v is not None for v in values], values)
    assert widths is not None
    _check_crop(ctx, data.shape, widths)
    if mode != "constant":
        for axis, (d, (b, e)) in enumerate(zip(data.shape, widths, strict=True)):
            if b or e:
                data = np.take(data, _pad_index(ctx, d, b, e, mode), axis=axis)
        return [data]
    fill = _pad_value(ctx, data.dtype, values[2] is not None, values[2])
    grow = [(max(b, 0), max(e, 0)) for b, e in widths]
    return [np.pad(_crop(data, widths), grow, mode="constant", constant_values=fill)]
