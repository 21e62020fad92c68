"""Whole models on the GPU (``compile(device="cuda")``) and the data-movement kernels they use.

Tolerances: copies, gathers and casts are exact; float32 reductions to 1e-5 relative; a float32
model (cuBLAS products, our kernels) to 1e-4 relative L2 against the CPU backend; TF32 products
and fp16 products to 1e-2, bf16 to 5e-2 (operands rounded to 11 and 8 significant bits, through
six layers). Inputs are fresh random values every time.
The same plumbing runs on a null device in tests/unit/test_cuda_plan.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import phi_engine as phi
from phi_engine import _native
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime.cuda.program import CudaProgram
from phi_test_models import cuda_cases as cases

pytestmark = pytest.mark.gpu


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    e = expected.astype(np.float64)
    return float(np.linalg.norm(actual.astype(np.float64) - e) / max(np.linalg.norm(e), 1e-30))


class Dev:
    """A device buffer holding a host array (uploaded) or room for one."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)
        self.buf = _native.cuda.DeviceBuffer(self.array.nbytes)
        if self.array.nbytes:
            _native.cuda.copy_to_device(self.buf.ptr, self.array.reshape(-1).view(np.uint8))

    @property
    def ptr(self) -> int:
        return int(self.buf.ptr)

    def fetch(self) -> np.ndarray:
        out = np.empty_like(self.array)
        if out.nbytes:
            _native.cuda.copy_to_host(out.reshape(-1).view(np.uint8), self.ptr)
        return out


def poisoned(shape: tuple[int, ...], dtype: Any) -> Dev:
    """An output buffer that starts with every bit set (NaN for floats): unwritten shows up."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return Dev(np.full(nbytes, 0xFF, np.uint8).view(dtype).reshape(shape))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16, np.uint8])
def test_strided_copy_is_numpy_transpose(rng: np.random.Generator, dtype: Any) -> None:
    cu = _native.cuda
    for shape, perm in (((3, 5, 7), (2, 0, 1)), ((2, 128, 12, 32), (0, 2, 1, 3)), ((1,), (0,))):
        x = (rng.standard_normal(shape) * 100).astype(dtype)
        src, want = Dev(x), np.ascontiguousarray(x.transpose(perm))
        out = poisoned(want.shape, dtype)
        strides = [int(np.prod(shape[p + 1 :])) for p in perm]
        cu.strided_copy(src.ptr, out.ptr, x.itemsize, list(want.shape), strides)
        np.testing.assert_array_equal(out.fetch(), want)


def test_gather_rows_and_bad_indices(rng: np.random.Generator) -> None:
    cu = _native.cuda
    table = rng.standard_normal((3, 50, 7)).astype(np.float32)
    for idx_dtype in (np.int32, np.int64):
        idx = rng.integers(-50, 50, size=(4, 5)).astype(idx_dtype)
        want = np.take(table, idx, axis=1)
        data, ids, out = Dev(table), Dev(idx), poisoned(want.shape, np.float32)
        err = Dev(np.zeros(2, np.uint64))
        cu.gather(
            data.ptr, 4, ids.ptr, np.dtype(idx_dtype).name, out.ptr, 3, 20, 50, 7, error=err.ptr
        )
        np.testing.assert_array_equal(out.fetch(), want)
        assert err.fetch()[0] == 0
        idx[1, 2] = 50
        ids = Dev(idx)
        cu.gather(
            data.ptr, 4, ids.ptr, np.dtype(idx_dtype).name, out.ptr, 3, 20, 50, 7, error=err.ptr
        )
        words = err.fetch()
        assert words[0] == 1 and int(words[1]) == 50


@pytest.mark.parametrize(
    ("src", "dst"),
    [("int64", "float32"), ("float32", "int32"), ("float32", "float16"), ("float16", "float32"),
     ("int32", "int64"), ("float32", "bool"), ("bool", "float32"), ("float64", "float32"),
     ("float32", "uint8"), ("float32", "int8"), ("float64", "int64"), ("float64", "float16")],
)  # fmt: skip
def test_cast_matches_astype(rng: np.random.Generator, src: str, dst: str) -> None:
    x = (rng.standard_normal(1001) * 1000).astype(src)
    if np.dtype(src).kind == "f":  # what does not fit: numpy's x86 results, as the CPU kernel
        with np.errstate(over="ignore"):  # 1e10 is inf in float16
            x[:6] = np.array([np.nan, np.inf, -np.inf, 1e10, -1.0, 300.0]).astype(src)
    with np.errstate(invalid="ignore", over="ignore"):
        want = x.astype(dst)
    a, out = Dev(x), poisoned(want.shape, dst)
    _native.cuda.cast(a.ptr, src, out.ptr, dst, x.size)
    np.testing.assert_array_equal(out.fetch(), want)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_reduce_over_a_run_of_axes(rng: np.random.Generator, op: str) -> None:
    for outer, length, inner in ((7, 384, 1), (4, 129, 33), (1, 1000, 1), (300, 3, 5)):
        x = rng.standard_normal((outer, length, inner)).astype(np.float32)
        want = getattr(np, op)(x.astype(np.float64), axis=1)
        a, out = Dev(x), poisoned((outer, inner), np.float32)
        _native.cuda.reduce(op, a.ptr, out.ptr, outer, length, inner)
        np.testing.assert_allclose(out.fetch(), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from phi_engine.models.minilm import build_onnx

    try:
        return build_onnx()
    except phi.errors.NotFoundError:  # no weights package here: the same shapes, random weights
        from phi_test_models.minilm import random_model_dir

        return build_onnx(random_model_dir(Path(tmp_path_factory.mktemp("minilm"))))


def _inputs(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_minilm_matches_the_cpu(minilm_onnx: Any, rng: np.random.Generator, precision: str) -> None:
    gpu = phi.compile(minilm_onnx, device="cuda", max_batch=64, precision=precision)
    cpu = phi.compile(minilm_onnx, device="cpu", max_batch=64)
    tol = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2}[precision]
    for batch, seq in ((1, 8), (8, 128), (64, 256), (3, 17)):
        for _ in range(3):  # eager, captured, replayed: fresh inputs each time
            feeds = _inputs(rng, batch, seq)
            got = gpu.run(feeds)["sentence_embedding"]
            want = cpu.run(feeds)["sentence_embedding"]
            assert rel_l2(got, want) < tol, (batch, seq, rel_l2(got, want))
        program = gpu.program({k: v.shape for k, v in feeds.items()})
        assert isinstance(program, CudaProgram) and program.host_steps == []


def test_concurrent_runs_and_errors(minilm_onnx: Any, rng: np.random.Generator) -> None:
    gpu = phi.compile(minilm_onnx, device="cuda", max_batch=8)
    cpu = phi.compile(minilm_onnx, device="cpu", max_batch=8)
    feeds = [_inputs(np.random.default_rng(i), 4, 32) for i in range(6)]
    want = [cpu.run(f)["sentence_embedding"] for f in feeds]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for rep in range(8):
                i = (k + rep) % len(feeds)
                got = gpu.run(feeds[i])["sentence_embedding"]
                assert rel_l2(got, want[i]) < 1e-4
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    bad = dict(feeds[0])
    bad["input_ids"] = bad["input_ids"].copy()
    bad["input_ids"][0, 3] = 10**6
    with pytest.raises(InvalidRequestError, match=r"\[gather\] index 1000000 is out of range"):
        gpu.run(bad)
    assert rel_l2(gpu.run(feeds[0])["sentence_embedding"], want[0]) < 1e-4


def test_copy_2d_is_a_concatenation_part(rng: np.random.Generator) -> None:
    part = rng.standard_normal((5, 3, 4)).astype(np.float32)
    whole = np.full((5, 10, 4), np.nan, np.float32)
    src, dst = Dev(part), Dev(whole)
    _native.cuda.copy_2d(dst.ptr + 2 * 4 * 4, 10 * 4 * 4, src.ptr, 3 * 4 * 4, 3 * 4 * 4, 5)
    got = dst.fetch()
    np.testing.assert_array_equal(got[:, 2:5], part)
    assert np.isnan(got[:, :2]).all() and np.isnan(got[:, 5:]).all()


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_resnet_style_cnn_matches_the_cpu(rng: np.random.Generator, precision: str) -> None:
    pytest.importorskip("torch")
    from phi_test_models import cnn

    path = str(cnn.export())
    gpu = phi.compile(path, device="cuda", max_batch=32, precision=precision)
    cpu = phi.compile(path, device="cpu", max_batch=32)
    (name,) = cpu.outputs
    for batch in (1, 32, 5):
        for _ in range(3):
            x = rng.standard_normal((batch, 3, cnn.SIZE, cnn.SIZE)).astype(np.float32)
            err = rel_l2(gpu.run([x])[name], cpu.run([x])[name])
            assert err < (1e-4 if precision == "fp32" else 1e-2), (batch, err)
    program = gpu.program({next(iter(gpu.inputs)): (5, 3, cnn.SIZE, cnn.SIZE)})
    assert isinstance(program, CudaProgram) and program.host_steps == []


def _case_feeds(name: str, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if name == "attention":
        return cases.attention_feeds(rng, batch, 7)
    if name == "slices":
        return {"x": f(batch, 6, 5)}
    if name == "pools":
        return {"x": f(batch, 3, 7, 9)}
    if name == "mixed":
        return {"x": f(batch, 6, 6, 5)}
    if name == "gather":
        return {"ids": rng.integers(-10, 10, size=(batch, 3))}
    return {  # comparisons
        "x": f(batch, 5, 7),
        "y": f(1, 7),
        "ids": rng.integers(0, 3, (batch, 5)),
        "ids2": rng.integers(0, 3, (1, 5)),
    }


@pytest.mark.parametrize(
    ("name", "host_ops"),
    [("attention", []), ("slices", []), ("pools", []), ("comparisons", []),
     ("mixed", ["reduce_sum"]), ("gather", [])],
)  # fmt: skip
def test_model_families_match_the_cpu(
    rng: np.random.Generator, name: str, host_ops: list[str]
) -> None:
    build = {
        "attention": lambda: cases.attention_model(rng),
        "slices": cases.slices_model,
        "pools": lambda: cases.pools_model(rng),
        "comparisons": lambda: cases.comparisons_model(rng),
        "mixed": lambda: cases.mixed_model(rng),
        "gather": lambda: cases.gather_model(rng),
    }[name]
    model = build()
    gpu = phi.compile(model, device="cuda", max_batch=8)
    cpu = phi.compile(model, device="cpu", max_batch=8)
    for batch in (1, 8, 3):
        for _ in range(3):  # eager, captured, replayed
            feeds = _case_feeds(name, rng, batch)
            got, want = gpu.run(feeds), cpu.run(feeds)
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)
    program = gpu.program({k: v.shape for k, v in feeds.items()})
    assert isinstance(program, CudaProgram)
    assert [op for op, _ in program.host_steps] == host_ops


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_gpu_deployment_serves_on_the_gpu(tmp_path: Path, precision: str) -> None:
    from phi_test_models.tiny import mlp, mlp_reference

    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    with phi.Engine(tmp_path / "home", progress=False) as engine:
        record = engine.register("m", "onnx", "1", str(mlp(tmp_path / "m.onnx", seed=5)))
        dep = engine.deploy(record.model_id, resource_allocation={"gpu": 1}, precision=precision)
        assert dep.spec.placement.device == "cuda" and dep.spec.placement.gpus == ("cuda:0",)
        assert isinstance(dep.primary.runner.model.program({"x": (3, 4)}), CudaProgram)
        for _ in range(3):  # eager, captured, replayed
            got = engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
            tol = 1e-5 if precision == "fp32" else 1e-2
            np.testing.assert_allclose(got, mlp_reference(x, seed=5), rtol=tol, atol=tol)
