"""The graph compiler: ONNX models → IR → passes → native plans (see ``compile``)."""

from __future__ import annotations

from phi_engine.graph.compiled import DEVICES, CompiledModel, compile
from phi_engine.graph.ir import Graph, Node, TensorType
from phi_engine.graph.registry import registered_ops


def supported_ops() -> list[str]:
    """The ONNX ops compile() accepts, as ``Op`` or ``domain::Op``, sorted."""
    return sorted(f"{domain}::{name}" if domain else name for domain, name in registered_ops())


__all__ = [
    "DEVICES",
    "CompiledModel",
    "Graph",
    "Node",
    "TensorType",
    "compile",
    "supported_ops",
]
