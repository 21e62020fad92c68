"""Recurrent ops: RNN, GRU and LSTM (ONNX opset 7 and later, ``layout`` from opset 14).

One time step at a time per direction, in float64 (rounded once to the input dtype). A batch
entry's steps at or past its ``sequence_lens`` leave its state unchanged and output zeros, so a
reverse direction starts at its own last valid step. Gate pre-activations are clipped to
``[-clip, clip]`` when ``clip`` is given. Activation parameters are consumed in order by the
activations that take them, with the defaults of the matching ONNX operators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import fresh, require_float
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op

Activation = Callable[[np.ndarray], np.ndarray]
F64 = np.dtype(np.float64)

# name -> (default alpha, default beta), None where the function takes no such parameter.
_PARAMS: dict[str, tuple[float | None, float | None]] = {
    "relu": (None, None),
    "tanh": (None, None),
    "sigmoid": (None, None),
    "softsign": (None, None),
    "softplus": (None, None),
    "affine": (1.0, 0.0),
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, None),
}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTIVATIONS = {
    "RNN": ["Tanh"],
    "GRU": ["Sigmoid", "Tanh"],
    "LSTM": ["Sigmoid", "Tanh", "Tanh"],
}


def _activation(name: str, alpha: float | None, beta: float | None) -> Activation:
    a, b = alpha or 0.0, beta or 0.0
    table: dict[str, Activation] = {
        "relu": lambda x: np.maximum(x, 0),
        "tanh": np.tanh,
        "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
        "softsign": lambda x: x / (1 + np.abs(x)),
        "softplus": lambda x: np.logaddexp(0, x),
        "affine": lambda x: a * x + b,
        "leakyrelu": lambda x: np.where(x >= 0, x, a * x),
        "thresholdedrelu": lambda x: np.where(x > a, x, 0.0),
        "scaledtanh": lambda x: a * np.tanh(b * x),
        "hardsigmoid": lambda x: np.clip(a * x + b, 0, 1),
        "elu": lambda x: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))),
    }
    return table[name]


@dataclass(frozen=True)
class Config:
    kind: str  # RNN, GRU, LSTM
    hidden: int | None
    directions: tuple[bool, ...]  # reverse?, per direction
    activations: tuple[tuple[Activation, ...], ...]  # per direction
    clip: float | None
    layout: int
    linear_before_reset: bool = False
    input_forget: bool = False


def _config(ctx: OpContext) -> Config:
    kind = ctx.node.op_type
    direction = str(ctx.attr("direction", "forward"))
    dirs = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if dirs is None:
        ctx.fail(f"direction {direction!r} is not forward, reverse or bidirectional")
    assert dirs is not None
    per = len(_DEFAULT_ACTIVATIONS[kind])
    names = [
        str(n) for n in ctx.attr("activations", None) or _DEFAULT_ACTIVATIONS[kind] * len(dirs)
    ]
    if len(names) != per * len(dirs):
        ctx.fail(f"activations {names} must list {per * len(dirs)} functions")
    alphas = list(ctx.attr("activation_alpha", None) or [])
    betas = list(ctx.attr("activation_beta", None) or [])
    funcs = []
    for name in names:
        key = name.lower()
        if key not in _PARAMS:
            ctx.fail(f"activation {name!r} is not supported", UnsupportedError)
        default_a, default_b = _PARAMS[key]
        alpha = (float(alphas.pop(0)) if alphas else default_a) if default_a is not None else None
        beta = (float(betas.pop(0)) if betas else default_b) if default_b is not None else None
        funcs.append(_activation(key, alpha, beta))
    clip = ctx.attr("clip", None)
    hidden = ctx.attr("hidden_size", None)
    return Config(
        kind,
        None if hidden is None else int(hidden),
        dirs,
        tuple(tuple(funcs[d * per : (d + 1) * per]) for d in range(len(dirs))),
        None if clip is None else float(clip),
        int(ctx.attr("layout", 0)) if ctx.version >= 14 else 0,
        bool(ctx.attr("linear_before_reset", 0)),
        bool(ctx.attr("input_forget", 0)),
    )


# ---- type inference ------------------------------------------------------------------------------


def _recurrent_infer(ctx: InferContext) -> list[TensorType]:
    cfg = _config(ctx)
    dtype = require_float(ctx, 0, 1, 2)
    if ctx.has(4) and ctx.type(4).dtype.name not in ("int32",):
        ctx.fail(f"sequence_lens must be int32, got {ctx.type(4).dtype.name}")
    x, r = ctx.type(0).shape, ctx.type(2).shape
    hidden: Dim = cfg.hidden if cfg.hidden is not None else fresh(ctx, "hidden")
    if cfg.hidden is None and r is not None and len(r) == 3:
        hidden = r[2]
    if x is not None and len(x) != 3:
        ctx.fail(f"X must be 3-D, got shape {list(x)}")
    seq: Dim = fresh(ctx, "seq") if x is None else x[cfg.layout]
    batch: Dim = fresh(ctx, "batch") if x is None else x[1 - cfg.layout]
    dirs = len(cfg.directions)
    y: tuple[Dim, ...]
    state: tuple[Dim, ...]
    if cfg.layout:
        y, state = (batch, seq, dirs, hidden), (batch, dirs, hidden)
    else:
        y, state = (seq, dirs, batch, hidden), (dirs, batch, hidden)
    shapes = [y, state, state][: len(ctx.node.outputs)]
    return [tt(dtype, s) for s in shapes]


# ---- cells ---------------------------------------------------------------------------------------


def _clip(cfg: Config, v: np.ndarray) -> np.ndarray:
    return v if cfg.clip is None else np.clip(v, -cfg.clip, cfg.clip)


def _step(
    cfg: Config,
    acts: tuple[Activation, ...],
    xw: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    r: np.ndarray,
    rb: np.ndarray,
    p: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step: ``xw`` is X_t W^T + Wb (batch, gates * hidden); returns the new (h, c)."""
    n = h.shape[1]
    if cfg.kind == "RNN":
        return acts[0](_clip(cfg, xw + h @ r.T + rb)), c
    if cfg.kind == "GRU":
        hr = h @ r[: 2 * n].T + rb[: 2 * n]
        z = acts[0](_clip(cfg, xw[:, :n] + hr[:, :n]))
        reset = acts[0](_clip(cfg, xw[:, n : 2 * n] + hr[:, n:]))
        rh, rbh = r[2 * n :], rb[2 * n :]
        if cfg.linear_before_reset:
            cand = xw[:, 2 * n :] + reset * (h @ rh.T + rbh)
        else:
            cand = xw[:, 2 * n :] + (reset * h) @ rh.T + rbh
        return (1 - z) * acts[1](_clip(cfg, cand)) + z * h, c
    g = xw + h @ r.T + rb  # LSTM gates i, o, f, c
    i = acts[0](_clip(cfg, g[:, :n] + p[:n] * c))
    f = 1 - i if cfg.input_forget else acts[0](_clip(cfg, g[:, 2 * n : 3 * n] + p[2 * n :] * c))
    c_new = f * c + i * acts[1](_clip(cfg, g[:, 3 * n :]))
    o = acts[0](_clip(cfg, g[:, n : 2 * n] + p[n : 2 * n] * c_new))
    return o * acts[2](c_new), c_new


def _direction(
    cfg: Config,
    d: int,
    x: np.ndarray,
    weights: tuple[np.ndarray, ...],
    lens: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction over X (seq, batch, input): Y (seq, batch, hidden), last h and c."""
    w, r, wb, rb, p = weights
    xw = x @ w.T + wb
    y = np.zeros((x.shape[0], x.shape[1], h.shape[1]))
    steps = range(x.shape[0] - 1, -1, -1) if cfg.directions[d] else range(x.shape[0])
    for t in steps:
        live = (t < lens)[:, None]
        h_new, c_new = _step(cfg, cfg.activations[d], xw[t], h, c, r, rb, p)
        h, c = np.where(live, h_new, h), np.where(live, c_new, c)
        y[t] = np.where(live, h, 0.0)
    return y, h, c


def _recurrent(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    cfg = _config(ctx)
    data, w_all, r_all = x[0], x[1], x[2]
    b_all, lens_v, h0_v, c0_v, p_all = (arg(x, i) for i in range(3, 8))
    dtype = data.dtype
    seq_first = data.astype(F64) if cfg.layout == 0 else data.astype(F64).transpose(1, 0, 2)
    seq, batch, _ = seq_first.shape
    dirs, gates = len(cfg.directions), _GATES[cfg.kind]
    hidden = r_all.shape[-1]
    if cfg.hidden is not None and cfg.hidden != hidden:
        ctx.fail(f"hidden_size {cfg.hidden} differs from R's {hidden}")
    if w_all.shape[:2] != (dirs, gates * hidden) or r_all.shape != (dirs, gates * hidden, hidden):
        ctx.fail(f"W {list(w_all.shape)} / R {list(r_all.shape)} do not fit {dirs} directions")
    lens = np.full(batch, seq) if lens_v is None else lens_v.astype(np.int64).reshape(-1)
    if lens.shape != (batch,) or lens.min(initial=0) < 0 or lens.max(initial=0) > seq:
        ctx.fail(f"sequence_lens {lens.tolist()} must give {batch} lengths in [0, {seq}]")
    ys, hs, cs = [], [], []
    for d in range(dirs):
        weights = _weights(d, hidden, gates, w_all, r_all, b_all, p_all)
        h0, c0 = (_state(s, d, batch, hidden, cfg.layout) for s in (h0_v, c0_v))
        y, h, c = _direction(cfg, d, seq_first, weights, lens, h0, c0)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    y_all = np.stack(ys, axis=1)  # (seq, dirs, batch, hidden)
    h_all, c_all = np.stack(hs), np.stack(cs)  # (dirs, batch, hidden)
    if cfg.layout:
        y_all, h_all, c_all = (
            y_all.transpose(2, 0, 1, 3),
            h_all.transpose(1, 0, 2),
            c_all.transpose(1, 0, 2),
        )
    outs = [y_all, h_all, c_all][: max(len(ctx.node.outputs), 1)]
    return [np.ascontiguousarray(o).astype(dtype) for o in outs]


def _weights(
    d: int,
    hidden: int,
    gates: int,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    p: np.ndarray | None,
) -> tuple[np.ndarray, ...]:
    """(W, R, Wb, Rb, P) of direction ``d`` in float64 (absent biases and peepholes are 0)."""
    n = gates * hidden
    bias = np.zeros(2 * n) if b is None else b[d].astype(F64)
    peep = np.zeros(3 * hidden) if p is None else p[d].astype(F64)
    return w[d].astype(F64), r[d].astype(F64), bias[:n], bias[n:], peep


def _state(v: np.ndarray | None, d: int, batch: int, hidden: int, layout: int) -> np.ndarray:
    if v is None:
        return np.zeros((batch, hidden))
    return (v[:, d] if layout else v[d]).astype(F64)


@op("RNN", (7, 14, 22), infer=_recurrent_infer)
def rnn(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _recurrent(ctx, x)


@op("GRU", (7, 14, 22), infer=_recurrent_infer)
def gru(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _recurrent(ctx, x)


@op("LSTM", (7, 14, 22), infer=_recurrent_infer)
def lstm(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return _recurrent(ctx, x)
