"""The Triton kernels (phi_engine.kernels) against the numpy reference on random inputs: under
Triton's interpreter on the CPU (CI), or compiled on a GPU with PHI_ENGINE_TRITON_DEVICE=cuda
(benchmarks/gpu/check.sh).

Tolerances: float32 inputs within 2e-5 relative / 2e-6 absolute of the float64 reference (the
kernels accumulate in float32 in another order); float16 and bfloat16 inputs within what their
storage rounds to (1e-2 and 3e-2 relative of the output's scale).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# PHI_ENGINE_TRITON_DEVICE=cuda (benchmarks/gpu/check.sh) runs them compiled on a GPU; by default
# Triton's interpreter runs them on the CPU, which must be chosen before they are decorated.
DEVICE = os.environ.get("PHI_ENGINE_TRITON_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
torch = pytest.importorskip("torch", reason="the Triton kernels launch on torch tensors")
pytest.importorskip("triton", reason="triton is not installed")

import phi_engine.kernels as kernels  # noqa: E402  (the build installs kernels/ there)
from phi_engine.errors import InvalidRequestError  # noqa: E402
from phi_engine.runtime import reference as ref  # noqa: E402

# The interpreter runs the kernels in numpy, which warns where exp overflows to inf in a sigmoid
# (the result, 0 or 1, is right; a GPU does the same without a word).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

TOL = {"float32": (2e-5, 2e-6), "float16": (1e-2, 1e-2), "bfloat16": (3e-2, 3e-2)}


def t(a: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(getattr(torch, dtype))
    return x.to(DEVICE)


def back(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float32).cpu().numpy()


def stored(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` as the kernel sees it: rounded to the input dtype."""
    return back(t(a, dtype))


def close(got: torch.Tensor, want: np.ndarray, dtype: str = "float32") -> None:
    rtol, atol = TOL[dtype]
    scale = max(1.0, float(np.nanmax(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(back(got), want, rtol=rtol, atol=atol * scale)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261127)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 33), (4, 128), (2, 300)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_softmax(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> None:
    x = rng.standard_normal(shape).astype(np.float32) * 4
    close(kernels.softmax(t(x, dtype)), ref.softmax(stored(x, dtype)), dtype)
    # A key-padding style mask broadcast over the rows, and a scale.
    mask = np.where(rng.random((1,) * (len(shape) - 1) + (shape[-1],)) < 0.3, -1e4, 0.0)
    mask[..., 0] = 0.0  # every row keeps one key
    got = kernels.softmax(t(x, dtype), t(mask), scale=0.125)
    close(got, ref.softmax(stored(x, dtype), mask.astype(np.float32), scale=0.125), dtype)


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 384), (1, 1000)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_layer_norm(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> None:
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    res = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.standard_normal(shape[-1]).astype(np.float32)
    beta = rng.standard_normal(shape[-1]).astype(np.float32)
    got = kernels.layer_norm(t(x, dtype), t(gamma, dtype), t(beta, dtype), 1e-5, t(res, dtype))
    want = ref.layer_norm(
        stored(x, dtype), stored(gamma, dtype), stored(beta, dtype), epsilon=1e-5,
        residual=stored(res, dtype),
    )  # fmt: skip
    close(got, want, dtype)
    close(kernels.layer_norm(t(x), t(gamma)), ref.layer_norm(x, gamma))


@pytest.mark.parametrize("per", [2, 4])
def test_row_kernels_with_several_rows_per_program(rng: np.random.Generator, per: int) -> None:
    """The kernels' ROWS > 1 layout (what ``bench_triton.py --sweep rows`` times): 10 rows, so the
    last program runs past the end, with a mask row per row and a residual."""
    from phi_engine.kernels.layer_norm import _layer_norm_kernel
    from phi_engine.kernels.softmax import _softmax_kernel

    rows, cols = 10, 37
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    mask = np.where(rng.random((rows, cols)) < 0.3, -1e4, 0.0).astype(np.float32)
    xt, mt, yt = t(x), t(mask), t(np.full((rows, cols), np.nan))
    grid = (-(-rows // per),)
    _softmax_kernel[grid](
        xt, mt, yt, rows, cols, cols, cols, cols, 0.5, HAS_MASK=True, BLOCK=64, ROWS=per
    )
    close(yt, ref.softmax(x, mask, scale=0.5))
    res = rng.standard_normal((rows, cols)).astype(np.float32)
    gamma, beta = rng.standard_normal(cols), rng.standard_normal(cols)
    yt = t(np.full((rows, cols), np.nan))
    _layer_norm_kernel[grid](
        xt, t(res), t(gamma), t(beta), yt, rows, cols, cols, cols, cols, 1e-5,
        HAS_RES=True, HAS_BETA=True, BLOCK=64, ROWS=per,
    )  # fmt: skip
    want = ref.layer_norm(
        x, gamma.astype(np.float32), beta.astype(np.float32), epsilon=1e-5, residual=res
    )
    close(yt, want)


def test_row_config_packs_short_rows() -> None:
    """Rows shorter than 2 KiB are packed up to 2 KiB (or 16 rows) per program in 2 warps per
    KiB; longer rows go one per program with ``row_warps``."""
    from phi_engine.kernels._common import row_config, row_warps

    for cols in (1, 3, 64, 128, 384, 1000, 1024, 4096, 8191):
        for itemsize in (2, 4):
            block, per, warps = row_config(cols, itemsize)
            tile = per * block * itemsize
            assert block >= cols and block & (block - 1) == 0
            assert tile >= 2048 or per == 16
            assert per == 1 or tile <= 2048
            if block * itemsize >= 4096:
                assert (per, warps) == (1, row_warps(block, itemsize))
            else:
                assert warps == max(2, tile // 1024)
    assert row_config(384, 2) == (512, 2, 2) and row_config(384, 4) == (512, 1, 2)
    assert row_config(128, 2) == (128, 8, 2) and row_config(4096, 2) == (4096, 1, 8)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_launchers_pack_short_rows_past_the_end(rng: np.random.Generator, dtype: str) -> None:
    """17 rows of 128 columns: several rows per program, the last program partly past the end."""
    x = rng.standard_normal((17, 128)).astype(np.float32) * 3
    close(kernels.softmax(t(x, dtype)), ref.softmax(stored(x, dtype)), dtype)
    gamma = rng.standard_normal(128).astype(np.float32)
    got = kernels.layer_norm(t(x, dtype), t(gamma, dtype))
    close(got, ref.layer_norm(stored(x, dtype), stored(gamma, dtype)), dtype)


@pytest.mark.parametrize("mnk", [(1, 1, 1), (7, 13, 5), (33, 65, 17), (64, 96, 40)])
@pytest.mark.parametrize("activation", kernels.ACTIVATIONS)
def test_gemm_with_each_epilogue(
    rng: np.random.Generator, mnk: tuple[int, int, int], activation: str
) -> None:
    m, n, k = mnk
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32)
    act = None if activation == "none" else activation
    got = kernels.gemm(t(a), t(b), t(bias), act, residual=t(res), clip_min=-0.5, clip_max=0.5)
    want = ref.gemm(a, b, bias, act, residual=res, clip_min=-0.5, clip_max=0.5)
    close(got, want)


def test_gemm_strides_dtypes_and_blocks(rng: np.random.Generator) -> None:
    a = rng.standard_normal((50, 70)).astype(np.float32)
    w = rng.standard_normal((30, 70)).astype(np.float32)  # an ONNX Gemm's transB weight
    got = kernels.gemm(t(a), t(w).T, block=(16, 32, 16))  # b read through its strides
    close(got, ref.gemm(a, w, trans_b=True))
    # bfloat16 products only on a GPU: the interpreter runs tl.dot in numpy, which has no
    # bfloat16 (the elementwise kernels convert it and are checked in it above).
    for dtype in ("float16",) if DEVICE == "cpu" else ("float16", "bfloat16"):
        got = kernels.gemm(t(a, dtype), t(w, dtype).T, t(np.ones(30), dtype), "relu")
        assert got.dtype == getattr(torch, dtype)
        want = ref.gemm(stored(a, dtype), stored(w, dtype), np.ones(30), "relu", trans_b=True)
        close(got, want, dtype)


def test_gemm_large_tile_config(rng: np.random.Generator) -> None:
    """Outputs of at least 128 × 256 in 16 bits take the 128 × 256 × 64 tile: partial tiles in
    every dimension (and a K not a multiple of 64) against the reference."""
    from phi_engine.kernels._common import gemm_config

    assert gemm_config("float16", 130, 260)[0] == (128, 256, 64)
    assert gemm_config("float32", 130, 260)[0] == (64, 64, 32)
    a = rng.standard_normal((130, 70)).astype(np.float32)
    b = rng.standard_normal((70, 260)).astype(np.float32)
    bias = rng.standard_normal(260).astype(np.float32)
    got = kernels.gemm(t(a, "float16"), t(b, "float16"), t(bias, "float16"), "gelu")
    want = ref.gemm(stored(a, "float16"), stored(b, "float16"), stored(bias, "float16"), "gelu")
    close(got, want, "float16")


@pytest.mark.parametrize(
    ("lead", "lq", "lk", "d"), [((1,), 1, 1, 8), ((2, 3), 17, 17, 32), ((2,), 9, 40, 64)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_attention(
    rng: np.random.Generator, lead: tuple[int, ...], lq: int, lk: int, d: int, masked: bool
) -> None:
    q = rng.standard_normal((*lead, lq, d)).astype(np.float32)
    k = rng.standard_normal((*lead, lk, d)).astype(np.float32)
    v = rng.standard_normal((*lead, lk, d)).astype(np.float32)
    mask = None
    if masked:  # key padding: [..., 1, Lk], the last keys of some sequences hidden
        mask = np.zeros((*lead, 1, lk), np.float32)
        mask[..., lk // 2 + 1 :] = -1e4
    got = kernels.attention(t(q), t(k), t(v), None if mask is None else t(mask))
    scores = np.matmul(q.astype(np.float64), np.swapaxes(k, -1, -2)) / np.sqrt(d)
    want = np.matmul(ref.softmax(scores, mask), v.astype(np.float64))
    close(got, want.astype(np.float32))
    if len(lead) == 2:  # half precision, as the GPU backend's fp16 option runs it
        got16 = kernels.attention(t(q, "float16"), t(k, "float16"), t(v, "float16"))
        q16, k16, v16 = (stored(x, "float16") for x in (q, k, v))
        s16 = np.matmul(q16.astype(np.float64), np.swapaxes(k16, -1, -2)) / np.sqrt(d)
        close(got16, np.matmul(ref.softmax(s16), v16.astype(np.float64)), "float16")


def test_bad_arguments_are_refused_naming_the_field() -> None:
    x = torch.zeros((2, 3), device=DEVICE)
    cases = [
        (lambda: kernels.softmax(x.to(torch.int32)), "x"),
        (lambda: kernels.softmax(x, x.new_zeros((4, 5))), "mask"),
        (lambda: kernels.layer_norm(x, x.new_ones(4)), "gamma"),
        (lambda: kernels.layer_norm(x, x.new_ones(3), epsilon=0.0), "epsilon"),
        (lambda: kernels.gemm(x, x.new_zeros((4, 5))), "b"),
        (lambda: kernels.gemm(x, x.new_zeros((3, 5)), activation="swish"), "activation"),
        (lambda: kernels.gemm(x, x.new_zeros((3, 5)), x.new_zeros(4)), "bias"),
        (lambda: kernels.gemm(x, x.new_zeros((3, 5)), block=(24, 32, 32)), "block"),
        (lambda: kernels.gemm(x, x.new_zeros((3, 5)), precision="fp8"), "precision"),
        (lambda: kernels.attention(x[None], x[None], x.new_zeros((1, 4, 3))), "k"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRequestError) as info:
            call()
        assert info.value.field == field, (field, info.value)
