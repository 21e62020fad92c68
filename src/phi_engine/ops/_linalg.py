"""GEMM and batched matmul with fused epilogues, and weights packed once for repeated GEMMs."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError
from phi_engine.ops._base import flag_attr, float_attr, optional_float_attr, run1


class PackedWeights:
    """A weight matrix packed once for :func:`gemm` (made by :func:`pack_weights`).

    The packed form is laid out for the CPU's GEMM micro-kernel, so a call with few rows reads
    it once instead of re-packing the weights as a BLAS call does. Immutable; safe to share
    between threads.
    """

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def shape(self) -> tuple[int, int]:
        """``(K, N)``: the shape of ``op(b)`` in ``a @ op(b)``."""
        return (int(self._native.k), int(self._native.n))

    @property
    def nbytes(self) -> int:
        """Bytes of packed storage (column panels, the last zero-padded)."""
        return int(self._native.nbytes)

    @property
    def dtype(self) -> str:
        """Element type of the packed storage: ``"float32"`` or ``"bfloat16"``."""
        return str(self._native.dtype)

    def __repr__(self) -> str:
        k, n = self.shape
        return f"PackedWeights(shape=({k}, {n}), dtype={self.dtype}, nbytes={self.nbytes})"


def pack_weights(
    w: ArrayLike, *, trans_b: bool = False, threads: int = 0, dtype: str = "float32"
) -> PackedWeights:
    """Pack a float32 weight matrix once, for :func:`gemm` calls that reuse it.

    Worth it when the same weights meet few rows many times (inference at small batch): the
    packed kernel beats BLAS by up to 3x there. The packed copy is separate from ``w``, which
    may be changed or freed afterwards.

    Args:
        w: ``(K, N)`` float32, or ``(N, K)`` when ``trans_b`` (a linear layer's ``(out, in)``).
        trans_b: ``w`` is stored transposed; the packing keeps the orientation, so calls with
            the result pass no ``trans_b``.
        threads: Threads to pack on (0: the default, see :func:`phi_engine.set_num_threads`).
        dtype: ``"float32"`` (exact), or ``"bfloat16"``: each weight rounded to bfloat16 (8
            significant bits, relative error up to 2^-9), half the bytes. Products of few rows
            stream the weights and run up to twice as fast; activations, accumulation and the
            result stay float32. Opt-in: results differ from float32 weights by about 0.3 %.

    Returns:
        The packed weights, accepted as ``b`` by :func:`gemm`.

    Raises:
        InvalidRequestError: ``w`` is not a 2-D float32 array, or ``threads`` is not a
            non-negative integer.
    """
    flag = flag_attr("pack_weights", "trans_b", trans_b)
    if dtype not in ("float32", "bfloat16"):
        raise InvalidRequestError(
            f"[pack_weights] dtype must be 'float32' or 'bfloat16', got {dtype!r}", field="dtype"
        )
    native = require_core().pack_weights(w, flag, _threads("pack_weights", threads), dtype)
    return PackedWeights(native)


def _threads(op: str, threads: Any) -> int:
    """``threads`` checked as :func:`phi_engine.ops._base.run` checks it."""
    if type(threads) is not int or threads < 0:
        raise InvalidRequestError(f"[{op}] threads must be a non-negative integer", field="threads")
    return threads


def gemm(
    a: ArrayLike,
    b: ArrayLike | PackedWeights,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    alpha: float = 1.0,
    trans_a: bool = False,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``activation(alpha * op(a) @ op(b) + bias + residual)`` in one fused float32 pass.

    Args:
        a: ``(M, K)`` float32 (``(K, M)`` when ``trans_a``).
        b: ``(K, N)`` float32 (``(N, K)`` when ``trans_b``: the layout of a linear layer's weight),
            or :class:`PackedWeights` of ``op(b)`` (then ``trans_b`` must be False).
        bias: ``(N,)`` or a scalar, added to every row.
        activation: ``none``, ``relu``, ``gelu`` (erf), ``gelu_tanh``, ``tanh``, ``sigmoid`` or
            ``clip`` (with ``clip_min``/``clip_max``; ``relu6`` is clip 0..6).
        residual: ``(M, N)``, added before the activation.
        alpha: Scale of the product.
        threads: Threads to use (0: the default, see :func:`phi_engine.set_num_threads`).

    Returns:
        The ``(M, N)`` float32 result.

    Raises:
        InvalidRequestError: wrong dtype, rank, or mismatched shapes (the message says which),
            a non-finite ``alpha`` or clip bound, or ``trans_b`` with :class:`PackedWeights`.
    """
    attrs = {
        "activation": activation or "none",
        "alpha": float_attr("gemm", "alpha", alpha),
        "trans_a": flag_attr("gemm", "trans_a", trans_a),
        "trans_b": flag_attr("gemm", "trans_b", trans_b),
        "clip_min": optional_float_attr("gemm", "clip_min", clip_min),
        "clip_max": optional_float_attr("gemm", "clip_max", clip_max),
    }
    if isinstance(b, PackedWeights):
        core = require_core()
        result: np.ndarray = core.gemm_packed(
            a, b._native, bias, residual, attrs, _threads("gemm", threads)
        )
        return result
    return run1("gemm", [a, b, bias, residual], attrs, threads)


def matmul(
    a: ArrayLike,
    b: ArrayLike,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    alpha: float = 1.0,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``numpy.matmul`` (broadcast batch dimensions) with the fused epilogue of :func:`gemm`.

    Args:
        a: ``(..., M, K)`` float32, or ``(K,)``.
        b: ``(..., K, N)`` float32 (``(..., N, K)`` when ``trans_b``), or ``(K,)``.
        bias, activation, residual, alpha, clip_min, clip_max, threads: as in :func:`gemm`;
            ``residual`` has the output's shape.

    Returns:
        The float32 product with numpy's output shape.

    Raises:
        InvalidRequestError: wrong dtype, rank, or shapes that do not broadcast, or a
            non-finite ``alpha`` or clip bound.
    """
    attrs = {
        "activation": activation or "none",
        "alpha": float_attr("matmul", "alpha", alpha),
        "trans_b": flag_attr("matmul", "trans_b", trans_b),
        "clip_min": optional_float_attr("matmul", "clip_min", clip_min),
        "clip_max": optional_float_attr("matmul", "clip_max", clip_max),
    }
    return run1("matmul", [a, b, bias, residual], attrs, threads)
