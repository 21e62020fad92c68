"""Elementwise ops: unary math, binary arithmetic and comparisons with numpy broadcasting, where.

Unary ops take and return float32. Binary ops broadcast like numpy; both operands must have the
same dtype (no type promotion), except that a Python ``int`` or ``float`` operand takes the
dtype of the array beside it, as numpy's weak scalars do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine.errors import InvalidRequestError
from phi_engine.ops._base import float_attr, optional_float_attr, run1


def _unary(op: str, x: ArrayLike, threads: int, attrs: dict[str, Any] | None = None) -> np.ndarray:
    return run1(op, [x], attrs, threads)


def neg(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``-x`` (float32).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("neg", x, threads)


def abs(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``|x|`` (float32).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("abs", x, threads)


def exp(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``e**x`` (float32, relative error < 3e-7; overflows to inf and underflows to 0 like numpy).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("exp", x, threads)


def log(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Natural logarithm (float32, relative error < 2e-7; ``-inf`` at 0 and NaN below 0).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("log", x, threads)


def sqrt(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Square root (float32, correctly rounded; NaN below 0).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("sqrt", x, threads)


def reciprocal(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``1 / x`` (float32, correctly rounded).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("reciprocal", x, threads)


def relu(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``max(x, 0)`` (float32; NaN stays NaN).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("relu", x, threads)


def gelu(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """GELU, erf form ``0.5 x (1 + erf(x / √2))`` (float32, absolute error < 5e-7 · (1 + |x|)).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("gelu", x, threads)


def gelu_tanh(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """GELU, tanh form ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`` (float32).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("gelu_tanh", x, threads)


def tanh(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Hyperbolic tangent (float32, absolute error < 3e-7).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("tanh", x, threads)


def sigmoid(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Logistic function ``1 / (1 + e**-x)`` (float32, absolute error < 3e-7).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("sigmoid", x, threads)


def erf(x: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Error function (float32, absolute error < 5e-7: a rational function of x², see math.h).

    Args:
        x: A float32 array.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32.
    """
    return _unary("erf", x, threads)


def clip(
    x: ArrayLike, min: float | None = None, max: float | None = None, *, threads: int = 0
) -> np.ndarray:
    """Clamp ``x`` to ``[min, max]`` (float32; NaN stays NaN).

    Args:
        x: A float32 array.
        min: Lower bound (``None``: unbounded).
        max: Upper bound (``None``: unbounded).
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32, a bound is not finite, or ``min > max``.
    """
    attrs = {
        "min": optional_float_attr("clip", "min", min),
        "max": optional_float_attr("clip", "max", max),
    }
    return _unary("clip", x, threads, attrs)


def leaky_relu(x: ArrayLike, alpha: float = 0.01, *, threads: int = 0) -> np.ndarray:
    """``x`` where ``x >= 0``, else ``alpha * x`` (float32).

    Args:
        x: A float32 array.
        alpha: Slope for negative inputs.
        threads: Threads to use (0: the default).

    Returns:
        A new float32 array of ``x``'s shape.

    Raises:
        InvalidRequestError: ``x`` is not float32 or ``alpha`` is not finite.
    """
    return _unary("leaky_relu", x, threads, {"alpha": float_attr("leaky_relu", "alpha", alpha)})


def _weak(op: str, value: Any, other: Any) -> Any:
    """A Python int/float beside an array takes the array's dtype (numpy's weak scalars).

    Raises:
        InvalidRequestError: an int outside the array's integer dtype (numpy raises
            OverflowError there too, rather than wrapping it).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    dtype: Any = np.float32 if isinstance(value, float) else np.int64
    if isinstance(other, np.ndarray) and other.dtype.kind in "iuf":
        if isinstance(value, float) and other.dtype.kind != "f":
            return value  # 0.5 + int array: no silent truncation; the dtype check reports it
        dtype = other.dtype
    try:
        return np.asarray(value, dtype=dtype)
    except OverflowError:
        raise InvalidRequestError(
            f"[{op}] the Python int {value} does not fit in {np.dtype(dtype).name}"
        ) from None


def _binary(
    op: str, a: Any, b: Any, threads: int, attrs: dict[str, Any] | None = None
) -> np.ndarray:
    return run1(op, [_weak(op, a, b), _weak(op, b, a)], attrs, threads)


def _fused(
    op: str, activation: str | None, clip_min: float | None, clip_max: float | None
) -> dict[str, Any]:
    return {
        "activation": activation or "none",
        "clip_min": optional_float_attr(op, "clip_min", clip_min),
        "clip_max": optional_float_attr(op, "clip_max", clip_max),
    }


def add(
    a: ArrayLike,
    b: ArrayLike,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``activation(a + b)`` with numpy broadcasting, in one pass (bias + activation chains).

    Args:
        a: float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        activation: ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``tanh``, ``sigmoid`` or
            ``clip`` (bounds ``clip_min``/``clip_max``); float32 only.
        clip_min: Lower bound of the ``clip`` activation.
        clip_max: Upper bound of the ``clip`` activation.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype. Integers wrap around.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, shapes that do not broadcast, an
            unknown activation, or an activation on integer inputs.
    """
    return _binary("add", a, b, threads, _fused("add", activation, clip_min, clip_max))


def mul(
    a: ArrayLike,
    b: ArrayLike,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``activation(a * b)`` with numpy broadcasting, in one pass.

    Args:
        a: float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        activation: As in :func:`add`; float32 only.
        clip_min: Lower bound of the ``clip`` activation.
        clip_max: Upper bound of the ``clip`` activation.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype. Integers wrap around.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, shapes that do not broadcast, an
            unknown activation, or an activation on integer inputs.
    """
    return _binary("mul", a, b, threads, _fused("mul", activation, clip_min, clip_max))


def sub(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a - b`` with numpy broadcasting (integers wrap around).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("sub", a, b, threads)


def div(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a / b`` with numpy broadcasting (correctly rounded).

    Args:
        a: A float32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("div", a, b, threads)


def pow(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a ** b`` with numpy broadcasting.

    libm ``powf``; a one-element exponent of 1, 2, 0.5 or -1 takes a vectorised loop instead.

    Args:
        a: A float32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("pow", a, b, threads)


def maximum(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Elementwise maximum with numpy broadcasting; NaN if either side is NaN.

    Args:
        a: A float32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("maximum", a, b, threads)


def minimum(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """Elementwise minimum with numpy broadcasting; NaN if either side is NaN.

    Args:
        a: A float32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and the inputs' dtype.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("minimum", a, b, threads)


def equal(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a == b`` with numpy broadcasting, as a bool array (NaN is unequal and unordered).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new bool array of the broadcast shape.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("equal", a, b, threads)


def less(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a < b`` with numpy broadcasting, as a bool array (NaN is unequal and unordered).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new bool array of the broadcast shape.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("less", a, b, threads)


def greater(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a > b`` with numpy broadcasting, as a bool array (NaN is unequal and unordered).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new bool array of the broadcast shape.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("greater", a, b, threads)


def less_equal(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a <= b`` with numpy broadcasting, as a bool array (NaN is unequal and unordered).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new bool array of the broadcast shape.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("less_equal", a, b, threads)


def greater_equal(a: ArrayLike, b: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``a >= b`` with numpy broadcasting, as a bool array (NaN is unequal and unordered).

    Args:
        a: A float32, int64 or int32 array (or a Python number).
        b: An array of ``a``'s dtype, broadcastable against ``a``.
        threads: Threads to use (0: the default).

    Returns:
        A new bool array of the broadcast shape.

    Raises:
        InvalidRequestError: unsupported or mismatched dtypes, or shapes that do not broadcast.
    """
    return _binary("greater_equal", a, b, threads)


def where(condition: ArrayLike, x: ArrayLike, y: ArrayLike, *, threads: int = 0) -> np.ndarray:
    """``x`` where ``condition`` else ``y``, all three broadcast together (``numpy.where``).

    Args:
        condition: A bool array.
        x: float32, int64, int32 or bool array (or a Python number).
        y: An array of ``x``'s dtype.
        threads: Threads to use (0: the default).

    Returns:
        A new array of the broadcast shape and ``x``'s dtype.

    Raises:
        InvalidRequestError: ``condition`` is not bool, ``x`` and ``y`` differ in dtype, or the
            shapes do not broadcast.
    """
    return run1("where", [condition, _weak("where", x, y), _weak("where", y, x)], None, threads)
