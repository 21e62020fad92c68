"""Attention, fused: ``softmax(q·kᵀ·scale + mask) · v`` without materialising the scores.

One program per (batch·head, block of queries) streams the keys and values in blocks and keeps a
running maximum, running sum and float32 accumulator (the online softmax of FlashAttention), so
memory traffic is one read of q, k, v and one write of the output, whatever the sequence length.
"""

from __future__ import annotations

import math
from typing import Any

import triton
import triton.language as tl

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.kernels._common import check_float, check_precision, check_same_device, next_pow2

_OP = "attention"
MAX_HEAD_DIM = 256


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    o_ptr,
    Lq,
    Lk,
    D,
    sq_b,
    sq_l,
    sk_b,
    sk_l,
    sv_b,
    sv_l,
    sm_b,
    sm_q,
    so_b,
    so_l,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    qb = tl.program_id(1)
    rq = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rd = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_ptr + bh * sq_b + rq[:, None] * sq_l + rd[None, :],
        mask=(rq[:, None] < Lq) & (rd[None, :] < D),
        other=0.0,
    )
    m_i = tl.full((BLOCK_Q,), -float("inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, Lk, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k = tl.load(
            k_ptr + bh * sk_b + rk[:, None] * sk_l + rd[None, :],
            mask=(rk[:, None] < Lk) & (rd[None, :] < D),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=tl.float32) * scale
        if HAS_MASK:
            s += tl.load(
                mask_ptr + bh * sm_b + rq[:, None] * sm_q + rk[None, :],
                mask=(rq[:, None] < Lq) & (rk[None, :] < Lk),
                other=0.0,
            ).to(tl.float32)
        s = tl.where(rk[None, :] < Lk, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row whose scores so far are all -inf (fully masked) keeps a finite reference point.
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + bh * sv_b + rk[:, None] * sv_l + rd[None, :],
            mask=(rk[:, None] < Lk) & (rd[None, :] < D),
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(
            p.to(v.dtype), v, input_precision=PRECISION, out_dtype=tl.float32
        )
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + bh * so_b + rq[:, None] * so_l + rd[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=(rq[:, None] < Lq) & (rd[None, :] < D),
    )


def attention(
    q: Any,
    k: Any,
    v: Any,
    mask: Any | None = None,
    scale: float | None = None,
    *,
    block: tuple[int, int] = (32, 32),
    precision: str = "ieee",
) -> Any:
    """``softmax(q·kᵀ·scale + mask)·v`` for q [..., Lq, D], k and v [..., Lk, D].

    Args:
        mask: Additive, broadcastable to [..., Lq, Lk] (a key padding mask [..., 1, Lk] too).
        scale: Default ``1/sqrt(D)``.
        block: (BLOCK_Q, BLOCK_K), powers of two of at least 16.
        precision: ``tl.dot``'s input precision for float32: ``"ieee"`` (exact products, the
            default) or ``"tf32"`` (tensor cores on Ampere and later, about 1e-3 relative).

    Raises:
        InvalidRequestError: shapes that do not match, a dtype that is not float, a mask that
            does not broadcast, tensors on different devices.
        UnsupportedError: a head dimension over :data:`MAX_HEAD_DIM`.

    A row whose every key is masked with ``-inf`` gives NaN, as the unfused softmax does.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(_OP, name, t)
        if t.dim() < 2:
            raise InvalidRequestError(f"[{_OP}] {name} must have at least 2 axes", field=name)
    check_same_device(_OP, q, k, v, mask)
    prec = check_precision(_OP, precision)
    lead, (lq, d) = tuple(q.shape[:-2]), tuple(q.shape[-2:])
    lk = k.shape[-2]
    if tuple(k.shape) != (*lead, lk, d) or tuple(v.shape) != (*lead, lk, d):
        raise InvalidRequestError(
            f"[{_OP}] q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not "
            "match: k and v must be [..., Lk, D] with q's leading axes and D",
            field="k",
        )
    if d > MAX_HEAD_DIM:
        raise UnsupportedError(f"[{_OP}] head dimensions over {MAX_HEAD_DIM} are not supported")
    bq, bk = block
    if any(b < 16 or b & (b - 1) for b in block):
        raise InvalidRequestError(f"[{_OP}] block sizes must be powers of two >= 16", field="block")
    q3, k3, v3 = (t.reshape(-1, t.shape[-2], d).contiguous() for t in (q, k, v))
    bh = q3.shape[0]
    o = q3.new_empty(q3.shape)
    if bh == 0 or lq == 0:
        return o.reshape(q.shape)
    m3 = q3
    if mask is not None:
        check_float(_OP, "mask", mask)
        try:
            m3 = mask.expand((*lead, lq, lk)).reshape(bh, lq, lk)
        except RuntimeError as exc:
            raise InvalidRequestError(
                f"[{_OP}] mask of shape {tuple(mask.shape)} does not broadcast to "
                f"{(*lead, lq, lk)}",
                field="mask",
            ) from exc
        if m3.stride(-1) != 1:
            m3 = m3.contiguous()
    grid = (bh, triton.cdiv(lq, bq))
    _attention_kernel[grid](
        q3,
        k3,
        v3,
        m3,
        o,
        lq,
        lk,
        d,
        q3.stride(0),
        q3.stride(1),
        k3.stride(0),
        k3.stride(1),
        v3.stride(0),
        v3.stride(1),
        m3.stride(0),
        m3.stride(1),
        o.stride(0),
        o.stride(1),
        float(1.0 / math.sqrt(d) if scale is None else scale),
        HAS_MASK=mask is not None,
        BLOCK_Q=bq,
        BLOCK_K=bk,
        BLOCK_D=max(16, next_pow2(d)),
        # "ieee" matters only to float32 products; other dtypes keep Triton's default.
        PRECISION=prec if q.dtype.itemsize == 4 else "tf32",
    )
    return o.reshape(q.shape)
