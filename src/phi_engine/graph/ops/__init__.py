"""The op definitions, one module per family; importing this package registers them all."""

from phi_engine.graph.ops import elementwise, fused, nn, reduce, tensor

__all__ = ["elementwise", "fused", "nn", "reduce", "tensor"]
