"""The benchmark model (issue 6): a float32 MLP 256 -> 512 -> 512 -> 10 with ReLU between layers.

One set of seeded weights for everyone: ``weights()`` in numpy for the peers (their servers
import this file; it needs numpy only), ``write_onnx()`` builds the same graph with onnx.helper
for phi_engine, and ``reference()`` computes the answer every response is checked against.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

# PHI_BENCH_DIMS="256,10" (set by bench_serving.py --dims) swaps in another MLP for every server
# and the load generator at once, e.g. to separate the serving path from the model's compute.
DIMS = tuple(int(d) for d in os.environ.get("PHI_BENCH_DIMS", "256,512,512,10").split(","))
SEED = 6


def weights(seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W, b)`` per layer, float32, ``W`` of shape ``[in, out]``."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (0.1 * rng.standard_normal(b)).astype(np.float32),
        )
        for a, b in itertools.pairwise(DIMS)
    ]


class NumpyMLP:
    """The model as the peers run it: float32 numpy, one BLAS call per layer."""

    def __init__(self, seed: int = SEED) -> None:
        self.layers = weights(seed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < last:
                np.maximum(h, 0, out=h)
        return h


def reference(x: np.ndarray, seed: int = SEED) -> np.ndarray:
    """The answer (float64 accumulation, cast back to float32)."""
    h = np.asarray(x, dtype=np.float64)
    layers = weights(seed)
    for i, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h.astype(np.float32)


def inputs(n: int, seed: int = 1234) -> np.ndarray:
    """``n`` distinct request rows, float32 ``[n, 256]``."""
    return np.random.default_rng(seed).standard_normal((n, DIMS[0])).astype(np.float32)


def write_onnx(path: str | Path, seed: int = SEED) -> Path:
    """The same MLP as ONNX (MatMul + Add + Relu, opset 17): input ``x`` [N, 256], output ``y``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    prev = "x"
    layers = weights(seed)
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out if i == last else f"a{i}"]))
        if i != last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp_256_512_512_10",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", DIMS[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", DIMS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
