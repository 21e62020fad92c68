"""phi_engine.runtime.cuda's plumbing, on a null device.

The wrappers turn arrays into device addresses, shapes and attributes for phi_engine._core_cuda.
Here that module is replaced by a null device (tests/null_cuda.py) that keeps "device memory" in
numpy and computes each op with the numpy reference, so every shape, axis and broadcasting path
of the wrappers is checked on any machine; the kernels themselves are tested on a GPU in
tests/gpu. A contract test keeps the null device's signatures equal to the compiled module's.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import numpy as np
import pytest

from null_cuda import NullCuda
from phi_engine import _native
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import cuda
from phi_engine.runtime import reference as ref


@pytest.fixture
def null(monkeypatch: pytest.MonkeyPatch) -> NullCuda:
    device = NullCuda()
    monkeypatch.setattr(_native, "cuda", device)
    monkeypatch.setattr(cuda, "_POISON_OUTPUTS", True)
    return device


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def test_signatures_match_the_compiled_module() -> None:
    real = _native.cuda
    if real is None:
        pytest.skip("phi_engine._core_cuda is not built here")
    for name in (
        "gemm",
        "gemm_epilogue",
        "binary",
        "unary",
        "softmax",
        "layer_norm",
        "copy_device",
        "copy_async",
        "copy_2d",
        "fill_bytes",
        "strided_copy",
        "compare",
        "where",
        "log_softmax",
        "rms_norm",
        "arg",
        "im2col",
        "pool2d",
        "gather",
        "cast",
        "reduce",
        "begin_capture",
        "end_capture",
        "abort_capture",
    ):
        header = getattr(real, name).__doc__.splitlines()[0]
        params = header[header.index("(") + 1 : header.rindex(") ->")]
        compiled = re.findall(r"(?:^|, )(\*|\w+)(?=: |, |$)", params)
        mine = []
        for p in inspect.signature(getattr(NullCuda, name)).parameters.values():
            if p.kind is p.KEYWORD_ONLY and "*" not in mine:
                mine.append("*")
            if p.name != "self":
                mine.append(p.name)
        assert compiled == mine, name


def test_is_available_and_devices(null: NullCuda) -> None:
    assert cuda.is_available() and cuda.device_count() == 1
    assert cuda.devices()[0]["name"] == "null"


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_plumbing(
    null: NullCuda, rng: np.random.Generator, trans_a: bool, trans_b: bool
) -> None:
    m, k, n = 5, 7, 3
    a = randn(rng, k, m) if trans_a else randn(rng, m, k)
    b = randn(rng, n, k) if trans_b else randn(rng, k, n)
    bias, res = randn(rng, n), randn(rng, 1, n)  # residual broadcasts over rows
    kw: dict[str, Any] = {"residual": res, "alpha": 0.5, "trans_a": trans_a, "trans_b": trans_b}
    np.testing.assert_array_equal(
        cuda.gemm(a, b, bias, "gelu", **kw), ref.gemm(a, b, bias, "gelu", **kw)
    )
    scalar = np.float32(2.0).reshape(1)
    np.testing.assert_array_equal(
        cuda.gemm(a[:, ::1], b, scalar, **kw), ref.gemm(a, b, scalar, **kw)
    )


def test_softmax_plumbing(null: NullCuda, rng: np.random.Generator) -> None:
    x = randn(rng, 2, 3, 4, 5)
    for axis in (-1, 0, 1, 2, -2):
        for mask in (None, randn(rng, 4, 1), randn(rng, 3, 1, 5), randn(rng, 2, 3, 4, 5)):
            out = cuda.softmax(x, mask, axis=axis, scale=0.5)
            np.testing.assert_array_equal(out, ref.softmax(x, mask, axis=axis, scale=0.5))
    assert null.calls.count("softmax") == 20


def test_layer_norm_plumbing(null: NullCuda, rng: np.random.Generator) -> None:
    x, res = randn(rng, 3, 4, 5), randn(rng, 3, 4, 5)
    for axis in (-1, 1, 0):
        norm = x.shape[axis:]
        gamma, beta = randn(rng, 1, *norm), randn(rng, *norm)
        out = cuda.layer_norm(x, gamma, beta, axis=axis, epsilon=1e-3, residual=res)
        expected = ref.layer_norm(x, gamma, beta, axis=axis, epsilon=1e-3, residual=res)
        # numpy broadcasting gives the reference gamma's extra leading 1; the op keeps x's shape.
        np.testing.assert_allclose(out, expected.reshape(x.shape), rtol=1e-6, atol=1e-6)


def test_elementwise_plumbing(null: NullCuda, rng: np.random.Generator) -> None:
    a, b = randn(rng, 4, 1, 6), randn(rng, 5, 1)
    for op in ("add", "sub", "mul", "div", "maximum", "minimum"):
        np.testing.assert_array_equal(getattr(cuda, op)(a, b), getattr(ref, op)(a, b))
    np.testing.assert_array_equal(
        cuda.add(a, b, "clip", clip_min=0, clip_max=1),
        ref.add(a, b, "clip", clip_min=0, clip_max=1),
    )
    np.testing.assert_array_equal(cuda.mul(3, a), ref.mul(np.float32(3), a))
    x = randn(rng, 3, 4)[:, ::2]
    for op in ("neg", "abs", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "erf", "exp"):
        np.testing.assert_array_equal(getattr(cuda, op)(x), getattr(ref, op)(x))
    np.testing.assert_array_equal(cuda.clip(x, -0.1, None), ref.clip(x, -0.1, None))
    np.testing.assert_array_equal(cuda.leaky_relu(x, 0.3), ref.leaky_relu(x, 0.3))


def test_device_arrays_are_read_in_place(null: NullCuda, rng: np.random.Generator) -> None:
    class DeviceArray:
        """A float32 array living in the null device, seen only through the interface."""

        def __init__(self, host: np.ndarray) -> None:
            self.buffer = null.DeviceBuffer(host.nbytes)
            null.copy_to_device(self.buffer.ptr, np.ascontiguousarray(host))
            self.__cuda_array_interface__ = {
                "shape": host.shape, "typestr": "<f4", "data": (self.buffer.ptr, False),
                "version": 3, "strides": None, "stream": 1,
            }  # fmt: skip

    x, mask = randn(rng, 3, 8), randn(rng, 8)
    out = cuda.softmax(DeviceArray(x), DeviceArray(mask), axis=0)  # moved axis: copied via host
    np.testing.assert_array_equal(out, ref.softmax(x, mask, axis=0))
    allocations_before = null.next_address
    np.testing.assert_array_equal(cuda.tanh(DeviceArray(x)), ref.tanh(x))
    # In place: only the DeviceArray itself and the output were allocated.
    assert null.next_address - allocations_before == 2 * 256


def test_wrapper_validation(null: NullCuda) -> None:
    x = np.ones((3, 4), np.float32)
    cases: list[tuple[Any, str]] = [
        (lambda: cuda.gemm(x, x), r"\[cuda:gemm\] inner dimensions"),
        (lambda: cuda.gemm(x, x.T, np.ones(2, np.float32)), r"\[cuda:gemm\] bias must have 3"),
        (lambda: cuda.gemm(x, x.T, activation="swish"), r"\[cuda:gemm\] unknown activation"),
        (lambda: cuda.softmax(np.float32(1)), r"\[cuda:softmax\] x must have at least one"),
        (lambda: cuda.softmax(x, axis=-3), r"\[cuda:softmax\] axis -3"),
        (lambda: cuda.softmax(x, np.ones((1, 3, 4), np.float32)), r"\[cuda:softmax\] mask"),
        (lambda: cuda.layer_norm(x, np.ones((4, 1), np.float32)), r"\[cuda:layer_norm\] gamma"),
        (lambda: cuda.layer_norm(x, x[0], epsilon=math.nan), r"\[cuda:layer_norm\] epsilon"),
        (lambda: cuda.add(x, np.ones(3, np.float32)), r"\[cuda:add\] shapes"),
        (lambda: cuda.sub(x, [1.0, 2.0, 3.0, 4.0]), r"\[cuda:sub\] b must be float32, got float64"),
        (lambda: cuda.neg(True), r"\[cuda:neg\] x must be float32, got bool"),
        (lambda: cuda.exp(object()), r"\[cuda:exp\] x must be float32"),
        (lambda: cuda.leaky_relu(x, math.inf), r"\[cuda:leaky_relu\] alpha"),
    ]
    for call, match in cases:
        with pytest.raises(InvalidRequestError, match=match):
            call()
