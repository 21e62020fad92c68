"""``compile(device="cuda", triton_ops=[...])``: plan steps run by the Triton kernels.

On the CPU the CUDA module is the null device of tests/null_cuda.py and Triton's interpreter runs
the kernels on its (host) memory, so the selection, the addresses and the arguments each
launcher passes are checked against the CPU backend; on a GPU (PHI_ENGINE_TRITON_DEVICE=cuda)
the same models run compiled, on the real module.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

DEVICE = os.environ.get("PHI_ENGINE_TRITON_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("torch", reason="the Triton launchers view memory as torch tensors")
pytest.importorskip("triton", reason="triton is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import phi_engine as phi  # noqa: E402
from null_cuda import NullCuda  # noqa: E402
from phi_engine import _native  # noqa: E402
from phi_engine.errors import InvalidRequestError, UnsupportedError  # noqa: E402
from phi_engine.runtime.cuda.program import CudaProgram  # noqa: E402

F32 = TensorProto.FLOAT


@pytest.fixture
def cuda_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    if DEVICE == "cuda":
        if _native.cuda is None or _native.cuda.device_count() == 0:
            pytest.skip("no CUDA device")
        return _native.cuda
    device = NullCuda()
    monkeypatch.setattr(_native, "cuda", device)
    return device


def _model(rng: np.random.Generator, width: int) -> bytes:
    """softmax(x) → + residual → layer norm, and a masked softmax over the result."""
    g = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(width)).astype(np.float32), "g")
    b = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b")
    n = helper.make_node
    nodes = [
        n("Softmax", ["x"], ["p"], axis=-1),
        n("Add", ["p", "x"], ["r"]),
        n("LayerNormalization", ["r", "g", "b"], ["h"], axis=-1, epsilon=1e-5),
        n("Add", ["h", "mask"], ["hm"]),
        n("Softmax", ["hm"], ["y"], axis=-1),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F32, ["n", 3, width]),
        helper.make_tensor_value_info("mask", F32, [1, width]),
    ]
    outputs = [helper.make_tensor_value_info("y", F32, ["n", 3, width])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[g, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@pytest.mark.parametrize("width", [7, 64, 300])
def test_softmax_and_layer_norm_on_triton(cuda_module: Any, width: int) -> None:
    rng = np.random.default_rng(width)
    model = _model(rng, width)
    gpu = phi.compile(model, device="cuda", max_batch=4, triton_ops=["softmax", "layer_norm"])
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for _ in range(3):  # eager, captured, replayed
        x = rng.standard_normal((2, 3, width)).astype(np.float32)
        mask = np.where(rng.random((1, width)) < 0.3, -1e4, 0.0).astype(np.float32)
        mask[0, 0] = 0.0
        got = gpu.run({"x": x, "mask": mask})["y"]
        np.testing.assert_allclose(got, cpu.run({"x": x, "mask": mask})["y"], rtol=2e-5, atol=2e-6)
    program = gpu.program({"x": (2, 3, width), "mask": (1, width)})
    assert isinstance(program, CudaProgram)
    chosen = {op: where for op, where in program.kernels if op in ("softmax", "layer_norm")}
    assert chosen == {"softmax": "triton", "layer_norm": "triton"}, program.kernels


def test_triton_ops_are_checked(cuda_module: Any) -> None:
    model = _model(np.random.default_rng(0), 8)
    with pytest.raises(InvalidRequestError, match=r"no Triton kernel for \['conv2d'\]"):
        phi.compile(model, device="cuda", triton_ops=["conv2d"])
    with pytest.raises(InvalidRequestError, match="list of op names"):
        phi.compile(model, device="cuda", triton_ops="softmax")
    with pytest.raises(UnsupportedError, match="on device 'cuda', not 'cpu'"):
        phi.compile(model, device="cpu", triton_ops=["softmax"])


def test_matmul_on_triton(cuda_module: Any) -> None:
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 24)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((24, 16)).astype(np.float32), "w2")
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w1"], ["h0"]),
        n("Add", ["h0", "b1"], ["h1"]),
        n("Relu", ["h1"], ["h2"]),
        n("MatMul", ["h2", "w2"], ["h3"]),
        n("Add", ["h3", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, ["n", 5, 16])],
        [helper.make_tensor_value_info("y", F32, ["n", 5, 16])], initializer=[w1, b1, w2],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    gpu = phi.compile(model, device="cuda", max_batch=4, triton_ops=["matmul"])
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for _ in range(3):
        x = rng.standard_normal((3, 5, 16)).astype(np.float32)
        np.testing.assert_allclose(
            gpu.run({"x": x})["y"], cpu.run({"x": x})["y"], rtol=1e-4, atol=1e-4
        )
    program = gpu.program({"x": (3, 5, 16)})
    assert isinstance(program, CudaProgram)
    assert [w for op, w in program.kernels if op == "matmul"] == ["triton", "triton"], (
        program.kernels
    )
