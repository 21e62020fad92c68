"""Neural-network ops: MatMul, Gemm, Conv, pooling, normalizations, softmax, reductions."""

from __future__ import annotations
