"""Small ONNX models built with onnx.helper for engine tests (no torch needed).

``mlp(path, seed, width, layers)`` writes a float32 MLP: input ``x`` [N, 4] -> ``y`` [N, 3]; its
numpy twin ``mlp_reference`` computes the same function so tests can check outputs exactly.
Different seeds give different weights: two "versions" of one model for update tests.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IN, OUT = 4, 3


def weights(seed: int, width: int = 16, layers: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (W, b) of each layer, seeded."""
    rng = np.random.default_rng(seed)
    dims = [IN] + [width] * (layers - 1) + [OUT]
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            rng.standard_normal(b).astype(np.float32),
        )
        for a, b in itertools.pairwise(dims)
    ]


def mlp(path: Path, seed: int = 0, width: int = 16, layers: int = 2) -> Path:
    """Write the MLP to ``path`` and return it."""
    nodes, inits = [], []
    prev = "x"
    for i, (w, b) in enumerate(weights(seed, width, layers)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == layers - 1
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_reference(x: np.ndarray, seed: int = 0, width: int = 16, layers: int = 2) -> np.ndarray:
    """The MLP in numpy (float64 accumulation, cast back)."""
    h = x.astype(np.float64)
    ws = weights(seed, width, layers)
    for i, (w, b) in enumerate(ws):
        h = h @ w + b
        if i < len(ws) - 1:
            h = np.maximum(h, 0)
    return h.astype(np.float32)
