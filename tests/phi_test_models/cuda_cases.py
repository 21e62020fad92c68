"""ONNX models for the CUDA backend's tests: each exercises a family of plan steps (attention,
slices and concatenations, pools and convolutions, comparisons and row ops, a step the GPU does
not cover). tests/unit/test_cuda_plan.py runs them on the null device, tests/gpu on a GPU; both
compare with the CPU backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def attention_model(rng: np.random.Generator, width: int = 16, heads: int = 2) -> bytes:
    """One post-LN encoder layer in plain ONNX ops: the patterns the fusion passes rewrite into
    linear, attention softmax with a mask, GELU and layer norm, with reshapes and transposes."""
    d = width // heads

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    inits = [w("wq", width, width), w("wk", width, width), w("wv", width, width)]
    inits += [w("bq", width), w("wo", width, width), w("w1", width, 2 * width), w("b1", 2 * width)]
    inits += [w("w2", 2 * width, width), w("g1", width), w("be1", width)]
    inits += [
        numpy_helper.from_array(np.array([0, 0, heads, d], np.int64), "split"),
        numpy_helper.from_array(np.array([0, 0, width], np.int64), "merge"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(d), np.float32), "scale"),
        numpy_helper.from_array(np.array(-10000.0, np.float32), "neg"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "wq"], ["q0"]),
        n("Add", ["q0", "bq"], ["q1"]),
        n("MatMul", ["x", "wk"], ["k0"]),
        n("MatMul", ["x", "wv"], ["v0"]),
        n("Reshape", ["q1", "split"], ["q2"]),
        n("Reshape", ["k0", "split"], ["k2"]),
        n("Reshape", ["v0", "split"], ["v2"]),
        n("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        n("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
        n("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Cast", ["mask"], ["mf"], to=F32),
        n("Sub", ["one", "mf"], ["mi"]),
        n("Mul", ["mi", "neg"], ["mb0"]),
        n("Unsqueeze", ["mb0", "axes12"], ["mb"]),
        n("Add", ["s1", "mb"], ["s2"]),
        n("Softmax", ["s2"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["c0"]),
        n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "merge"], ["c2"]),
        n("MatMul", ["c2", "wo"], ["o0"]),
        n("Add", ["o0", "x"], ["r0"]),
        n("LayerNormalization", ["r0", "g1", "be1"], ["h0"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h0", "w1"], ["f0"]),
        n("Add", ["f0", "b1"], ["f1"]),
        n("Div", ["f1", "sqrt2"], ["f2"]),
        n("Erf", ["f2"], ["f3"]),
        n("Add", ["f3", "one"], ["f4"]),
        n("Mul", ["f1", "f4"], ["f5"]),
        n("Mul", ["f5", "half"], ["f6"]),
        n("MatMul", ["f6", "w2"], ["f7"]),
        n("ReduceMean", ["f7"], ["pooled"], axes=[1], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F32, ["b", "s", width]),
        helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "s"]),
    ]
    outputs = [
        helper.make_tensor_value_info("f7", F32, ["b", "s", width]),
        helper.make_tensor_value_info("pooled", F32, ["b", width]),
    ]
    return _model(nodes, inputs, outputs, inits)


def attention_feeds(
    rng: np.random.Generator, batch: int, seq: int, width: int = 16
) -> dict[str, Any]:
    mask = (rng.random((batch, seq)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    return {"x": rng.standard_normal((batch, seq, width)).astype(np.float32), "mask": mask}


def mixed_model(rng: np.random.Generator) -> bytes:
    """Grouped convolutions, then a sum over axes 1 and 3 (the CUDA reduction takes one run of
    axes: it runs on the CPU between GPU steps)."""
    w = numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 2)).astype(np.float32), "w2")
    n = helper.make_node
    nodes = [
        n("Sigmoid", ["x"], ["a"]),
        n("Conv", ["a", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=6),
        n("Conv", ["c", "w2"], ["c2"], group=2),
        n("ReduceSum", ["c2", "axes"], ["ls"], keepdims=1),
        n("Transpose", ["ls"], ["y"], perm=[0, 2, 3, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", F32, ["n", 6, 6, 5])]
    outputs = [helper.make_tensor_value_info("y", F32, None)]
    axes = numpy_helper.from_array(np.array([1, 3], np.int64), "axes")
    return _model(nodes, inputs, outputs, [w, b, w2, axes])


def gather_model(rng: np.random.Generator) -> bytes:
    table = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("Tanh", ["e"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3])]
    outputs = [helper.make_tensor_value_info("y", F32, ["n", 3, 4])]
    return _model(nodes, inputs, outputs, [table])


def slices_model() -> bytes:
    """Slices (a middle range; every other element, reversed) and concatenations on three axes;
    input x [n, 6, 5]."""

    def ints(name: str, values: list[int]) -> Any:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [
        ints("s1", [1]), ints("e1", [-1]), ints("a1", [1]),
        ints("s2", [-1, 0]), ints("e2", [-(2**62), 5]), ints("a2", [2, 1]), ints("k2", [-2, 2]),
    ]  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Slice", ["x", "s1", "e1", "a1"], ["mid"]),  # [n, 4, 5]
        n("Slice", ["x", "s2", "e2", "a2", "k2"], ["rev"]),  # [n, 3, 3]: every other, reversed
        n("Sigmoid", ["mid"], ["smid"]),
        n("Concat", ["smid", "x", "mid"], ["cat1"], axis=1),  # [n, 14, 5]
        n("Concat", ["rev", "rev"], ["cat2"], axis=2),  # [n, 3, 6]
        n("Concat", ["rev", "rev"], ["cat0"], axis=0),  # [2n, 3, 3]
    ]
    inputs = [helper.make_tensor_value_info("x", F32, ["n", 6, 5])]
    outputs = [helper.make_tensor_value_info(o, F32, None) for o in ("cat1", "cat2", "cat0")]
    return _model(nodes, inputs, outputs, inits)


def pools_model(rng: np.random.Generator) -> bytes:
    """Batch norm (unfolded), average pools (ceil mode, pads counted), a max pool and a strided,
    dilated, asymmetrically padded convolution; input x [n, 3, 7, 9]."""
    c = 3
    bn = [
        numpy_helper.from_array(v.astype(np.float32), name)
        for name, v in (
            ("g", 1 + 0.2 * rng.standard_normal(c)), ("b", rng.standard_normal(c)),
            ("mu", rng.standard_normal(c)), ("var", 0.5 + rng.random(c)),
        )
    ]  # fmt: skip
    w = numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32), "w")
    n = helper.make_node
    nodes = [
        n("BatchNormalization", ["x", "g", "b", "mu", "var"], ["bnx"], epsilon=1e-3),
        n("AveragePool", ["bnx"], ["avg"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
          ceil_mode=1, count_include_pad=1),
        n("MaxPool", ["x"], ["mx"], kernel_shape=[2, 3], strides=[1, 2], pads=[1, 1, 0, 1]),
        n("AveragePool", ["x"], ["avg2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Conv", ["x", "w"], ["cv"], strides=[2, 1], dilations=[1, 2], pads=[2, 1, 0, 3]),
    ]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", F32, ["n", c, 7, 9])]
    outputs = [helper.make_tensor_value_info(o, F32, None) for o in ("avg", "mx", "avg2", "cv")]
    return _model(nodes, inputs, outputs, [*bn, w])


def comparisons_model(rng: np.random.Generator) -> bytes:
    """Comparisons, where (float32 and int64), log-softmax, RMS norm (opset 23), argmax and argmin;
    inputs x [n, 5, 7], y [1, 7], ids [n, 5], ids2 [1, 5]."""
    gamma = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(7)).astype(np.float32), "g")
    thresh = numpy_helper.from_array(np.array([0.0], np.float32), "t")
    n = helper.make_node
    nodes = [
        n("Greater", ["x", "t"], ["pos"]),
        n("Where", ["pos", "x", "y"], ["w"]),
        n("Equal", ["ids", "ids2"], ["same"]),
        n("Where", ["same", "ids", "ids2"], ["wi"]),
        n("LogSoftmax", ["w"], ["ls"], axis=-1),
        n("RMSNormalization", ["x", "g"], ["rms"], axis=-1, epsilon=1e-5),
        n("ArgMax", ["x"], ["am"], axis=1, keepdims=0),
        n("ArgMin", ["x"], ["an"], axis=2, select_last_index=1),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F32, ["n", 5, 7]),
        helper.make_tensor_value_info("y", F32, [1, 7]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 5]),
        helper.make_tensor_value_info("ids2", TensorProto.INT64, [1, 5]),
    ]
    i64 = TensorProto.INT64
    kinds = {"ls": F32, "rms": F32, "am": i64, "an": i64, "wi": i64}
    outputs = [helper.make_tensor_value_info(o, t, None) for o, t in kinds.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[gamma, thresh])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    return model.SerializeToString()
