"""GEMM with the fused epilogue: ``y = act(a @ b + bias + residual)``.

Tiles of ``BLOCK_M × BLOCK_N`` outputs accumulate ``tl.dot`` products over ``BLOCK_K`` slices in
float32 (tensor cores for float16/bfloat16 inputs on a GPU); bias, residual and the activation
are applied to the tile in registers before its one store, as the CPU core's epilogue does.
Activations: none, relu, gelu (erf), gelu_tanh, tanh, sigmoid, clip.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from phi_engine.errors import InvalidRequestError
from phi_engine.kernels._common import (
    check_float,
    check_precision,
    check_same_device,
    dtype_name,
    gemm_config,
)

_OP = "gemm"
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gemm_kernel(
    a_ptr,
    b_ptr,
    bias_ptr,
    res_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_rm,
    stride_ym,
    clip_min,
    clip_max,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * stride_am + ks[None, :] * stride_ak,
            mask=(rm[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + ks[:, None] * stride_bk + rn[None, :] * stride_bn,
            mask=(ks[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_RES:
        acc += tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=inside, other=0.0).to(
            tl.float32
        )
    if ACT == 1:  # relu
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:  # gelu (erf)
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 3:  # gelu_tanh
        acc = 0.5 * acc * (1.0 + _tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)))
    elif ACT == 4:  # tanh
        acc = _tanh(acc)
    elif ACT == 5:  # sigmoid
        acc = tl.sigmoid(acc)
    elif ACT == 6:  # clip
        acc = tl.minimum(tl.maximum(acc, clip_min), clip_max)
    tl.store(
        y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=inside
    )


def gemm(
    a: Any,
    b: Any,
    bias: Any | None = None,
    activation: str | None = None,
    *,
    residual: Any | None = None,
    clip_min: float = 0.0,
    clip_max: float = 6.0,
    block: tuple[int, int, int] | None = None,
    precision: str = "ieee",
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Any:
    """``act(a @ b + bias + residual)`` for ``a`` [M, K] and ``b`` [K, N] (any strides).

    Args:
        bias: [N], added to every row.
        activation: One of :data:`ACTIVATIONS` (None: none).
        residual: [M, N], added before the activation.
        clip_min, clip_max: The bounds of ``clip``.
        block: (BLOCK_M, BLOCK_N, BLOCK_K), powers of two of at least 16; None: by the dtype
            and the output's size (:func:`~phi_engine.kernels._common.gemm_config`).
        num_warps, num_stages: Triton's launch options (None: with the block, as above).
        precision: ``tl.dot``'s input precision for float32: ``"ieee"`` (exact products, the
            default) or ``"tf32"`` (tensor cores on Ampere and later, about 1e-3 relative).

    Raises:
        InvalidRequestError: shapes that do not chain, a dtype that is not float, an unknown
            activation, a bad block, tensors on different devices.
    """
    for name, t in (("a", a), ("b", b)):
        check_float(_OP, name, t)
        if t.dim() != 2:
            raise InvalidRequestError(f"[{_OP}] {name} must be 2-D, not {t.dim()}-D", field=name)
    check_same_device(_OP, a, b, bias, residual)
    prec = check_precision(_OP, precision)
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise InvalidRequestError(
            f"[{_OP}] a is {m}x{k} and b is {k2}x{n}: the inner sizes differ", field="b"
        )
    act = "none" if activation is None else activation
    if act not in ACTIVATIONS:
        raise InvalidRequestError(
            f"[{_OP}] unknown activation {activation!r}; one of {', '.join(ACTIVATIONS)}",
            field="activation",
        )
    if bias is not None and tuple(bias.shape) not in ((n,), (1, n)):
        raise InvalidRequestError(
            f"[{_OP}] bias must have shape ({n},), not {tuple(bias.shape)}", field="bias"
        )
    if residual is not None and tuple(residual.shape) != (m, n):
        raise InvalidRequestError(
            f"[{_OP}] residual must have shape ({m}, {n}), not {tuple(residual.shape)}",
            field="residual",
        )
    auto_block, auto_warps, auto_stages = gemm_config(dtype_name(a), m, n)
    block = auto_block if block is None else tuple(block)
    bm, bn, bk = block
    if len(block) != 3 or any(v < 16 or v & (v - 1) for v in block):
        raise InvalidRequestError(f"[{_OP}] block sizes must be powers of two >= 16", field="block")
    y = a.new_empty((m, n))
    if m == 0 or n == 0:
        return y
    bias_t = y if bias is None else bias.reshape(n).contiguous()
    res_t = y if residual is None else residual.contiguous()
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _gemm_kernel[grid](
        a,
        b,
        bias_t,
        res_t,
        y,
        m,
        n,
        k,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        res_t.stride(0),
        y.stride(0),
        float(clip_min),
        float(clip_max),
        HAS_BIAS=bias is not None,
        HAS_RES=residual is not None,
        ACT=ACTIVATIONS.index(act),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        # "ieee" matters only to float32 products; other dtypes keep Triton's default.
        PRECISION=prec if a.dtype.itemsize == 4 else "tf32",
        num_warps=auto_warps if num_warps is None else num_warps,
        num_stages=auto_stages if num_stages is None else num_stages,
    )
    return y
