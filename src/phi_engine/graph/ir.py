"""The compiler's intermediate representation: a graph of nodes over named values.

The IR mirrors ONNX closely (that is where models come from) but owns its data: attributes are
plain Python values, tensors are numpy arrays, and a value's type is a numpy dtype plus a shape
whose dimensions are integers or symbols (strings such as ``"batch"``). Passes rewrite a
:class:`Graph` in place; nothing here depends on the ``onnx`` package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError

__all__ = ["Dim", "Graph", "Node", "Shape", "TensorType"]

Dim = int | str
"""A dimension: a size, or a symbol standing for a size known only when the model runs."""

Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class TensorType:
    """A value's element type and shape; ``shape`` is None when even the rank is unknown."""

    dtype: np.dtype[Any]
    shape: Shape | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """Every dimension is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise InvalidRequestError(f"shape {self.shape} is not static")
        return tuple(int(d) for d in self.shape or ())

    def __str__(self) -> str:
        dims = "?" if self.shape is None else "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.dtype.name}[{dims}]"


@dataclass
class Node:
    """One operator application.

    ``inputs`` and ``outputs`` name values; an empty string is an absent optional input or an
    unused optional output, as in ONNX.
    """

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""
    version: int = 1  # the op's version in effect (ONNX since_version), set by the importer

    @property
    def label(self) -> str:
        """How errors name the node: its name if it has one, else its first output."""
        return self.name or (self.outputs[0] if self.outputs else self.op_type)


@dataclass
class Graph:
    """Nodes in execution order over named values.

    Attributes:
        nodes: Topologically ordered.
        inputs: Names of the runtime inputs, in order.
        outputs: Names of the graph outputs, in order.
        constants: Values known at compile time (ONNX initializers and folded results).
        types: The type of every value known so far.
        opset: The default-domain opset the model was exported with.
        name: The model's graph name.
    """

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    types: dict[str, TensorType] = field(default_factory=dict)
    opset: int = 13
    name: str = "graph"

    def producers(self) -> dict[str, Node]:
        """The node producing each value."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """The nodes reading each value (a node reading a value twice is listed once)."""
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in dict.fromkeys(node.inputs):
                if name:
                    result.setdefault(name, []).append(node)
        return result

    def op_types(self) -> Iterator[tuple[str, str]]:
        """(domain, op_type) of every node, in order."""
        return ((n.domain, n.op_type) for n in self.nodes)

    def fresh_name(self, stem: str, taken: Iterable[str] = ()) -> str:
        """A value name not used anywhere in the graph (for values a pass creates)."""
        used = set(self.types) | set(self.constants) | set(self.inputs) | set(taken)
        for node in self.nodes:
            used.update(node.inputs)
            used.update(node.outputs)
        i = 0
        while f"{stem}__{i}" in used:
            i += 1
        return f"{stem}__{i}"

    def copy(self) -> Graph:
        """A copy whose node list and dicts can be rewritten without touching this graph.

        Constant arrays are shared (passes never write into them).
        """
        nodes = [
            Node(
                n.op_type,
                list(n.inputs),
                list(n.outputs),
                dict(n.attrs),
                n.name,
                n.domain,
                n.version,
            )
            for n in self.nodes
        ]
        return Graph(
            nodes,
            list(self.inputs),
            list(self.outputs),
            dict(self.constants),
            dict(self.types),
            self.opset,
            self.name,
        )
