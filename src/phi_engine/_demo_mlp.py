"""The model ``phi-engine demo --model mlp`` serves: a 3-layer MLP the project builds.

256 -> 512 -> 512 -> 10 with ReLU between layers, seeded weights, written as ONNX (``Gemm`` +
``Relu``), and the same network in numpy (float64) to check the served answers against. The
demo serves it when the all-MiniLM-L6-v2 package is not installed.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np

LAYERS = (256, 512, 512, 10)


@functools.cache
def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demo model's layers (W, b), seeded."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (0.1 * rng.standard_normal(b)).astype(np.float32),
        )
        for a, b in itertools.pairwise(LAYERS)
    ]


def mlp_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The demo model in numpy."""
    h = x.astype(np.float64)
    layers = mlp_weights(seed)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h.astype(np.float32)


def write_mlp(path: Path, seed: int = 0) -> Path:
    """Write the demo model as ONNX (input ``x`` [batch, 256], output ``logits`` [batch, 10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    layers = mlp_weights(seed)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]))
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "demo_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
