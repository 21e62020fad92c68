"""Graph passes: the support check, type inference with constant folding, dead-code removal.

Inference also tracks the *shape values* of the small integer tensors exporters compute shapes
with (``Shape`` → ``Gather`` → ``Unsqueeze`` → ``Concat`` → ``Reshape``): their elements as
dimensions, symbols included, so that ``x.view(x.size(0), x.size(1), 12, 32)`` keeps the batch
and sequence symbols of ``x`` instead of inventing new ones. Equal shapes then compare equal,
which fusions rely on (a residual ``Add`` is fused only into a product of its exact shape).

Fusion passes live in :mod:`phi_engine.graph.fusion`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnsupportedError
from phi_engine.graph.ir import Dim, Graph, Node, TensorType
from phi_engine.graph.registry import InferContext, get_op, registered_ops, shape_bounds

__all__ = ["check_supported", "eliminate_dead_code", "infer_and_fold"]

# Folding computes a node's outputs with the reference when all its inputs are known. Results
# larger than this stay nodes (computed at run time) so that a model's file size, not its
# arithmetic, bounds what compile-time folding may allocate.
FOLD_LIMIT_BYTES = 64 << 20


def check_supported(graph: Graph) -> None:
    """Refuse a graph that uses any op or op version we do not implement, naming all of them.

    Raises:
        UnsupportedError: one line per offending node: op, node, opset and op version.
    """
    ops = registered_ops()
    problems: list[str] = []
    for node in graph.nodes:
        found = ops.get((node.domain, node.op_type))
        where = f"node {node.label!r}, opset {graph.opset}"
        label = f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        if found is None:
            problems.append(f"{label} ({where}): op not supported")
        elif not found.supports(node.version):
            have = ", ".join(str(v) for v in found.versions)
            problems.append(
                f"{label} ({where}): op version {node.version or 'unknown'} not supported "
                f"(supported versions: {have})"
            )
        elif any(_is_subgraph(v) for v in node.attrs.values()):
            problems.append(f"{label} ({where}): subgraph attributes are not supported")
    if problems:
        raise UnsupportedError(
            "[compile] the model uses what phi_engine does not support:\n  " + "\n  ".join(problems)
        )


def _is_subgraph(value: Any) -> bool:
    return type(value).__name__ == "_Subgraph"


def infer_and_fold(graph: Graph, *, fold: bool = True) -> None:
    """Infer every value's type in order; fold nodes whose inputs are all known (in place).

    A folded node disappears and its outputs become constants. Input types must already be in
    ``graph.types``.

    Raises:
        InvalidRequestError: a node's inputs do not fit its op (the message names the node).
    """
    kept = []
    shapes: dict[str, tuple[Dim, ...]] = {}  # shape values known by their symbols (see above)
    for node in graph.nodes:
        opdef = get_op(node.domain, node.op_type)
        types = [graph.types.get(name) if name else None for name in node.inputs]
        for name, t in zip(node.inputs, types, strict=True):
            if name and t is None:
                raise InvalidRequestError(
                    f"[{node.op_type}] node {node.label!r}: input {name!r} has no known type "
                    "(is it produced by an earlier node or declared as a graph input?)"
                )
        values = [graph.constants.get(name) if name else None for name in node.inputs]
        known_shapes = [_shape_value(shapes, graph, n) for n in node.inputs]
        ctx = InferContext(node, types, values, known_shapes)
        out_types = _call_infer(opdef.infer, ctx)
        tracked = _track_shape_value(node, ctx, out_types)
        if tracked is not None:
            shapes[node.outputs[0]] = tracked
        outputs = list(node.outputs)
        for name, t in zip(outputs, out_types, strict=False):
            if name:
                graph.types[name] = t
        known = all(v is not None for n, v in zip(node.inputs, values, strict=True) if n)
        if fold and opdef.deterministic and known and _small(out_types):
            results = opdef.run_reference(node, values)
            for name, value in zip(outputs, results, strict=False):
                if name:
                    graph.constants[name] = value
                    graph.types[name] = TensorType(value.dtype, tuple(value.shape))
            continue
        if fold and ctx.output_values and len(ctx.output_values) == len([o for o in outputs if o]):
            for i, value in ctx.output_values.items():
                graph.constants[outputs[i]] = value
                graph.types[outputs[i]] = TensorType(value.dtype, tuple(value.shape))
            continue
        kept.append(node)
    graph.nodes = kept


_INT_KINDS = "iu"
_ORDER_KEEPING = frozenset({"Unsqueeze", "Squeeze", "Flatten", "Reshape", "Identity", "Cast"})


def _shape_value(
    shapes: dict[str, tuple[Dim, ...]], graph: Graph, name: str
) -> tuple[Dim, ...] | None:
    """``name``'s elements as dimensions: tracked, or a known small integer constant."""
    if not name:
        return None
    found = shapes.get(name)
    if found is not None:
        return found
    value = graph.constants.get(name)
    if value is None or value.dtype.kind not in _INT_KINDS or value.ndim > 1 or value.size > 64:
        return None
    return tuple(int(v) for v in value.reshape(-1))


def _track_shape_value(
    node: Node, ctx: InferContext, out_types: list[TensorType]
) -> tuple[Dim, ...] | None:
    """The shape value of ``node``'s first output, where its op and inputs determine one."""
    if node.domain or not node.outputs or not node.outputs[0] or not out_types:
        return None
    out = out_types[0]
    if out.dtype.kind not in _INT_KINDS or out.shape is None or len(out.shape) > 1:
        return None
    op = node.op_type
    ins = ctx.shape_values
    if op == "Shape":
        shape = ctx.types[0].shape if ctx.types and ctx.types[0] is not None else None
        if shape is None:
            return None
        start, end = shape_bounds(ctx, len(shape))
        return tuple(shape[start:end])
    if op in _ORDER_KEEPING:
        if op == "Cast" and np.dtype(out.dtype).kind not in _INT_KINDS:
            return None
        return ins[0] if ins else None
    if op == "Gather":
        data, index = [*ins, None, None][:2]
        if data is None or index is None or int(node.attrs.get("axis", 0)) not in (0, -1):
            return None
        if ctx.types[0] is None or ctx.types[0].shape is None or len(ctx.types[0].shape) != 1:
            return None
        n = len(data)
        if not all(isinstance(i, int) and -n <= i < n for i in index):
            return None
        return tuple(data[int(i)] for i in index)  # (a negative index counts from the end)
    if op == "Concat":
        if int(node.attrs.get("axis", 0)) not in (0, -1) or any(v is None for v in ins):
            return None
        return tuple(d for v in ins for d in v or ())
    if op == "Slice" and len(ins) >= 3 and ins[0] is not None:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 else (0,)
        steps = ins[4] if len(ins) > 4 else (1,)
        parts = (starts, ends, axes, steps)
        if any(p is None or len(p) != 1 or not isinstance(p[0], int) for p in parts):
            return None
        assert starts and ends and axes and steps
        if axes[0] not in (0, -1) or steps[0] == 0:
            return None
        return tuple(ins[0][slice(int(starts[0]), int(ends[0]), int(steps[0]))])
    return None


def _small(types: list[TensorType]) -> bool:
    total = 0
    for t in types:
        if not t.is_static:
            return True  # unknown until computed; folding inputs are all known, so it is bounded
        total += int(np.prod(t.static_shape(), dtype=np.int64)) * max(t.dtype.itemsize, 1)
    return total <= FOLD_LIMIT_BYTES


def _call_infer(fn: Any, ctx: InferContext) -> list[TensorType]:
    try:
        result: list[TensorType] = fn(ctx)
    except PhiEngineError:
        raise
    except Exception as exc:  # a bug in an infer function must still name the node
        raise InvalidRequestError(
            f"[{ctx.node.op_type}] node {ctx.node.label!r}: type inference failed: {exc!r}"
        ) from exc
    return result


def eliminate_dead_code(graph: Graph) -> None:
    """Drop nodes none of whose outputs is used, and constants nothing reads (in place)."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(out in live for out in node.outputs if out):
            kept.append(node)
            live.update(name for name in node.inputs if name)
    kept.reverse()
    graph.nodes = kept
    graph.constants = {k: v for k, v in graph.constants.items() if k in live}
