"""The op definitions, one module per family; importing this package registers them all."""

from phi_engine.graph.ops import (
    detection,
    elementwise,
    fused,
    image,
    loss,
    nn,
    numeric,
    quant,
    recurrent,
    reduce,
    sampling,
    signal,
    state_space,
    tensor,
    text,
    transformer,
)

__all__ = [
    "detection",
    "elementwise",
    "fused",
    "image",
    "loss",
    "nn",
    "numeric",
    "quant",
    "recurrent",
    "reduce",
    "sampling",
    "signal",
    "state_space",
    "tensor",
    "text",
    "transformer",
]
