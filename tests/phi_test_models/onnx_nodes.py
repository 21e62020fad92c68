"""One-node ONNX models for op tests: arrays become inputs, ``Const`` values initializers."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

NODE = "node_under_test"


class Const:
    """An op input given as an initializer (known at compile time)."""

    def __init__(self, value: Any) -> None:
        self.value = np.asarray(value)


Arg = np.ndarray | Const | None


def node_model(
    op_type: str,
    args: list[Arg],
    attrs: dict[str, Any] | None = None,
    *,
    outputs: int = 1,
    opset: int,
    shapes: dict[int, list[Any]] | None = None,
) -> onnx.ModelProto:
    """One ``op_type`` node named ``NODE``: arrays are runtime inputs ``x0, x1, ...`` (their
    declared shape from ``shapes`` when given, e.g. symbolic), ``Const`` values initializers
    ``c0, c1, ...``, None an absent optional input; outputs ``y0, y1, ...`` are untyped."""
    names, inputs, inits = [], [], []
    for i, a in enumerate(args):
        if a is None:
            names.append("")
        elif isinstance(a, Const):
            names.append(f"c{i}")
            inits.append(numpy_helper.from_array(a.value, f"c{i}"))
        else:
            names.append(f"x{i}")
            elem = helper.np_dtype_to_tensor_dtype(a.dtype)
            shape = (shapes or {}).get(i, list(a.shape))
            inputs.append(helper.make_tensor_value_info(f"x{i}", elem, shape))
    outs = [f"y{j}" for j in range(outputs)]
    node = helper.make_node(op_type, names, outs, name=NODE, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info(o, 0, None) for o in outs], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
