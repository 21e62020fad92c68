"""Fusion passes: each exporter pattern becomes its fused op, and the result does not change.

Every case builds the pattern by hand with onnx.helper, compiles it with and without fusion, and
checks the fused graph's op list and that both give the same output (float32 rounding apart) on
random inputs.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phi_engine.graph import compile

F = TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[object]],
    consts: dict[str, np.ndarray],
    output: str = "y",
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, F, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _scalar(v: float) -> np.ndarray:
    return np.array(v, np.float32)


def _check(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], fused: list[str], gone: list[str]
) -> None:
    cm = compile(model)
    ops = [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in cm.graph.nodes]
    for op in fused:
        assert op in ops, ops
    for op in gone:
        assert op not in ops, ops
    plain = compile(model, fuse=False).run(feeds)["y"]
    out = cm.run(feeds)["y"]
    np.testing.assert_allclose(out, plain, rtol=2e-5, atol=2e-5)
    shapes = {k: v.shape for k, v in feeds.items()}
    assert cm.program(shapes).reference_nodes == []


def _gelu_nodes(x: str, variant: int) -> list[onnx.NodeProto]:
    mk = helper.make_node
    head = [mk("Div", [x, "sqrt2"], ["d"]), mk("Erf", ["d"], ["e"]), mk("Add", ["e", "one"], ["a"])]
    tails = {
        0: [mk("Mul", [x, "a"], ["m"]), mk("Mul", ["m", "half"], ["y"])],  # (x * (1+e)) * 0.5
        1: [mk("Mul", ["a", "half"], ["m"]), mk("Mul", [x, "m"], ["y"])],  # x * ((1+e) * 0.5)
        2: [mk("Mul", [x, "half"], ["h"]), mk("Mul", ["h", "a"], ["y"])],  # (x * 0.5) * (1+e)
    }
    return head + tails[variant]


GELU_CONSTS = {"sqrt2": _scalar(math.sqrt(2.0)), "one": _scalar(1.0), "half": _scalar(0.5)}


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_erf_gelu_in_every_association_order(rng: np.random.Generator, variant: int) -> None:
    model = _model(_gelu_nodes("x", variant), {"x": ["n", 33]}, GELU_CONSTS)
    x = rng.standard_normal((5, 33)).astype(np.float32) * 3
    _check(model, {"x": x}, ["phi::Gelu"], ["Erf", "Div"])


@pytest.mark.parametrize("act", ["Relu", "Tanh", "Sigmoid", "gelu"])
def test_linear_bias_activation_and_residual(rng: np.random.Generator, act: str) -> None:
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "w"], ["mm"]), mk("Add", ["mm", "b"], ["lin"])]
    consts = {
        "w": rng.standard_normal((24, 40)).astype(np.float32),
        "b": rng.standard_normal(40).astype(np.float32),
    }
    if act == "gelu":
        nodes += _gelu_nodes("lin", 0)  # fused to phi::Gelu first, then into the linear
        consts.update(GELU_CONSTS)
    else:
        nodes.append(mk(act, ["lin"], ["y"]))
    model = _model(nodes, {"x": ["n", 7, 24]}, consts)
    x = rng.standard_normal((3, 7, 24)).astype(np.float32)
    _check(model, {"x": x}, ["phi::Linear"], ["MatMul", "Add", "Erf"])
    linear = [n for n in compile(model).graph.nodes if n.op_type == "Linear"]
    assert len(linear) == 1 and linear[0].attrs["activation"] == act.lower()


def test_linear_residual_is_fused_but_not_inside_an_activation(rng: np.random.Generator) -> None:
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "w"], ["mm"]),
        mk("Add", ["mm", "b"], ["lin"]),
        mk("Add", ["lin", "x"], ["y"]),  # the residual: same shape as the output
    ]
    consts = {
        "w": rng.standard_normal((16, 16)).astype(np.float32),
        "b": rng.standard_normal(16).astype(np.float32),
    }
    model = _model(nodes, {"x": ["n", 16]}, consts)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    _check(model, {"x": x}, ["phi::Linear"], ["Add", "MatMul"])
    (linear,) = compile(model).graph.nodes
    assert linear.inputs[3] == "x"
    # With a ReLU between, the residual stays a separate Add: relu(y) + x != relu(y + x).
    nodes.insert(2, mk("Relu", ["lin"], ["r"]))
    nodes[3] = mk("Add", ["r", "x"], ["y"])
    model = _model(nodes, {"x": ["n", 16]}, consts)
    _check(model, {"x": x}, ["phi::Linear", "Add"], ["MatMul"])


def test_attention_scores_transpose_scale_and_masked_softmax(rng: np.random.Generator) -> None:
    mk = helper.make_node
    nodes = [
        mk("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        mk("MatMul", ["q", "kt"], ["s"]),
        mk("Div", ["s", "scale"], ["ss"]),
        mk("Add", ["ss", "mask"], ["sm"]),
        mk("Softmax", ["sm"], ["p"], axis=-1),
        mk("MatMul", ["p", "v"], ["y"]),
    ]
    shape = ["b", 4, 10, 8]
    model = _model(
        nodes,
        {"q": shape, "k": shape, "v": shape, "mask": ["b", 1, 1, 10]},
        {"scale": _scalar(math.sqrt(8.0))},
    )
    q, k, v = (rng.standard_normal((2, 4, 10, 8)).astype(np.float32) for _ in range(3))
    mask = np.where(rng.random((2, 1, 1, 10)) < 0.3, -1e4, 0.0).astype(np.float32)
    _check(
        model,
        {"q": q, "k": k, "v": v, "mask": mask},
        ["phi::Linear", "phi::Softmax"],
        ["Transpose", "Div", "Softmax"],
    )
    scores = next(n for n in compile(model).graph.nodes if n.op_type == "Linear")
    assert scores.attrs["trans_b"] == 1 and scores.attrs["alpha"] == pytest.approx(
        1 / math.sqrt(8.0)
    )


def test_decomposed_layer_norm(rng: np.random.Generator) -> None:
    mk = helper.make_node
    nodes = [
        mk("ReduceMean", ["x"], ["mean"], axes=[-1]),
        mk("Sub", ["x", "mean"], ["d"]),
        mk("Pow", ["d", "two"], ["sq"]),
        mk("ReduceMean", ["sq"], ["var"], axes=[-1]),
        mk("Add", ["var", "eps"], ["ve"]),
        mk("Sqrt", ["ve"], ["std"]),
        mk("Div", ["d", "std"], ["n"]),
        mk("Mul", ["n", "gamma"], ["g"]),
        mk("Add", ["g", "beta"], ["y"]),
    ]
    consts = {
        "two": _scalar(2.0),
        "eps": _scalar(1e-5),
        "gamma": rng.standard_normal(32).astype(np.float32),
        "beta": rng.standard_normal(32).astype(np.float32),
    }
    model = _model(nodes, {"x": ["n", 5, 32]}, consts, opset=13)
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    _check(model, {"x": x}, ["phi::LayerNorm"], ["ReduceMean", "Sqrt", "Pow"])


def test_layer_normalization_of_a_sum_fuses_the_residual(rng: np.random.Generator) -> None:
    mk = helper.make_node
    nodes = [
        mk("Add", ["a", "b"], ["s"]),
        mk("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
    ]
    consts = {
        "gamma": rng.standard_normal(48).astype(np.float32),
        "beta": rng.standard_normal(48).astype(np.float32),
    }
    model = _model(nodes, {"a": ["n", 48], "b": ["n", 48]}, consts)
    a, b = (rng.standard_normal((9, 48)).astype(np.float32) for _ in range(2))
    _check(model, {"a": a, "b": b}, ["phi::LayerNorm"], ["Add", "LayerNormalization"])


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_conv_batch_norm_residual_activation(rng: np.random.Generator, act: str) -> None:
    mk = helper.make_node
    c = 8
    nodes = [
        mk("Conv", ["x", "w", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        mk("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-5),
        mk("Add", ["bn", "x"], ["r"]),
        mk(act, ["r", "lo", "hi"] if act == "Clip" else ["r"], ["y"]),
    ]
    consts = {
        "w": (rng.standard_normal((c, c, 3, 3)) * 0.2).astype(np.float32),
        "cb": rng.standard_normal(c).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "bias": rng.uniform(-0.2, 0.2, c).astype(np.float32),
        "mean": rng.uniform(-0.5, 0.5, c).astype(np.float32),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "lo": _scalar(0.0),
        "hi": _scalar(6.0),
    }
    model = _model(nodes, {"x": ["n", c, 12, 12]}, consts)
    x = rng.standard_normal((2, c, 12, 12)).astype(np.float32)
    _check(model, {"x": x}, ["phi::Conv"], ["Conv", "BatchNormalization", "Add", act])


def _heads_attention_nodes(
    k_in_one_transpose: bool, kv_split: str = "split"
) -> list[onnx.NodeProto]:
    """Attention over heads split from (batch, seq, hidden) by Reshape + Transpose and merged
    back, as our MiniLM writer (k transposed twice) and torch's export (once) spell it. q's heads
    are split by the constant "split", k's and v's by ``kv_split``."""
    mk = helper.make_node
    nodes = []
    for t in ("q", "k", "v"):
        nodes.append(mk("Reshape", [t, "split" if t == "q" else kv_split], [t + "4"]))
        if t == "k" and k_in_one_transpose:
            nodes.append(mk("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]))
        else:
            nodes.append(mk("Transpose", [t + "4"], [t + "h"], perm=[0, 2, 1, 3]))
    if not k_in_one_transpose:
        nodes.append(mk("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]))
    return [
        *nodes,
        mk("MatMul", ["qh", "kt"], ["s"]),
        mk("Div", ["s", "scale"], ["ss"]),
        mk("Add", ["ss", "mask"], ["sm"]),
        mk("Softmax", ["sm"], ["p"], axis=-1),
        mk("MatMul", ["p", "vh"], ["c"]),
        mk("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["ct", "merge"], ["y"]),
    ]


@pytest.mark.parametrize("k_in_one_transpose", [False, True])
@pytest.mark.parametrize("mask_shape", [["b", 1, 1, 10], [10, 10]])
def test_attention_over_heads_becomes_one_op_without_transposes(
    rng: np.random.Generator, k_in_one_transpose: bool, mask_shape: list[object]
) -> None:
    heads, dim = 3, 8
    model = _model(
        _heads_attention_nodes(k_in_one_transpose),
        {"q": ["b", 10, 24], "k": ["b", 10, 24], "v": ["b", 10, 24], "mask": mask_shape},
        {
            "scale": _scalar(math.sqrt(dim)),
            "split": np.array([0, 0, heads, dim], np.int64),
            "merge": np.array([0, 0, heads * dim], np.int64),
        },
    )
    q, k, v = (rng.standard_normal((2, 10, 24)).astype(np.float32) for _ in range(3))
    shape = [2 if d == "b" else d for d in mask_shape]
    mask = np.where(rng.random(shape) < 0.3, -1e4, 0.0).astype(np.float32)
    _check(
        model,
        {"q": q, "k": k, "v": v, "mask": mask},
        ["phi::Attention"],
        ["Transpose", "Softmax", "phi::Softmax", "MatMul", "phi::Linear"],
    )
    node = next(n for n in compile(model).graph.nodes if n.op_type == "Attention")
    assert node.attrs["alpha"] == pytest.approx(1 / math.sqrt(dim))


def test_one_query_head_against_three_key_heads_is_left_unfused(rng: np.random.Generator) -> None:
    # The products broadcast q's single head against k's three: the fused op (which broadcasts
    # k and v only) must not take it.
    model = _model(
        _heads_attention_nodes(True, kv_split="split_kv"),
        {"q": ["b", 10, 8], "k": ["b", 10, 24], "v": ["b", 10, 24], "mask": ["b", 1, 1, 10]},
        {
            "scale": _scalar(math.sqrt(8.0)),
            "split": np.array([0, 0, 1, 8], np.int64),
            "split_kv": np.array([0, 0, 3, 8], np.int64),
            "merge": np.array([0, 0, 24], np.int64),
        },
    )
    cm = compile(model)
    assert "Attention" not in [n.op_type for n in cm.graph.nodes]
    feeds = {
        "q": rng.standard_normal((2, 10, 8)).astype(np.float32),
        "k": rng.standard_normal((2, 10, 24)).astype(np.float32),
        "v": rng.standard_normal((2, 10, 24)).astype(np.float32),
        "mask": np.zeros((2, 1, 1, 10), np.float32),
    }
    np.testing.assert_allclose(
        cm.run(feeds)["y"], compile(model, fuse=False).run(feeds)["y"], rtol=2e-5, atol=2e-5
    )


def test_multi_query_attention_is_fused_and_broadcast(rng: np.random.Generator) -> None:
    # k and v carry one head shared by q's three: the products broadcast it, and so does the op.
    nodes = _heads_attention_nodes(True, kv_split="split_kv")
    model = _model(
        nodes,
        {"q": ["b", 10, 24], "k": ["b", 10, 8], "v": ["b", 10, 8], "mask": ["b", 1, 1, 10]},
        {
            "scale": _scalar(math.sqrt(8.0)),
            "split": np.array([0, 0, 3, 8], np.int64),
            "split_kv": np.array([0, 0, 1, 8], np.int64),
            "merge": np.array([0, 0, 24], np.int64),
        },
    )
    feeds = {
        "q": rng.standard_normal((2, 10, 24)).astype(np.float32),
        "k": rng.standard_normal((2, 10, 8)).astype(np.float32),
        "v": rng.standard_normal((2, 10, 8)).astype(np.float32),
        "mask": np.where(rng.random((2, 1, 1, 10)) < 0.3, -1e4, 0.0).astype(np.float32),
    }
    _check(model, feeds, ["phi::Attention"], ["Transpose", "MatMul"])


def test_attention_whose_probabilities_are_read_elsewhere_is_not_fused(
    rng: np.random.Generator,
) -> None:
    nodes = [*_heads_attention_nodes(False), helper.make_node("Identity", ["p"], ["probs"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, ["b", 10, 24]) for n in ("q", "k", "v")]
        + [helper.make_tensor_value_info("mask", F, ["b", 1, 1, 10])],
        [
            helper.make_tensor_value_info("y", F, None),
            helper.make_tensor_value_info("probs", F, None),
        ],
        [
            numpy_helper.from_array(_scalar(math.sqrt(8.0)), "scale"),
            numpy_helper.from_array(np.array([0, 0, 3, 8], np.int64), "split"),
            numpy_helper.from_array(np.array([0, 0, 24], np.int64), "merge"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cm = compile(model)
    assert "Attention" not in [n.op_type for n in cm.graph.nodes]
    feeds = {n: rng.standard_normal((2, 10, 24)).astype(np.float32) for n in ("q", "k", "v")}
    feeds["mask"] = np.zeros((2, 1, 1, 10), np.float32)
    out, plain = cm.run(feeds), compile(model, fuse=False).run(feeds)
    for name in ("y", "probs"):
        np.testing.assert_allclose(out[name], plain[name], rtol=2e-5, atol=2e-5)


def test_patterns_with_outside_readers_are_left_alone(rng: np.random.Generator) -> None:
    mk = helper.make_node
    # The Erf's input is also a graph output, so the GELU nodes cannot disappear.
    nodes = [*_gelu_nodes("x", 0), mk("Identity", ["d"], ["d_out"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["n", 4])],
        [
            helper.make_tensor_value_info("y", F, None),
            helper.make_tensor_value_info("d_out", F, None),
        ],
        [numpy_helper.from_array(v, k) for k, v in GELU_CONSTS.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cm = compile(model)
    assert "Erf" in [n.op_type for n in cm.graph.nodes]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        cm.run({"x": x})["y"], compile(model, fuse=False).run({"x": x})["y"], rtol=1e-6
    )


# ---- shapes computed from shapes keep their symbols ---------------------------------------------


def _leading_dims_then(src: str, tail: str, out: str) -> list[onnx.NodeProto]:
    """``out = concat(shape(src)[0:1], shape(src)[1:2], tail)``, the way exporters build it:
    Shape, a Gather per dimension, an Unsqueeze each, Concat."""
    mk = helper.make_node
    return [
        mk("Shape", [src], [f"{out}_shape"]),
        mk("Gather", [f"{out}_shape", "i0"], [f"{out}_d0"], axis=0),
        mk("Gather", [f"{out}_shape", "i1"], [f"{out}_d1"], axis=0),
        mk("Unsqueeze", [f"{out}_d0", "ax0"], [f"{out}_u0"]),
        mk("Unsqueeze", [f"{out}_d1", "ax0"], [f"{out}_u1"]),
        mk("Concat", [f"{out}_u0", f"{out}_u1", tail], [out], axis=0),
    ]


def _split_merge_heads_nodes(slice_merge: bool) -> list[onnx.NodeProto]:
    """x @ W + b viewed as (b, s, 2, 4) from its own Shape, transposed and back, merged to
    (b, s, 8) by a Shape-computed Reshape, then @ W2 + b2 + x: the exporters' head split."""
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "w"], ["xw"]),
        mk("Add", ["xw", "b"], ["h"]),
        *_leading_dims_then("h", "heads", "split"),
        mk("Reshape", ["h", "split"], ["hh"]),
        mk("Transpose", ["hh"], ["t"], perm=[0, 2, 1, 3]),
        mk("Transpose", ["t"], ["back"], perm=[0, 2, 1, 3]),
    ]
    if slice_merge:  # x.view(*x.shape[:-2], 8)
        nodes += [
            mk("Shape", ["back"], ["bs"]),
            mk("Slice", ["bs", "s0", "s2"], ["lead"]),
            mk("Concat", ["lead", "width"], ["merge"], axis=0),
        ]
    else:  # x.view(x.size(0), x.size(1), 8), sizes from the input
        nodes += _leading_dims_then("x", "width", "merge")
    nodes += [
        mk("Reshape", ["back", "merge"], ["m"]),
        mk("MatMul", ["m", "w2"], ["mw"]),
        mk("Add", ["mw", "b2"], ["o"]),
        mk("Add", ["o", "x"], ["y"]),
    ]
    return nodes


@pytest.mark.parametrize("slice_merge", [False, True])
def test_reshapes_computed_from_shapes_keep_symbols_and_residual_fuses(
    rng: np.random.Generator, slice_merge: bool
) -> None:
    consts = {
        "w": rng.standard_normal((8, 8)).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
        "w2": rng.standard_normal((8, 8)).astype(np.float32),
        "b2": rng.standard_normal(8).astype(np.float32),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "ax0": np.array([0], np.int64),
        "heads": np.array([2, 4], np.int64),
        "width": np.array([8], np.int64),
        "s0": np.array([0], np.int64),
        "s2": np.array([-2], np.int64),
    }
    model = _model(_split_merge_heads_nodes(slice_merge), {"x": ["batch", "seq", 8]}, consts)
    cm = compile(model)
    # The split keeps x's symbols (no new ones for "batch" and "seq"), so the merged product has
    # x's exact shape and the residual Add is fused into it.
    split = next(n for n in cm.graph.nodes if n.op_type == "Reshape" and n.inputs[0] == "h")
    assert cm.graph.types[split.outputs[0]].shape == ("batch", "seq", 2, 4)
    residual = [n for n in cm.graph.nodes if n.op_type == "Linear" and len(n.inputs) == 4]
    listing = [(n.op_type, n.inputs) for n in cm.graph.nodes]
    assert residual and residual[0].inputs[3] == "x", listing
    assert "Add" not in [n.op_type for n in cm.graph.nodes]
    for shape in ((3, 5, 8), (1, 1, 8)):
        x = rng.standard_normal(shape).astype(np.float32)
        want = (x @ consts["w"] + consts["b"]) @ consts["w2"] + consts["b2"] + x
        np.testing.assert_allclose(cm.run({"x": x})["y"], want, rtol=2e-5, atol=2e-5)
