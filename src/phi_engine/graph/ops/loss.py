"""Loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (ONNX opset 12 and later).

Both gather ``-input[n, target[n, d...], d...]`` over the class axis 1, weight it by
``weight[target]`` (1 without weights) and reduce: ``none`` keeps the target's shape, ``sum``
adds, ``mean`` divides the weighted sum by the sum of the weights that applied. A target equal
to ``ignore_index`` contributes nothing, to the sum nor to the weights. float16 and bfloat16
compute in float32 and round once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.ops._nn_util import is_float, upcast
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op

_REDUCTIONS = ("none", "sum", "mean")
_INDEX = frozenset({np.dtype(np.int32), np.dtype(np.int64)})


def _reduction(ctx: OpContext) -> str:
    reduction = str(ctx.attr("reduction", "mean"))
    if reduction not in _REDUCTIONS:
        ctx.fail(f"reduction {reduction!r} is not one of {list(_REDUCTIONS)}")
    return reduction


def _loss_infer(ctx: InferContext) -> list[TensorType]:
    x, target = ctx.type(0), ctx.type(1)
    if not is_float(x.dtype):
        ctx.fail(f"input must be a float tensor, got {x.dtype.name}")
    if target.dtype not in _INDEX:
        ctx.fail(f"target must be int32 or int64, got {target.dtype.name}")
    if ctx.has(2) and ctx.type(2).dtype != x.dtype:
        ctx.fail(f"weight has dtype {ctx.type(2).dtype.name}, input {x.dtype.name}")
    reduction = _reduction(ctx)
    if x.shape is not None and len(x.shape) < 2:
        ctx.fail(f"input must have rank >= 2 (N, C, ...), got shape {list(x.shape)}")
    if x.shape is not None and target.shape is not None and len(target.shape) != len(x.shape) - 1:
        ctx.fail(f"target of shape {list(target.shape)} does not fit input {list(x.shape)}")
    if ctx.has(2) and ctx.type(2).shape is not None and len(ctx.type(2).shape or ()) != 1:
        ctx.fail(f"weight must be 1-D, got shape {list(ctx.type(2).shape or ())}")
    if reduction != "none":
        shape: Any = ()
    elif x.shape is not None:
        shape = (x.shape[0], *x.shape[2:])
    else:
        shape = target.shape
    types = [tt(x.dtype, shape)]
    if len(ctx.node.outputs) > 1:  # SoftmaxCrossEntropyLoss's optional log_prob
        types.append(x)
    return types


def _weighted_loss(
    ctx: OpContext, logp: np.ndarray, target: np.ndarray, weight: np.ndarray | None
) -> np.ndarray:
    """The reduced loss of log-probabilities ``logp`` (N, C, ...) in their (wide) dtype."""
    n, c = logp.shape[:2]
    if target.shape != (n, *logp.shape[2:]):
        ctx.fail(f"target of shape {list(target.shape)} does not fit input {list(logp.shape)}")
    if weight is not None and weight.shape != (c,):
        ctx.fail(f"weight of shape {list(weight.shape)} must be ({c},)")
    ignore = ctx.attr("ignore_index", None)
    t = target.astype(np.int64)
    keep = np.ones(t.shape, bool) if ignore is None else t != int(ignore)
    if np.any(keep & ((t < 0) | (t >= c))):
        bad = int(t[keep & ((t < 0) | (t >= c))][0])
        ctx.fail(f"target value {bad} is out of range [0, {c})")
    safe = np.where(keep, t, 0)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    w = np.ones(t.shape, logp.dtype) if weight is None else upcast(weight)[safe]
    w = np.where(keep, w, 0).astype(logp.dtype)
    loss = -picked * w
    reduction = _reduction(ctx)
    if reduction == "sum":
        return np.asarray(loss.sum())
    if reduction == "mean":
        return np.asarray(loss.sum() / w.sum())
    return np.where(keep, loss, 0)


@op("NegativeLogLikelihoodLoss", (12, 13, 22), infer=_loss_infer)
def negative_log_likelihood_loss(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    weight = x[2] if len(x) > 2 else None
    return [_weighted_loss(ctx, upcast(data), x[1], weight).astype(data.dtype)]


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """log(softmax(x)) along ``axis``, computed as ``x - max - log(sum(exp(x - max)))``."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    result: np.ndarray = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return result


@op("SoftmaxCrossEntropyLoss", (12, 13), infer=_loss_infer)
def softmax_cross_entropy_loss(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    weight = x[2] if len(x) > 2 else None
    logp = log_softmax(upcast(data), axis=1)
    loss = _weighted_loss(ctx, logp, x[1], weight).astype(data.dtype)
    if len(ctx.node.outputs) > 1:
        return [loss, logp.astype(data.dtype)]
    return [loss]
