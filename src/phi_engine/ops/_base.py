"""Shared plumbing of the eager op wrappers: the call into the core and argument checks.

Inputs go to the core as they are: it converts array-likes with numpy (copying only what is not
already a C-contiguous array), refuses dtypes it does not support, and raises
:class:`~phi_engine.errors.InvalidRequestError` naming the op. Keeping this path thin matters:
it is the whole overhead of a small eager call. The helpers below turn the arguments a wrapper
reshapes itself (an int or a pair, a scalar bound) into attribute values, with the same errors.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")


def run(
    op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0
) -> list[np.ndarray]:
    """Run the native op ``op`` on ``inputs`` (None for an absent optional input).

    Raises:
        InvalidRequestError: ``threads`` is not a non-negative integer, or the core refuses an
            input or attribute (the message starts with ``[op]``).
    """
    if type(threads) is not int or threads < 0:
        raise InvalidRequestError(f"[{op}] threads must be a non-negative integer", field="threads")
    result: list[np.ndarray] = require_core().run_op(op, inputs, attrs or {}, threads)
    return result


def run1(
    op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0
) -> np.ndarray:
    """Run an op with a single output and return it."""
    return run(op, inputs, attrs, threads)[0]


def int_attr(op: str, name: str, value: Any) -> int:
    """``value`` as a Python int (numpy integers included), or an error naming the op.

    Raises:
        InvalidRequestError: ``value`` is not an integer (a float is refused, not truncated).
    """
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidRequestError(
            f"[{op}] {name} must be an integer, got {type(value).__name__}", field=name
        ) from None


def ints_attr(op: str, name: str, value: Any, repeat: int | None = None) -> list[int]:
    """A sequence of integers as a list; a single integer is repeated ``repeat`` times if given.

    Raises:
        InvalidRequestError: ``value`` is not a sequence of integers (nor, with ``repeat``, one
            integer).
    """
    if repeat is not None:
        try:
            return [operator.index(value)] * repeat
        except TypeError:
            pass  # not a single integer: a sequence, then
    items: list[Any] | None = None
    if not isinstance(value, (str, bytes)):
        try:
            items = list(value)
        except TypeError:
            items = None
    if items is None:
        raise InvalidRequestError(
            f"[{op}] {name} must be a sequence of integers, got {type(value).__name__}", field=name
        )
    return [int_attr(op, name, v) for v in items]


def float_attr(op: str, name: str, value: Any) -> float:
    """A finite real number (int, float or numpy scalar) as a Python float.

    Raises:
        InvalidRequestError: ``value`` is not a real number (strings are refused, not parsed),
            or it is NaN, infinite, or too large for a float.
    """
    kind = type(value)
    # The exact-type test first: an isinstance check against the numbers ABC costs ~0.7 us, as
    # much as the rest of a small eager call.
    if kind is not float and kind is not int and not isinstance(value, numbers.Real):
        raise InvalidRequestError(
            f"[{op}] {name} must be a number, got {kind.__name__}", field=name
        )
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise InvalidRequestError(f"[{op}] {name} must be finite, got {value!r}", field=name)
    return result


def optional_float_attr(op: str, name: str, value: Any) -> float | None:
    """:func:`float_attr`, with None passed through (an attribute left at its default)."""
    return None if value is None else float_attr(op, name, value)


def flag_attr(op: str, name: str, value: Any) -> bool:
    """``bool(value)``, with an error naming the op where that is ambiguous (a numpy array).

    Raises:
        InvalidRequestError: ``value`` has no truth value.
    """
    if value is True or value is False:
        return value
    try:
        return bool(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"[{op}] {name} must be a bool, got {type(value).__name__}", field=name
        ) from None
