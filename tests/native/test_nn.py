"""softmax, log_softmax, layer_norm, rms_norm and batch_norm against the numpy reference.

Tolerances (native float32 against float64 references):
- softmax: rtol 1e-5, atol 1e-6 (``scale * x + mask`` rounded to float32 shifts each exponent by
  ~|t|·6e-8; exp has < 2e-7 relative error; the row sum is a float32 reduction).
- log_softmax: rtol 1e-5, atol 1e-5 (the same errors, now additive on values of order |t|).
- layer_norm / rms_norm / batch_norm: rtol 1e-5, atol 1e-5 for unit-scale inputs (float32
  statistics over a row; outputs of order gamma·N(0, 1)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from phi_engine import ops
from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.runtime import reference as ref

F32 = np.float32
NEG_INF = F32(-np.inf)


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=F32)


def close_softmax(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == F32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def close_log_softmax(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == F32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def close_norm(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == F32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# ---- softmax ---------------------------------------------------------------------------------

SOFTMAX_CASES = [
    ((1,), -1),
    ((7,), 0),
    ((3, 1), -1),
    ((13, 17), -1),
    ((13, 17), 0),  # strided axis
    ((2, 3, 5, 7), 1),
    ((2, 3, 5, 7), -2),
    ((4, 127, 1), 1),  # trailing size-1 dims: still contiguous rows
    ((5, 1031), -1),
    ((3, 100, 131), 1),  # strided, inner > one 64-column block
]


@pytest.mark.parametrize(("shape", "axis"), SOFTMAX_CASES)
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax(rng: np.random.Generator, shape: tuple[int, ...], axis: int, scale: float) -> None:
    x = randn(rng, *shape, scale=4.0)
    close_softmax(ops.softmax(x, axis=axis, scale=scale), ref.softmax(x, axis=axis, scale=scale))
    close_log_softmax(ops.log_softmax(x, axis, scale=scale), ref.log_softmax(x, axis, scale=scale))


ATTENTION_MASKS = [(2, 1, 1, 48), (48, 48), (2, 1, 48, 48), (2, 3, 48, 48), (), (48, 1), (1,)]


@pytest.mark.parametrize("mask_shape", ATTENTION_MASKS)
@pytest.mark.parametrize("axis", [-1, 2])
def test_softmax_attention_mask(
    rng: np.random.Generator, mask_shape: tuple[int, ...], axis: int
) -> None:
    # Q·Kᵀ scores [batch, heads, q, k] with an additive mask: 0 kept, -inf or -1e4 dropped.
    x = randn(rng, 2, 3, 48, 48, scale=8.0)
    mask = np.where(rng.random(mask_shape) < 0.3, NEG_INF, F32(0)).astype(F32)
    mask_axis = axis if axis < 0 else axis - 4
    # A mask constant along the softmax axis shifts whole rows: -inf there gives NaN rows (in
    # both), but -1e4 would leave float32 t = x/8 - 1e4 a 1e-3 resolution in any float32
    # engine, so large finite values go only into masks that vary along the axis.
    if mask.ndim >= -mask_axis and mask.shape[mask_axis] > 1:
        mask.reshape(-1)[::5] = -1e4
        np.moveaxis(mask, mask_axis, 0)[0] = 0  # every softmax row keeps a position
    scale = 1 / np.sqrt(64)
    close_softmax(
        ops.softmax(x, mask, axis=axis, scale=scale), ref.softmax(x, mask, axis=axis, scale=scale)
    )
    close_log_softmax(
        ops.log_softmax(x, axis, mask=mask, scale=scale),
        ref.log_softmax(x, axis, mask=mask, scale=scale),
    )


def test_softmax_masked_entries_are_exactly_zero(rng: np.random.Generator) -> None:
    x = randn(rng, 6, 40)
    mask = np.triu(np.full((6, 40), -np.inf, F32), k=1)  # causal-style mask
    y = ops.softmax(x, mask)
    assert np.all(y[mask == -np.inf] == 0)
    close_softmax(y, ref.softmax(x, mask))


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_non_finite_rows_match_numpy(axis: int) -> None:
    x = np.array(
        [
            [-np.inf, -np.inf, -np.inf, -np.inf],  # all -inf: NaN
            [1.0, np.inf, 2.0, 3.0],  # +inf: NaN
            [1.0, np.nan, 2.0, 3.0],  # NaN: NaN
            [-np.inf, 1.0, -np.inf, 2.0],  # some -inf: 0 there
            [1.0, 2.0, 3.0, 4.0],
        ],
        dtype=F32,
    )
    if axis == 0:
        x = np.ascontiguousarray(x.T)
    for fn in ("softmax", "log_softmax"):
        out = getattr(ops, fn)(x, axis=axis)
        expected = getattr(ref, fn)(x, axis=axis)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # NaN where numpy has NaN


def test_softmax_large_threads_agree(rng: np.random.Generator) -> None:
    x = randn(rng, 8192, 128, scale=3.0)  # 1M elements
    mask = np.where(rng.random((8, 1, 128)) < 0.1, NEG_INF, F32(0)).astype(F32)
    x4 = x.reshape(8, 8, 128, 128)
    one = ops.softmax(x4, mask, scale=0.5, threads=1)
    two = ops.softmax(x4, mask, scale=0.5, threads=2)
    np.testing.assert_array_equal(one, two)
    close_softmax(two, ref.softmax(x4, mask, scale=0.5))
    one = ops.softmax(x, axis=0, threads=1)
    np.testing.assert_array_equal(one, ops.softmax(x, axis=0, threads=2))
    close_softmax(one, ref.softmax(x, axis=0))


def test_softmax_long_row(rng: np.random.Generator) -> None:
    x = randn(rng, 1, 1 << 20, scale=3.0)
    close_softmax(ops.softmax(x), ref.softmax(x))
    close_log_softmax(ops.log_softmax(x), ref.log_softmax(x))


def test_softmax_noncontiguous(rng: np.random.Generator) -> None:
    x = randn(rng, 40, 70).T[::2]  # (35, 40) view
    mask = randn(rng, 80)[::2]  # strided (40,)
    close_softmax(ops.softmax(x, mask), ref.softmax(x, mask))


# ---- layer norm / rms norm -------------------------------------------------------------------

NORM_CASES = [
    ((1,), -1, (1,)),
    ((7,), 0, (7,)),
    ((13, 17), -1, (17,)),
    ((13, 17), 0, (13, 17)),
    ((2, 3, 5, 7), -1, (1, 7)),  # gamma with a leading 1
    ((2, 3, 5, 7), 2, (5, 7)),
    ((2, 3, 5, 7), -3, (1, 3, 5, 7)),
    ((31, 384), -1, (384,)),
    ((5, 1031), -1, (1031,)),
]


@pytest.mark.parametrize(("shape", "axis", "gshape"), NORM_CASES)
def test_layer_norm(
    rng: np.random.Generator, shape: tuple[int, ...], axis: int, gshape: tuple[int, ...]
) -> None:
    x, gamma, beta = randn(rng, *shape), randn(rng, *gshape), randn(rng, *gshape)
    res = randn(rng, *shape)
    close_norm(ops.layer_norm(x, gamma, beta, axis), ref.layer_norm(x, gamma, beta, axis))
    close_norm(ops.layer_norm(x, gamma, axis=axis), ref.layer_norm(x, gamma, axis=axis))
    close_norm(
        ops.layer_norm(x, gamma, beta, axis, 1e-3, res),
        ref.layer_norm(x, gamma, beta, axis, 1e-3, res),
    )


@pytest.mark.parametrize(("shape", "axis", "gshape"), NORM_CASES)
def test_rms_norm(
    rng: np.random.Generator, shape: tuple[int, ...], axis: int, gshape: tuple[int, ...]
) -> None:
    x, gamma = randn(rng, *shape), randn(rng, *gshape)
    close_norm(ops.rms_norm(x, gamma, axis), ref.rms_norm(x, gamma, axis))
    close_norm(ops.rms_norm(x, gamma, axis, 1e-2), ref.rms_norm(x, gamma, axis, 1e-2))


def test_layer_norm_offset_rows_are_stable(rng: np.random.Generator) -> None:
    # Two-pass statistics: a mean far from 0 does not cancel the variance away.
    x = randn(rng, 64, 384) + F32(50)
    gamma, beta = randn(rng, 384), randn(rng, 384)
    close_norm(ops.layer_norm(x, gamma, beta), ref.layer_norm(x, gamma, beta))


def test_norms_large_threads_agree(rng: np.random.Generator) -> None:
    x, res = randn(rng, 4096, 384), randn(rng, 4096, 384)
    gamma, beta = randn(rng, 384), randn(rng, 384)
    one = ops.layer_norm(x, gamma, beta, residual=res, threads=1)
    np.testing.assert_array_equal(one, ops.layer_norm(x, gamma, beta, residual=res, threads=2))
    close_norm(one, ref.layer_norm(x, gamma, beta, residual=res))
    one = ops.rms_norm(x, gamma, threads=1)
    np.testing.assert_array_equal(one, ops.rms_norm(x, gamma, threads=2))
    close_norm(one, ref.rms_norm(x, gamma))


def test_norms_noncontiguous(rng: np.random.Generator) -> None:
    x = randn(rng, 96, 50).T  # (50, 96), Fortran order
    gamma = randn(rng, 192)[::2]
    res = randn(rng, 50, 192)[:, ::2]
    close_norm(ops.layer_norm(x, gamma, residual=res), ref.layer_norm(x, gamma, residual=res))
    close_norm(ops.rms_norm(x, gamma), ref.rms_norm(x, gamma))


# ---- batch norm --------------------------------------------------------------------------------


def bn_params(rng: np.random.Generator, c: int) -> tuple[np.ndarray, ...]:
    var = np.asarray(rng.uniform(0.1, 2.0, c), dtype=F32)
    return randn(rng, c), randn(rng, c), randn(rng, c), var


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (2, 3, 11), (2, 16, 7, 9), (1, 3, 2, 5, 4)])
def test_batch_norm(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    x = randn(rng, *shape)
    params = bn_params(rng, shape[1])
    close_norm(ops.batch_norm(x, *params), ref.batch_norm(x, *params))
    close_norm(ops.batch_norm(x, *params, 1e-3), ref.batch_norm(x, *params, 1e-3))


def test_batch_norm_large_threads_agree(rng: np.random.Generator) -> None:
    x = randn(rng, 4, 64, 56, 56)  # 800K elements
    params = bn_params(rng, 64)
    one = ops.batch_norm(x, *params, threads=1)
    np.testing.assert_array_equal(one, ops.batch_norm(x, *params, threads=2))
    close_norm(one, ref.batch_norm(x, *params))
    xt = x.transpose(0, 1, 3, 2)  # non-contiguous
    close_norm(ops.batch_norm(xt, *params), ref.batch_norm(xt, *params))


# ---- fused attention -------------------------------------------------------------------------

# (batch, queries, keys, heads, head_dim, value_dim, mask shape or None): head widths at, under
# and over a narrow panel (32) and a full one (64 on AVX-512), key counts off every panel
# boundary, one query and one key, and masks broadcast along every axis.
ATTENTION_CASES = [
    (2, 128, 128, 12, 32, 32, (2, 1, 1, 128)),
    (1, 13, 70, 2, 64, 80, (13, 70)),
    (3, 1, 1, 1, 1, 1, (3, 1, 1, 1)),
    (2, 33, 129, 4, 96, 20, (2, 4, 33, 129)),
    (1, 7, 5, 3, 16, 16, None),
    (2, 17, 65, 5, 33, 7, (5, 1, 65)),
    (1, 6, 300, 1, 8, 40, (1, 300)),
]


@pytest.mark.parametrize(("b", "sq", "sk", "h", "d", "dv", "mask_shape"), ATTENTION_CASES)
def test_attention(
    rng: np.random.Generator,
    b: int,
    sq: int,
    sk: int,
    h: int,
    d: int,
    dv: int,
    mask_shape: tuple[int, ...] | None,
) -> None:
    # Products of unit-scale values over d terms, then a convex combination of v: the float32
    # error is about 1e-7 * sqrt(d) in the scores, which the softmax carries into the output.
    q, k, v = randn(rng, b, sq, h, d), randn(rng, b, sk, h, d), randn(rng, b, sk, h, dv)
    mask = None
    if mask_shape is not None:
        mask = np.where(rng.random(mask_shape) < 0.3, F32(-1e4), F32(0.0)).astype(F32)
    alpha = 1.0 / np.sqrt(d)
    expected = ref.attention(q, k, v, mask, alpha)
    for threads in (1, 2):
        out = ops.attention(q, k, v, mask, alpha, threads=threads)
        assert out.dtype == F32 and out.shape == (b, sq, h, dv)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6 * np.sqrt(d))


@pytest.mark.parametrize(("k_batch", "k_heads"), [(1, 3), (2, 1), (1, 1)])
def test_attention_shares_key_value_batch_or_heads(
    rng: np.random.Generator, k_batch: int, k_heads: int
) -> None:
    # One key/value head for all query heads (multi-query attention), or one batch entry for all.
    q = randn(rng, 2, 9, 3, 16)
    k, v = randn(rng, k_batch, 70, k_heads, 16), randn(rng, k_batch, 70, k_heads, 24)
    mask = np.where(rng.random((2, 1, 1, 70)) < 0.3, F32(-1e4), F32(0.0)).astype(F32)
    expected = ref.attention(q, k, v, mask, 0.25)
    for threads in (1, 2):
        out = ops.attention(q, k, v, mask, 0.25, threads=threads)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# ---- attention skipping the keys a mask drops ---------------------------------------------------
# The kernel skips trailing keys whose probabilities are provably exactly 0 (mask at -1e4 or
# lower, far enough below the kept keys for any score |alpha| |q| |k| allows). These tests hold it
# to the unfused reference where it skips, where it must not (scores large enough to overcome the
# mask), and where a dropped key carries NaN or infinity (which the unfused form spreads).

DROP_VALUES = [F32(-1e4), np.finfo(F32).min, NEG_INF]


def _padding_mask(rng: np.random.Generator, b: int, sk: int, drop: np.float32) -> np.ndarray:
    lengths = rng.integers(1, sk + 1, size=b)
    lengths[0] = sk
    keep = np.arange(sk)[None, :] < lengths[:, None]
    return np.where(keep, F32(0.0), drop).astype(F32).reshape(b, 1, 1, sk)


@pytest.mark.parametrize("drop", DROP_VALUES)
@pytest.mark.parametrize(
    ("b", "sq", "sk", "h", "d"), [(4, 128, 128, 12, 32), (3, 20, 200, 2, 64), (5, 7, 9, 3, 8)]
)
def test_attention_padding_mask_skips_dropped_keys_exactly(
    rng: np.random.Generator, drop: np.float32, b: int, sq: int, sk: int, h: int, d: int
) -> None:
    q, k, v = randn(rng, b, sq, h, d), randn(rng, b, sk, h, d), randn(rng, b, sk, h, d)
    mask = _padding_mask(rng, b, sk, drop)
    alpha = 1.0 / np.sqrt(d)
    expected = ref.attention(q, k, v, mask, alpha)
    for threads in (1, 2):
        out = ops.attention(q, k, v, mask, alpha, threads=threads)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6 * np.sqrt(d))
    # The same keys cut off by hand give the same answer: the skipped ones count for nothing.
    lengths = (mask[:, 0, 0, :] == 0).sum(axis=1)
    for i, n in enumerate(lengths):
        one = ops.attention(q[i : i + 1], k[i : i + 1, :n], v[i : i + 1, :n], None, alpha)
        np.testing.assert_allclose(out[i : i + 1], one, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 150), (2, 3, 1, 150), (2, 1, 40, 150), (40, 150)])
def test_attention_per_row_and_per_head_masks_skip_exactly(
    rng: np.random.Generator, mask_shape: tuple[int, ...]
) -> None:
    # Each row (or head) drops its own tail: a causal-like staircase with a random offset.
    b, sq, sk, h, d = 2, 40, 150, 3, 16
    q, k, v = randn(rng, b, sq, h, d), randn(rng, b, sk, h, d), randn(rng, b, sk, h, 24)
    ends = rng.integers(1, sk + 1, size=(*mask_shape[:-1], 1))
    mask = np.where(np.arange(sk) < ends, F32(0.0), NEG_INF).astype(F32)
    expected = ref.attention(q, k, v, mask, 0.25)
    for threads in (1, 2):
        np.testing.assert_allclose(
            ops.attention(q, k, v, mask, 0.25, threads=threads), expected, rtol=1e-5, atol=1e-5
        )


def test_attention_causal_mask_matches_unfused(rng: np.random.Generator) -> None:
    sq = sk = 70
    q, k, v = randn(rng, 2, sq, 2, 32), randn(rng, 2, sk, 2, 32), randn(rng, 2, sk, 2, 32)
    causal = np.triu(np.full((sq, sk), NEG_INF, F32), 1)
    expected = ref.attention(q, k, v, causal, 0.2)
    np.testing.assert_allclose(ops.attention(q, k, v, causal, 0.2), expected, rtol=1e-5, atol=1e-5)


def test_attention_scores_that_overcome_the_mask_are_not_skipped(rng: np.random.Generator) -> None:
    # -1e4 is not -inf: with |q| |k| in the tens of thousands a "dropped" key can win the softmax,
    # and the unfused form says so; the kernel must compute it.
    b, sq, sk, h, d = 2, 12, 80, 2, 16
    q, k, v = (
        randn(rng, b, sq, h, d, scale=60.0),
        randn(rng, b, sk, h, d, scale=60.0),
        randn(rng, b, sk, h, d),
    )
    mask = np.zeros((b, 1, 1, sk), F32)
    mask[..., 50:] = -1e4
    alpha = 1.0
    expected = ref.attention(q, k, v, mask, alpha)
    # Some query really does put its weight on a masked key (else the test shows nothing).
    scores = np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k.astype(np.float64)) + mask.astype(
        np.float64
    )
    assert (scores.argmax(-1) >= 50).any()
    for threads in (1, 2):
        out = ops.attention(q, k, v, mask, alpha, threads=threads)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_attention_non_finite_dropped_key_spreads_as_unfused(
    rng: np.random.Generator, where: str, bad: float
) -> None:
    # 0 * inf and 0 * NaN are NaN, and -inf scores plus NaN are NaN: a dropped key holding a
    # non-finite value poisons its batch entry's rows in the unfused form, so it must here too.
    b, sq, sk, h, d = 2, 9, 64, 2, 8
    q, k, v = randn(rng, b, sq, h, d), randn(rng, b, sk, h, d), randn(rng, b, sk, h, d)
    mask = np.zeros((b, 1, 1, sk), F32)
    mask[:, ..., 40:] = np.finfo(F32).min
    (k if where == "k" else v)[0, 60, 1, 3] = bad
    expected = ref.attention(q, k, v, mask, 0.35)
    # (a NaN in k_j makes the head's rows NaN, an inf those whose score it makes +inf, a bad v_j
    # the outputs of its column)
    assert np.isnan(expected[0, :, 1]).any() and np.isfinite(expected[1]).all()
    for threads in (1, 2):
        out = ops.attention(q, k, v, mask, 0.35, threads=threads)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_attention_over_no_keys_is_zero_as_unfused() -> None:
    q = np.ones((1, 2, 1, 4), F32)
    out = ops.attention(q, np.ones((1, 0, 1, 4), F32), np.ones((1, 0, 1, 3), F32))
    expected = ref.attention(q, np.ones((1, 0, 1, 4), F32), np.ones((1, 0, 1, 3), F32))
    assert out.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, 0.0)


def test_attention_fully_masked_query_is_nan_and_others_are_not(rng: np.random.Generator) -> None:
    q, k, v = randn(rng, 1, 4, 2, 8), randn(rng, 1, 6, 2, 8), randn(rng, 1, 6, 2, 8)
    mask = np.zeros((1, 2, 4, 6), F32)
    mask[0, 1, 2, :] = NEG_INF  # head 1, query 2 sees no key
    mask[0, 0, 1, :3] = NEG_INF  # head 0, query 1 sees half of them
    out = ops.attention(q, k, v, mask, 0.5)
    assert np.isnan(out[0, 2, 1]).all()
    finite = np.ones((4, 2), bool)
    finite[2, 1] = False
    assert np.isfinite(out[0][finite]).all()
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask, 0.5), rtol=1e-5, atol=1e-6)


def test_attention_noncontiguous_and_empty(rng: np.random.Generator) -> None:
    base = randn(rng, 2, 9, 3, 16)
    q = base[:, :, :, ::2]  # a strided view: made contiguous at the boundary
    k = v = base[:, :, :, 8:]
    np.testing.assert_allclose(
        ops.attention(q, k, v, None, 0.3), ref.attention(q, k, v, None, 0.3), rtol=1e-5, atol=1e-6
    )
    empty = ops.attention(
        np.ones((0, 4, 2, 8), F32), np.ones((0, 5, 2, 8), F32), np.ones((0, 5, 2, 3), F32)
    )
    assert empty.shape == (0, 4, 2, 3)


# ---- errors --------------------------------------------------------------------------------

ONES = np.ones((4, 6), F32)
C6 = np.ones(6, F32)
Q4 = np.ones((1, 5, 3, 4), F32)  # (batch, seq, heads, head_dim)
Call = Callable[[], Any]


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("softmax", lambda: ops.softmax(np.ones((4, 6), np.int64))),
        ("softmax", lambda: ops.softmax(ONES.astype(np.float64))),
        ("softmax", lambda: ops.softmax(ONES, axis=2)),
        ("softmax", lambda: ops.softmax(np.float32(1.0))),
        ("softmax", lambda: ops.softmax(ONES, np.ones(4, F32))),
        ("softmax", lambda: ops.softmax(ONES, np.ones((2, 4, 6), F32))),
        ("softmax", lambda: ops.softmax(ONES, np.ones(6, np.int32))),
        ("softmax", lambda: ops.softmax(ONES, scale=float("inf"))),
        ("log_softmax", lambda: ops.log_softmax(ONES, -3)),
        ("layer_norm", lambda: ops.layer_norm(ONES, np.ones(4, F32))),
        ("layer_norm", lambda: ops.layer_norm(ONES, np.ones((6, 1), F32))),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, np.ones(5, F32))),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, epsilon=0.0)),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, epsilon=-1e-5)),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, epsilon=float("nan"))),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, epsilon=1e-50)),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, residual=np.ones((4, 1), F32))),
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, axis=5)),
        ("layer_norm", lambda: ops.layer_norm(ONES.astype(np.int32), C6)),
        ("rms_norm", lambda: ops.rms_norm(ONES, C6, epsilon=float("inf"))),
        ("rms_norm", lambda: ops.rms_norm(ONES, C6.astype(np.float64))),
        ("batch_norm", lambda: ops.batch_norm(C6, C6, C6, C6, C6)),
        ("batch_norm", lambda: ops.batch_norm(ONES.T, C6, C6, C6, C6)),
        ("batch_norm", lambda: ops.batch_norm(ONES, C6, C6, C6, C6, epsilon=0.0)),
        ("batch_norm", lambda: ops.batch_norm(ONES, C6, C6, C6, np.ones(6, np.int64))),
        ("attention", lambda: ops.attention(Q4, Q4, Q4.astype(np.float64))),
        ("attention", lambda: ops.attention(ONES, ONES, ONES)),
        ("attention", lambda: ops.attention(Q4, np.ones((1, 5, 2, 4), F32), Q4)),
        ("attention", lambda: ops.attention(Q4, np.ones((2, 5, 3, 4), F32), Q4)),
        ("attention", lambda: ops.attention(Q4, Q4, np.ones((1, 6, 3, 4), F32))),
        ("attention", lambda: ops.attention(Q4, Q4, Q4, np.ones((1, 3, 5, 4), F32))),
        ("attention", lambda: ops.attention(Q4, Q4, Q4, np.ones((1, 1, 1, 1, 5), F32))),
        ("attention", lambda: ops.attention(Q4, Q4, Q4, alpha=float("nan"))),
    ],
)
def test_errors(op: str, call: Call) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[{op}\]"):
        call()


def test_batch_norm_training_mode_unsupported() -> None:
    with pytest.raises(UnsupportedError, match=r"\[batch_norm\] training"):
        require_core().run_op("batch_norm", [ONES, C6, C6, C6, C6], {"training_mode": 1}, 0)


# ---- robustness: bad arguments, empty tensors, non-finite values, random cases ---------------


@pytest.mark.parametrize(
    ("op", "call"),
    [
        # Each of these leaked an OverflowError or ValueError, or passed a float32 inf on.
        ("softmax", lambda: ops.softmax(ONES, scale=2**2000)),
        ("softmax", lambda: ops.softmax(ONES, scale=1e39)),
        ("softmax", lambda: ops.softmax(ONES, scale="2")),  # type: ignore[arg-type]
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, epsilon=1e39)),
        ("rms_norm", lambda: ops.rms_norm(ONES, C6, epsilon=np.float32("nan"))),  # type: ignore[arg-type]
        ("batch_norm", lambda: ops.batch_norm(ONES, C6, C6, C6, C6, epsilon="1e-5")),  # type: ignore[arg-type]
        ("layer_norm", lambda: ops.layer_norm(ONES, C6, threads=2.0)),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_phi_errors(op: str, call: Call) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[{op}\]"):
        call()


@pytest.mark.parametrize(
    ("shape", "axis"), [((7, 0), 1), ((0, 5), 1), ((2, 0, 3), 1), ((2, 0, 3), -1)]
)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_empty(op: str, shape: tuple[int, ...], axis: int) -> None:
    x = np.ones(shape, F32)
    out = getattr(ops, op)(x, axis=axis)
    assert out.shape == shape and out.dtype == F32
    np.testing.assert_array_equal(out, getattr(ref, op)(x, axis=axis))


def test_norms_nan_rows_stay_nan_and_others_do_not(rng: np.random.Generator) -> None:
    x = randn(rng, 5, 9)
    x[1, 3] = np.nan
    x[3, 0] = np.inf
    g, b = randn(rng, 9), randn(rng, 9)
    for out, expected in (
        (ops.layer_norm(x, g, b), ref.layer_norm(x, g, b)),
        (ops.rms_norm(x, g), ref.rms_norm(x, g)),
        (ops.softmax(x), ref.softmax(x)),
    ):
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 4]]).all()


def fuzz_case(rng: np.random.Generator) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """A random softmax / norm call: ranks 1-4 with size-0 and size-1 dims, NaN and inf values,
    random axes (some out of range) and optional inputs."""
    shape = tuple(int(d) for d in rng.choice([0, 1, 2, 3, 7], rng.integers(1, 5)))
    x = np.asarray(rng.standard_normal(shape) * 2, F32)
    x[rng.random(shape) < 0.03] = np.nan
    x[rng.random(shape) < 0.03] = np.inf
    axis = int(rng.integers(-len(shape) - 1, len(shape) + 1))
    op = str(rng.choice(["softmax", "log_softmax", "layer_norm", "rms_norm", "batch_norm"]))
    if op in ("softmax", "log_softmax"):
        kw: dict[str, Any] = {"axis": axis, "scale": float(rng.uniform(0.1, 2.0))}
        if rng.random() < 0.5:
            kw["mask"] = randn(rng, *shape[rng.integers(0, len(shape) + 1) :])
        return op, (x,), kw
    if op == "batch_norm":
        c = shape[1] if len(shape) > 1 else 1
        var = np.abs(randn(rng, c)) + F32(0.5)
        return op, (x, randn(rng, c), randn(rng, c), randn(rng, c), var), {}
    norm = shape[axis % len(shape) :] if -len(shape) <= axis < len(shape) else shape
    # epsilon >= 1e-3: with 1e-5, a short row of near-equal values amplifies the float32 rounding
    # of x - mean past any fixed tolerance (the tests above cover small epsilons on real data).
    kw = {"axis": axis, "epsilon": float(rng.choice([1e-3, 1.0]))}
    if op == "layer_norm" and rng.random() < 0.5:
        kw["residual"] = randn(rng, *shape)
    return op, (x, randn(rng, *norm)), kw


def test_fuzz_matches_reference_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Either numpy's result (NaN where numpy has NaN) or an InvalidRequestError naming the op;
    never a crash or another exception type."""
    for _ in range(800):
        op, args, kw = fuzz_case(rng)
        try:
            out = getattr(ops, op)(*args, **kw, threads=int(rng.integers(0, 4)))
        except InvalidRequestError as e:
            assert str(e).startswith(f"[{op}]")
            continue
        expected = getattr(ref, op)(*args, **kw)
        assert out.shape == expected.shape and out.dtype == F32
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
