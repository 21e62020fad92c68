"""Graph passes: the support check, type inference with constant folding, dead-code removal.

Fusion passes live in :mod:`phi_engine.graph.fusion`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnsupportedError
from phi_engine.graph.ir import Graph, TensorType
from phi_engine.graph.registry import InferContext, get_op, registered_ops

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
        ctx = InferContext(node, types, values)
        out_types = _call_infer(opdef.infer, ctx)
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
