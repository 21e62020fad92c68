"""The packed GEMM kernel (csrc/core/packed_gemm.cpp) against the numpy float64 reference.

It runs for gemm and matmul with few rows: on weights packed by ``ops.pack_weights``, on plan
constants (packed when the plan is built), and on B as given per call (read in place, or packed
panel by panel when transposed). Shapes cover every row count of a register tile and its
remainders (the tile is 6 rows by 64, 16 or 8 columns depending on the CPU), partial column
panels, K = 1, and a K long enough to be cut into blocks. A given row-major is read in place by
the kernel; a transposed A is packed. (A row stride other than K reaches the kernel only from the
attention kernel, whose tests in test_nn.py cover it.)

Tolerances: weights are scaled by 1/sqrt(K) so outputs are of unit scale; float32 accumulation
over K then errs by about 1e-7 * sqrt(K), so ``atol = 2e-6 * sqrt(K)`` with ``rtol = 1e-5`` (the
activations' own approximation errors are below 5e-7).
"""

from __future__ import annotations

import itertools
import math
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from phi_engine import ops
from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph import compile
from phi_engine.runtime import Constant, Plan, PlanBuilder
from phi_engine.runtime import reference as ref

F32 = np.float32
ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip"]
ROWS = [1, 2, 3, 5, 6, 7, 8, 9, 11, 13, 16, 17, 23, 24, 31, 32, 33, 37, 40]
KN = [(1, 1), (1, 50), (7, 1), (97, 47), (64, 96), (131, 97), (384, 193)]


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=F32)


def weight(rng: np.random.Generator, k: int, n: int, trans_b: bool = False) -> np.ndarray:
    w = randn(rng, *((n, k) if trans_b else (k, n))) / F32(math.sqrt(max(k, 1)))
    return w.astype(F32)


def assert_close(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * math.sqrt(max(k, 1)))


def clip_kwargs(act: str) -> dict[str, float]:
    return {"clip_min": -0.5, "clip_max": 0.75} if act == "clip" else {}


# ---- weights packed by the caller ------------------------------------------------------------


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize(("k", "n"), KN)
@pytest.mark.parametrize("trans_b", [False, True])
def test_packed_weights_match_reference(
    rng: np.random.Generator, m: int, k: int, n: int, trans_b: bool
) -> None:
    a, w, bias = randn(rng, m, k), weight(rng, k, n, trans_b), randn(rng, n)
    packed = ops.pack_weights(w, trans_b=trans_b)
    assert packed.shape == (k, n)
    expected = ref.gemm(a, w, bias, "gelu", trans_b=trans_b)
    for threads in (1, 2):
        assert_close(ops.gemm(a, packed, bias, "gelu", threads=threads), expected, k)


@pytest.mark.parametrize(
    ("act", "bias_kind", "residual", "alpha"),
    list(itertools.product(ACTS, ["none", "vector", "scalar"], [False, True], [1.0, 0.5])),
)
def test_every_epilogue(
    rng: np.random.Generator, act: str, bias_kind: str, residual: bool, alpha: float
) -> None:
    # 13 rows: a full row tile and a short one; 101 columns: full panels and a partial one on
    # every ISA. The same call on B as given goes through the unpacked path (or BLAS).
    m, k, n = 13, 37, 101
    a, w = randn(rng, m, k), weight(rng, k, n)
    bias = {"none": None, "vector": randn(rng, n), "scalar": randn(rng, 1)}[bias_kind]
    res = randn(rng, m, n) if residual else None
    kw = clip_kwargs(act)
    expected = ref.gemm(a, w, bias, act, residual=res, alpha=alpha, **kw)
    packed = ops.pack_weights(w)
    for threads in (1, 2):
        out = ops.gemm(a, packed, bias, act, residual=res, alpha=alpha, threads=threads, **kw)
        assert_close(out, expected, k)
        out = ops.gemm(a, w, bias, act, residual=res, alpha=alpha, threads=threads, **kw)
        assert_close(out, expected, k)


@pytest.mark.parametrize(("m", "k", "n"), [(9, 17011, 17), (13, 8209, 50), (700, 384, 100)])
def test_long_k_and_many_rows(rng: np.random.Generator, m: int, k: int, n: int) -> None:
    # K past the panel budget is cut into blocks with partial sums kept in C; 700 rows take
    # more than one pass over the panels.
    a, w, bias, res = randn(rng, m, k), weight(rng, k, n), randn(rng, n), randn(rng, m, n)
    expected = ref.gemm(a, w, bias, "tanh", residual=res)
    packed = ops.pack_weights(w)
    for threads in (1, 2):
        assert_close(ops.gemm(a, packed, bias, "tanh", residual=res, threads=threads), expected, k)


@pytest.mark.parametrize(("m", "k", "n"), [(50, 3001, 130), (200, 1700, 64)])
def test_long_k_in_blocks_with_many_rows(rng: np.random.Generator, m: int, k: int, n: int) -> None:
    # K past 1536 with many rows is cut into even blocks of at most 768 (A's rows stay in L1),
    # and the partial sums of every block but the last live in C.
    a, w, bias = randn(rng, m, k), weight(rng, k, n), randn(rng, n)
    expected = ref.gemm(a, w, bias, "gelu")
    packed = ops.pack_weights(w)
    for threads in (1, 2):
        assert_close(ops.gemm(a, packed, bias, "gelu", threads=threads), expected, k)


@pytest.mark.parametrize("trans_b", [False, True])
def test_large_product_packs_b_per_call(rng: np.random.Generator, trans_b: bool) -> None:
    # From 512 in every dimension B as given is packed whole per call and run by this kernel.
    m, k, n = 515, 520, 530
    a, w = randn(rng, m, k), weight(rng, k, n, trans_b)
    expected = ref.gemm(a, w, None, "none", trans_b=trans_b)
    for threads in (1, 2):
        assert_close(ops.gemm(a, w, trans_b=trans_b, threads=threads), expected, k)


@pytest.mark.parametrize("m", [2, 7, 24, 40])
def test_trans_a_with_packed_weights(rng: np.random.Generator, m: int) -> None:
    k, n = 53, 71
    a, w = randn(rng, k, m), weight(rng, k, n)
    expected = ref.gemm(a, w, None, "relu", trans_a=True)
    assert_close(ops.gemm(a, ops.pack_weights(w), None, "relu", trans_a=True), expected, k)


def round_bf16(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32, rounding to nearest even (NaN stays NaN)."""
    bits = w.astype(F32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    out = rounded.view(F32).copy()
    out[np.isnan(w)] = np.nan
    return out


@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 384, 193), (7, 100, 70), (33, 131, 97), (200, 1700, 130)]
)
@pytest.mark.parametrize("act", ["none", "gelu", "relu"])
def test_bfloat16_weights_match_the_rounded_reference(
    rng: np.random.Generator, m: int, k: int, n: int, act: str
) -> None:
    # The kernel multiplies by exactly the bfloat16-rounded weights, accumulating in float32: the
    # reference with those weights bounds the error as for float32 weights.
    a, w, bias = randn(rng, m, k), weight(rng, k, n), randn(rng, n)
    packed = ops.pack_weights(w, dtype="bfloat16")
    assert packed.dtype == "bfloat16" and packed.shape == (k, n)
    assert packed.nbytes * 2 == ops.pack_weights(w).nbytes
    expected = ref.gemm(a, round_bf16(w), bias, act)
    for threads in (1, 2):
        assert_close(ops.gemm(a, packed, bias, act, threads=threads), expected, k)
    # Against float32 weights: off by the rounding, about 2^-9 relative per weight.
    exact = ref.gemm(a, w, bias, act)
    assert np.abs(ops.gemm(a, packed, bias, act) - exact).max() < 0.02


def test_bfloat16_rounding_to_nearest_even_and_specials() -> None:
    # bfloat16 keeps 8 significant bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and rounds to
    # the even one (1.0), 1 + 2^-8 + 2^-10 rounds up; inf, -0 and NaN survive. Checked through the
    # product with a one-row A of ones.
    specials = np.array([1 + 2**-8, 1 + 2**-8 + 2**-10, np.inf, -0.0, np.nan, 3.0e38, -1e-40], F32)
    w = specials.reshape(1, -1)
    out = ops.gemm(np.ones((1, 1), F32), ops.pack_weights(w, dtype="bfloat16"))[0]
    np.testing.assert_array_equal(out[:4], [1.0, 1 + 2**-7, np.inf, 0.0])
    assert np.isnan(out[4])
    np.testing.assert_array_equal(out, round_bf16(specials) + 0.0)  # + 0.0: the product of -0


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_compile_with_bf16_weights_on_the_cpu(tmp_path: Path, rows: int) -> None:
    # precision="bf16" on the CPU: every linear layer's constant weight is stored as bfloat16
    # (one row included, which float32 weights give to BLAS), the rest stays float32; the result
    # is the float32 model's with the weights rounded.
    from phi_test_models.tiny import mlp

    path = mlp(tmp_path / "m.onnx", seed=3, width=96, layers=3)
    x = np.random.default_rng(0).standard_normal((rows, 4)).astype(F32)
    fp32 = compile(path)
    bf16 = compile(path, precision="bf16")
    assert all(
        n.attrs.get("weights") == "bfloat16" for n in bf16.graph.nodes if n.op_type == "Linear"
    )
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x.astype(np.float64)
    for i in range(3):
        h = h @ round_bf16(weights[f"w{i}"]).astype(np.float64) + weights[f"b{i}"]
        h = np.maximum(h, 0) if i < 2 else h
    out = bf16.run({"x": x})["y"]
    np.testing.assert_allclose(out, h.astype(F32), rtol=1e-5, atol=1e-5)
    assert np.abs(out - fp32.run({"x": x})["y"]).max() > 0  # the weights really were rounded


def test_bf16_precision_is_refused_where_it_has_no_meaning(tmp_path: Path) -> None:
    from phi_test_models.tiny import mlp

    path = mlp(tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match=r"\[compile\] precision 'fp16'"):
        compile(path, precision="fp16")
    with pytest.raises(UnsupportedError, match=r"\[compile\] precision 'bf16'"):
        compile(path, device="reference", precision="bf16")


def test_pack_weights_refuses_an_unknown_dtype(rng: np.random.Generator) -> None:
    with pytest.raises(InvalidRequestError, match=r"\[pack_weights\] dtype"):
        ops.pack_weights(weight(rng, 4, 4), dtype="float16")


def test_packed_weights_are_a_copy(rng: np.random.Generator) -> None:
    a, w = randn(rng, 4, 16), weight(rng, 16, 24)
    packed = ops.pack_weights(w)
    expected = ref.gemm(a, w)
    w[:] = np.nan
    del w
    assert_close(ops.gemm(a, packed), expected, 16)
    assert packed.nbytes >= 16 * 24 * 4 and "shape=(16, 24)" in repr(packed)


def test_k_zero_gives_the_epilogue_of_zero(rng: np.random.Generator) -> None:
    bias = randn(rng, 5)
    packed = ops.pack_weights(np.empty((0, 5), F32))
    out = ops.gemm(np.empty((3, 0), F32), packed, bias, "relu")
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (3, 5)))


def test_nan_stays_in_its_row(rng: np.random.Generator) -> None:
    a, w = randn(rng, 5, 33), weight(rng, 33, 60)
    a[2, 7] = np.nan
    out = ops.gemm(a, ops.pack_weights(w), randn(rng, 60), "relu")
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda w: ops.pack_weights(w.astype(np.float64)),
            r"\[pack_weights\] weights must be float32",
        ),
        (lambda w: ops.pack_weights(w[0]), r"\[pack_weights\] weights must have rank 2"),
        (lambda w: ops.pack_weights(w, threads=-1), r"\[pack_weights\] threads must be"),
        (
            lambda w: ops.gemm(np.ones((2, 8), F32), ops.pack_weights(w), trans_b=True),
            r"\[gemm\] packed weights hold their orientation",
        ),
        (
            lambda w: ops.gemm(np.ones((2, 9), F32), ops.pack_weights(w)),
            r"\[gemm\] inner dimensions differ",
        ),
        (
            lambda w: ops.gemm(np.ones((2, 8), F32), ops.pack_weights(w), np.ones(3, F32)),
            r"\[gemm\] bias must have shape \(5,\)",
        ),
        (lambda w: ops.gemm(np.ones((2, 8), F32), ops.pack_weights(w), threads=-2), "threads"),
    ],
)
def test_bad_calls(call: object, match: str) -> None:
    w = np.ones((8, 5), F32)
    with pytest.raises(InvalidRequestError, match=match):
        call(w)  # type: ignore[operator]


# ---- B as given per call ---------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 8, 9, 17, 32, 33, 64, 65])
@pytest.mark.parametrize("trans_b", [False, True])
def test_unpacked_b_matches_reference(rng: np.random.Generator, m: int, trans_b: bool) -> None:
    # Read in place (row-major B) or packed panel by panel (transposed B), below the row
    # thresholds; BLAS above them.
    k, n = 211, 149
    a, w, res = randn(rng, m, k), weight(rng, k, n, trans_b), randn(rng, m, n)
    expected = ref.gemm(a, w, None, "sigmoid", residual=res, trans_b=trans_b)
    for threads in (1, 2):
        out = ops.gemm(a, w, None, "sigmoid", residual=res, trans_b=trans_b, threads=threads)
        assert_close(out, expected, k)


def test_unpacked_b_with_row_stride(rng: np.random.Generator) -> None:
    a, w = randn(rng, 6, 40), weight(rng, 40, 200)[:, 3:103]  # a strided view: copied in
    assert_close(ops.gemm(a, w, None, "relu"), ref.gemm(a, w, None, "relu"), 40)


# ---- plans -------------------------------------------------------------------------------------


def gemm_plan(
    x_shape: tuple[int, ...],
    w: np.ndarray,
    bias: np.ndarray,
    attrs: dict[str, object],
    *,
    op: str = "gemm",
    constant: bool = True,
) -> tuple[Plan, dict[str, np.ndarray]]:
    b = PlanBuilder()
    x = b.add_input("x", "float32", x_shape)
    w_slot = b.add_constant(w) if constant else b.add_input("w", "float32", w.shape)
    (y,) = b.add_step(op, [x, w_slot, b.add_constant(bias)], attrs)
    b.mark_output(y, "y")
    return b.build(), ({} if constant else {"w": w})


@pytest.mark.parametrize("m", [1, 5, 8, 32, 129])
@pytest.mark.parametrize("trans_b", [False, True])
def test_plan_constant_weight_matches_eager(
    rng: np.random.Generator, m: int, trans_b: bool
) -> None:
    k, n = 96, 113
    w, bias = weight(rng, k, n, trans_b), randn(rng, n)
    attrs = {"activation": "gelu_tanh", "trans_b": int(trans_b)}
    plan, _ = gemm_plan((m, k), w, bias, attrs)
    plan_in, extra = gemm_plan((m, k), w, bias, attrs, constant=False)
    packed = ops.pack_weights(w, trans_b=trans_b)
    for threads in (1, 2):
        x = randn(rng, m, k)
        expected = ref.gemm(x, w, bias, "gelu_tanh", trans_b=trans_b)
        out = plan.run({"x": x}, threads=threads)["y"]
        assert_close(out, expected, k)
        assert_close(plan_in.run({"x": x, **extra}, threads=threads)["y"], expected, k)
        eager = ops.gemm(x, w, bias, "gelu_tanh", trans_b=trans_b, threads=threads)
        np.testing.assert_allclose(out, eager, rtol=1e-6, atol=1e-6)
        if m >= 2:  # the plan packed its constant as pack_weights does (one row: BLAS's gemv)
            eager_packed = ops.gemm(x, packed, bias, "gelu_tanh", threads=threads)
            np.testing.assert_array_equal(out, eager_packed)


@pytest.mark.parametrize("x_shape", [(3,), (1, 3), (4, 3), (2, 5, 3), (3, 1, 7, 3)])
def test_plan_matmul_constant_weight_folds_batch(
    rng: np.random.Generator, x_shape: tuple[int, ...]
) -> None:
    # Batch dimensions of A fold into rows of one product on the packed constant.
    k, n = x_shape[-1], 37
    w, bias = weight(rng, k, n), randn(rng, n)
    plan, _ = gemm_plan(x_shape, w, bias, {"activation": "relu"}, op="matmul")
    x = randn(rng, *x_shape)
    expected = ref.matmul(x, w, bias, "relu")
    assert_close(plan.run({"x": x})["y"], expected, k)


def test_plans_sharing_a_constant_share_correct_results(rng: np.random.Generator) -> None:
    # Shape buckets of one model share a constant (and so its packed form).
    k, n = 64, 80
    w = weight(rng, k, n)
    shared = Constant(w)
    plans: dict[int, Plan] = {}
    for m in (1, 4, 16, 200):
        b = PlanBuilder()
        (y,) = b.add_step("gemm", [b.add_input("x", "float32", (m, k)), b.add_constant(shared)])
        b.mark_output(y, "y")
        plans[m] = b.build()
    for m, plan in plans.items():
        x = randn(rng, m, k)
        assert_close(plan.run({"x": x})["y"], ref.gemm(x, w), k)


# ---- every ISA path ------------------------------------------------------------------------------

EMULATED = textwrap.dedent(
    """
    import numpy as np
    from phi_engine import ops
    from phi_engine.runtime import PlanBuilder
    from phi_engine.runtime import reference as ref

    rng = np.random.default_rng(0)
    for m, k, n in [(1, 29, 41), (7, 300, 97), (19, 64, 50)]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))
        bias = rng.standard_normal(n, dtype=np.float32)
        expected = ref.gemm(a, w, bias, "gelu")
        packed = ops.pack_weights(np.ascontiguousarray(w.T), trans_b=True)
        b = PlanBuilder()
        x = b.add_input("x", "float32", (m, k))
        inputs = [x, b.add_constant(w), b.add_constant(bias)]
        (y,) = b.add_step("gemm", inputs, {"activation": "gelu"})
        b.mark_output(y, "y")
        for out in (
            ops.gemm(a, packed, bias, "gelu"),
            ops.gemm(a, w, bias, "gelu"),
            ops.gemm(a, np.ascontiguousarray(w.T), bias, "gelu", trans_b=True),
            b.build().run({"x": a})["y"],
        ):
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6 * np.sqrt(k))
    print("panel width", ops.pack_weights(np.ones((10, 1), np.float32)).nbytes // 40)
    """
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates other x86-64 CPUs")
@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (Debian: qemu-user) is not installed"
)
@pytest.mark.parametrize(("cpu", "panel_width"), [("Nehalem", 8), ("Haswell", 16)])
def test_isa_paths_under_emulation(cpu: str, panel_width: int) -> None:
    # The portable kernel (SSE2: no AVX) and the AVX2+FMA kernel, on a host that runs AVX-512.
    result = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", EMULATED],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"panel width {panel_width}")


@pytest.mark.parametrize("trans_b", [False, True])
def test_prepacked_plan_constant_gives_the_same_products(
    rng: np.random.Generator, trans_b: bool
) -> None:
    from phi_engine._native import require_core
    from phi_engine.runtime import Constant, PlanBuilder

    k, n = 37, 101
    w = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    constant = Constant(w)
    packed = require_core().prepack_constant(constant._native, trans_b)  # what compile() does
    assert (packed.k, packed.n) == (k, n)
    b = PlanBuilder()
    x = b.add_input("x", "float32", (300, k))
    (y,) = b.add_step(
        "matmul",
        [x, b.add_constant(constant), b.add_constant(bias)],
        {"trans_b": trans_b, "activation": "gelu"},
    )
    b.mark_output(y, "y")
    xs = rng.standard_normal((300, k)).astype(np.float32)
    out = b.build().run({"x": xs})["y"]
    expected = ref.matmul(xs, w, bias, "gelu", trans_b=trans_b)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6 * np.sqrt(k))


def test_prepack_constant_refuses_what_is_not_a_matrix() -> None:
    from phi_engine._native import require_core
    from phi_engine.runtime import Constant

    core = require_core()
    for value in (np.ones(5, np.float32), np.ones((2, 3), np.float64)):
        with pytest.raises(InvalidRequestError, match="2-D float32"):
            core.prepack_constant(Constant(value)._native, False)
