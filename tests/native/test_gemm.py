"""gemm and matmul against the numpy reference, with every fused epilogue."""

from __future__ import annotations

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref

ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip"]
SHAPES = [
    (1, 1, 1),
    (1, 384, 1536),
    (3, 5, 7),
    (13, 17, 19),
    (32, 384, 1536),
    (97, 64, 1),
    (257, 129, 131),
]


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def assert_close_gemm(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    # float32 accumulation error grows like sqrt(k) times the operand scale (unit normals here).
    atol = 2e-6 * max(1.0, np.sqrt(k)) * 4
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_gemm_epilogues(rng: np.random.Generator, m: int, k: int, n: int, act: str) -> None:
    a, b, bias = randn(rng, m, k), randn(rng, k, n), randn(rng, n)
    kw = {"clip_min": -0.5, "clip_max": 0.75} if act == "clip" else {}
    out = ops.gemm(a, b, bias, act, **kw)
    assert out.shape == (m, n) and out.dtype == np.float32
    assert_close_gemm(out, ref.gemm(a, b, bias, act, **kw), k)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 7, 3), (64, 65, 66), (300, 200, 100)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transposes_residual_alpha(
    rng: np.random.Generator, m: int, k: int, n: int, trans_a: bool, trans_b: bool
) -> None:
    a = randn(rng, k, m) if trans_a else randn(rng, m, k)
    b = randn(rng, n, k) if trans_b else randn(rng, k, n)
    bias, res = randn(rng, n), randn(rng, m, n)
    out = ops.gemm(a, b, bias, "relu", residual=res, alpha=0.5, trans_a=trans_a, trans_b=trans_b)
    expected = ref.gemm(
        a, b, bias, "relu", residual=res, alpha=0.5, trans_a=trans_a, trans_b=trans_b
    )
    assert_close_gemm(out, expected, k)


def test_gemm_scalar_bias_and_noncontiguous(rng: np.random.Generator) -> None:
    a = randn(rng, 40, 60)[::2, 1::2]  # strided view: (20, 30)
    b = np.asfortranarray(randn(rng, 30, 50))
    bias = np.float32(0.25).reshape(1)
    assert_close_gemm(ops.gemm(a, b, bias), ref.gemm(a, b, bias), 30)


@pytest.mark.parametrize("act", ACTS)
def test_gemm_epilogue_propagates_nan(rng: np.random.Generator, act: str) -> None:
    a, b = randn(rng, 4, 8), randn(rng, 8, 5)
    a[1, 3] = np.nan  # row 1 of the output is NaN before the activation
    out = ops.gemm(a, b, None, act, clip_min=-1.0, clip_max=1.0)
    assert np.isnan(out[1]).all()
    assert np.isfinite(np.delete(out, 1, axis=0)).all()


def test_gemm_k_zero_gives_epilogue_of_zero(rng: np.random.Generator) -> None:
    bias = randn(rng, 5)
    out = ops.gemm(np.empty((3, 0), np.float32), np.empty((0, 5), np.float32), bias, "relu")
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (3, 5)))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_thread_counts_agree(rng: np.random.Generator, threads: int) -> None:
    a, b, bias = randn(rng, 203, 301), randn(rng, 301, 405), randn(rng, 405)
    single = ops.gemm(a, b, bias, "gelu", threads=1)
    many = ops.gemm(a, b, bias, "gelu", threads=threads)
    # Tiles partition the output; each element is computed by one BLAS call either way.
    np.testing.assert_allclose(many, single, rtol=1e-5, atol=1e-4)
    assert_close_gemm(many, ref.gemm(a, b, bias, "gelu"), 301)


@pytest.mark.parametrize(
    ("sa", "sb"),
    [
        ((7,), (7,)),
        ((7,), (7, 3)),
        ((4, 7), (7,)),
        ((2, 3, 4, 5), (5, 6)),
        ((2, 3, 4, 5), (3, 5, 6)),
        ((1, 4, 5), (3, 5, 2)),
        ((3, 1, 4, 5), (1, 2, 5, 6)),
        ((12, 33, 16), (12, 16, 33)),
    ],
)
def test_matmul_broadcasting(
    rng: np.random.Generator, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = randn(rng, *sa), randn(rng, *sb)
    out = ops.matmul(a, b)
    expected = ref.matmul(a, b)
    assert out.shape == np.matmul(a, b).shape
    assert_close_gemm(out, expected, sa[-1])


def test_matmul_fused_epilogue_and_trans_b(rng: np.random.Generator) -> None:
    a, w = randn(rng, 2, 9, 16), randn(rng, 24, 16)  # weight in (out, in) layout
    bias, res = randn(rng, 24), randn(rng, 2, 9, 24)
    out = ops.matmul(a, w, bias, "gelu", residual=res, trans_b=True)
    assert_close_gemm(out, ref.matmul(a, w, bias, "gelu", residual=res, trans_b=True), 16)


def test_matmul_attention_heads(rng: np.random.Generator) -> None:
    q, k = randn(rng, 2, 4, 17, 8), randn(rng, 2, 4, 17, 8)
    out = ops.matmul(q, k, trans_b=True, alpha=8**-0.5, threads=2)
    assert_close_gemm(out, ref.matmul(q, k, trans_b=True, alpha=8**-0.5), 8)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (
            (np.ones((2, 3), np.float64), np.ones((3, 2), np.float32)),
            {},
            r"\[gemm\] A must be float32",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)),
            {},
            r"\[gemm\] inner dimensions",
        ),
        (
            (np.ones((2, 3, 1), np.float32), np.ones((3, 2), np.float32)),
            {},
            r"\[gemm\] A must have rank 2",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.ones(3, np.float32)),
            {},
            r"\[gemm\] bias",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)),
            {"activation": "swish"},
            r"unknown activation",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)),
            {"alpha": float("nan")},
            r"must be finite",
        ),
        (
            (np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)),
            {"residual": np.ones((2, 3), np.float32)},
            r"residual must have the output shape",
        ),
    ],
)
def test_gemm_bad_input(
    args: tuple[np.ndarray, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        ops.gemm(*args, **kwargs)  # type: ignore[arg-type]


def test_matmul_zero_batch_broadcasts_to_zero(rng: np.random.Generator) -> None:
    a, b = randn(rng, 2, 7), np.zeros((3, 0, 7, 8), np.float32)
    out = ops.matmul(a, b)
    assert out.shape == np.matmul(a, b).shape == (3, 0, 2, 8)


def test_gemm_attributes_must_fit_float32() -> None:
    x = np.ones((2, 2), np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[gemm\].*alpha"):
        ops.gemm(x, x, alpha=1e39)
    with pytest.raises(InvalidRequestError, match=r"\[gemm\].*clip_max"):
        ops.gemm(x, x, None, "clip", clip_min=0.0, clip_max=1e39)


def test_matmul_bad_input() -> None:
    with pytest.raises(InvalidRequestError, match=r"\[matmul\] batch dimensions do not broadcast"):
        ops.matmul(np.ones((2, 3, 4), np.float32), np.ones((3, 4, 5), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[matmul\] inner dimensions"):
        ops.matmul(np.ones((3, 4), np.float32), np.ones((5, 4), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[matmul\] input 0 has unsupported dtype"):
        ops.matmul(np.ones((3, 4), np.complex64), np.ones((4, 4), np.float32))
