"""The op definitions, one module per family; importing this package registers them all."""

from phi_engine.graph.ops import elementwise, nn, tensor

__all__ = ["elementwise", "nn", "tensor"]
