"""Shared plumbing of the eager op wrappers: the call into the core.

Inputs go to the core as they are: it converts array-likes with numpy (copying only what is not
already a C-contiguous array), refuses dtypes it does not support, and raises
:class:`~phi_engine.errors.InvalidRequestError` naming the op. Keeping this path thin matters:
it is the whole overhead of a small eager call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")


def run(
    op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0
) -> list[np.ndarray]:
    """Run the native op ``op`` on ``inputs`` (None for an absent optional input)."""
    if type(threads) is not int or threads < 0:
        raise InvalidRequestError(f"[{op}] threads must be a non-negative integer", field="threads")
    result: list[np.ndarray] = require_core().run_op(op, inputs, attrs or {}, threads)
    return result


def run1(
    op: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, threads: int = 0
) -> np.ndarray:
    """Run an op with a single output and return it."""
    return run(op, inputs, attrs, threads)[0]
