"""The operator registry: for every supported op, its type inference, reference and lowering.

An op is registered once, with three functions:

- ``infer(ctx) -> list[TensorType]``: the output types from the input types (and from input
  values where they are known at compile time, e.g. Reshape's target shape). Shapes may hold
  symbolic dimensions; an infer function may also publish an output's value (Shape does, when
  its input's shape is static), which lets shape arithmetic fold away per shape bucket.
- ``compute(ctx, inputs) -> list[np.ndarray]``: the numpy reference, exact to the ONNX spec for
  every dtype the op allows. It is the fallback backend, the constant folder and the oracle.
- ``lower(ctx) -> list[int] | None`` (optional): emit native plan steps for concrete shapes and
  dtypes, or return None when the native kernels cannot do this case (the reference runs it).
  It is registered as the op's lowering on the ``cpu`` backend
  (:mod:`phi_engine.runtime.backends`); other devices register theirs there.

``versions`` lists the ONNX op versions (``since_version``) whose semantics the functions
implement: a model whose node resolves to another version is refused at compile time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnsupportedError
from phi_engine.graph.ir import Dim, Node, TensorType
from phi_engine.runtime.backends import register_lowering

if TYPE_CHECKING:
    from phi_engine.graph.lower import LowerContext

__all__ = [
    "ComputeFn",
    "InferContext",
    "InferFn",
    "LowerFn",
    "OpContext",
    "OpDef",
    "get_op",
    "op",
    "registered_ops",
]

_REQUIRED: Any = object()


class OpContext:
    """A node as its op's functions see it: attributes with defaults, version, errors."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def version(self) -> int:
        """The op version in effect for this node (ONNX ``since_version``)."""
        return self.node.version

    def attr(self, name: str, default: Any = _REQUIRED) -> Any:
        """The attribute ``name``, or ``default``; a missing required attribute is an error."""
        if name in self.node.attrs:
            return self.node.attrs[name]
        if default is _REQUIRED:
            self.fail(f"attribute {name!r} is required")
        return default

    def fail(self, message: str, cls: type[Exception] = InvalidRequestError) -> Any:
        """Raise ``cls`` with a message naming the op and the node."""
        raise cls(f"[{self.node.op_type}] node {self.node.label!r}: {message}")


class InferContext(OpContext):
    """What an infer function sees: input types, known input values, and an output-value slot."""

    def __init__(
        self,
        node: Node,
        types: Sequence[TensorType | None],
        values: Sequence[np.ndarray | None],
        shape_values: Sequence[tuple[Dim, ...] | None] = (),
    ) -> None:
        super().__init__(node)
        self.types = list(types)
        self.values = list(values)
        self.shape_values = list(shape_values) + [None] * (len(self.types) - len(shape_values))
        self.output_values: dict[int, np.ndarray] = {}

    @property
    def num_inputs(self) -> int:
        """Inputs given, counting absent optional ones before the last present one."""
        return len(self.types)

    def has(self, i: int) -> bool:
        """Input ``i`` is present."""
        return i < len(self.types) and self.types[i] is not None

    def type(self, i: int) -> TensorType:
        """The type of input ``i`` (it must be present)."""
        t = self.types[i] if i < len(self.types) else None
        if t is None:
            self.fail(f"input {i} is required")
        assert t is not None
        return t

    def value(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` if it is known now (a constant, or folded), else None."""
        return self.values[i] if i < len(self.values) else None

    def shape_value(self, i: int) -> tuple[Dim, ...] | None:
        """Input ``i``'s elements as dimensions (ints, or the symbols of the shapes they were
        taken from) if inference tracked them (see :mod:`phi_engine.graph.passes`), else None."""
        return self.shape_values[i] if i < len(self.shape_values) else None

    def set_value(self, i: int, value: np.ndarray) -> None:
        """Publish output ``i``'s value (known without running the model)."""
        self.output_values[i] = value


def shape_bounds(ctx: OpContext, rank: int) -> tuple[int, int]:
    """ONNX Shape's start/end (opset 15): negative counts from the end, clamped to [0, rank]."""

    def clamp(v: int) -> int:
        return min(max(v + rank if v < 0 else v, 0), rank)

    return clamp(int(ctx.attr("start", 0))), clamp(int(ctx.attr("end", rank)))


InferFn = Callable[[InferContext], list[TensorType]]
ComputeFn = Callable[[OpContext, list[Any]], list[np.ndarray]]
LowerFn = Callable[["LowerContext"], "list[int] | None"]


@dataclass(frozen=True)
class OpDef:
    """One supported operator (see the module docstring)."""

    domain: str
    name: str
    versions: tuple[int, ...]
    infer: InferFn
    compute: ComputeFn
    lower: LowerFn | None = None
    deterministic: bool = True  # may be folded when its inputs are known

    def supports(self, version: int) -> bool:
        return version in self.versions

    def run_reference(self, node: Node, inputs: list[Any]) -> list[np.ndarray]:
        """``compute`` on ``node``'s inputs, numpy warnings off, any failure a phi error naming
        the node (constant folding and the reference fallback both run ops through here)."""
        try:
            with np.errstate(all="ignore"):
                return self.compute(OpContext(node), inputs)
        except PhiEngineError:
            raise
        except Exception as exc:  # numpy's own errors, e.g. an index out of range
            raise InvalidRequestError(
                f"[{node.op_type}] node {node.label!r}: failed: {exc!r}"
            ) from exc


_OPS: dict[tuple[str, str], OpDef] = {}


def op(
    name: str,
    versions: Sequence[int],
    *,
    infer: InferFn,
    lower: LowerFn | None = None,
    domain: str = "",
    deterministic: bool = True,
) -> Callable[[ComputeFn], ComputeFn]:
    """Register the decorated reference function as op ``name`` (see the module docstring)."""

    def register(compute: ComputeFn) -> ComputeFn:
        key = (domain, name)
        if key in _OPS:
            raise RuntimeError(f"op {domain or 'ai.onnx'}::{name} is registered twice")
        _OPS[key] = OpDef(domain, name, tuple(versions), infer, compute, lower, deterministic)
        if lower is not None:
            register_lowering("cpu", domain, name, lower)
        return compute

    return register


def _load() -> None:
    # The op families register themselves on import.
    import phi_engine.graph.ops  # noqa: F401


def get_op(domain: str, name: str) -> OpDef:
    """The registered op, or UnsupportedError."""
    _load()
    found = _OPS.get(("" if domain == "ai.onnx" else domain, name))
    if found is None:
        raise UnsupportedError(f"op {domain or 'ai.onnx'}::{name} is not supported")
    return found


def registered_ops() -> dict[tuple[str, str], OpDef]:
    """Every registered op by (domain, name); the default ONNX domain is ``""``."""
    _load()
    return dict(_OPS)
