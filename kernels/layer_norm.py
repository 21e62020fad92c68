"""Layer normalisation over the last axis, with the residual add fused in front:
``y = (h − mean(h)) / sqrt(var(h) + ε) · γ + β`` where ``h = x + residual``.

Each program holds ``ROWS`` rows in registers (the launcher: one, or several short ones, by
``_common.row_config``): one read of ``x`` (and
``residual``), one write of ``y``; mean and variance in float32 (two-pass on the held row, so no
cancellation).
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.kernels._common import check_float, check_same_device, row_config

_OP = "layer_norm"
MAX_ROW = 1 << 16


@triton.jit
def _layer_norm_kernel(
    x_ptr,
    res_ptr,
    gamma_ptr,
    beta_ptr,
    y_ptr,
    n_rows,
    n_cols,
    x_stride,
    res_stride,
    y_stride,
    eps,
    HAS_RES: tl.constexpr,
    HAS_BETA: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, BLOCK)
    cols_in = offs < n_cols
    inside = (rows[:, None] < n_rows) & cols_in[None, :]
    h = tl.load(x_ptr + rows[:, None] * x_stride + offs[None, :], mask=inside, other=0.0)
    h = h.to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + rows[:, None] * res_stride + offs[None, :], mask=inside, other=0.0)
        h += r.to(tl.float32)
    mean = tl.sum(h, axis=1) / n_cols
    d = tl.where(inside, h - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / n_cols
    y = d * tl.math.rsqrt(var + eps)[:, None]
    y = y * tl.load(gamma_ptr + offs, mask=cols_in, other=0.0).to(tl.float32)[None, :]
    if HAS_BETA:
        y += tl.load(beta_ptr + offs, mask=cols_in, other=0.0).to(tl.float32)[None, :]
    ptrs = y_ptr + rows[:, None] * y_stride + offs[None, :]
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=inside)


def layer_norm(
    x: Any,
    gamma: Any,
    beta: Any | None = None,
    epsilon: float = 1e-5,
    residual: Any | None = None,
) -> Any:
    """Layer norm of ``x (+ residual)`` over its last axis, scaled by ``gamma``, shifted by
    ``beta``.

    Raises:
        InvalidRequestError: a dtype that is not float, ``gamma``/``beta`` not of the last
            axis's length, a ``residual`` of another shape, tensors on different devices, or
            ``epsilon`` not positive.
        UnsupportedError: a last axis longer than :data:`MAX_ROW`.
    """
    check_float(_OP, "x", x)
    check_same_device(_OP, x, gamma, beta, residual)
    n_cols = x.shape[-1]
    if n_cols > MAX_ROW:
        raise UnsupportedError(f"[{_OP}] rows longer than {MAX_ROW} are not supported yet")
    if not epsilon > 0:
        raise InvalidRequestError(f"[{_OP}] epsilon must be positive", field="epsilon")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is not None and tuple(t.shape) != (n_cols,):
            raise InvalidRequestError(
                f"[{_OP}] {name} must have shape ({n_cols},), not {tuple(t.shape)}", field=name
            )
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise InvalidRequestError(
            f"[{_OP}] residual must have the shape of x {tuple(x.shape)}, not "
            f"{tuple(residual.shape)}",
            field="residual",
        )
    rows = x.reshape(-1, n_cols).contiguous()
    res = rows if residual is None else residual.reshape(-1, n_cols).contiguous()
    y = rows.new_empty(rows.shape)
    if rows.shape[0] == 0 or n_cols == 0:
        return y.reshape(x.shape)
    g = gamma.contiguous()
    b = g if beta is None else beta.contiguous()
    block, per, warps = row_config(n_cols, rows.element_size())
    _layer_norm_kernel[(-(-rows.shape[0] // per),)](
        rows,
        res,
        g,
        b,
        y,
        rows.shape[0],
        n_cols,
        rows.stride(0),
        res.stride(0),
        y.stride(0),
        float(epsilon),
        HAS_RES=residual is not None,
        HAS_BETA=beta is not None,
        BLOCK=block,
        ROWS=per,
        num_warps=warps,
    )
    return y.reshape(x.shape)
