"""ONNX → IR: load a model with the ``onnx`` package and translate it into a :class:`Graph`.

Every node records the op version in effect for the model's opset (the schema's
``since_version``), so support is decided per version; nothing is executed here.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph.ir import Dim, Graph, Node, TensorType

__all__ = ["ModelSource", "from_onnx", "load_model"]

ModelSource = str | os.PathLike[str] | bytes | Any  # Any: an onnx.ModelProto


def load_model(source: ModelSource) -> Any:
    """An ``onnx.ModelProto`` from a path, serialized bytes or a ModelProto.

    Raises:
        InvalidRequestError: the file is missing or is not a valid ONNX model.
    """
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return onnx.load_model_from_string(bytes(source))
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise InvalidRequestError(
                    f"[compile] no model file at {str(path)!r}", field="model"
                )
            return onnx.load(str(path))
    except InvalidRequestError:
        raise
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidRequestError(
            f"[compile] not a valid ONNX model: {exc}", field="model"
        ) from exc
    raise InvalidRequestError(
        f"[compile] model must be a path, bytes or an onnx.ModelProto, got {type(source).__name__}",
        field="model",
    )


def from_onnx(model: Any) -> Graph:
    """Translate a ModelProto into a Graph (types from the model's declarations only)."""
    import onnx

    opsets = {
        ("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import
    }
    if "" not in opsets:
        raise UnsupportedError("[compile] the model imports no default-domain (ai.onnx) opset")
    g = model.graph
    if len(g.sparse_initializer):
        raise UnsupportedError("[compile] sparse initializers are not supported")
    fresh = (f"unk__{i}" for i in itertools.count())

    constants = {t.name: _to_array(t) for t in g.initializer}
    types: dict[str, TensorType] = {}
    for vi in itertools.chain(g.input, g.value_info, g.output):
        t = _value_type(vi, fresh)
        if t is not None:
            types[vi.name] = t
    for name, value in constants.items():
        types[name] = TensorType(value.dtype, tuple(value.shape))

    nodes = [_node(n, opsets, onnx) for n in g.node]
    inputs = [vi.name for vi in g.input if vi.name not in constants]
    outputs = [vi.name for vi in g.output]
    return Graph(nodes, inputs, outputs, constants, types, opsets[""], g.name or "graph")


def _node(n: Any, opsets: dict[str, int], onnx: Any) -> Node:
    domain = "" if n.domain == "ai.onnx" else n.domain
    version = 0  # unknown: refused by the support check
    if domain in opsets:
        try:
            version = int(onnx.defs.get_schema(n.op_type, opsets[domain], domain).since_version)
        except Exception:
            version = 0
    attrs = {a.name: _attr_value(a, onnx) for a in n.attribute}
    return Node(n.op_type, list(n.input), list(n.output), attrs, n.name, domain, version)


def _attr_value(a: Any, onnx: Any) -> Any:
    from onnx import AttributeProto

    if a.type == AttributeProto.TENSOR:
        return _to_array(a.t)
    if a.type == AttributeProto.TENSORS:
        return [_to_array(t) for t in a.tensors]
    if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        return _Subgraph()
    if a.type == AttributeProto.SPARSE_TENSOR:
        return _Subgraph()  # refused like a subgraph: no op we support takes one
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


class _Subgraph:
    """Placeholder for graph-valued attributes (control flow), which no supported op takes."""

    def __repr__(self) -> str:
        return "<subgraph>"


def _to_array(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception as exc:
        raise InvalidRequestError(f"[compile] tensor {t.name!r} cannot be read: {exc}") from exc


def _value_type(vi: Any, fresh: Any) -> TensorType | None:
    import onnx

    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None or tt.elem_type == 0:
        return None
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(str(d.dim_param))
        else:
            dims.append(next(fresh))
    return TensorType(dtype, tuple(dims))
