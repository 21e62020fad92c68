"""Recurrent-state sequence ops of linear-attention and state-space LLMs (Gated DeltaNet, Mamba):
LinearAttention and CausalConvWithState (opset 27).

Both run token by token in float64 and round once; a state output without a state input takes
the activations' dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import fresh, is_float, require_float
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op

F64 = np.dtype(np.float64)
_RULES = ("linear", "gated", "delta", "gated_delta")

# ---- CausalConvWithState ---------------------------------------------------------------------


def _activation(ctx: OpContext) -> str:
    name = str(ctx.attr("activation", "none"))
    if name not in ("none", "silu", "swish"):
        ctx.fail(f"activation {name!r} is not 'none', 'silu' or 'swish'")
    return name


def _causal_conv_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, *(i for i in range(4) if ctx.has(i)))
    _activation(ctx)
    x, w = ctx.type(0).shape, ctx.type(1).shape
    if x is not None and len(x) != 3:
        ctx.fail(f"input must be (batch, channels, length), got {list(x)}")
    if w is not None and len(w) != 3:
        ctx.fail(f"weight must be (channels, 1, k), got {list(w)}")
    carry: Dim = w[2] - 1 if w is not None and isinstance(w[2], int) else fresh(ctx, "carry")
    state = None if x is None else (x[0], x[1], carry)
    return [tt(dtype, x), tt(dtype, state)][: max(len(ctx.node.outputs), 1)]


@op("CausalConvWithState", (27,), infer=_causal_conv_infer)
def causal_conv_with_state(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Depthwise 1-d convolution over [past_state (zeros by default), input]; the state out is
    the last k - 1 positions of that sequence."""
    data, weight, bias, past = x[0], x[1], arg(x, 2), arg(x, 3)
    batch, channels, length = data.shape
    k = weight.shape[2] if weight.ndim == 3 else 0
    if weight.shape != (channels, 1, k) or k < 1:
        ctx.fail(f"weight of shape {list(weight.shape)} must be ({channels}, 1, k)")
    if past is None:
        past = np.zeros((batch, channels, k - 1), data.dtype)
    if past.shape != (batch, channels, k - 1):
        ctx.fail(f"past_state of shape {list(past.shape)} must be {[batch, channels, k - 1]}")
    padded = np.concatenate([past, data], axis=2)
    wide = padded.astype(F64)
    y = sum(
        weight[:, 0, j].astype(F64)[None, :, None] * wide[:, :, j : j + length] for j in range(k)
    )
    y = np.asarray(y) + (0.0 if bias is None else bias.astype(F64)[None, :, None])
    if _activation(ctx) != "none":
        y = y / (1 + np.exp(-y))
    return [y.astype(data.dtype), padded[:, :, padded.shape[2] - (k - 1) :].copy()]


# ---- LinearAttention -------------------------------------------------------------------------


def _heads(ctx: OpContext) -> tuple[int, int, str]:
    hq, hkv = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
    if hq <= 0 or hkv <= 0 or hq % hkv:
        ctx.fail(f"q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}")
    rule = str(ctx.attr("update_rule", "gated_delta"))
    if rule not in _RULES:
        ctx.fail(f"update_rule {rule!r} is not one of {list(_RULES)}")
    return hq, hkv, rule


def _linear_attention_infer(ctx: InferContext) -> list[TensorType]:
    dtype = require_float(ctx, 0, 1, 2)
    hq, hkv, rule = _heads(ctx)
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if ctx.has(4) != gated or ctx.has(5) != delta:
        ctx.fail(f"update_rule {rule!r} takes decay: {gated}, beta: {delta}")
    q, v = ctx.type(0).shape, ctx.type(2).shape
    state_dtype = ctx.type(3).dtype if ctx.has(3) else dtype
    if ctx.has(3) and not is_float(state_dtype):
        ctx.fail(f"past_state must be a float tensor, got {state_dtype.name}")
    if q is None or v is None:
        return [tt(dtype, None), tt(state_dtype, None)][: len(ctx.node.outputs)]
    if len(q) != 3 or len(v) != 3:
        ctx.fail(f"query {list(q)} and value {list(v)} must be (B, T, H * D)")
    dk: Dim = q[2] // hq if isinstance(q[2], int) else fresh(ctx, "dk")
    dv: Dim = v[2] // hkv if isinstance(v[2], int) else fresh(ctx, "dv")
    out_last: Dim = hq * dv if isinstance(dv, int) else fresh(ctx, "out")
    types = [tt(dtype, (q[0], q[1], out_last)), tt(state_dtype, (q[0], hkv, dk, dv))]
    return types[: len(ctx.node.outputs)]


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, H * D) -> (B, H, T, D) in float64."""
    b, t, hd = x.shape
    return x.astype(F64).reshape(b, t, heads, hd // heads).transpose(0, 2, 1, 3)


@op("LinearAttention", (27,), infer=_linear_attention_infer)
def linear_attention(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """The recurrence of LinearAttention-27, token by token: ``S_t`` (d_k, d_v) per KV head is
    decayed by ``exp(g_t)`` (gated rules), corrected towards ``v_t`` at rate ``beta_t`` (delta
    rules) and grows by ``k_t v_t^T``; ``o_t = scale * S_t^T q_t`` for every query head of
    the group."""
    query, key, value, past, decay, beta = (arg(x, i) for i in range(6))
    hq, hkv, rule = _heads(ctx)
    if (decay is not None) != (rule in ("gated", "gated_delta")) or (beta is not None) != (
        rule in ("delta", "gated_delta")
    ):
        ctx.fail(f"update_rule {rule!r} does not fit the decay and beta inputs given")
    if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
        ctx.fail("query, key and value must be (B, T, H * D)")
    b, t, _ = query.shape
    if query.shape[2] % hq or key.shape[2] % hkv or value.shape[2] % hkv:
        ctx.fail(f"the last axes {query.shape[2]}, {key.shape[2]}, {value.shape[2]} do not split")
    dk, dv = query.shape[2] // hq, value.shape[2] // hkv
    if key.shape != (b, t, hkv * dk) or value.shape[:2] != (b, t):
        ctx.fail(f"key {list(key.shape)} / value {list(value.shape)} do not fit query")
    q, k, v = _split_heads(query, hq), _split_heads(key, hkv), _split_heads(value, hkv)
    gate = _per_head(ctx, decay, b, t, hkv, dk, "decay")  # (B, Hkv, T, dk or 1)
    rate = _per_head(ctx, beta, b, t, hkv, 1, "beta")  # (B, Hkv or 1, T, 1)
    state = np.zeros((b, hkv, dk, dv)) if past is None else past.astype(F64).copy()
    if state.shape != (b, hkv, dk, dv):
        ctx.fail(f"past_state of shape {list(state.shape)} must be {[b, hkv, dk, dv]}")
    scale = float(ctx.attr("scale", 0.0)) or 1 / np.sqrt(dk)
    group = hq // hkv
    out = np.zeros((b, hq, t, dv))
    for step in range(t):
        kt, vt = k[:, :, step], v[:, :, step]  # (B, Hkv, d)
        if gate is not None:
            state = np.exp(gate[:, :, step])[..., None] * state  # dk-wise or per head
        if rate is not None:
            recalled = np.einsum("bhkv,bhk->bhv", state, kt)
            vt = rate[:, :, step] * (vt - recalled)
        state = state + kt[..., None] * vt[:, :, None, :]
        shared = np.repeat(state, group, axis=1)  # query head h reads KV head h // group
        out[:, :, step] = scale * np.einsum("bhkv,bhk->bhv", shared, q[:, :, step])
    y = out.transpose(0, 2, 1, 3).reshape(b, t, hq * dv).astype(query.dtype)
    state_dtype = query.dtype if past is None else past.dtype
    return [y, state.astype(state_dtype)][: max(len(ctx.node.outputs), 1)]


def _per_head(
    ctx: OpContext, v: np.ndarray | None, b: int, t: int, heads: int, width: int, what: str
) -> np.ndarray | None:
    """A decay (B, T, H or H * d_k) or beta (B, T, H or 1) input as (B, H or 1, T, d or 1)."""
    if v is None:
        return None
    last = v.shape[-1] if v.ndim == 3 else -1
    per = {heads: 1, heads * width: width}
    if what == "beta":
        per = {heads: 1, 1: 1}
    if v.ndim != 3 or v.shape[:2] != (b, t) or last not in per:
        ctx.fail(f"{what} of shape {list(v.shape)} does not fit ({b}, {t}, {sorted(per)})")
    groups = last // per[last]
    return v.astype(F64).reshape(b, t, groups, per[last]).transpose(0, 2, 1, 3)
