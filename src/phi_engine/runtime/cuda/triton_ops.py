"""Plan steps run by phi_engine's Triton kernels (``phi_engine.kernels``) instead of the CUDA ones.

``phi.compile(model, device="cuda", triton_ops=["softmax", "layer_norm", "matmul"])`` selects
them per op (``matmul``: the single products with their fused epilogue, float32 operands).
Each launcher gets the same device addresses as the CUDA launch it replaces, views them as
PyTorch tensors without copying (``__cuda_array_interface__``) and launches the Triton kernel on
the run context's stream (made PyTorch's current stream for the call, which is where Triton
launches), so it is ordered with the other steps and captured into the context's CUDA graph
like them. Needs ``triton`` and ``torch`` at run time, as Triton itself does (``compile`` checks
that they import before it accepts ``triton_ops``).

A null device (tests) provides ``host_view(address, shape, dtype)`` and ``host_call(fn, stream=)``:
the launchers then view its host memory as CPU tensors and hand the launch to it, which runs it
(Triton's interpreter, ``TRITON_INTERPRET=1``) or records it into the graph being captured.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["OPS", "available", "gemm", "layer_norm", "softmax"]

OPS = ("softmax", "layer_norm", "matmul")
"""Ops ``triton_ops`` may select."""


def available() -> bool:
    """Whether triton and torch can be imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "triton"))


class _DeviceArray:
    """Device memory described for ``torch.as_tensor`` (no copy)."""

    def __init__(self, address: int, shape: Sequence[int], dtype: str) -> None:
        self.__cuda_array_interface__ = {
            "shape": tuple(int(d) for d in shape),
            "typestr": np.dtype(dtype).str,
            "data": (int(address), False),
            "version": 3,
            "strides": None,
        }


def _tensor(cu: Any, address: int, shape: Sequence[int], dtype: str = "float32") -> Any:
    import torch

    if hasattr(cu, "host_view"):  # a null device: host memory, Triton's interpreter
        return torch.from_numpy(cu.host_view(address, tuple(shape), dtype))
    return torch.as_tensor(_DeviceArray(address, shape, dtype), device="cuda")


def _launch(cu: Any, stream: int, fn: Callable[[], None]) -> None:
    """Run ``fn`` (a Triton launch) on ``stream``: PyTorch's current stream for the call."""
    if hasattr(cu, "host_call"):
        cu.host_call(fn, stream=stream)
        return
    import torch

    external: Any = getattr(torch.cuda, "ExternalStream")  # noqa: B009  (untyped in torch)
    with torch.cuda.stream(external(stream)):
        fn()


def softmax(
    cu: Any,
    x: int,
    out: int,
    rows: int,
    cols: int,
    *,
    scale: float = 1.0,
    mask: int = 0,
    mask_row_stride: int = 0,
    mask_rows: int = 1,
    stream: int = 0,
) -> None:
    """``out = softmax(x * scale + mask)`` over rows of ``cols``; the mask's row ``r`` starts at
    ``r * mask_row_stride`` elements (0: one row for all)."""
    if rows == 0 or cols == 0:
        return
    from phi_engine.kernels._common import row_config
    from phi_engine.kernels.softmax import _softmax_kernel

    xt, yt = _tensor(cu, x, (rows, cols)), _tensor(cu, out, (rows, cols))
    mt = _tensor(cu, mask, (mask_rows, cols)) if mask else xt
    block, per, warps = row_config(cols, 4)
    _launch(
        cu, stream,
        lambda: _softmax_kernel[(-(-rows // per),)](
            xt, mt, yt, rows, cols, cols, mask_row_stride, cols, float(scale),
            HAS_MASK=bool(mask), BLOCK=block, ROWS=per, num_warps=warps,
        ),
    )  # fmt: skip


def layer_norm(
    cu: Any,
    x: int,
    out: int,
    rows: int,
    cols: int,
    gamma: int,
    *,
    beta: int = 0,
    residual: int = 0,
    epsilon: float = 1e-5,
    stream: int = 0,
) -> None:
    """Layer norm of each row of ``x (+ residual)``, scaled by ``gamma``, shifted by ``beta``."""
    if rows == 0 or cols == 0:
        return
    from phi_engine.kernels._common import row_config
    from phi_engine.kernels.layer_norm import _layer_norm_kernel

    xt, yt = _tensor(cu, x, (rows, cols)), _tensor(cu, out, (rows, cols))
    rt = _tensor(cu, residual, (rows, cols)) if residual else xt
    gt = _tensor(cu, gamma, (cols,))
    bt = _tensor(cu, beta, (cols,)) if beta else gt
    block, per, warps = row_config(cols, 4)
    _launch(
        cu, stream,
        lambda: _layer_norm_kernel[(-(-rows // per),)](
            xt, rt, gt, bt, yt, rows, cols, cols, cols, cols, float(epsilon),
            HAS_RES=bool(residual), HAS_BETA=bool(beta), BLOCK=block, ROWS=per,
            num_warps=warps,
        ),
    )  # fmt: skip


def mask_rows(x_shape: Sequence[int], mask_shape: Sequence[int]) -> tuple[int, int] | None:
    """(row stride, rows) of a softmax mask as the Triton kernel reads it, or None when its rows
    are not evenly spaced over x's rows (then the CUDA kernel runs the step)."""
    cols = int(x_shape[-1])
    padded = [1] * (len(x_shape) - len(mask_shape)) + [int(d) for d in mask_shape]
    if padded[-1] != cols:
        return None
    lead = padded[:-1]
    if all(d == 1 for d in lead):
        return 0, 1
    if lead == [int(d) for d in x_shape[:-1]]:
        return cols, math.prod(lead)
    return None


def gemm(
    cu: Any,
    a: int,
    b: int,
    c: int,
    m: int,
    n: int,
    k: int,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    bias: int = 0,
    residual: int = 0,
    activation: str = "none",
    clip_min: float = -math.inf,
    clip_max: float = math.inf,
    tf32: bool = False,
    stream: int = 0,
) -> None:
    """``c = act(op(a) @ op(b) + bias + residual)``, float32, row-major (the CUDA ``gemm``'s
    arguments for a single product with ``alpha`` 1)."""
    if m == 0 or n == 0:
        return
    from phi_engine.kernels.gemm import ACTIVATIONS, _gemm_kernel

    at = _tensor(cu, a, (k, m) if trans_a else (m, k))
    bt = _tensor(cu, b, (n, k) if trans_b else (k, n))
    ct = _tensor(cu, c, (m, n))
    bias_t = _tensor(cu, bias, (n,)) if bias else ct
    res_t = _tensor(cu, residual, (m, n)) if residual else ct
    sam, sak = (1, m) if trans_a else (k, 1)
    sbk, sbn = (1, k) if trans_b else (n, 1)
    bm, bn, bk = 64, 64, 32
    grid = (-(-m // bm), -(-n // bn))
    _launch(
        cu, stream,
        lambda: _gemm_kernel[grid](
            at, bt, bias_t, res_t, ct, m, n, k, sam, sak, sbk, sbn, n, n,
            float(clip_min), float(clip_max),
            HAS_BIAS=bool(bias), HAS_RES=bool(residual), ACT=ACTIVATIONS.index(activation),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION="tf32" if tf32 else "ieee",
        ),
    )  # fmt: skip
