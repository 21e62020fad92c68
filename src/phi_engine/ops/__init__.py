"""Every native kernel as a numpy-in, numpy-out function.

These run the same code a compiled model runs, one op at a time: for tests, benchmarks and
users who want a fast fused kernel without a model. Each has a numpy reference of the same name
in :mod:`phi_engine.runtime.reference`.
"""

from __future__ import annotations

from phi_engine.ops._linalg import gemm, matmul

__all__ = [
    "gemm",
    "matmul",
]
