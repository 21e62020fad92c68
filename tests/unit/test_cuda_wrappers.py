"""phi_engine.runtime.cuda's plumbing, on a null device.

The wrappers turn arrays into device addresses, shapes and attributes for phi_engine._core_cuda.
Here that module is replaced by a null device that keeps "device memory" in numpy and computes
each op with the numpy reference, so every shape, axis and broadcasting path of the wrappers is
checked on any machine; the kernels themselves are tested on a GPU in tests/gpu. A contract test
keeps the null device's signatures equal to the compiled module's.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import numpy as np
import pytest

from phi_engine import _native
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import cuda
from phi_engine.runtime import reference as ref


class NullCuda:
    """The pointer-level API of phi_engine._core_cuda over numpy memory."""

    architectures = "null"
    has_cublas = True

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.next_address = 1 << 20
        self.calls: list[str] = []
        null = self

        class DeviceBuffer:
            def __init__(self, nbytes: int) -> None:
                self.ptr = null.next_address
                self.nbytes = nbytes
                null.memory[self.ptr] = np.zeros(max(nbytes, 1), np.uint8)
                null.next_address += (max(nbytes, 1) + 255) // 256 * 256

            def __del__(self) -> None:
                null.memory.pop(self.ptr, None)

        self.DeviceBuffer = DeviceBuffer

    # ---- memory -----------------------------------------------------------------------------
    def f32(self, ptr: int, shape: Any) -> np.ndarray:
        n = math.prod(shape)
        return self.memory[ptr][: 4 * n].view(np.float32).reshape(shape)

    def device_count(self) -> int:
        return 1

    def device_status(self) -> str:
        return ""

    def device_list(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": "null", "memory_bytes": 1 << 30}]

    def synchronize(self) -> None:
        pass

    def copy_to_device(self, dst: int, src: np.ndarray) -> None:
        assert src.flags.c_contiguous
        raw = src.reshape(-1).view(np.uint8)
        self.memory[dst][: raw.size] = raw

    def copy_to_host(self, dst: np.ndarray, src: int) -> None:
        raw = dst.reshape(-1).view(np.uint8)
        raw[:] = self.memory[src][: raw.size]

    def copy_device(self, dst: int, src: int, nbytes: int) -> None:
        self.memory[dst][:nbytes] = self.memory[src][:nbytes]

    def fill_bytes(self, dst: int, value: int, nbytes: int) -> None:
        self.memory[dst][:nbytes] = value

    # ---- kernels ----------------------------------------------------------------------------
    def gemm(
        self, a: int, b: int, c: int, m: int, n: int, k: int, *, trans_a: bool = False,
        trans_b: bool = False, alpha: float = 1.0, bias: int = 0, residual: int = 0,
        activation: str = "none", clip_min: float = -math.inf, clip_max: float = math.inf,
        tf32: bool = False,
    ) -> None:  # fmt: skip
        self.calls.append("gemm")
        a_h = self.f32(a, (k, m) if trans_a else (m, k))
        b_h = self.f32(b, (n, k) if trans_b else (k, n))
        self.f32(c, (m, n))[...] = ref.gemm(
            a_h, b_h, None if bias == 0 else self.f32(bias, (n,)), activation,
            residual=None if residual == 0 else self.f32(residual, (m, n)), alpha=alpha,
            trans_a=trans_a, trans_b=trans_b, clip_min=clip_min, clip_max=clip_max,
        )  # fmt: skip

    def gemm_epilogue(
        self, c: int, m: int, n: int, *, bias: int = 0, residual: int = 0, activation: str = "none",
        clip_min: float = -math.inf, clip_max: float = math.inf,
    ) -> None:  # fmt: skip
        y = self.f32(c, (m, n)).astype(np.float64)
        y = (
            y
            + (0 if bias == 0 else self.f32(bias, (n,)))
            + (0 if residual == 0 else self.f32(residual, (m, n)))
        )
        self.f32(c, (m, n))[...] = ref.apply_activation(y, activation, clip_min, clip_max)

    def binary(
        self, op: str, a: int, a_shape: list[int], b: int, b_shape: list[int], out: int,
        out_shape: list[int], *, activation: str = "none", clip_min: float = -math.inf,
        clip_max: float = math.inf,
    ) -> None:  # fmt: skip
        self.calls.append(op)
        assert tuple(out_shape) == np.broadcast_shapes(tuple(a_shape), tuple(b_shape))
        x, y = self.f32(a, a_shape), self.f32(b, b_shape)
        if op in ("add", "mul"):
            result = getattr(ref, op)(x, y, activation, clip_min=clip_min, clip_max=clip_max)
        else:
            assert activation == "none"
            result = getattr(ref, op)(x, y)
        self.f32(out, out_shape)[...] = result

    def unary(self, op: str, x: int, out: int, n: int, *, p0: float = 0.0, p1: float = 0.0) -> None:
        self.calls.append(op)
        args = {"clip": (p0, p1), "leaky_relu": (p0,)}.get(op, ())
        self.f32(out, (n,))[...] = getattr(ref, op)(self.f32(x, (n,)), *args)

    def softmax(
        self, x: int, out: int, shape: list[int], *, scale: float = 1.0, mask: int = 0,
        mask_shape: list[int] = [],  # noqa: B006  (mirrors the binding's default)
    ) -> None:  # fmt: skip
        self.calls.append("softmax")
        m = None if mask == 0 else self.f32(mask, mask_shape)
        self.f32(out, shape)[...] = ref.softmax(self.f32(x, shape), m, axis=-1, scale=scale)

    def layer_norm(
        self, x: int, out: int, rows: int, cols: int, gamma: int, *, beta: int = 0,
        residual: int = 0, epsilon: float = 1e-5,
    ) -> None:  # fmt: skip
        self.calls.append("layer_norm")
        self.f32(out, (rows, cols))[...] = ref.layer_norm(
            self.f32(x, (rows, cols)), self.f32(gamma, (cols,)),
            None if beta == 0 else self.f32(beta, (cols,)), epsilon=epsilon,
            residual=None if residual == 0 else self.f32(residual, (rows, cols)),
        )  # fmt: skip


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
        "fill_bytes",
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
