"""The compiler's frame: loading, the support check, input checks, shape caching, backends."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph import compile, supported_ops
from phi_engine.graph.onnx_backend import PhiBackend


def _model(nodes: list[onnx.NodeProto], opset: int = 17, **kw: object) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    inits = [onnx.numpy_helper.from_array(np.linspace(-1, 1, 4, dtype=np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _add_relu() -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("Add", ["x", "w"], ["t"], name="add"),
            helper.make_node("Relu", ["t"], ["y"]),
        ]
    )


def test_runs_natively_and_matches_numpy(rng: np.random.Generator) -> None:
    cm = compile(_add_relu())
    x = rng.standard_normal((3, 4)).astype(np.float32)
    out = cm.run({"x": x})["y"]
    np.testing.assert_allclose(out, np.maximum(x + np.linspace(-1, 1, 4, dtype=np.float32), 0))
    assert cm.program({"x": (3, 4)}).reference_nodes == []


def test_accepts_path_bytes_and_proto(tmp_path: object, rng: np.random.Generator) -> None:
    import pathlib

    model = _add_relu()
    path = pathlib.Path(str(tmp_path)) / "m.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    results = [
        compile(src).run([x])["y"] for src in (model, model.SerializeToString(), path, str(path))
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_reference_device_agrees(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 4)).astype(np.float32)
    native = compile(_add_relu()).run({"x": x})["y"]
    reference = compile(_add_relu(), device="reference").run({"x": x})["y"]
    np.testing.assert_allclose(native, reference, rtol=1e-6, atol=1e-7)


def test_unsupported_ops_are_refused_at_compile_naming_each_node() -> None:
    model = _model(
        [
            helper.make_node("Add", ["x", "w"], ["t"]),
            helper.make_node("NoSuchOp", ["t"], ["u"], name="first"),
            helper.make_node("AlsoMissing", ["u"], ["y"], name="second"),
        ]
    )
    with pytest.raises(UnsupportedError) as info:
        compile(model)
    message = str(info.value)
    assert "NoSuchOp (node 'first', opset 17)" in message
    assert "AlsoMissing (node 'second', opset 17)" in message


def test_unsupported_op_version_is_refused() -> None:
    # Relu's version at opset 5 is 1 (it took a consumed_inputs attribute): not implemented.
    model = _model(
        [helper.make_node("Add", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
        opset=5,
    )
    with pytest.raises(UnsupportedError, match=r"Relu .*op version 1 not supported"):
        compile(model)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"not a model", "not a valid ONNX model"),
        ("/nonexistent/m.onnx", "no model file"),
        (42, "must be"),
    ],
)
def test_bad_model_sources(source: object, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        compile(source)


def test_bad_arguments() -> None:
    with pytest.raises(UnsupportedError, match="device"):
        compile(_add_relu(), device="tpu")
    with pytest.raises(InvalidRequestError, match="max_batch"):
        compile(_add_relu(), max_batch=0)


def test_input_checks_name_the_input(rng: np.random.Generator) -> None:
    cm = compile(_add_relu(), max_batch=8)
    good = rng.standard_normal((2, 4)).astype(np.float32)
    cases = [
        ({}, "missing input 'x'"),
        ({"x": good, "z": good}, "unknown input 'z'"),
        ({"x": good.astype(np.float64)}, "must be float32"),
        ({"x": good[0]}, "rank 2"),
        ({"x": np.ones((2, 5), np.float32)}, "dimension 1 must be 4"),
        ({"x": np.ones((9, 4), np.float32)}, "over max_batch=8"),
        ({"x": [["a"] * 4]}, "not convertible"),
    ]
    for inputs, match in cases:
        with pytest.raises(InvalidRequestError, match=match) as info:
            cm.run(inputs)
        assert info.value.field in ("x", "z")


def test_lists_convert_and_programs_are_cached_per_shape(rng: np.random.Generator) -> None:
    cm = compile(_add_relu(), cache_size=2)
    cm.run({"x": [[1, 2, 3, 4]]})
    for batch in (1, 2, 3, 2):
        cm.run({"x": rng.standard_normal((batch, 4)).astype(np.float32)})
    assert cm.cached_shapes == [{"x": (3, 4)}, {"x": (2, 4)}]  # LRU order, size 2
    assert cm.program({"x": (2, 4)}) is cm.program({"x": (2, 4)})


def _gather() -> onnx.ModelProto:
    data = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "data")
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    node = helper.make_node("Gather", ["data", "i"], ["y"], name="pick")
    graph = helper.make_graph([node], "g", [i], [y], [data])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("check", [True, False])
def test_a_repeated_shape_runs_directly_with_the_same_answers(
    rng: np.random.Generator, check: bool
) -> None:
    cm = compile(_add_relu())
    x = rng.standard_normal((3, 4)).astype(np.float32)
    want = np.maximum(x + np.linspace(-1, 1, 4, dtype=np.float32), 0)
    assert cm.program({"x": (3, 4)}).direct_run() is not None  # one native plan: a direct path
    first = cm.run({"x": x}, check=check)["y"]  # through the program cache
    second = cm.run({"x": x}, check=check)["y"]  # the same shape again: the direct path
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    assert not np.shares_memory(first, second)  # each run hands out new arrays
    second[:] = 7.0
    np.testing.assert_array_equal(cm.run({"x": x}, check=check)["y"], want)
    other = rng.standard_normal((5, 4)).astype(np.float32)  # another shape, then back
    np.testing.assert_array_equal(
        cm.run({"x": other})["y"], np.maximum(other + np.linspace(-1, 1, 4, dtype=np.float32), 0)
    )
    np.testing.assert_array_equal(cm.run({"x": x}, check=check)["y"], want)


def test_the_direct_path_keeps_the_general_errors() -> None:
    cm = compile(_gather())
    np.testing.assert_array_equal(cm.run({"i": np.array([0, 3])})["y"][1], [9.0, 10.0, 11.0])
    # The same shape again, so the direct path: a kernel's error still names its node.
    with pytest.raises(InvalidRequestError, match=r"index 9 out of range .*\(in node 'pick'\)"):
        cm.run({"i": np.array([0, 9])})
    for threads in (-1, True, 1.5):
        with pytest.raises(InvalidRequestError, match="threads"):
            cm.run({"i": np.array([0, 1])}, threads)  # type: ignore[arg-type]
    np.testing.assert_array_equal(cm.run({"i": np.array([2, 2])})["y"][0], [6.0, 7.0, 8.0])


def test_programs_with_reference_steps_have_no_direct_path(rng: np.random.Generator) -> None:
    cm = compile(_add_relu(), device="reference")
    assert cm.program({"x": (2, 4)}).direct_run() is None
    x = rng.standard_normal((2, 4)).astype(np.float32)
    runs = [cm.run({"x": x})["y"] for _ in range(3)]
    for out in runs:
        np.testing.assert_allclose(out, np.maximum(x + np.linspace(-1, 1, 4, dtype=np.float32), 0))
    assert not np.shares_memory(runs[0], runs[1])


def test_symbolic_dims_must_agree_across_inputs(rng: np.random.Generator) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    cm = compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(InvalidRequestError, match="'n'"):
        cm.run({"a": np.ones((2, 3), np.float32), "b": np.ones((3, 3), np.float32)})


def test_concurrent_runs_of_several_shapes(rng: np.random.Generator) -> None:
    cm = compile(_add_relu())
    w = np.linspace(-1, 1, 4, dtype=np.float32)
    inputs = [rng.standard_normal((1 + i % 5, 4)).astype(np.float32) for i in range(40)]
    errors: list[str] = []

    def work(x: np.ndarray) -> None:
        out = cm.run({"x": x})["y"]
        if not np.allclose(out, np.maximum(x + w, 0)):
            errors.append("mismatch")

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_onnx_backend_interface(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (y,) = PhiBackend.run_model(_add_relu(), [x])
    np.testing.assert_allclose(y, np.maximum(x + np.linspace(-1, 1, 4, dtype=np.float32), 0))
    assert PhiBackend.supports_device("CPU") and not PhiBackend.supports_device("CUDA")
    assert PhiBackend.is_compatible(_add_relu())
    assert not PhiBackend.is_compatible(_model([helper.make_node("NoSuchOp", ["x"], ["y"])]))


def test_supported_ops_lists_onnx_and_fused_ops() -> None:
    ops = supported_ops()
    assert "Add" in ops and "phi::Linear" in ops and ops == sorted(ops)


def test_an_evicted_program_is_not_kept_by_the_direct_path(rng: np.random.Generator) -> None:
    cm = compile(_add_relu(), cache_size=1)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    first = cm.run({"x": x})["y"]
    program = cm.program({"x": (2, 4)})
    cm.program({"x": (3, 4)})  # built from outside run(): evicts (2, 4), the last run's shape
    assert cm.cached_shapes == [{"x": (3, 4)}]
    assert cm._last is None
    np.testing.assert_array_equal(cm.run({"x": x})["y"], first)
    assert cm.program({"x": (2, 4)}) is not program  # built again, then cached as usual
