"""Shared plumbing of the eager op wrappers: argument checks and the call into the core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")


def as_array(x: Any, op: str, name: str) -> np.ndarray | None:
    """Turn an array-like into a numpy array, refusing objects numpy cannot type."""
    if x is None or isinstance(x, np.ndarray):
        return x
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"[{op}] {name} is not array-like: {exc}", field=name) from None
    if arr.dtype == object:
        raise InvalidRequestError(f"[{op}] {name} is not a numeric array", field=name)
    return arr


def run(op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0) -> list[np.ndarray]:
    """Run the native op ``op`` on ``inputs`` (None for an absent optional input)."""
    if not isinstance(threads, int) or threads < 0:
        raise InvalidRequestError(f"[{op}] threads must be a non-negative integer", field="threads")
    arrays = [as_array(x, op, f"input {i}") for i, x in enumerate(inputs)]
    result: list[np.ndarray] = require_core().run_op(op, arrays, attrs or {}, threads)
    return result


def run1(op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0) -> np.ndarray:
    """Run an op with a single output and return it."""
    return run(op, inputs, attrs, threads)[0]
