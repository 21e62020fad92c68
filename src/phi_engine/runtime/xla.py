"""The XLA backend: a model's graph lowered to ``jax.numpy`` and compiled by ``jax.jit``.

``phi.compile(model, device="xla")`` keeps the compiler's front half (import, support check, type
inference, constant folding; not our fusion passes, since XLA fuses by itself) and, per input
shape, specializes the graph as the CPU backend does, so shape arithmetic folds to constants.
The nodes left are traced, in order, into one function of the inputs and the weights, which
``jax.jit`` compiles for whatever device JAX sees first: a TPU or GPU where there is one, the
CPU otherwise (which is how CI checks it). Weights are passed as arguments, not baked into the
XLA program, so compiling stays fast for large models.

Integer tensors travel as int32 (JAX's default; token ids and indices fit) and float64 is
refused unless JAX runs with ``jax_enable_x64``: phi_engine never changes JAX's global settings.
Every op here follows the ONNX spec for the cases it accepts and fails naming the node for the
rest; :data:`OPS` lists what the backend runs.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Graph, Node

__all__ = ["CPU_AS_XLA", "OPS", "XlaProgram", "available", "check_graph", "xla_devices"]

CPU_AS_XLA = "PHI_ENGINE_XLA_CPU"
"""Set to 1, this environment variable lists JAX's CPU device as an XLA device, so that a
deployment asking for ``tpu`` runs through XLA on a machine without an accelerator (CI does)."""

_Fn = Callable[[Node, list[Any]], list[Any]]
_TABLE: dict[str, _Fn] = {}


def available() -> bool:
    """Whether JAX can be imported here."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def xla_devices() -> tuple[dict[str, Any], ...]:
    """The accelerators JAX sees here (TPU, GPU), as :func:`phi_engine.devices` lists them; JAX's
    CPU device too when :data:`CPU_AS_XLA` is set. Empty without JAX. Looked up once."""
    if importlib.util.find_spec("jax") is None:
        return ()
    try:
        import jax

        found = jax.devices()
    except Exception:  # no backend initialises: nothing to run on
        return ()
    cpu_ok = os.environ.get(CPU_AS_XLA, "") == "1"
    usable = [d for d in found if d.platform != "cpu" or cpu_ok]
    return tuple(
        {"kind": "xla", "index": i, "platform": d.platform, "name": str(d.device_kind)}
        for i, d in enumerate(usable)
    )


def _bfloat16() -> np.dtype[Any] | None:
    try:
        import ml_dtypes
    except ImportError:
        return None
    found: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return found


def _jnp() -> Any:
    import jax.numpy as jnp

    return jnp


def _op(*names: str) -> Callable[[_Fn], _Fn]:
    def register(fn: _Fn) -> _Fn:
        for name in names:
            _TABLE[name] = fn
        return fn

    return register


def _fail(node: Node, message: str) -> NoReturn:
    raise UnsupportedError(f"[{node.op_type}] node {node.label!r} on xla: {message}")


def _static(node: Node, value: Any, what: str) -> np.ndarray:
    """A value the op needs at trace time (a shape, axes, slice bounds)."""
    import jax

    if isinstance(value, jax.core.Tracer):
        raise _NeedsValues(f"[{node.op_type}] node {node.label!r}: {what} must be a known value")
    return np.asarray(value)


class _NeedsValues(UnsupportedError):
    """A parameter (shape, axes, bounds) is a traced value: the program runs eagerly instead."""


def _attr(node: Node, name: str, default: Any = None) -> Any:
    return node.attrs.get(name, default)


# ---- elementwise --------------------------------------------------------------------------------


def _binary(fn_name: str) -> _Fn:
    def run(node: Node, xs: list[Any]) -> list[Any]:
        return [getattr(_jnp(), fn_name)(xs[0], xs[1])]

    return run


for _name, _fn_name in (
    ("Add", "add"),
    ("Sub", "subtract"),
    ("Mul", "multiply"),
    ("Pow", "power"),
    ("Equal", "equal"),
    ("Less", "less"),
    ("Greater", "greater"),
    ("LessOrEqual", "less_equal"),
    ("GreaterOrEqual", "greater_equal"),
    ("And", "logical_and"),
    ("Or", "logical_or"),
):
    _TABLE[_name] = _binary(_fn_name)


@_op("Div")
def _div(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    a, b = xs
    if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
        return [jnp.trunc(jnp.true_divide(a, b)).astype(jnp.result_type(a, b))]  # ONNX: truncates
    return [jnp.divide(a, b)]


def _unary(fn: Callable[[Any], Any]) -> _Fn:
    return lambda node, xs: [fn(xs[0])]


for _name, _fn_name in (
    ("Sqrt", "sqrt"),
    ("Exp", "exp"),
    ("Log", "log"),
    ("Abs", "abs"),
    ("Neg", "negative"),
    ("Tanh", "tanh"),
    ("Floor", "floor"),
    ("Ceil", "ceil"),
    ("Not", "logical_not"),
    ("Sin", "sin"),
    ("Cos", "cos"),
    ("Sign", "sign"),
    ("Round", "round"),
    ("IsNaN", "isnan"),
    ("Atan", "arctan"),
    ("Asin", "arcsin"),
    ("Acos", "arccos"),
    ("Sinh", "sinh"),
    ("Cosh", "cosh"),
    ("Tan", "tan"),
    ("Asinh", "arcsinh"),
    ("Acosh", "arccosh"),
    ("Atanh", "arctanh"),
):
    _TABLE[_name] = (lambda f: _unary(lambda x: getattr(_jnp(), f)(x)))(_fn_name)


@_op("Identity")
def _identity(node: Node, xs: list[Any]) -> list[Any]:
    return [xs[0]]


@_op("Reciprocal")
def _reciprocal(node: Node, xs: list[Any]) -> list[Any]:
    return [1.0 / xs[0]]


@_op("Erf")
def _erf(node: Node, xs: list[Any]) -> list[Any]:
    from jax.scipy.special import erf

    return [erf(xs[0])]


@_op("Relu")
def _relu(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().maximum(xs[0], 0)]


@_op("Sigmoid")
def _sigmoid(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    return [jax.nn.sigmoid(xs[0])]


@_op("LeakyRelu")
def _leaky_relu(node: Node, xs: list[Any]) -> list[Any]:
    alpha = float(_attr(node, "alpha", 0.01))
    return [_jnp().where(xs[0] >= 0, xs[0], alpha * xs[0])]


@_op("Gelu")
def _gelu(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    return [jax.nn.gelu(xs[0], approximate=_attr(node, "approximate", "none") == "tanh")]


@_op("Clip")
def _clip(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    lo = xs[1] if len(xs) > 1 and xs[1] is not None else _attr(node, "min")
    hi = xs[2] if len(xs) > 2 and xs[2] is not None else _attr(node, "max")
    if lo is not None:
        x = jnp.maximum(x, jnp.asarray(lo, x.dtype))
    if hi is not None:
        x = jnp.minimum(x, jnp.asarray(hi, x.dtype))
    return [x]


@_op("Where")
def _where(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().where(xs[0], xs[1], xs[2])]


@_op("Cast")
def _cast(node: Node, xs: list[Any]) -> list[Any]:
    return [xs[0]]  # the conversion to the output's dtype is done by _run_node for every op


# ---- linear algebra and nn -----------------------------------------------------------------


@_op("MatMul")
def _matmul(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().matmul(xs[0], xs[1])]


@_op("Gemm")
def _gemm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    a = xs[0].T if _attr(node, "transA", 0) else xs[0]
    b = xs[1].T if _attr(node, "transB", 0) else xs[1]
    y = float(_attr(node, "alpha", 1.0)) * jnp.matmul(a, b)
    if len(xs) > 2 and xs[2] is not None:
        y = y + float(_attr(node, "beta", 1.0)) * xs[2]
    return [y]


def _axis(node: Node, rank: int, default: int) -> int:
    axis = int(_attr(node, "axis", default))
    return axis + rank if axis < 0 else axis


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    x = xs[0]
    if node.version < 13:  # the old semantics: flatten to 2-D at `axis`
        axis = _axis(node, x.ndim, 1)
        shape = x.shape
        flat = x.reshape((math.prod(shape[:axis]), -1))
        fn = jax.nn.softmax if node.op_type == "Softmax" else jax.nn.log_softmax
        return [fn(flat, axis=-1).reshape(shape)]
    axis = _axis(node, x.ndim, -1)
    fn = jax.nn.softmax if node.op_type == "Softmax" else jax.nn.log_softmax
    return [fn(x, axis=axis)]


@_op("LayerNormalization")
def _layer_norm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    axis = _axis(node, x.ndim, -1)
    axes = tuple(range(axis, x.ndim))
    eps = float(_attr(node, "epsilon", 1e-5))
    h = x.astype(jnp.float32)
    mean = h.mean(axis=axes, keepdims=True)
    var = ((h - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / jnp.sqrt(var + eps)
    y = (h - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype), mean, inv]


@_op("BatchNormalization")
def _batch_norm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, scale, bias, mean, var = xs[:5]
    eps = float(_attr(node, "epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale.reshape(shape) / jnp.sqrt(var.reshape(shape) + eps)
    return [(x - mean.reshape(shape)) * inv + bias.reshape(shape)]


def _conv_padding(
    node: Node,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    auto = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    n = len(spatial)
    if auto in ("NOTSET", "VALID"):
        pads = list(_attr(node, "pads", [0] * (2 * n))) if auto == "NOTSET" else [0] * (2 * n)
        return [(int(pads[i]), int(pads[i + n])) for i in range(n)]
    out = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    return out


@_op("Conv")
def _conv(node: Node, xs: list[Any]) -> list[Any]:
    from jax import lax

    x, w = xs[0], xs[1]
    n = x.ndim - 2
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = tuple(int(s) for s in _attr(node, "strides", [1] * n))
    dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * n))
    padding = _conv_padding(node, x.shape[2:], kernel, strides, dilations)
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilations,
        feature_group_count=int(_attr(node, "group", 1)),
    )
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2].reshape((1, -1) + (1,) * n)
    return [y]


@_op("ConvTranspose")
def _conv_transpose(node: Node, xs: list[Any]) -> list[Any]:
    """The gradient of a convolution: the input dilated by the strides, convolved with the
    weights flipped in space and with input and output channels swapped (per group)."""
    from jax import lax

    jnp = _jnp()
    x, w = xs[0], xs[1]
    n = x.ndim - 2
    group = int(_attr(node, "group", 1))
    c_in, c_out_g = int(w.shape[0]), int(w.shape[1])
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = [int(v) for v in _attr(node, "strides", [1] * n)]
    dilations = [int(v) for v in _attr(node, "dilations", [1] * n)]
    out_pad = [int(v) for v in _attr(node, "output_padding", [0] * n)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    out_shape = _attr(node, "output_shape")
    auto = _attr(node, "auto_pad", "NOTSET")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        if out_shape is None:
            out_shape = [int(x.shape[2 + i]) * strides[i] for i in range(n)]
        wanted = [int(v) for v in out_shape][-n:]
        total = [
            strides[i] * (int(x.shape[2 + i]) - 1) + out_pad[i] + extent[i] - wanted[i]
            for i in range(n)
        ]
        upper = auto == "SAME_UPPER"  # the extra cell at the end, else at the start
        begin = [t // 2 if upper else t - t // 2 for t in total]
        pads = [*begin, *(t - b for t, b in zip(total, begin, strict=True))]
    else:
        pads = [int(v) for v in _attr(node, "pads", [0] * (2 * n))]
    padding = [
        (extent[i] - 1 - pads[i], extent[i] - 1 - pads[n + i] + out_pad[i]) for i in range(n)
    ]
    # [C_in, C_out/g, k...] -> [C_out, C_in/g, k...], flipped in space.
    wg = w.reshape((group, c_in // group, c_out_g, *kernel))
    wg = jnp.swapaxes(wg, 1, 2).reshape((group * c_out_g, c_in // group, *kernel))
    wg = jnp.flip(wg, axis=tuple(range(2, 2 + n)))
    y = lax.conv_general_dilated(
        x,
        wg,
        window_strides=(1,) * n,
        padding=padding,
        lhs_dilation=tuple(strides),
        rhs_dilation=tuple(dilations),
        feature_group_count=group,
    )
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2].reshape((1, -1) + (1,) * n)
    return [y]


def _pool(node: Node, x: Any, reducer: str) -> Any:
    """Max or average pooling. In ceil mode the last window may hang past the end pad (it must
    start inside the input or its leading pad, PyTorch's rule, as on the CPU): those extra cells
    are padding that an average never counts, with or without ``count_include_pad``."""
    from jax import lax

    jnp = _jnp()
    n = x.ndim - 2
    kernel = tuple(int(k) for k in _attr(node, "kernel_shape"))
    strides = tuple(int(s) for s in _attr(node, "strides", [1] * n))
    dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * n))
    pads = _conv_padding(node, x.shape[2:], kernel, strides, dilations)
    extra = [0] * n
    if _attr(node, "ceil_mode", 0):
        for i in range(n):
            size, (pb, pe) = int(x.shape[2 + i]), pads[i]
            extent = (kernel[i] - 1) * dilations[i] + 1
            span = size + pb + pe - extent
            out = -(-span // strides[i]) + 1 if span >= 0 else 0
            if out and (out - 1) * strides[i] >= size + pb:
                out -= 1
            extra[i] = max(0, (out - 1) * strides[i] + extent - (size + pb + pe))
    padding = [(0, 0), (0, 0), *((pb, pe + e) for (pb, pe), e in zip(pads, extra, strict=True))]
    dims, steps, dil = (1, 1, *kernel), (1, 1, *strides), (1, 1, *dilations)
    if reducer == "max":
        low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        init = jnp.array(low, x.dtype)
        return lax.reduce_window(x, init, lax.max, dims, steps, padding, window_dilation=dil)
    total = lax.reduce_window(
        x, jnp.array(0, x.dtype), lax.add, dims, steps, padding, window_dilation=dil
    )
    if _attr(node, "count_include_pad", 0):
        # Count the cells inside the padded input: ones over it, the ceil-mode cells left out.
        padded = tuple(int(x.shape[2 + i]) + pads[i][0] + pads[i][1] for i in range(n))
        ones = jnp.ones((1, 1, *padded), x.dtype)
        edge = [(0, 0), (0, 0), *((0, e) for e in extra)]
    else:
        ones = jnp.ones((1, 1, *x.shape[2:]), x.dtype)
        edge = padding
    count = lax.reduce_window(
        ones, jnp.array(0, x.dtype), lax.add, dims, steps, edge, window_dilation=dil
    )
    return total / count


@_op("MaxPool")
def _max_pool(node: Node, xs: list[Any]) -> list[Any]:
    return [_pool(node, xs[0], "max")]


@_op("AveragePool")
def _avg_pool(node: Node, xs: list[Any]) -> list[Any]:
    return [_pool(node, xs[0], "avg")]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    axes = tuple(range(2, x.ndim))
    if node.op_type == "GlobalAveragePool":
        return [x.mean(axis=axes, keepdims=True)]
    return [x.max(axis=axes, keepdims=True)]


# ---- reductions ----------------------------------------------------------------------------


def _l2(x: Any, axis: Any, keepdims: bool) -> Any:
    jnp = _jnp()
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def _l1(x: Any, axis: Any, keepdims: bool) -> Any:
    jnp = _jnp()
    return jnp.sum(jnp.abs(x), axis=axis, keepdims=keepdims)


def _sum_square(x: Any, axis: Any, keepdims: bool) -> Any:
    return _jnp().sum(x * x, axis=axis, keepdims=keepdims)


def _log_sum_exp(x: Any, axis: Any, keepdims: bool) -> Any:
    from jax.scipy.special import logsumexp

    return logsumexp(x, axis=axis, keepdims=keepdims)


_REDUCERS: dict[str, Callable[[Any, Any, bool], Any]] = {
    "l2": _l2,
    "l1": _l1,
    "sum_square": _sum_square,
    "log_sum_exp": _log_sum_exp,
}


def _reduce(fn_name: str) -> _Fn:
    def run(node: Node, xs: list[Any]) -> list[Any]:
        x = xs[0]
        axes_in = xs[1] if len(xs) > 1 and xs[1] is not None else _attr(node, "axes")
        if axes_in is None or len(np.atleast_1d(_static(node, axes_in, "axes"))) == 0:
            if _attr(node, "noop_with_empty_axes", 0):
                return [x]
            axes = tuple(range(x.ndim))
        else:
            axes = tuple(int(a) % x.ndim for a in np.atleast_1d(_static(node, axes_in, "axes")))
        keep = bool(_attr(node, "keepdims", 1))
        fn: Any = _REDUCERS.get(fn_name) or getattr(_jnp(), fn_name)
        return [fn(x, axis=axes, keepdims=keep)]

    return run


for _name, _fn_name in (
    ("ReduceMean", "mean"),
    ("ReduceSum", "sum"),
    ("ReduceMax", "max"),
    ("ReduceMin", "min"),
    ("ReduceProd", "prod"),
    ("ReduceL2", "l2"),
    ("ReduceL1", "l1"),
    ("ReduceSumSquare", "sum_square"),
    ("ReduceLogSumExp", "log_sum_exp"),
):
    _TABLE[_name] = _reduce(_fn_name)


# ---- tensor shape and layout ---------------------------------------------------------------


@_op("Transpose")
def _transpose(node: Node, xs: list[Any]) -> list[Any]:
    perm = _attr(node, "perm")
    return [_jnp().transpose(xs[0], None if perm is None else tuple(int(p) for p in perm))]


@_op("Reshape")
def _reshape(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    shape = [int(s) for s in _static(node, xs[1], "the shape")]
    if not _attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(tuple(shape))]


@_op("Flatten")
def _flatten(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    axis = _axis(node, x.ndim, 1)
    return [x.reshape((math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))]


def _axes_of(node: Node, xs: list[Any]) -> list[int]:
    given = xs[1] if len(xs) > 1 and xs[1] is not None else _attr(node, "axes")
    return [] if given is None else [int(a) for a in np.atleast_1d(_static(node, given, "axes"))]


@_op("Unsqueeze")
def _unsqueeze(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    axes = _axes_of(node, xs)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = _jnp().expand_dims(x, a)
    return [x]


@_op("Squeeze")
def _squeeze(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    axes = _axes_of(node, xs)
    if not axes:
        return [_jnp().squeeze(x)]
    return [_jnp().squeeze(x, axis=tuple(a % x.ndim for a in axes))]


@_op("Concat")
def _concat(node: Node, xs: list[Any]) -> list[Any]:
    parts = [x for x in xs if x is not None]
    return [_jnp().concatenate(parts, axis=int(_attr(node, "axis")))]


@_op("Gather")
def _gather(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, idx = xs
    axis = _axis(node, x.ndim, 0)
    idx = jnp.where(idx < 0, idx + x.shape[axis], idx)
    return [jnp.take(x, idx, axis=axis)]


@_op("Slice")
def _slice(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    starts = _static(node, xs[1], "starts")
    ends = _static(node, xs[2], "ends")
    axes = (
        _static(node, xs[3], "axes")
        if len(xs) > 3 and xs[3] is not None
        else np.arange(len(starts))
    )
    steps = (
        _static(node, xs[4], "steps")
        if len(xs) > 4 and xs[4] is not None
        else np.ones(len(starts), np.int64)
    )
    index: list[Any] = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = int(axis) % x.ndim
        dim = x.shape[a]
        s, e, st = int(start), int(end), int(step)
        # ONNX clamps like Python slicing once negatives are made positive (INT64 bounds included).
        s = max(min(s + dim if s < 0 else s, dim if st > 0 else dim - 1), 0 if st > 0 else -1)
        e = max(min(e + dim if e < 0 else e, dim if st > 0 else dim - 1), 0 if st > 0 else -1)
        index[a] = slice(s, None if e == -1 else e, st)
    return [x[tuple(index)]]


@_op("Expand")
def _expand(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    shape = tuple(int(s) for s in _static(node, xs[1], "the shape"))
    target = np.broadcast_shapes(tuple(x.shape), shape)
    return [jnp.broadcast_to(x, target)]


@_op("Shape")
def _shape(node: Node, xs: list[Any]) -> list[Any]:
    dims = np.asarray(xs[0].shape, np.int64)
    start, end = _attr(node, "start", 0), _attr(node, "end")
    return [dims[start:end]]


@_op("ConstantOfShape")
def _constant_of_shape(node: Node, xs: list[Any]) -> list[Any]:
    shape = tuple(int(s) for s in _static(node, xs[0], "the shape"))
    value = _attr(node, "value")
    fill = np.asarray(0.0, np.float32) if value is None else np.asarray(value).reshape(-1)[0]
    return [np.full(shape, fill, dtype=np.asarray(fill).dtype)]


@_op("Range")
def _range(node: Node, xs: list[Any]) -> list[Any]:
    start, limit, delta = (_static(node, x, "Range's bounds").item() for x in xs)
    dtype = np.result_type(*(_static(node, x, "Range's bounds") for x in xs))
    return [np.arange(start, limit, delta).astype(dtype)]


# ---- more elementwise, variadic and indexing ops ----------------------------------------------


_TABLE["Xor"] = _binary("logical_xor")


@_op("Max", "Min", "Sum", "Mean")
def _variadic(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    parts = [x for x in xs if x is not None]
    out = parts[0]
    for x in parts[1:]:
        if node.op_type == "Max":
            out = jnp.maximum(out, x)
        elif node.op_type == "Min":
            out = jnp.minimum(out, x)
        else:
            out = out + x
    return [out / len(parts) if node.op_type == "Mean" else out]


@_op("Softplus")
def _softplus(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().logaddexp(xs[0], 0.0)]


@_op("Softsign")
def _softsign(node: Node, xs: list[Any]) -> list[Any]:
    return [xs[0] / (1 + _jnp().abs(xs[0]))]


@_op("HardSigmoid")
def _hard_sigmoid(node: Node, xs: list[Any]) -> list[Any]:
    alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
    return [_jnp().clip(alpha * xs[0] + beta, 0, 1)]


@_op("HardSwish")
def _hard_swish(node: Node, xs: list[Any]) -> list[Any]:
    return [xs[0] * _jnp().clip(xs[0] / 6 + 0.5, 0, 1)]


@_op("Elu")
def _elu(node: Node, xs: list[Any]) -> list[Any]:
    alpha = float(_attr(node, "alpha", 1.0))
    x = xs[0]
    return [_jnp().where(x > 0, x, alpha * (_jnp().exp(x) - 1))]


@_op("Selu")
def _selu(node: Node, xs: list[Any]) -> list[Any]:
    alpha = float(_attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(_attr(node, "gamma", 1.05070102214813232421875))
    x = xs[0]
    return [gamma * _jnp().where(x > 0, x, alpha * (_jnp().exp(x) - 1))]


@_op("PRelu")
def _prelu(node: Node, xs: list[Any]) -> list[Any]:
    x, slope = xs
    return [_jnp().where(x < 0, slope * x, x)]


@_op("ThresholdedRelu")
def _thresholded_relu(node: Node, xs: list[Any]) -> list[Any]:
    alpha = float(_attr(node, "alpha", 1.0))
    return [_jnp().where(xs[0] > alpha, xs[0], 0)]


@_op("Mish")
def _mish(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    return [xs[0] * jnp.tanh(jnp.logaddexp(xs[0], 0.0))]


@_op("Einsum")
def _einsum(node: Node, xs: list[Any]) -> list[Any]:
    equation = _attr(node, "equation")
    if isinstance(equation, bytes):
        equation = equation.decode()
    return [_jnp().einsum(equation.replace(" ", ""), *xs)]


@_op("Tile")
def _tile(node: Node, xs: list[Any]) -> list[Any]:
    repeats = tuple(int(r) for r in _static(node, xs[1], "repeats"))
    return [_jnp().tile(xs[0], repeats)]


@_op("Split")
def _split(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    axis = _axis(node, x.ndim, 0)
    given = xs[1] if len(xs) > 1 and xs[1] is not None else _attr(node, "split")
    n_out = len(node.outputs)
    if given is not None:
        sizes = [int(v) for v in np.atleast_1d(_static(node, given, "split"))]
    else:
        parts = int(_attr(node, "num_outputs", n_out))
        size = -(-x.shape[axis] // parts)  # ceil: the last part is smaller (opset 18)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    cuts = list(np.cumsum(sizes)[:-1])
    return list(jnp.split(x, cuts, axis=axis))


@_op("ArgMax", "ArgMin")
def _arg(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    axis = _axis(node, x.ndim, 0)
    keep = bool(_attr(node, "keepdims", 1))
    pick = jnp.argmax if node.op_type == "ArgMax" else jnp.argmin
    if _attr(node, "select_last_index", 0):
        flipped = jnp.flip(x, axis=axis)
        out = x.shape[axis] - 1 - pick(flipped, axis=axis)
    else:
        out = pick(x, axis=axis)
    return [jnp.expand_dims(out, axis) if keep else out]


def _cumulative(node: Node, xs: list[Any], fn_name: str, identity: int) -> list[Any]:
    """CumSum / CumProd along the ``axis`` input, ``reverse`` and ``exclusive`` as ONNX: the
    exclusive form shifts the running result one step, starting from the identity."""
    jnp = _jnp()
    x = xs[0]
    axis = int(_static(node, xs[1], "axis")) % x.ndim
    reverse = bool(_attr(node, "reverse", 0))
    if reverse:
        x = jnp.flip(x, axis=axis)
    out = getattr(jnp, fn_name)(x, axis=axis, dtype=x.dtype)
    if _attr(node, "exclusive", 0):
        first = jnp.full_like(jnp.take(out, jnp.arange(1), axis=axis), identity)
        rest = jnp.take(out, jnp.arange(x.shape[axis] - 1), axis=axis)
        out = jnp.concatenate([first, rest], axis=axis)
    return [jnp.flip(out, axis=axis) if reverse else out]


@_op("CumSum")
def _cumsum(node: Node, xs: list[Any]) -> list[Any]:
    return _cumulative(node, xs, "cumsum", 0)


@_op("Trilu")
def _trilu(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    k = int(_static(node, xs[1], "k")) if len(xs) > 1 and xs[1] is not None else 0
    fn = jnp.triu if _attr(node, "upper", 1) else jnp.tril
    return [fn(xs[0], k)]


@_op("GatherElements")
def _gather_elements(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, idx = xs
    axis = _axis(node, x.ndim, 0)
    idx = jnp.where(idx < 0, idx + x.shape[axis], idx)
    return [jnp.take_along_axis(x, idx, axis=axis)]


@_op("Dropout")
def _dropout(node: Node, xs: list[Any]) -> list[Any]:
    if len(xs) > 2 and xs[2] is not None and bool(np.asarray(_static(node, xs[2], "training"))):
        _fail(node, "training mode")
    return [xs[0], _jnp().ones(xs[0].shape, bool)]


@_op("Pad")
def _pad(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    pads = [int(p) for p in _static(node, xs[1], "pads")]
    value = xs[2] if len(xs) > 2 and xs[2] is not None else 0
    axes = (
        [int(a) % x.ndim for a in _static(node, xs[3], "axes")]
        if len(xs) > 3 and xs[3] is not None
        else list(range(x.ndim))
    )
    k = len(axes)
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + k])
    if any(lo < 0 or hi < 0 for lo, hi in width):
        index = tuple(slice(-lo if lo < 0 else None, hi if hi < 0 else None) for lo, hi in width)
        x = x[index]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    mode = _attr(node, "mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "constant":
        fill = jnp.asarray(value, x.dtype).reshape(())
        return [jnp.pad(x, width, mode="constant", constant_values=fill)]
    if mode in ("reflect", "edge", "wrap"):
        return [jnp.pad(x, width, mode=mode)]
    _fail(node, f"mode {mode!r}")


@_op("TopK")
def _topk(node: Node, xs: list[Any]) -> list[Any]:
    from jax import lax

    jnp = _jnp()
    x = xs[0]
    k = int(np.asarray(_static(node, xs[1], "k")).reshape(-1)[0])
    axis = _axis(node, x.ndim, -1)
    moved = jnp.moveaxis(x, axis, -1)
    largest = bool(_attr(node, "largest", 1))
    if largest:
        values, idx = lax.top_k(moved, k)
    else:
        values, idx = lax.top_k(-moved, k)
        values = -values
    return [jnp.moveaxis(values, -1, axis), jnp.moveaxis(idx, -1, axis)]


@_op("InstanceNormalization")
def _instance_norm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, scale, bias = xs
    eps = float(_attr(node, "epsilon", 1e-5))
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return [(x - mean) / jnp.sqrt(var + eps) * scale.reshape(shape) + bias.reshape(shape)]


_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
) | frozenset(t for t in (_bfloat16(),) if t is not None)


# ---- more elementwise, normalisation and indexing ops ------------------------------------------


@_op("Celu")
def _celu(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    alpha = float(_attr(node, "alpha", 1.0))
    return [jnp.maximum(x, 0) + jnp.minimum(0, alpha * (jnp.exp(x / alpha) - 1))]


@_op("Swish")
def _swish(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    alpha = float(_attr(node, "alpha", 1.0))
    return [xs[0] * jax.nn.sigmoid(alpha * xs[0])]


@_op("Shrink")
def _shrink(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    lambd, bias = float(_attr(node, "lambd", 0.5)), float(_attr(node, "bias", 0.0))
    zero = jnp.zeros_like(x)
    y = jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, zero))
    return [y.astype(x.dtype)]


@_op("IsInf")
def _isinf(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    neg = bool(_attr(node, "detect_negative", 1))
    pos = bool(_attr(node, "detect_positive", 1))
    return [(jnp.isposinf(x) & pos) | (jnp.isneginf(x) & neg)]


@_op("Mod")
def _mod(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    a, b = xs
    if _attr(node, "fmod", 0):
        return [jnp.fmod(a, b)]  # the sign of the dividend, as C's fmod
    return [jnp.mod(a, b)]  # the sign of the divisor, as Python's %


@_op("CastLike")
def _cast_like(node: Node, xs: list[Any]) -> list[Any]:
    return [xs[0]]  # converted to the output's dtype by _run_node, as Cast


@_op("EyeLike")
def _eye_like(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]  # the output's dtype (attribute dtype, else x's) is applied by _run_node
    return [_jnp().eye(x.shape[0], x.shape[1], k=int(_attr(node, "k", 0)), dtype=x.dtype)]


@_op("Size")
def _size(node: Node, xs: list[Any]) -> list[Any]:
    return [np.asarray(math.prod(xs[0].shape), np.int64)]


@_op("Hardmax")
def _hardmax(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    x = xs[0]
    axis = _axis(node, x.ndim, -1)
    return [jax.nn.one_hot(_jnp().argmax(x, axis=axis), x.shape[axis], axis=axis, dtype=x.dtype)]


@_op("LpNormalization")
def _lp_normalization(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    axis = _axis(node, x.ndim, -1)
    p = int(_attr(node, "p", 2))
    if p == 1:
        norm = jnp.sum(jnp.abs(x), axis=axis, keepdims=True)
    elif p == 2:
        norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    else:
        _fail(node, f"p={p} (1 or 2)")
    safe = jnp.where(norm == 0, 1, norm)
    return [jnp.where(norm == 0, 0, x / safe).astype(x.dtype)]  # a zero vector stays zero


@_op("MeanVarianceNormalization")
def _mvn(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    axes = tuple(int(a) % x.ndim for a in _attr(node, "axes", [0, 2, 3]))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
    return [(x - mean) / (jnp.sqrt(var) + 1e-9)]


@_op("RMSNormalization")
def _rms_norm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, scale = xs[0], xs[1]
    axis = _axis(node, x.ndim, -1)
    axes = tuple(range(axis, x.ndim))
    eps = float(_attr(node, "epsilon", 1e-5))
    h = x.astype(jnp.float32)
    y = h / jnp.sqrt(jnp.mean(h * h, axis=axes, keepdims=True) + eps) * scale
    return [y.astype(x.dtype)]


@_op("GroupNormalization")
def _group_norm(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x, scale, bias = xs[0], xs[1], xs[2]
    groups = int(_attr(node, "num_groups"))
    eps = float(_attr(node, "epsilon", 1e-5))
    n, c = x.shape[0], x.shape[1]
    g = x.reshape((n, groups, -1)).astype(jnp.float32)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
    per = (1, c) + (1,) * (x.ndim - 2)
    if scale.shape[0] != c:  # opset 18: scale and bias per group
        scale = jnp.repeat(scale, c // groups)
        bias = jnp.repeat(bias, c // groups)
    return [(y * scale.reshape(per) + bias.reshape(per)).astype(x.dtype)]


@_op("DepthToSpace")
def _depth_to_space(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    b = int(_attr(node, "blocksize"))
    n, c, h, w = x.shape
    if _attr(node, "mode", "DCR") == "DCR":
        t = x.reshape((n, b, b, c // (b * b), h, w)).transpose((0, 3, 4, 1, 5, 2))
    else:  # CRD
        t = x.reshape((n, c // (b * b), b, b, h, w)).transpose((0, 1, 4, 2, 5, 3))
    return [t.reshape((n, c // (b * b), h * b, w * b))]


@_op("SpaceToDepth")
def _space_to_depth(node: Node, xs: list[Any]) -> list[Any]:
    x = xs[0]
    b = int(_attr(node, "blocksize"))
    n, c, h, w = x.shape
    t = x.reshape((n, c, h // b, b, w // b, b))
    if _attr(node, "mode", "DCR") == "CRD":  # the inverse of DepthToSpace's CRD
        t = t.transpose((0, 1, 3, 5, 2, 4))
    else:
        t = t.transpose((0, 3, 5, 1, 2, 4))
    return [t.reshape((n, c * b * b, h // b, w // b))]


@_op("OneHot")
def _one_hot(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    idx, depth_in, values = xs
    depth = int(np.asarray(_static(node, depth_in, "depth")).reshape(-1)[0])
    axis = int(_attr(node, "axis", -1))
    idx = jnp.where(idx < 0, idx + depth, idx)
    rank = idx.ndim + 1
    axis = axis + rank if axis < 0 else axis
    hot = jnp.expand_dims(idx, axis) == jnp.arange(depth).reshape(
        [depth if d == axis else 1 for d in range(rank)]
    )
    return [jnp.where(hot, values[1], values[0])]


@_op("GatherND")
def _gather_nd(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    data, idx = xs
    bd = int(_attr(node, "batch_dims", 0))
    k = idx.shape[-1]
    lead = data.shape[:bd]
    batch = math.prod(lead)
    d = data.reshape((batch, *data.shape[bd:]))
    i = idx.reshape((batch, -1, k))
    dims = jnp.asarray(data.shape[bd : bd + k])
    i = jnp.where(i < 0, i + dims, i)
    picked = jnp.stack([d[b][tuple(i[b].T)] for b in range(batch)])
    return [picked.reshape((*idx.shape[:-1], *data.shape[bd + k :]))]


_SCATTER_REDUCE = {"none": "set", "add": "add", "mul": "multiply", "max": "max", "min": "min"}


@_op("ScatterElements")
def _scatter_elements(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    data, idx, upd = xs
    axis = _axis(node, data.ndim, 0)
    idx = jnp.where(idx < 0, idx + data.shape[axis], idx)
    grid = jnp.meshgrid(*[jnp.arange(n) for n in idx.shape], indexing="ij")
    grid[axis] = idx
    how = _SCATTER_REDUCE.get(str(_attr(node, "reduction", "none")))
    if how is None:
        _fail(node, f"reduction {_attr(node, 'reduction')!r}")
    return [getattr(data.at[tuple(grid)], how)(upd)]


@_op("ScatterND")
def _scatter_nd(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    data, idx, upd = xs
    k = idx.shape[-1]
    i = jnp.where(idx < 0, idx + jnp.asarray(data.shape[:k]), idx)
    how = _SCATTER_REDUCE.get(str(_attr(node, "reduction", "none")))
    if how is None:
        _fail(node, f"reduction {_attr(node, 'reduction')!r}")
    return [getattr(data.at[tuple(jnp.moveaxis(i, -1, 0))], how)(upd)]


@_op("CumProd")
def _cumprod(node: Node, xs: list[Any]) -> list[Any]:
    return _cumulative(node, xs, "cumprod", 1)


for _name, _fn_name in (
    ("BitwiseAnd", "bitwise_and"),
    ("BitwiseOr", "bitwise_or"),
    ("BitwiseXor", "bitwise_xor"),
):
    _TABLE[_name] = _binary(_fn_name)


@_op("BitwiseNot")
def _bitwise_not(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().bitwise_not(xs[0])]


@_op("BitShift")
def _bit_shift(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    fn = jnp.left_shift if _attr(node, "direction") == "LEFT" else jnp.right_shift
    return [fn(xs[0], xs[1])]


@_op("ReduceLogSum")
def _reduce_log_sum(node: Node, xs: list[Any]) -> list[Any]:
    (total,) = _reduce("sum")(node, xs)
    return [_jnp().log(total)]


@_op("LRN")
def _lrn(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    x = xs[0]
    size = int(_attr(node, "size"))
    alpha, beta = float(_attr(node, "alpha", 1e-4)), float(_attr(node, "beta", 0.75))
    bias = float(_attr(node, "bias", 1.0))
    lo, hi = (size - 1) // 2, size // 2  # channels below and above each one
    sq = jnp.pad(x * x, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    window = sum(sq[:, i : i + c] for i in range(size))
    return [x / (bias + alpha / size * window) ** beta]


@_op("Resize", "Upsample")
def _resize(node: Node, xs: list[Any]) -> list[Any]:
    """The CPU backend's arithmetic (graph/ops/_resize.py: output sizes, per-axis taps and
    weights, computed from the static shapes while tracing) applied with jax.numpy, one axis
    after another, in float32."""
    from phi_engine.graph.ops import image
    from phi_engine.graph.registry import OpContext

    jnp = _jnp()
    ctx = OpContext(node)
    data = xs[0]
    params = [None if v is None else _static(node, v, "roi, scales and sizes") for v in xs[1:]]
    mode = image._mode(ctx)
    out, taps = image._plan(ctx, [data, *params])
    integer = jnp.issubdtype(data.dtype, jnp.integer)
    y = data if mode.mode == "nearest" else data.astype(jnp.float32)
    outside = (
        np.zeros(tuple(out), bool) if any(t.outside is not None for t in taps.values()) else None
    )
    for axis, t in taps.items():
        gathered = jnp.take(y, jnp.asarray(t.index.astype(np.int32)), axis=axis)
        if t.weights is None:
            y = jnp.squeeze(gathered, axis=axis + 1)
        else:
            shape = (1,) * axis + t.weights.shape + (1,) * (y.ndim - axis - 1)
            w = jnp.asarray(t.weights.astype(np.float32)).reshape(shape)
            y = jnp.sum(gathered * w, axis=axis + 1)
        if outside is not None and t.outside is not None:
            outside |= t.outside.reshape((1,) * axis + (-1,) + (1,) * (len(out) - axis - 1))
    if mode.mode != "nearest" and integer:  # round half to even and saturate, as on the CPU
        info = jnp.iinfo(data.dtype)
        y = jnp.clip(jnp.round(y), info.min, info.max)
    if outside is not None:
        y = jnp.where(jnp.asarray(outside), jnp.asarray(mode.extrapolation, y.dtype), y)
    return [y.astype(data.dtype)]


_QUANT_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
}


def _quant_param(node: Node, p: Any, shape: tuple[int, ...]) -> Any:
    """A scale or zero point broadcastable against an input of ``shape``: per tensor, per axis
    (1-D along ``axis``) or blocked (``block_size`` elements along ``axis`` per value)."""
    jnp = _jnp()
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = int(_attr(node, "axis", 1)) if node.version >= 13 else 1
    axis = axis + len(shape) if axis < 0 else axis
    block = int(_attr(node, "block_size", 0)) if node.version >= 21 else 0
    if block <= 0:
        return p.reshape([p.size if d == axis else 1 for d in range(len(shape))])
    return jnp.take(jnp.repeat(p, block, axis=axis), jnp.arange(shape[axis]), axis=axis)


@_op("QuantizeLinear")
def _quantize_linear(node: Node, xs: list[Any]) -> list[Any]:
    """round(x / scale) half to even, plus the zero point, saturated (integer targets)."""
    jnp = _jnp()
    data, scale = xs[0], xs[1]
    zp = xs[2] if len(xs) > 2 else None
    target = np.dtype(zp.dtype) if zp is not None else None
    code = int(_attr(node, "output_dtype", 0)) if node.version >= 21 else 0
    if target is None:
        target = np.dtype({2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16}.get(code, np.uint8))
        if code not in (0, 2, 3, 4, 5):
            target = None
    if target is None or target.name not in _QUANT_RANGES:
        _fail(node, "a quantized type other than int8, uint8, int16 or uint16")
    lo, hi = _QUANT_RANGES[target.name]
    s = _quant_param(node, scale, data.shape).astype(jnp.float32)
    q = jnp.round(data.astype(jnp.float32) / s)
    if zp is not None:
        q = q + _quant_param(node, zp, data.shape).astype(jnp.float32)
    return [jnp.clip(q, lo, hi)]


@_op("DequantizeLinear")
def _dequantize_linear(node: Node, xs: list[Any]) -> list[Any]:
    jnp = _jnp()
    data, scale = xs[0], xs[1]
    zp = xs[2] if len(xs) > 2 else None
    v = data.astype(jnp.float32)
    if zp is not None:
        v = v - _quant_param(node, zp, data.shape).astype(jnp.float32)
    return [v * _quant_param(node, scale, data.shape).astype(jnp.float32)]


@_op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(node: Node, xs: list[Any]) -> list[Any]:
    """uint8 over [min(0, min x), max(0, max x)] in float32; a constant-zero input gets the
    scale 1 / 255, as the CPU backend and ONNX Runtime."""
    jnp = _jnp()
    x = xs[0].astype(jnp.float32)
    hi = jnp.maximum(0.0, jnp.max(x))
    lo = jnp.minimum(0.0, jnp.min(x))
    scale = jnp.where(hi != lo, hi - lo, 1.0) / jnp.float32(255)
    zp = jnp.round(jnp.clip(-lo / scale, 0, 255))
    y = jnp.clip(jnp.round(x / scale) + zp, 0, 255)
    return [y, scale, zp]


def _rnn_activation(name: str, alpha: float | None, beta: float | None) -> Callable[[Any], Any]:
    import jax

    jnp = _jnp()
    a, b = alpha or 0.0, beta or 0.0
    table: dict[str, Callable[[Any], Any]] = {
        "relu": lambda x: jnp.maximum(x, 0),
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "softsign": lambda x: x / (1 + jnp.abs(x)),
        "softplus": lambda x: jnp.logaddexp(0, x),
        "affine": lambda x: a * x + b,
        "leakyrelu": lambda x: jnp.where(x >= 0, x, a * x),
        "thresholdedrelu": lambda x: jnp.where(x > a, x, 0.0),
        "scaledtanh": lambda x: a * jnp.tanh(b * x),
        "hardsigmoid": lambda x: jnp.clip(a * x + b, 0, 1),
        "elu": lambda x: jnp.where(x >= 0, x, a * jnp.expm1(jnp.minimum(x, 0))),
    }
    return table[name]


@_op("RNN", "GRU", "LSTM")
def _recurrent(node: Node, xs: list[Any]) -> list[Any]:
    """The CPU backend's recurrence (graph/ops/recurrent.py), step by step in float32 with the
    time loop unrolled: steps at or past a batch entry's ``sequence_lens`` keep its state and
    output zeros; gate pre-activations are clipped when ``clip`` is given."""
    from phi_engine.graph.ops import recurrent as rec

    jnp = _jnp()
    kind = node.op_type
    dirs = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(
        str(_attr(node, "direction", "forward"))
    )
    if dirs is None:
        _fail(node, f"direction {_attr(node, 'direction')!r}")
    per = len(rec._DEFAULT_ACTIVATIONS[kind])
    names = [
        str(n).lower()
        for n in (_attr(node, "activations") or rec._DEFAULT_ACTIVATIONS[kind] * len(dirs))
    ]
    alphas = list(_attr(node, "activation_alpha") or [])
    betas = list(_attr(node, "activation_beta") or [])
    acts = []
    for name in names:
        if name not in rec._PARAMS:
            _fail(node, f"activation {name!r}")
        da, db = rec._PARAMS[name]
        alpha = (float(alphas.pop(0)) if alphas else da) if da is not None else None
        beta = (float(betas.pop(0)) if betas else db) if db is not None else None
        acts.append(_rnn_activation(name, alpha, beta))
    clip = _attr(node, "clip")
    layout = int(_attr(node, "layout", 0)) if node.version >= 14 else 0
    lbr = bool(_attr(node, "linear_before_reset", 0))
    input_forget = bool(_attr(node, "input_forget", 0))

    def cl(v: Any) -> Any:
        return v if clip is None else jnp.clip(v, -float(clip), float(clip))

    def arg(i: int) -> Any:
        return xs[i] if len(xs) > i else None

    data = xs[0].astype(jnp.float32)
    x = data if layout == 0 else jnp.transpose(data, (1, 0, 2))
    seq, batch = int(x.shape[0]), int(x.shape[1])
    w_all, r_all = xs[1].astype(jnp.float32), xs[2].astype(jnp.float32)
    b_all, lens_v, h0_v, c0_v, p_all = (arg(i) for i in range(3, 8))
    hidden = int(r_all.shape[-1])
    gates = rec._GATES[kind]
    n = gates * hidden
    lens = jnp.full((batch,), seq) if lens_v is None else lens_v.reshape(-1)
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        w, r = w_all[d], r_all[d]
        bias = jnp.zeros(2 * n) if b_all is None else b_all[d].astype(jnp.float32)
        wb, rb = bias[:n], bias[n:]
        peep = jnp.zeros(3 * hidden) if p_all is None else p_all[d].astype(jnp.float32)

        def state(v: Any, d: int = d) -> Any:
            if v is None:
                return jnp.zeros((batch, hidden), jnp.float32)
            return (v[:, d] if layout else v[d]).astype(jnp.float32)

        h, c = state(h0_v), state(c0_v)
        fa = acts[d * per : (d + 1) * per]
        xw = jnp.einsum("tbi,gi->tbg", x, w) + wb
        out = [None] * seq
        for t in range(seq - 1, -1, -1) if reverse else range(seq):
            live = (t < lens)[:, None]
            if kind == "RNN":
                h_new, c_new = fa[0](cl(xw[t] + h @ r.T + rb)), c
            elif kind == "GRU":
                hr = h @ r[: 2 * hidden].T + rb[: 2 * hidden]
                z = fa[0](cl(xw[t][:, :hidden] + hr[:, :hidden]))
                reset = fa[0](cl(xw[t][:, hidden : 2 * hidden] + hr[:, hidden:]))
                rh, rbh = r[2 * hidden :], rb[2 * hidden :]
                if lbr:
                    cand = xw[t][:, 2 * hidden :] + reset * (h @ rh.T + rbh)
                else:
                    cand = xw[t][:, 2 * hidden :] + (reset * h) @ rh.T + rbh
                h_new, c_new = (1 - z) * fa[1](cl(cand)) + z * h, c
            else:
                g = xw[t] + h @ r.T + rb  # gates i, o, f, c
                i = fa[0](cl(g[:, :hidden] + peep[:hidden] * c))
                f = (
                    1 - i
                    if input_forget
                    else fa[0](cl(g[:, 2 * hidden : 3 * hidden] + peep[2 * hidden :] * c))
                )
                c_new = f * c + i * fa[1](cl(g[:, 3 * hidden :]))
                o = fa[0](cl(g[:, hidden : 2 * hidden] + peep[hidden : 2 * hidden] * c_new))
                h_new = o * fa[2](c_new)
            h, c = jnp.where(live, h_new, h), jnp.where(live, c_new, c)
            out[t] = jnp.where(live, h, 0.0)
        ys.append(jnp.stack(out) if seq else jnp.zeros((0, batch, hidden), jnp.float32))
        hs.append(h)
        cs.append(c)
    y_all = jnp.stack(ys, axis=1)  # (seq, dirs, batch, hidden)
    h_all, c_all = jnp.stack(hs), jnp.stack(cs)
    if layout:
        y_all = jnp.transpose(y_all, (2, 0, 1, 3))
        h_all, c_all = jnp.transpose(h_all, (1, 0, 2)), jnp.transpose(c_all, (1, 0, 2))
    return [y_all, h_all, c_all][: max(len(node.outputs), 1)]


# Ops whose output shape depends on the data (NonZero, Compress, Unique, NonMaxSuppression) or
# that generate a table from scalars (the window functions, MelWeightMatrix): XLA compiles only
# static shapes, so they run on the numpy reference on concrete values. Known while tracing (a
# constant or shape arithmetic), they fold into the program; fed by a traced value, the model
# runs op by op instead of as one compiled program (as for a shape computed from an input).
_ON_VALUES = (
    "NonZero",
    "Compress",
    "Unique",
    "NonMaxSuppression",
    "HannWindow",
    "HammingWindow",
    "BlackmanWindow",
    "MelWeightMatrix",
)


def _on_values(node: Node, xs: list[Any]) -> list[Any]:
    from phi_engine.graph.registry import get_op

    args = [None if v is None else _static(node, v, "its input") for v in xs]
    return get_op(node.domain, node.op_type).run_reference(node, args)


for _name in _ON_VALUES:
    _TABLE[_name] = _on_values


@_op("Det")
def _det(node: Node, xs: list[Any]) -> list[Any]:
    return [_jnp().linalg.det(xs[0])]


@_op("ReverseSequence")
def _reverse_sequence(node: Node, xs: list[Any]) -> list[Any]:
    """Each batch entry's first ``sequence_lens[b]`` steps reversed, the rest kept."""
    jnp = _jnp()
    x, lens = xs
    time_axis = int(_attr(node, "time_axis", 0))
    batch_axis = int(_attr(node, "batch_axis", 1))
    steps = x.shape[time_axis]
    t = jnp.arange(steps)[:, None]  # (time, batch)
    n = lens.reshape(1, -1).astype(t.dtype)
    src = jnp.where(t < n, n - 1 - t, t)
    shape = [1] * x.ndim
    shape[time_axis], shape[batch_axis] = steps, x.shape[batch_axis]
    if time_axis > batch_axis:
        src = src.T
    return [jnp.take_along_axis(x, src.reshape(shape), axis=time_axis)]


@_op("DFT")
def _dft(node: Node, xs: list[Any]) -> list[Any]:
    """The CPU backend's DFT (graph/ops/signal.py) with jnp.fft: the last axis holds the real
    (1) or real and imaginary (2) parts."""
    from phi_engine.graph.ops import signal
    from phi_engine.graph.registry import OpContext

    jnp = _jnp()
    ctx = OpContext(node)
    data = xs[0]
    axis_in = xs[2] if node.version >= 20 and len(xs) > 2 else None
    axis = signal._dft_axis(
        ctx, None if axis_in is None else _static(node, axis_in, "axis"), data.ndim
    )
    inverse, onesided = signal._dft_flags(ctx)
    if data.shape[-1] not in (1, 2):
        _fail(node, f"an input of shape {list(data.shape)} (its last axis must be 1 or 2)")
    z = data[..., 0] if data.shape[-1] == 1 else data[..., 0] + 1j * data[..., 1]
    length = xs[1] if len(xs) > 1 else None
    if length is not None:
        n = int(np.asarray(_static(node, length, "dft_length")).reshape(-1)[0])
    else:
        n = 2 * (z.shape[axis] - 1) if inverse and onesided else z.shape[axis]
    if inverse and onesided:
        return [jnp.fft.irfft(z, n=n, axis=axis)[..., None]]
    y = jnp.fft.ifft(z, n=n, axis=axis) if inverse else jnp.fft.fft(z, n=n, axis=axis)
    if onesided:
        y = jnp.take(y, jnp.arange(n // 2 + 1), axis=axis)
    return [jnp.stack([y.real, y.imag], axis=-1)]


@_op("CenterCropPad")
def _center_crop_pad(node: Node, xs: list[Any]) -> list[Any]:
    """Each listed axis cropped or zero-padded to its size around the centre; an odd difference
    leaves the extra element at the end."""
    jnp = _jnp()
    data = xs[0]
    sizes = [int(v) for v in np.ravel(_static(node, xs[1], "shape"))]
    axes_attr = _attr(node, "axes")
    axes = list(range(data.ndim)) if axes_attr is None else [int(a) % data.ndim for a in axes_attr]
    y = data
    for a, size in zip(axes, sizes, strict=True):
        d = y.shape[a]
        start = abs(d - size) // 2
        if size < d:
            y = jnp.take(y, jnp.arange(start, start + size), axis=a)
        elif size > d:
            widths = [(0, 0)] * y.ndim
            widths[a] = (start, size - d - start)
            y = jnp.pad(y, widths)
    return [y]


@_op("LpPool", "GlobalLpPool")
def _lp_pool(node: Node, xs: list[Any]) -> list[Any]:
    """(sum over the window of |x|^p)^(1/p); padding counts as zeros."""
    from jax import lax

    jnp = _jnp()
    x = xs[0]
    p = float(_attr(node, "p", 2))
    n = x.ndim - 2
    if node.op_type == "GlobalLpPool":
        total = jnp.sum(jnp.abs(x) ** p, axis=tuple(range(2, x.ndim)), keepdims=True)
        return [total ** (1.0 / p)]
    kernel = tuple(int(k) for k in _attr(node, "kernel_shape"))
    strides = tuple(int(s) for s in _attr(node, "strides", [1] * n))
    dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * n))
    if _attr(node, "ceil_mode", 0):
        _fail(node, "ceil_mode")
    padding = [(0, 0), (0, 0), *_conv_padding(node, x.shape[2:], kernel, strides, dilations)]
    total = lax.reduce_window(
        jnp.abs(x) ** p, jnp.array(0, x.dtype), lax.add, (1, 1, *kernel), (1, 1, *strides),
        padding, window_dilation=(1, 1, *dilations),
    )  # fmt: skip
    return [total ** (1.0 / p)]


@_op("MatMulInteger")
def _matmul_integer(node: Node, xs: list[Any]) -> list[Any]:
    """(a - a_zero_point) @ (b - b_zero_point), accumulated exactly in int32."""
    jnp = _jnp()
    a, b = xs[0].astype(jnp.int32), xs[1].astype(jnp.int32)
    if len(xs) > 2 and xs[2] is not None:
        za = xs[2].astype(jnp.int32)
        a = a - (za.reshape(-1, 1) if za.ndim == 1 and za.size > 1 else za)
    if len(xs) > 3 and xs[3] is not None:
        b = b - xs[3].astype(jnp.int32)
    return [jnp.matmul(a, b, preferred_element_type=jnp.int32)]


_TABLE["Scatter"] = _TABLE["ScatterElements"]  # Scatter-9/11: ScatterElements' former name


def _weighted_loss(node: Node, logp: Any, target: Any, weight: Any | None) -> Any:
    """The CPU backend's loss (graph/ops/loss.py): ``-logp[n, target, ...]`` weighted by
    ``weight[target]``; ``ignore_index`` targets count nowhere; ``mean`` divides by the weights
    that applied. An out-of-range target, which the CPU backend refuses, makes the loss NaN
    here (a compiled program cannot raise), never a silently wrong number."""
    jnp = _jnp()
    c = logp.shape[1]
    t = target.astype(jnp.int32)
    ignore = _attr(node, "ignore_index")
    keep = jnp.ones(t.shape, bool) if ignore is None else t != int(ignore)
    inside = (t >= 0) & (t < c)
    safe = jnp.where(keep & inside, t, 0)
    picked = jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    picked = jnp.where(keep & ~inside, jnp.nan, picked)
    w = jnp.ones(t.shape, logp.dtype) if weight is None else weight.astype(logp.dtype)[safe]
    w = jnp.where(keep, w, 0)
    loss = -picked * w
    reduction = str(_attr(node, "reduction", "mean"))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / w.sum()
    if reduction != "none":
        _fail(node, f"reduction {reduction!r}")
    return jnp.where(keep, loss, 0)


@_op("NegativeLogLikelihoodLoss")
def _nll_loss(node: Node, xs: list[Any]) -> list[Any]:
    weight = xs[2] if len(xs) > 2 else None
    return [_weighted_loss(node, xs[0].astype(_jnp().float32), xs[1], weight)]


@_op("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy_loss(node: Node, xs: list[Any]) -> list[Any]:
    import jax

    weight = xs[2] if len(xs) > 2 else None
    logp = jax.nn.log_softmax(xs[0].astype(_jnp().float32), axis=1)
    loss = _weighted_loss(node, logp, xs[1], weight)
    return [loss, logp] if len(node.outputs) > 1 else [loss]


OPS: tuple[str, ...] = tuple(sorted(_TABLE))
"""The ONNX ops (default domain) this backend runs."""


def _why_not(node: Node) -> str | None:
    """What about this node the backend does not run, if anything (attributes, outputs)."""
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output"
    if node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0):
        return "training mode"
    if node.op_type == "LpNormalization" and int(node.attrs.get("p", 2)) not in (1, 2):
        return f"p={node.attrs['p']}"
    if node.op_type == "LpPool" and node.attrs.get("ceil_mode", 0):
        return "ceil_mode"
    if node.op_type in ("RNN", "GRU", "LSTM"):
        from phi_engine.graph.ops import recurrent

        if str(node.attrs.get("direction", "forward")) not in (
            "forward",
            "reverse",
            "bidirectional",
        ):
            return f"direction {node.attrs['direction']!r}"
        names = [str(n).lower() for n in node.attrs.get("activations") or []]
        odd = [n for n in names if n not in recurrent._PARAMS]
        if odd:
            return f"activation {odd[0]!r}"
    return None


def check_graph(graph: Graph) -> None:
    """Refuse, at compile time, a graph with ops, attributes or element types this backend does
    not run (naming each node).

    Raises:
        UnsupportedError: the list of what it cannot run.
    """
    allowed = _DTYPES if _x64() else _DTYPES - {np.dtype(np.float64), np.dtype(np.uint64)}
    missing = []
    for n in graph.nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in _TABLE:
            missing.append(f"{n.op_type} (node {n.label!r})")
        elif (why := _why_not(n)) is not None:
            missing.append(f"{n.op_type} with {why} (node {n.label!r})")
        else:
            odd = [
                graph.types[v].dtype.name
                for v in (*n.inputs, *n.outputs)
                if v and v in graph.types and graph.types[v].dtype not in allowed
            ]
            if odd:
                missing.append(f"{n.op_type} on {odd[0]} (node {n.label!r})")
    for v in (*graph.inputs, *graph.outputs):
        t = graph.types.get(v)
        if t is not None and t.dtype not in allowed:
            missing.append(f"{t.dtype.name} value {v!r}")
    if missing:
        raise UnsupportedError(
            "[compile] device 'xla' does not run these yet: "
            + ", ".join(missing[:20])
            + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            + (
                " (float64 and uint64 need JAX's jax_enable_x64, which phi_engine leaves as JAX "
                "has it; export the model in float32)"
                if any("float64" in m or "uint64" in m for m in missing)
                else ""
            ),
            field="device",
        )


def _x64() -> bool:
    """Whether JAX runs with 64-bit types (``jax_enable_x64``)."""
    import jax

    config: Any = jax.config  # jax's config object is untyped
    return bool(config.read("jax_enable_x64"))


def _to_jax_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype a value travels in: int64 as int32 (JAX's default), float64 refused unless x64."""
    if _x64():
        return dtype
    if dtype == np.int64:
        return np.dtype(np.int32)
    if dtype == np.uint64:
        return np.dtype(np.uint32)
    if dtype == np.float64:
        raise UnsupportedError(
            "[xla] float64 values need JAX's jax_enable_x64 (phi_engine does not change JAX's "
            "global settings); export the model in float32",
            field="device",
        )
    return dtype


class XlaProgram:
    """One input shape's graph, traced into a ``jax.jit`` function of (inputs, weights)."""

    def __init__(self, graph: Graph) -> None:
        import jax

        check_graph(graph)
        self.graph = graph
        # Small integer constants (shapes, axes, indices) stay numpy values, known while tracing;
        # everything else is an argument of the compiled function.
        self._static: dict[str, np.ndarray] = {}
        self._weights: dict[str, Any] = {}
        for name, value in graph.constants.items():
            if value.dtype.kind in "iub" and value.size <= 1024:
                self._static[name] = value  # exact (an int64 bound such as INT64_MAX stays so)
            else:
                self._weights[name] = jax.device_put(value.astype(_to_jax_dtype(value.dtype)))
        self._in_dtypes = {n: _to_jax_dtype(graph.types[n].dtype) for n in graph.inputs}
        self._out_dtypes = [graph.types[n].dtype for n in graph.outputs]
        self._fn = jax.jit(self._trace)
        self.steps: tuple[Any, ...] = ()  # no native segments: XLA plans its own memory
        self._eager = False

    def _trace(self, feeds: dict[str, Any], weights: dict[str, Any]) -> list[Any]:
        from phi_engine.graph.registry import get_op

        jnp = _jnp()
        env: dict[str, Any] = {**self._static, **weights, **feeds}
        for node in self.graph.nodes:
            args = [env[i] if i else None for i in node.inputs]
            if all(a is None or isinstance(a, np.ndarray) for a in args):
                # Known while tracing (shape arithmetic): the exact numpy reference computes it,
                # and it stays a numpy value, usable where an op needs a static shape or axes.
                outs = get_op(node.domain, node.op_type).run_reference(node, args)
            else:
                outs = _TABLE[node.op_type](node, args)
            for name, value in zip(node.outputs, outs, strict=False):
                t = self.graph.types.get(name) if name else None
                if t is None:
                    continue
                if isinstance(value, np.ndarray):  # a known value: numpy keeps its exact type
                    env[name] = value.astype(t.dtype, copy=False)
                else:
                    env[name] = value.astype(_to_jax_dtype(t.dtype))
        return [jnp.asarray(env[name]) for name in self.graph.outputs]

    def run(self, inputs: Mapping[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
        """Run on these inputs (``threads`` is XLA's to choose and is ignored)."""
        import jax

        feeds = {
            n: np.asarray(inputs[n]).astype(self._in_dtypes[n], copy=False)
            for n in self.graph.inputs
        }
        # Products in full float32, as compile's precision "fp32" promises: JAX's default on a
        # GPU is TF32 (about 1e-3 relative). The setting is part of jit's cache key.
        with jax.default_matmul_precision("highest"):
            if self._eager:
                outs = self._trace(feeds, self._weights)
            else:
                try:
                    outs = self._fn(feeds, self._weights)  # compiled on the first call
                except _NeedsValues:
                    # An input feeds a shape, axes or bounds (a model that computes its own
                    # reshape target from an input, as some ONNX tests do): run op by op on
                    # concrete values, which JAX dispatches eagerly; correct, not one program.
                    self._eager = True
                    outs = self._trace(feeds, self._weights)
        return {
            name: np.asarray(value).astype(dtype, copy=False)
            for name, value, dtype in zip(self.graph.outputs, outs, self._out_dtypes, strict=True)
        }
