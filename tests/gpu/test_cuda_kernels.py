"""The CUDA kernels against the numpy reference, on fresh random inputs of many shapes.

Tolerances: float32 arithmetic that CUDA rounds exactly (add, sub, mul, div, sqrt, reciprocal,
maximum, minimum) must match numpy's float32 result to 1 ulp; libdevice transcendentals (expf,
logf, erff, tanhf, powf: at most 2-4 ulp) to 1e-5 relative; GEMM to the float32 accumulation
error, which grows like sqrt(k); TF32 GEMM to 3e-3 in norm. Every output buffer starts as NaN
(tests/gpu/conftest.py), so an element a kernel never writes fails the comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import cuda
from phi_engine.runtime import reference as ref

pytestmark = pytest.mark.gpu

ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip"]
GEMM_SHAPES = [
    (1, 1, 1),
    (3, 5, 7),
    (13, 17, 19),
    (1, 384, 1536),
    (97, 64, 1),
    (257, 129, 131),
    (32, 384, 1536),
]


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def assert_close_gemm(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    # float32 accumulation error grows like sqrt(k) times the operand scale (unit normals here);
    # cuBLAS may split k differently from any CPU order, so allow a few times that.
    atol = 1e-5 * max(1.0, math.sqrt(k))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    e64 = expected.astype(np.float64)
    return float(np.linalg.norm(actual.astype(np.float64) - e64) / max(np.linalg.norm(e64), 1e-30))


# ---- gemm ---------------------------------------------------------------------------------------


@pytest.fixture
def needs_cublas() -> None:
    from phi_engine import _native

    assert _native.cuda is not None
    if not _native.cuda.has_cublas:
        pytest.skip("this build of phi_engine._core_cuda has no cuBLAS")


@pytest.mark.usefixtures("needs_cublas")
@pytest.mark.parametrize(("m", "k", "n"), GEMM_SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_gemm_epilogues(rng: np.random.Generator, m: int, k: int, n: int, act: str) -> None:
    a, b, bias = randn(rng, m, k), randn(rng, k, n), randn(rng, n)
    kw: dict[str, Any] = {"clip_min": -0.5, "clip_max": 0.75} if act == "clip" else {}
    out = cuda.gemm(a, b, bias, act, **kw)
    assert out.shape == (m, n) and out.dtype == np.float32
    assert_close_gemm(out, ref.gemm(a, b, bias, act, **kw), k)


@pytest.mark.usefixtures("needs_cublas")
@pytest.mark.parametrize(("m", "k", "n"), [(1, 7, 3), (64, 65, 66), (300, 200, 100)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_gemm_transposes_residual_alpha(
    rng: np.random.Generator, m: int, k: int, n: int, trans_a: bool, trans_b: bool, act: str
) -> None:
    a = randn(rng, k, m) if trans_a else randn(rng, m, k)
    b = randn(rng, n, k) if trans_b else randn(rng, k, n)
    bias, res = randn(rng, n), randn(rng, m, n)
    kw: dict[str, Any] = {"residual": res, "alpha": 0.5, "trans_a": trans_a, "trans_b": trans_b}
    assert_close_gemm(cuda.gemm(a, b, bias, act, **kw), ref.gemm(a, b, bias, act, **kw), k)


@pytest.mark.usefixtures("needs_cublas")
def test_gemm_residual_without_bias_and_odd_columns(rng: np.random.Generator) -> None:
    # n = 5: the epilogue's scalar path; n = 8: its float4 path.
    for n in (5, 8):
        a, b, res = randn(rng, 33, 17), randn(rng, 17, n), randn(rng, 33, n)
        out = cuda.gemm(a, b, None, "tanh", residual=res)
        assert_close_gemm(out, ref.gemm(a, b, None, "tanh", residual=res), 17)


@pytest.mark.usefixtures("needs_cublas")
def test_gemm_scalar_bias_and_noncontiguous(rng: np.random.Generator) -> None:
    a = randn(rng, 40, 60)[::2, 1::2]  # strided view: (20, 30)
    b = np.asfortranarray(randn(rng, 30, 50))
    bias = np.float32(0.25).reshape(1)
    assert_close_gemm(cuda.gemm(a, b, bias), ref.gemm(a, b, bias), 30)


@pytest.mark.usefixtures("needs_cublas")
def test_gemm_k_zero_gives_epilogue_of_zero(rng: np.random.Generator) -> None:
    bias = randn(rng, 5)
    out = cuda.gemm(np.empty((3, 0), np.float32), np.empty((0, 5), np.float32), bias, "relu")
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (3, 5)))


@pytest.mark.usefixtures("needs_cublas")
def test_gemm_tf32(rng: np.random.Generator) -> None:
    a, b, bias = randn(rng, 512, 768), randn(rng, 768, 384), randn(rng, 384)
    out = cuda.gemm(a, b, bias, "gelu", tf32=True)
    assert rel_error(out, ref.gemm(a, b, bias, "gelu")) < 3e-3


@pytest.mark.usefixtures("needs_cublas")
def test_gemm_large_matches_in_norm(rng: np.random.Generator) -> None:
    a, b, bias = randn(rng, 1024, 2048), randn(rng, 2048, 1000), randn(rng, 1000)
    out = cuda.gemm(a, b, bias, "sigmoid")
    assert rel_error(out, ref.gemm(a, b, bias, "sigmoid")) < 1e-5


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.ones((2, 3)), np.ones((3, 2), np.float32)), {}, "a must be float32"),
        ((np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)), {}, "inner dimensions"),
        ((np.ones(3, np.float32), np.ones((3, 2), np.float32)), {}, "2-D"),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)),
            {"activation": "swish"},
            "activation",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.ones(3, np.float32)),
            {},
            "bias",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)),
            {"residual": np.ones((3, 3), np.float32)},
            "residual",
        ),
    ],
)
def test_gemm_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"\[cuda:gemm\].*" + match):
        cuda.gemm(*args, **kwargs)


def test_gemm_reads_device_arrays_in_place(rng: np.random.Generator, needs_cublas: None) -> None:
    with warnings.catch_warnings():  # a CuPy import warning is not this test's business
        warnings.simplefilter("ignore")
        cupy = pytest.importorskip("cupy")
    a, b, bias = randn(rng, 70, 90), randn(rng, 90, 60), randn(rng, 60)
    out = cuda.gemm(cupy.asarray(a), cupy.asarray(b), cupy.asarray(bias), "relu")
    assert isinstance(out, np.ndarray)
    assert_close_gemm(out, ref.gemm(a, b, bias, "relu"), 90)


# ---- softmax ------------------------------------------------------------------------------------

# Rows up to 1024 columns take the warp-per-row kernel, longer rows the block-per-row one; rows
# up to 256 columns (warp) or 2048 (block) hold 8 floats per thread, rows up to 8192 columns 32,
# longer rows are swept twice. Columns divisible by 4 take the float4 path.
SOFTMAX_SHAPES = [
    (1,),
    (7,),
    (3, 5),
    (4, 32),
    (2, 256),
    (3, 257),
    (2, 3, 1000),
    (5, 1024),
    (3, 1025),
    (2, 2048),
    (2, 4096),
    (2, 3, 8191),
    (2, 8192),
    (2, 8193),
    (2, 12000),
]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax_rows(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> None:
    x = randn(rng, *shape) * 3
    out = cuda.softmax(x, scale=scale)
    np.testing.assert_allclose(out, ref.softmax(x, scale=scale), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "axis"), [((6, 7), 0), ((3, 4, 5), 1), ((2, 1030, 3), 1), ((4, 3, 2), -3)]
)
def test_softmax_other_axes(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> None:
    x = randn(rng, *shape)
    np.testing.assert_allclose(
        cuda.softmax(x, axis=axis), ref.softmax(x, axis=axis), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    ("shape", "mask_shape"),
    [
        ((2, 3, 17, 17), (1, 1, 17, 17)),  # attention: one causal pattern for every batch and head
        ((2, 3, 5, 1100), (2, 1, 1, 1100)),  # padding mask per batch, block-per-row kernel
        ((2, 3, 9000), (2, 1, 9000)),  # rows too long to hold in registers
        ((2, 2, 64, 64), (1, 1, 64, 64)),  # float4 mask, warp rows
        ((2, 3, 2048), (2, 1, 2048)),  # float4 mask, block rows
        ((4, 64), (4, 64)),
        ((4, 64), (64,)),
        ((6, 9), (6, 1)),  # one value per row: a shift that cancels out
    ],
)
def test_softmax_additive_mask(
    rng: np.random.Generator, shape: tuple[int, ...], mask_shape: tuple[int, ...]
) -> None:
    x = randn(rng, *shape)
    mask = randn(rng, *mask_shape)
    if mask_shape[-1] > 1:
        # Exclude about a third of the columns, never a whole row.
        excluded = rng.random(mask_shape) < 0.3
        excluded[..., 0] = False
        mask[excluded] = -np.inf
    out = cuda.softmax(x, mask, scale=0.5)
    np.testing.assert_allclose(out, ref.softmax(x, mask, scale=0.5), rtol=1e-5, atol=1e-7)


def test_softmax_mask_along_another_axis(rng: np.random.Generator) -> None:
    x, mask = randn(rng, 3, 6, 4), randn(rng, 6, 1)
    np.testing.assert_allclose(
        cuda.softmax(x, mask, axis=1), ref.softmax(x, mask, axis=1), rtol=1e-5, atol=1e-7
    )


def test_softmax_non_finite_rows_are_nan_like_numpy(rng: np.random.Generator) -> None:
    x = randn(rng, 4, 40)
    mask = np.zeros((4, 40), np.float32)
    mask[1] = -np.inf  # a fully masked row
    x[2, 7] = np.nan
    x[3, 3] = np.inf
    out = cuda.softmax(x, mask)
    assert np.isnan(out[1:]).all()
    np.testing.assert_allclose(out[0], ref.softmax(x, mask)[0], rtol=1e-5, atol=1e-7)


def test_softmax_large_logits_do_not_overflow(rng: np.random.Generator) -> None:
    x = randn(rng, 8, 300) * 200
    np.testing.assert_allclose(cuda.softmax(x), ref.softmax(x), rtol=1e-5, atol=1e-7)


def test_softmax_noncontiguous(rng: np.random.Generator) -> None:
    x = randn(rng, 10, 50)[::3, ::2]
    np.testing.assert_allclose(cuda.softmax(x), ref.softmax(x), rtol=1e-5, atol=1e-7)


def test_softmax_bad_input() -> None:
    x = np.ones((3, 4), np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[cuda:softmax\].*float32"):
        cuda.softmax(x.astype(np.float64))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:softmax\].*broadcast"):
        cuda.softmax(x, np.ones((2, 4), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:softmax\].*axis"):
        cuda.softmax(x, axis=2)
    with pytest.raises(InvalidRequestError, match=r"\[cuda:softmax\].*scale"):
        cuda.softmax(x, scale=math.inf)


# ---- layer norm ---------------------------------------------------------------------------------

LAYER_NORM_SHAPES = [
    (1,),
    (3, 5),
    (4, 7),
    (2, 256),
    (3, 257),
    (2, 3, 768),
    (4, 1023),
    (5, 1024),
    (3, 1025),
    (2, 4096),
    (2, 5001),
    (2, 8192),
    (2, 8193),
    (2, 12004),
]


@pytest.mark.parametrize("shape", LAYER_NORM_SHAPES)
@pytest.mark.parametrize("with_beta", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_layer_norm_rows(
    rng: np.random.Generator, shape: tuple[int, ...], with_beta: bool, with_residual: bool
) -> None:
    x, gamma = randn(rng, *shape), randn(rng, shape[-1])
    beta = randn(rng, shape[-1]) if with_beta else None
    residual = randn(rng, *shape) if with_residual else None
    out = cuda.layer_norm(x, gamma, beta, residual=residual)
    expected = ref.layer_norm(x, gamma, beta, residual=residual)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(("shape", "axis"), [((2, 3, 4, 5), -2), ((3, 7, 9), 0), ((6, 2, 600), 1)])
def test_layer_norm_over_several_axes(
    rng: np.random.Generator, shape: tuple[int, ...], axis: int
) -> None:
    x = randn(rng, *shape)
    norm = shape[axis:]
    gamma, beta = randn(rng, *norm), randn(rng, 1, *norm)  # leading 1s are allowed
    out = cuda.layer_norm(x, gamma, beta, axis=axis, epsilon=1e-3)
    # numpy broadcasting gives the reference beta's extra leading 1; the op keeps x's shape.
    expected = ref.layer_norm(x, gamma, beta, axis=axis, epsilon=1e-3).reshape(shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=2e-5)


def test_layer_norm_large_mean(rng: np.random.Generator) -> None:
    # Two-pass statistics: E[x^2] - E[x]^2 would lose every digit of the variance here.
    x = randn(rng, 16, 512) + np.float32(1000.0)
    gamma = randn(rng, 512)
    np.testing.assert_allclose(
        cuda.layer_norm(x, gamma), ref.layer_norm(x, gamma), rtol=1e-3, atol=1e-3
    )


def test_layer_norm_noncontiguous(rng: np.random.Generator) -> None:
    x = randn(rng, 8, 64)[:, ::2]
    gamma = randn(rng, 32)
    np.testing.assert_allclose(
        cuda.layer_norm(x, gamma), ref.layer_norm(x, gamma), rtol=1e-4, atol=2e-5
    )


def test_layer_norm_bad_input() -> None:
    x, gamma = np.ones((3, 4), np.float32), np.ones(4, np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[cuda:layer_norm\].*gamma"):
        cuda.layer_norm(x, np.ones(3, np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:layer_norm\].*residual"):
        cuda.layer_norm(x, gamma, residual=np.ones((1, 4), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:layer_norm\].*epsilon"):
        cuda.layer_norm(x, gamma, epsilon=0.0)
    with pytest.raises(InvalidRequestError, match=r"\[cuda:layer_norm\].*float32"):
        cuda.layer_norm(x.astype(np.float16), gamma)


# ---- elementwise --------------------------------------------------------------------------------

BINARY: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    "add": (cuda.add, ref.add),
    "sub": (cuda.sub, ref.sub),
    "mul": (cuda.mul, ref.mul),
    "div": (cuda.div, ref.div),
    "maximum": (cuda.maximum, ref.maximum),
    "minimum": (cuda.minimum, ref.minimum),
    "pow": (cuda.pow, ref.pow),
}
BROADCAST_SHAPES = [
    ((1,), (1,)),
    ((7,), (7,)),
    ((1_000_003,), (1_000_003,)),  # dense float4 path plus a 3-element tail
    ((3, 5), (5,)),  # a bias row
    ((257, 129), (257, 1)),  # a column
    ((4, 1, 6), (1, 5, 1)),  # both sides broadcast
    ((2, 3, 4, 5), (3, 1, 5)),
    ((1, 1, 1), (2, 1, 3)),
    ((0, 3), (3,)),
    # Rows of a multiple of 4 columns take the float4 row kernel:
    ((3, 8), (8,)),
    ((6, 4), (6, 1)),
    ((2, 3, 8), (3, 8)),
    ((16,), (1,)),
    ((5, 12), (1, 1)),
    ((1025, 260), (1025, 1)),
    ((7, 1, 36), (7, 5, 36)),
]


def _operands(
    rng: np.random.Generator, op: str, sa: tuple[int, ...], sb: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    a, b = randn(rng, *sa), randn(rng, *sb)
    if op == "pow":
        a = np.abs(a) + np.float32(0.5)
    if op == "div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b).astype(np.float32)
    return a, b


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize(("sa", "sb"), BROADCAST_SHAPES)
def test_binary_broadcasting(
    rng: np.random.Generator, op: str, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    gpu_fn, ref_fn = BINARY[op]
    a, b = _operands(rng, op, sa, sb)
    for x, y in ((a, b), (b, a)) if op != "pow" else ((a, b),):
        out = gpu_fn(x, y)
        assert out.shape == np.broadcast_shapes(x.shape, y.shape) and out.dtype == np.float32
        rtol = 1e-5 if op == "pow" else 1.2e-7  # pow: powf's few ulp; the rest: exact IEEE
        np.testing.assert_allclose(out, ref_fn(x, y), rtol=rtol, atol=0)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("act", ACTS)
def test_binary_fused_activation(rng: np.random.Generator, op: str, act: str) -> None:
    gpu_fn, ref_fn = BINARY[op]
    kw: dict[str, Any] = {"clip_min": -0.3, "clip_max": 0.4} if act == "clip" else {}
    for cols in (130, 128):  # the index walk, the float4 row kernel
        a, b = randn(rng, 33, cols), randn(rng, cols)
        np.testing.assert_allclose(
            gpu_fn(a, b, act, **kw), ref_fn(a, b, act, **kw), rtol=1e-5, atol=2e-6
        )
        np.testing.assert_allclose(
            gpu_fn(b, a, act, **kw), ref_fn(b, a, act, **kw), rtol=1e-5, atol=2e-6
        )


def test_binary_python_scalars_and_noncontiguous(rng: np.random.Generator) -> None:
    a = randn(rng, 20, 30)[::2, ::3]
    np.testing.assert_allclose(cuda.add(a, 2), ref.add(a, np.float32(2)), rtol=1.2e-7)
    np.testing.assert_allclose(cuda.mul(0.5, a), ref.mul(np.float32(0.5), a), rtol=1.2e-7)


def test_binary_nan_propagates_through_maximum() -> None:
    a = np.array([1.0, np.nan, 3.0, -np.inf], np.float32)
    b = np.array([np.nan, 2.0, 1.0, 5.0], np.float32)
    np.testing.assert_array_equal(cuda.maximum(a, b), np.maximum(a, b))
    np.testing.assert_array_equal(cuda.minimum(a, b), np.minimum(a, b))


def test_binary_bad_input() -> None:
    x = np.ones((3, 4), np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[cuda:add\].*broadcast"):
        cuda.add(x, np.ones((3,), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:mul\].*float32"):
        cuda.mul(x, np.ones((4,), np.int64))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:add\].*activation"):
        cuda.add(x, x, "swish")
    with pytest.raises(InvalidRequestError, match=r"\[cuda:sub\].*dimensions"):
        cuda.sub(np.ones((1,) * 9, np.float32), np.float32(1))


UNARY: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray], float, float]] = {
    # name: (gpu, reference, rtol, atol). Exact IEEE ops get 1 ulp; libdevice functions a few.
    # The GELUs lose absolute, not relative, accuracy where 1 + erf (1 + tanh) cancels: there
    # the error is about |x| * ulp(1).
    "neg": (cuda.neg, ref.neg, 0.0, 0.0),
    "abs": (cuda.abs, ref.abs, 0.0, 0.0),
    "sqrt": (cuda.sqrt, ref.sqrt, 1.2e-7, 0.0),
    "reciprocal": (cuda.reciprocal, ref.reciprocal, 1.2e-7, 0.0),
    "exp": (cuda.exp, ref.exp, 1e-6, 0.0),
    "log": (cuda.log, ref.log, 1e-6, 1e-7),
    "erf": (cuda.erf, ref.erf, 1e-6, 1e-7),
    "relu": (cuda.relu, ref.relu, 0.0, 0.0),
    "gelu": (cuda.gelu, ref.gelu, 1e-5, 4e-6),
    "gelu_tanh": (cuda.gelu_tanh, ref.gelu_tanh, 1e-5, 4e-6),
    "tanh": (cuda.tanh, ref.tanh, 1e-6, 1e-7),
    "sigmoid": (cuda.sigmoid, ref.sigmoid, 1e-6, 1e-7),
}


@pytest.mark.parametrize("op", list(UNARY))
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 7), (1_000_003,), (0,)])
def test_unary(rng: np.random.Generator, op: str, shape: tuple[int, ...]) -> None:
    gpu_fn, ref_fn, rtol, atol = UNARY[op]
    x = randn(rng, *shape) * 3
    if op in ("sqrt", "log", "reciprocal"):
        x = np.abs(x) + np.float32(0.01)
    out = gpu_fn(x)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref_fn(x), rtol=rtol, atol=atol)


def test_unary_with_parameters(rng: np.random.Generator) -> None:
    x = randn(rng, 1001) * 2
    np.testing.assert_array_equal(cuda.clip(x, -0.5, 0.25), ref.clip(x, -0.5, 0.25))
    np.testing.assert_array_equal(cuda.clip(x, None, 0.25), ref.clip(x, None, 0.25))
    np.testing.assert_allclose(cuda.leaky_relu(x, 0.2), ref.leaky_relu(x, 0.2), rtol=1.2e-7)


def test_unary_noncontiguous_and_nan(rng: np.random.Generator) -> None:
    x = randn(rng, 30, 40)[::3, 1::2].copy(order="F")
    np.testing.assert_allclose(cuda.tanh(x), ref.tanh(x), rtol=1e-6, atol=1e-7)
    assert np.isnan(cuda.relu(np.array([np.nan], np.float32)))[0]


def test_unary_bad_input() -> None:
    with pytest.raises(InvalidRequestError, match=r"\[cuda:exp\].*float32"):
        cuda.exp(np.ones(3, np.float64))
    with pytest.raises(InvalidRequestError, match=r"\[cuda:clip\].*min"):
        cuda.clip(np.ones(3, np.float32), 1.0, 0.0)
