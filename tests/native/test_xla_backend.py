"""The XLA backend (issue 8, point 3) on JAX's CPU device: whole models compiled by ``jax.jit``
against phi_engine's own CPU kernels, unsupported ops refused at compile time, and a deployment
asking for a TPU placed on XLA.

Tolerances: relative L2 within 1e-5 of the native CPU result (both float32; the order of the
sums differs), the MLP also against its float64 numpy reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import phi_engine as phi
from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError, ResourceError, UnsupportedError
from phi_test_models.tiny import mlp, mlp_reference

pytest.importorskip("jax", reason="the XLA backend needs jax")

from phi_engine.runtime import xla


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def test_an_mlp_compiles_once_and_serves_every_batch_size(tmp_path: Path) -> None:
    model = phi.compile(str(mlp(tmp_path / "m.onnx", seed=3)), device="xla", max_batch=16)
    rng = np.random.default_rng(0)
    for batch in (1, 5, 16):
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        y = model.run({"x": x})["y"]
        assert y.dtype == np.float32 and y.shape == (batch, 3)
        assert rel_l2(y, mlp_reference(x, seed=3).astype(np.float64)) < 1e-6
    assert len(model.cached_shapes) == 3  # one XLA program per shape, reused


@pytest.mark.slow
def test_minilm_matches_the_cpu_kernels(tmp_path: Path) -> None:
    from phi_test_models import minilm

    try:
        model: Any = str(minilm.export())
    except phi.errors.NotFoundError:  # no weights package (a GPU machine): random weights
        from phi_engine.models.minilm import build_onnx

        model = build_onnx(minilm.random_model_dir(tmp_path / "minilm"))
    on_xla = phi.compile(model, device="xla", max_batch=8)
    on_cpu = phi.compile(model, device="cpu", max_batch=8)
    rng = np.random.default_rng(1)
    for batch, seq in ((1, 8), (3, 16)):
        feeds = minilm.random_inputs(rng, batch, seq)  # with attention masks
        got, want = on_xla.run(feeds), on_cpu.run(feeds)
        for name, value in want.items():
            assert rel_l2(got[name], value) < 1e-5, (name, batch, seq)


@pytest.mark.slow
def test_a_cnn_matches_the_cpu_kernels() -> None:
    from phi_test_models import cnn

    path = str(cnn.export())
    on_xla = phi.compile(path, device="xla", max_batch=4)
    on_cpu = phi.compile(path, device="cpu", max_batch=4)
    name = on_cpu.graph.inputs[0]
    shape = [2 if isinstance(d, str) else d for d in on_cpu.inputs[name].shape or ()]
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    got, want = on_xla.run({name: x}), on_cpu.run({name: x})
    for out, value in want.items():
        assert rel_l2(got[out], value) < 1e-5


def test_ops_xla_does_not_run_are_refused_at_compile_naming_them() -> None:
    # GridSample has no XLA lowering yet: refused at compile, naming the node.
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="warp")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4]),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", 3, 3, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 3, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert "GridSample" not in xla.OPS
    phi.compile(model.SerializeToString(), device="cpu")  # the CPU backend runs it
    with pytest.raises(UnsupportedError) as info:
        phi.compile(model.SerializeToString(), device="xla")
    assert "GridSample (node 'warp')" in info.value.message
    assert info.value.field == "device"


def test_data_dependent_shapes_run_op_by_op_on_values() -> None:
    """NonZero's output shape depends on the data: no static XLA program holds it, so a model
    with one fed by an input runs op by op, NonZero itself on the numpy reference."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("NonZero", ["r"], ["idx"], name="where_nonzero"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "K"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    got = phi.compile(model.SerializeToString(), device="xla").run({"x": x})["idx"]
    np.testing.assert_array_equal(got, np.stack(np.nonzero(np.maximum(x, 0))))


def test_tpu_deployments_run_on_xla_where_jax_sees_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(mlp(tmp_path / "m.onnx", seed=4))
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)

    def deploy(engine: Engine, **kwargs: Any) -> Any:
        record = engine.register("m", "onnx", str(len(engine.models()) + 1), path)
        return engine.deploy(record.model_id, **kwargs)

    # No opt-in: a TPU request runs on XLA where JAX sees an accelerator (a GPU machine), and
    # is refused, naming what exists, where it sees none (CI).
    xla.xla_devices.cache_clear()
    monkeypatch.delenv(xla.CPU_AS_XLA, raising=False)
    with Engine(tmp_path / "home", progress=False) as engine:
        if xla.xla_devices():
            dep = deploy(engine, resource_allocation={"tpu": 1})
            assert dep.spec.placement.device == "xla"
            got = engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
            np.testing.assert_allclose(got, mlp_reference(x, seed=4), rtol=1e-5, atol=1e-6)
        else:
            with pytest.raises(ResourceError) as info:
                deploy(engine, resource_allocation={"tpu": 1})
            assert info.value.field == "resource_allocation.tpu"
            assert "cpu" in info.value.message
    # JAX's CPU device counted as an XLA device: the model is compiled by XLA and serves.
    monkeypatch.setenv(xla.CPU_AS_XLA, "1")
    xla.xla_devices.cache_clear()
    try:
        assert any(d["kind"] == "xla" for d in phi.devices())
        with Engine(tmp_path / "home2", progress=False) as engine:
            dep = deploy(engine, resource_allocation={"tpu": 1})
            assert dep.spec.placement.device == "xla"
            assert dep.primary is not None and dep.primary.runner.model.device == "xla"
            got = engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
            np.testing.assert_allclose(got, mlp_reference(x, seed=4), rtol=1e-5, atol=1e-6)
            with pytest.raises(InvalidRequestError) as refused:
                deploy(engine, resource_allocation={"tpu": 1}, execution_mode="process")
            assert refused.value.field == "execution_mode"
    finally:
        xla.xla_devices.cache_clear()


def test_float64_models_are_refused_at_compile_while_jax_runs_in_32_bits() -> None:
    node = helper.make_node("Add", ["x", "x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 2])],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedError, match="jax_enable_x64") as info:
        phi.compile(proto.SerializeToString(), device="xla")
    assert "Add on float64 (node 'y')" in info.value.message


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "include_pad"),
    [((3, 3), (2, 2), (1, 1, 1, 1), 0), ((3, 2), (2, 3), (1, 0, 0, 1), 1),
     ((2, 2), (2, 2), (0, 0, 0, 0), 1), ((4, 3), (3, 2), (2, 1, 1, 1), 0)],
)  # fmt: skip
def test_ceil_mode_pools_match_the_cpu(
    kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, ...], include_pad: int
) -> None:
    """Ceil-mode windows that hang past the end pad: the XLA backend pools them as the CPU
    kernels do (the extra cells are padding no average counts)."""
    n = helper.make_node
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": 1}
    nodes = [
        n("MaxPool", ["x"], ["mx"], **attrs),
        n("AveragePool", ["x"], ["av"], count_include_pad=include_pad, **attrs),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 10])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("mx", "av")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = np.random.default_rng(sum(kernel)).standard_normal((2, 3, 9, 10)).astype(np.float32)
    got = phi.compile(model, device="xla").run({"x": x})
    want = phi.compile(model, device="cpu").run({"x": x})
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_loss_with_a_target_out_of_range_is_nan_not_a_number_that_looks_right() -> None:
    node = helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["loss"], reduction="none")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("t", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.log(np.full((3, 4), 0.25, np.float32))
    compiled = phi.compile(model.SerializeToString(), device="xla")
    ok = compiled.run({"x": x, "t": np.array([0, 3, 1], np.int64)})["loss"]
    np.testing.assert_allclose(ok, -x[[0, 1, 2], [0, 3, 1]], rtol=1e-6)
    bad = compiled.run({"x": x, "t": np.array([0, 7, 1], np.int64)})["loss"]
    assert np.isnan(bad[1]) and not np.isnan(bad[[0, 2]]).any()
    with pytest.raises(InvalidRequestError, match="out of range"):  # the CPU backend refuses
        phi.compile(model.SerializeToString(), device="cpu").run(
            {"x": x, "t": np.array([0, 7, 1], np.int64)}
        )


def test_cpu_work_never_imports_jax(tmp_path: Path) -> None:
    """Importing JAX takes seconds: compiling, registering, deploying and serving on the CPU
    leave it unimported (placement looks up XLA devices only when a TPU is asked for)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, pathlib\n"
        "import numpy as np\n"
        "from phi_engine import Engine\n"
        "from phi_test_models.tiny import mlp\n"
        f"home = pathlib.Path({str(tmp_path)!r})\n"
        "with Engine(home / 'home', progress=False) as e:\n"
        "    r = e.register('m', 'onnx', '1', str(mlp(home / 'm.onnx')))\n"
        "    dep = e.deploy(r.model_id)\n"
        "    e.infer(dep.deployment_id, {'x': np.zeros((1, 4), np.float32)})\n"
        "print('jax' in sys.modules)\n"
    )
    tests = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
