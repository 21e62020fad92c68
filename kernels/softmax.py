"""Softmax over the last axis, ``softmax(scale·x + mask)``: ``ROWS`` rows per program, each in
one block.

Each row is read once into registers (its length rounded up to a power of two, masked), the max
subtracted, exponentiated, summed and divided, and written once: one read and one write of the
tensor, which is what makes it memory-bound at the copy bandwidth. The launcher runs one row per
program while a row fills 2 KiB and packs shorter rows several to a program
(``_common.row_config``); ``benchmarks/gpu/bench_triton.py --sweep rows`` times each choice.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.kernels._common import check_float, check_same_device, row_config

_OP = "softmax"
MAX_ROW = 1 << 16
"""The longest row one program holds (longer rows would need a looping variant)."""


@triton.jit
def _softmax_kernel(
    x_ptr,
    mask_ptr,
    y_ptr,
    n_rows,
    n_cols,
    x_stride,
    mask_stride,
    y_stride,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, BLOCK)
    cols_in = offs[None, :] < n_cols
    inside = (rows[:, None] < n_rows) & cols_in
    x = tl.load(x_ptr + rows[:, None] * x_stride + offs[None, :], mask=inside, other=0.0)
    x = x.to(tl.float32) * scale
    if HAS_MASK:
        m = tl.load(mask_ptr + rows[:, None] * mask_stride + offs[None, :], mask=inside, other=0.0)
        x += m.to(tl.float32)
    x = tl.where(cols_in, x, -float("inf"))  # rows past the end hold zeros: finite, not stored
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    y = e / tl.sum(e, axis=1)[:, None]
    ptrs = y_ptr + rows[:, None] * y_stride + offs[None, :]
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=inside)


def softmax(x: Any, mask: Any | None = None, scale: float = 1.0) -> Any:
    """``softmax(scale·x + mask)`` over the last axis.

    Args:
        x: A tensor of any rank (its last axis is normalised).
        mask: An additive mask broadcastable to ``x`` over its leading axes (e.g. ``-inf`` or
            ``-1e4`` where attention must not look), or None.
        scale: Multiplies ``x`` first.

    Raises:
        InvalidRequestError: a dtype that is not float, a mask that does not broadcast, tensors
            on different devices.
        UnsupportedError: a last axis longer than :data:`MAX_ROW`.
    """
    check_float(_OP, "x", x)
    check_same_device(_OP, x, mask)
    n_cols = x.shape[-1] if x.dim() else 1
    if n_cols > MAX_ROW:
        raise UnsupportedError(f"[{_OP}] rows longer than {MAX_ROW} are not supported yet")
    rows2d = x.reshape(-1, n_cols).contiguous()
    y = rows2d.new_empty(rows2d.shape)
    if rows2d.shape[0] == 0 or n_cols == 0:
        return y.reshape(x.shape)
    mask2d = rows2d
    if mask is not None:
        check_float(_OP, "mask", mask)
        try:
            mask2d = mask.expand(x.shape).reshape(-1, n_cols)
        except RuntimeError as exc:
            raise InvalidRequestError(
                f"[{_OP}] mask of shape {tuple(mask.shape)} does not broadcast to {tuple(x.shape)}",
                field="mask",
            ) from exc
        if mask2d.stride(-1) != 1:
            mask2d = mask2d.contiguous()
    block, per, warps = row_config(n_cols, rows2d.element_size())
    _softmax_kernel[(-(-rows2d.shape[0] // per),)](
        rows2d,
        mask2d,
        y,
        rows2d.shape[0],
        n_cols,
        rows2d.stride(0),
        mask2d.stride(0),
        y.stride(0),
        float(scale),
        HAS_MASK=mask is not None,
        BLOCK=block,
        ROWS=per,
        num_warps=warps,
    )
    return y.reshape(x.shape)
