"""Fusion passes: rewrite exporter patterns into the fused ops the native kernels run."""

from __future__ import annotations

from phi_engine.graph.ir import Graph

__all__ = ["fuse"]


def fuse(graph: Graph) -> None:
    """Apply every fusion pass in place."""
