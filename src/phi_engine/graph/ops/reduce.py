"""Reductions, softmax and normalisations: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/
SumSquare, ArgMax/ArgMin, Softmax/LogSoftmax/Hardmax, and Batch/Instance/Layer/Group/RMS/Lp/
MeanVariance normalisation and LRN.

Reductions take ``axes`` as an attribute before ReduceSum-13 / the others' version 18 and as an
optional input from then on (with ``noop_with_empty_axes``). An empty reduction gives the
operation's identity: 0 (sum, L1, L2, sum of squares), 1 (prod), -inf (max, log-sum,
log-sum-exp; the type's minimum for integers), +inf (min), NaN (mean); ReduceMax/Min of bool are
any/all. Softmax before version 13 flattens the input to 2-D at ``axis`` (default 1).
Normalisations follow their ONNX function bodies, stage one in ``stash_type`` precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._nn_util import arithmetic, fresh, is_float, upcast
from phi_engine.graph.ops._util import F32, all_float32, axis_of, onnx_dtype, tt
from phi_engine.graph.registry import InferContext, OpContext, op

Axes = tuple[int, ...]
ReduceFn = Callable[[np.ndarray, Axes, bool], np.ndarray]


# ---- the reductions' arithmetic ------------------------------------------------------------------


def _sum(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return np.asarray(np.sum(upcast(x), axis=axes, keepdims=keep, dtype=upcast(x).dtype))


def _mean(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    if is_float(x.dtype):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.mean(upcast(x), axis=axes, keepdims=keep))
    total = np.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)
    count = max(1, int(np.prod([x.shape[a] for a in axes])))
    return np.asarray(
        np.sign(total) * (np.abs(total) // count)
    )  # integer mean truncates toward zero


def _extreme(largest: bool) -> ReduceFn:
    def reduce(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
        if x.dtype == np.bool_:
            identity: Any = not largest
        elif is_float(x.dtype):
            identity = -np.inf if largest else np.inf
        else:
            info = np.iinfo(x.dtype)
            identity = info.min if largest else info.max
        fn = np.max if largest else np.min
        return np.asarray(fn(upcast(x), axis=axes, keepdims=keep, initial=identity))

    return reduce


def _prod(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return np.asarray(np.prod(upcast(x), axis=axes, keepdims=keep, dtype=upcast(x).dtype))


def _l1(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return _sum(np.abs(x), axes, keep)


def _sum_square(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    w = upcast(x)
    return _sum(w * w, axes, keep)


def _l2(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    return np.asarray(np.sqrt(_sum_square(x, axes, keep)))


def _log_sum(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.log(_sum(x, axes, keep)))


def _log_sum_exp(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray:
    w = upcast(x) if is_float(x.dtype) else x.astype(np.float64)
    top = np.max(w, axis=axes, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(top), top, 0)  # all -inf (or inf) rows: shift by nothing
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.sum(np.exp(w - shift), axis=axes, keepdims=True)) + shift
    return np.asarray(y if keep else np.squeeze(y, axis=axes))


# ---- the reduction ops ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reduction:
    fn: ReduceFn
    axes_input_since: int  # the first version taking axes as an input
    kinds: str  # allowed dtype kinds besides floats ("i", "u", "b")
    native: tuple[str, ...] = ()  # float32 steps: "square" (x * x), unary ops and a reduce_* op


_ABSENT = object()  # the axes input is not given (as opposed to given but not known yet)


def _axes(ctx: OpContext, spec: _Reduction, given: Any) -> tuple[bool, list[int] | None]:
    """(known, axes): the listed axes, None if absent or empty; known is False when the axes
    input exists but its value is not known yet."""
    if ctx.version < spec.axes_input_since:
        a = ctx.attr("axes", None)
        return True, [int(v) for v in a] if a else None
    if given is _ABSENT:
        return True, None
    if given is None:
        return False, None
    values = [int(v) for v in np.asarray(given).ravel()]
    return True, values or None


def _resolve(ctx: OpContext, axes: list[int] | None, rank: int) -> Axes | None:
    """Sorted non-negative axes to reduce; None means "return the input" (noop)."""
    if axes is None:
        return None if ctx.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    found = sorted(axis_of(ctx, a, rank) for a in axes)
    if len(set(found)) != len(found):
        ctx.fail(f"axes {axes} repeat an axis")
    return tuple(found)


def _reduce_infer(spec: _Reduction) -> Any:
    def infer(ctx: InferContext) -> list[TensorType]:
        t = ctx.type(0)
        if not (is_float(t.dtype) or t.dtype.kind in spec.kinds):
            ctx.fail(f"dtype {t.dtype.name} is not supported")
        keep = bool(ctx.attr("keepdims", 1))
        given = ctx.value(1) if ctx.has(1) else _ABSENT
        known, axes = _axes(ctx, spec, given)
        if t.shape is None or (not known and not keep):
            return [tt(t.dtype, None)]
        if not known:
            return [tt(t.dtype, [d if d == 1 else fresh(ctx, i) for i, d in enumerate(t.shape)])]
        found = _resolve(ctx, axes, len(t.shape))
        if found is None:
            return [t]
        dims: list[Dim] = []
        for i, d in enumerate(t.shape):
            if i not in found:
                dims.append(d)
            elif keep:
                dims.append(1)
        return [tt(t.dtype, dims)]

    return infer


def _reduce_lower(spec: _Reduction) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        if not spec.native or ctx.dtype(0) != F32 or 0 in ctx.shape(0):
            return None
        known, axes = _axes(ctx, spec, ctx.value(1) if ctx.has(1) else _ABSENT)
        if not known:
            return None
        attrs: dict[str, Any] = {
            "keepdims": int(ctx.attr("keepdims", 1)),
            "noop_with_empty_axes": int(ctx.attr("noop_with_empty_axes", 0)),
        }
        if axes is not None:
            attrs["axes"] = axes
        slot, out = ctx.slot(0), []
        for name in spec.native:
            if name == "square":
                out = ctx.step("mul", [slot, slot])
            else:
                out = ctx.step(name, [slot], attrs if name.startswith("reduce_") else None)
            slot = out[0]
        return out

    return lower


def _register_reduction(name: str, versions: tuple[int, ...], spec: _Reduction) -> None:
    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        given = x[1] if len(x) > 1 and x[1] is not None else _ABSENT
        _, axes = _axes(ctx, spec, given)
        found = _resolve(ctx, axes, x[0].ndim)
        if found is None:
            return [x[0]]
        y = spec.fn(x[0], found, bool(ctx.attr("keepdims", 1)))
        return [np.asarray(y).astype(x[0].dtype, copy=False)]

    op(name, versions, infer=_reduce_infer(spec), lower=_reduce_lower(spec))(compute)


_V18 = (1, 11, 13, 18)
_REDUCTIONS: dict[str, tuple[tuple[int, ...], _Reduction]] = {
    "ReduceSum": ((1, 11, 13), _Reduction(_sum, 13, "iu", ("reduce_sum",))),
    "ReduceMean": (_V18, _Reduction(_mean, 18, "iu", ("reduce_mean",))),
    "ReduceMax": ((*_V18, 12, 20), _Reduction(_extreme(True), 18, "iub", ("reduce_max",))),
    "ReduceMin": ((*_V18, 12, 20), _Reduction(_extreme(False), 18, "iub", ("reduce_min",))),
    "ReduceProd": (_V18, _Reduction(_prod, 18, "iu", ("reduce_prod",))),
    "ReduceL1": (_V18, _Reduction(_l1, 18, "iu", ("abs", "reduce_sum"))),
    "ReduceL2": (_V18, _Reduction(_l2, 18, "iu", ("square", "reduce_sum", "sqrt"))),
    "ReduceSumSquare": (_V18, _Reduction(_sum_square, 18, "iu", ("square", "reduce_sum"))),
    "ReduceLogSum": ((*_V18, 28), _Reduction(_log_sum, 18, "iu", ("reduce_sum", "log"))),
    "ReduceLogSumExp": ((*_V18, 28), _Reduction(_log_sum_exp, 18, "iu")),
}
for _name, (_versions, _spec) in _REDUCTIONS.items():
    _register_reduction(_name, _versions, _spec)


# ---- ArgMax / ArgMin -----------------------------------------------------------------------------


def _arg_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if not (is_float(t.dtype) or t.dtype.kind in "iu"):
        ctx.fail(f"dtype {t.dtype.name} is not supported")
    if t.shape is None:
        return [tt(np.int64, None)]
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), len(t.shape))
    keep = bool(ctx.attr("keepdims", 1))
    dims = [1 if i == axis else d for i, d in enumerate(t.shape) if keep or i != axis]
    return [tt(np.int64, dims)]


def _arg_lower(native: str) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        if ctx.dtype(0) != F32 or 0 in ctx.shape(0) or not ctx.shape(0):
            return None
        attrs = {
            "axis": int(ctx.attr("axis", 0)),
            "keepdims": int(ctx.attr("keepdims", 1)),
            "select_last_index": int(ctx.attr("select_last_index", 0)),
        }
        return ctx.step(native, [ctx.slot(0)], attrs)

    return lower


def _arg(ctx: OpContext, x: np.ndarray, largest: bool) -> np.ndarray:
    axis = axis_of(ctx, int(ctx.attr("axis", 0)), x.ndim)
    if x.shape[axis] == 0:
        ctx.fail("cannot take the index of an extreme over an empty axis")
    fn = np.argmax if largest else np.argmin
    w = upcast(x)
    if ctx.attr("select_last_index", 0):
        index = x.shape[axis] - 1 - fn(np.flip(w, axis), axis=axis)
    else:
        index = fn(w, axis=axis)
    if ctx.attr("keepdims", 1):
        index = np.expand_dims(index, axis)
    return np.asarray(index, dtype=np.int64)


@op("ArgMax", (1, 11, 12, 13), infer=_arg_infer, lower=_arg_lower("argmax"))
def argmax(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_arg(ctx, x[0], True)]


@op("ArgMin", (1, 11, 12, 13), infer=_arg_infer, lower=_arg_lower("argmin"))
def argmin(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_arg(ctx, x[0], False)]


# ---- Softmax / LogSoftmax / Hardmax --------------------------------------------------------------


def _softmax_infer(ctx: InferContext) -> list[TensorType]:
    t = ctx.type(0)
    if not is_float(t.dtype):
        ctx.fail(f"input must be a float tensor, got {t.dtype.name}")
    if t.shape is not None:
        _softmax_axis(ctx, len(t.shape))
    return [t]


def _softmax_axis(ctx: OpContext, rank: int) -> int:
    default = -1 if ctx.version >= 13 else 1
    return axis_of(ctx, int(ctx.attr("axis", default)), max(rank, 1))


def _along_axis(
    ctx: OpContext, x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``fn`` along the last axis of the view the op's version defines, in x's shape."""
    axis = _softmax_axis(ctx, x.ndim)
    if x.ndim == 0:
        return fn(x.reshape(1)).reshape(())
    if ctx.version >= 13:
        return np.moveaxis(fn(np.moveaxis(x, axis, -1)), -1, axis)
    flat = x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    return fn(flat).reshape(x.shape)


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    w = arithmetic(x)
    e = np.exp(w - np.max(w, axis=-1, keepdims=True, initial=-np.inf))
    return np.asarray((e / np.sum(e, axis=-1, keepdims=True)).astype(x.dtype, copy=False))


def _log_softmax_rows(x: np.ndarray) -> np.ndarray:
    w = arithmetic(x)
    shifted = w - np.max(w, axis=-1, keepdims=True, initial=-np.inf)
    with np.errstate(divide="ignore"):
        y = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return np.asarray(y.astype(x.dtype, copy=False))


def _hardmax_rows(x: np.ndarray) -> np.ndarray:
    y = np.zeros_like(x)
    if x.size:
        np.put_along_axis(y, np.argmax(upcast(x), axis=-1)[..., None], 1, axis=-1)
    return y


def _softmax_lower(native: str) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        shape = ctx.shape(0)
        if ctx.dtype(0) != F32 or not shape or 0 in shape:
            return None
        axis = _softmax_axis(ctx, len(shape))
        if ctx.version >= 13 or axis == len(shape) - 1:
            return ctx.step(native, [ctx.slot(0)], {"axis": axis})
        rows = int(np.prod(shape[:axis]))
        flat = ctx.step("reshape", [ctx.slot(0)], {"shape": [rows, -1]})
        (y,) = ctx.step(native, flat, {"axis": 1})
        return ctx.step("reshape", [y], {"shape": list(shape)})

    return lower


@op("Softmax", (1, 11, 13), infer=_softmax_infer, lower=_softmax_lower("softmax"))
def softmax(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_along_axis(ctx, x[0], _softmax_rows)]


@op("LogSoftmax", (1, 11, 13), infer=_softmax_infer, lower=_softmax_lower("log_softmax"))
def log_softmax(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_along_axis(ctx, x[0], _log_softmax_rows)]


@op("Hardmax", (1, 11, 13), infer=_softmax_infer)
def hardmax(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_along_axis(ctx, x[0], _hardmax_rows)]


# ---- normalisations ------------------------------------------------------------------------------


def _eps(ctx: OpContext, default: float = 1e-5) -> float:
    return float(ctx.attr("epsilon", default))


def _stash(ctx: OpContext) -> np.dtype[Any]:
    return onnx_dtype(int(ctx.attr("stash_type", 1)))


def _standardize(
    xu: np.ndarray, axes: Axes, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalized, mean, 1 / std) over ``axes``, as LayerNormalization-17's function body."""
    mean = xu.mean(axis=axes, keepdims=True)
    d = xu - mean
    inv = 1 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + eps)
    return d * inv, mean, inv


def _channel(a: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel (C,) vector shaped to broadcast over (N, C, ...)."""
    return upcast(a).reshape((1, -1) + (1,) * (rank - 2))


def _norm_param_fits(param: tuple[int, ...], norm: tuple[int, ...]) -> bool:
    """The native row norms' rule: gamma/beta equal the normalised shape up to leading 1s."""
    p, n = list(param), list(norm)
    while len(p) > len(n) and p[0] == 1:
        p.pop(0)
    while len(n) > len(p) and n[0] == 1:
        n.pop(0)
    return p == n


def _native_eps(eps: float) -> bool:
    return bool(np.isfinite(np.float32(eps)) and np.float32(eps) > 0)


def _training(ctx: OpContext) -> bool:
    return ctx.version >= 14 and bool(ctx.attr("training_mode", 0))


def _batch_norm_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype) or (x.shape is not None and len(x.shape) < 2):
        ctx.fail(f"X must be a float tensor (N, C, ...), got {x}")
    extra = [o for o in ctx.node.outputs[1:] if o]
    if int(ctx.attr("spatial", 1)) != 1:  # BatchNormalization-7's per-activation statistics
        ctx.fail("spatial=0 is not supported", UnsupportedError)
    if not _training(ctx):
        if extra:
            ctx.fail("outputs besides Y need training_mode=1 (opset 14+)", UnsupportedError)
        return [x]
    return [x, ctx.type(3), ctx.type(4)]


def _lower_batch_norm(ctx: LowerContext) -> list[int] | None:
    shape = ctx.shape(0)
    if _training(ctx) or not all_float32(ctx) or len(shape) < 2 or 0 in shape:
        return None
    if not _native_eps(_eps(ctx)):
        return None
    attrs = {"epsilon": _eps(ctx)}
    return ctx.step("batch_norm", [ctx.slot(i) for i in range(5)], attrs)


@op("BatchNormalization", (7, 9, 14, 15), infer=_batch_norm_infer, lower=_lower_batch_norm)
def batch_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx, scale, bias, mean, var = x[:5]
    r, eps = xx.ndim, _eps(ctx)
    xw = upcast(xx)
    if not _training(ctx):
        y = (xw - _channel(mean, r)) / np.sqrt(_channel(var, r) + eps)
        return [(y * _channel(scale, r) + _channel(bias, r)).astype(xx.dtype, copy=False)]
    axes = (0, *range(2, r))
    cur_mean, cur_var = xw.mean(axis=axes), xw.var(axis=axes)
    y = (xw - _channel(cur_mean, r)) / np.sqrt(_channel(cur_var, r) + eps)
    y = y * _channel(scale, r) + _channel(bias, r)
    m = float(ctx.attr("momentum", 0.9))
    run_mean = upcast(mean) * m + cur_mean * (1 - m)
    run_var = upcast(var) * m + cur_var * (1 - m)
    return [
        y.astype(xx.dtype, copy=False),
        run_mean.astype(mean.dtype, copy=False),
        run_var.astype(var.dtype, copy=False),
    ]


def _instance_norm_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype) or (x.shape is not None and len(x.shape) < 3):
        ctx.fail(f"input must be a float tensor (N, C, spatial...), got {x}")
    return [x]


@op("InstanceNormalization", (1, 6, 22), infer=_instance_norm_infer)
def instance_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx, scale, bias = x[:3]
    norm, _, _ = _standardize(upcast(xx), tuple(range(2, xx.ndim)), _eps(ctx))
    y = norm * _channel(scale, xx.ndim) + _channel(bias, xx.ndim)
    return [y.astype(xx.dtype, copy=False)]


def _row_norm_axis(ctx: OpContext, rank: int) -> int:
    return axis_of(ctx, int(ctx.attr("axis", -1)), rank)


def _layer_norm_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype):
        ctx.fail(f"X must be a float tensor, got {x.dtype.name}")
    stash = _stash(ctx)
    if x.shape is None:
        return [x, tt(stash, None), tt(stash, None)]
    axis = _row_norm_axis(ctx, len(x.shape))
    stat = tt(stash, (*x.shape[:axis], *[1] * (len(x.shape) - axis)))
    return [x, stat, stat]


def _lower_row_norm(native: str, params: tuple[int, ...]) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        shape = ctx.shape(0)
        if not all_float32(ctx) or not shape or 0 in shape or _stash(ctx) != F32:
            return None
        if any(ctx.node.outputs[1:]) or not _native_eps(_eps(ctx)):
            return None  # Mean / InvStdDev wanted: the native kernel does not give them
        axis = _row_norm_axis(ctx, len(shape))
        if not all(_norm_param_fits(ctx.shape(i), shape[axis:]) for i in params if ctx.has(i)):
            return None
        attrs = {"axis": axis, "epsilon": _eps(ctx)}
        return ctx.step(native, [ctx.slot(0), *(ctx.slot(i) for i in params)], attrs)

    return lower


@op(
    "LayerNormalization",
    (17,),
    infer=_layer_norm_infer,
    lower=_lower_row_norm("layer_norm", (1, 2)),
)
def layer_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axes = tuple(range(_row_norm_axis(ctx, xx.ndim), xx.ndim))
    norm, mean, inv = _standardize(xx.astype(_stash(ctx)), axes, _eps(ctx))
    y = norm.astype(xx.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(xx.dtype, copy=False), mean, inv]


def _rms_norm_infer(ctx: InferContext) -> list[TensorType]:
    x, scale = ctx.type(0), ctx.type(1)
    if not (is_float(x.dtype) and is_float(scale.dtype)):
        ctx.fail(f"X and scale must be float tensors, got {x.dtype.name}, {scale.dtype.name}")
    if x.shape is not None:
        _row_norm_axis(ctx, len(x.shape))
    return [tt(scale.dtype, x.shape)]


@op(
    "RMSNormalization",
    (23,),
    infer=_rms_norm_infer,
    lower=_lower_row_norm("rms_norm", (1,)),
)
def rms_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx, scale = x[0], x[1]
    axes = tuple(range(_row_norm_axis(ctx, xx.ndim), xx.ndim))
    xu = xx.astype(_stash(ctx))
    rms = np.sqrt((xu * xu).mean(axis=axes, keepdims=True) + _eps(ctx))
    return [((xu / rms).astype(scale.dtype) * scale).astype(scale.dtype, copy=False)]


def _group_norm_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype) or (x.shape is not None and len(x.shape) < 2):
        ctx.fail(f"X must be a float tensor (N, C, ...), got {x}")
    groups = int(ctx.attr("num_groups"))
    c = x.shape[1] if x.shape is not None else None
    if groups < 1 or (isinstance(c, int) and c % groups):
        ctx.fail(f"num_groups {groups} must divide the {c} channels")
    return [x]


@op("GroupNormalization", (18, 21), infer=_group_norm_infer)
def group_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx, scale, bias = x[:3]
    n = xx.shape[0]
    groups = int(ctx.attr("num_groups"))
    stash = _stash(ctx) if ctx.version >= 21 else upcast(xx).dtype
    grouped = xx.reshape(n, groups, -1).astype(stash)
    norm, _, _ = _standardize(grouped, (2,), _eps(ctx))
    if ctx.version < 21:  # scale and bias per group
        y = norm * upcast(scale).reshape(1, groups, 1) + upcast(bias).reshape(1, groups, 1)
        return [y.reshape(xx.shape).astype(xx.dtype, copy=False)]
    y = norm.astype(xx.dtype).reshape(xx.shape)
    r = xx.ndim
    return [(y * scale.reshape((1, -1) + (1,) * (r - 2)) + bias.reshape((1, -1) + (1,) * (r - 2)))]


def _float_same_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype):
        ctx.fail(f"input must be a float tensor, got {x.dtype.name}")
    return [x]


@op("LpNormalization", (1, 22), infer=_float_same_infer)
def lp_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx = x[0]
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        ctx.fail(f"p must be 1 or 2, got {p}")
    w = upcast(xx)
    axis = axis_of(ctx, int(ctx.attr("axis", -1)), xx.ndim)
    norm = (
        np.abs(w).sum(axis=axis, keepdims=True)
        if p == 1
        else np.sqrt((w * w).sum(axis=axis, keepdims=True))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(norm == 0, 0, w / norm)  # a zero vector stays zero (LpNormalization-22)
    return [y.astype(xx.dtype, copy=False)]


@op("MeanVarianceNormalization", (9, 13), infer=_float_same_infer)
def mean_variance_normalization(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx = upcast(x[0])
    axes = tuple(sorted(axis_of(ctx, int(a), xx.ndim) for a in ctx.attr("axes", [0, 2, 3])))
    mean = xx.mean(axis=axes, keepdims=True)
    # The function body: (X - E[X]) / (sqrt(E[X²] - E[X]²) + 1e-9).
    std = np.sqrt((xx * xx).mean(axis=axes, keepdims=True) - mean * mean)
    return [((xx - mean) / (std + np.float32(1e-9))).astype(x[0].dtype, copy=False)]


@op("LRN", (1, 13), infer=_float_same_infer)
def lrn(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    xx = upcast(x[0])
    size = int(ctx.attr("size"))
    alpha, beta = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    if size < 1 or xx.ndim < 2:
        ctx.fail(f"size must be positive and the input (N, C, ...), got size {size}, {x[0].shape}")
    sq = xx * xx
    c = xx.shape[1]
    cum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    lo = np.maximum(0, np.arange(c) - (size - 1) // 2)
    hi = np.minimum(c - 1, np.arange(c) + -(-(size - 1) // 2)) + 1
    square_sum = cum[:, hi] - cum[:, lo]
    y = xx / (bias + alpha / size * square_sum) ** beta
    return [y.astype(x[0].dtype, copy=False)]
