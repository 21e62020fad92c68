"""The numpy reference: one function per native kernel, under the same name and signature.

It is the oracle every kernel is tested against, and a backend of last resort. Results are
computed in float64 where that matters and returned in the kernel's output dtype.
"""

from __future__ import annotations

from phi_engine.runtime.reference._activations import apply_activation
from phi_engine.runtime.reference._linalg import gemm, matmul

__all__ = [
    "apply_activation",
    "gemm",
    "matmul",
]
