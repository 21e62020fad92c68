"""Triton kernels: the fused GEMM epilogue, softmax, layer norm and attention (issue 8).

Each module holds ``@triton.jit`` kernels and a launcher that checks its arguments, allocates the
output beside the inputs and picks the grid. Launchers take PyTorch tensors (the tensors Triton
launches on); on a GPU they run as compiled kernels, and with ``TRITON_INTERPRET=1`` Triton's
interpreter runs them on the CPU, which is how the tests check them against the numpy reference
(``phi_engine.runtime.reference``) without a GPU. Every kernel accumulates in float32; inputs
may be float32, float16 or bfloat16, and outputs have the inputs' dtype.

The build installs this directory as ``phi_engine.kernels``; importing it needs ``triton`` and
``torch``, which only the GPU backend requires.
"""

from __future__ import annotations

from phi_engine.kernels.attention import attention
from phi_engine.kernels.gemm import ACTIVATIONS, gemm
from phi_engine.kernels.layer_norm import layer_norm
from phi_engine.kernels.softmax import softmax

__all__ = ["ACTIVATIONS", "attention", "gemm", "layer_norm", "softmax"]
