"""conv2d and pooling against the numpy reference.

Conv tolerance: rtol 1e-4 and an absolute term growing like sqrt(C/groups * kh * kw), the
float32 accumulation error of a dot product of that length over unit normals.
"""

from __future__ import annotations

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def assert_close_conv(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.sqrt(k)))


# (N, C, H, W, M, kh, kw, strides, pads, dilations, groups)
CONVS = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),  # all ones
    (1, 8, 7, 9, 16, 1, 1, 1, 0, 1, 1),  # pointwise: a plain GEMM
    (3, 16, 14, 13, 32, 1, 1, 1, 0, 1, 1),
    (2, 8, 9, 9, 4, 1, 1, 2, 0, 1, 1),  # 1x1 stride 2 goes through im2col
    (1, 3, 17, 19, 5, 3, 3, 1, 1, 1, 1),
    (3, 7, 13, 11, 5, 3, 3, 1, 1, 1, 1),  # primes
    (2, 16, 23, 29, 24, 3, 3, 2, 1, 1, 1),  # stride 2
    (1, 6, 15, 15, 6, 3, 3, 1, 2, 2, 1),  # dilation 2
    (2, 8, 12, 10, 12, 3, 3, 1, 1, 1, 2),  # groups 2
    (1, 12, 11, 11, 6, 3, 1, 1, (1, 0, 1, 0), 1, 3),  # groups 3, non-square kernel
    (2, 4, 10, 12, 3, 2, 5, (2, 3), (0, 1, 2, 0), (2, 1), 1),  # asymmetric everything
    (1, 3, 5, 5, 4, 5, 5, 1, 0, 1, 1),  # kernel = image: 1x1 output
    (1, 3, 4, 6, 2, 7, 7, 1, 3, 1, 1),  # kernel larger than the image, padding covers it
    (3, 16, 14, 14, 16, 3, 3, 1, 1, 1, 16),  # depthwise
    (1, 32, 15, 17, 32, 3, 3, 2, 1, 1, 32),  # depthwise stride 2
    (2, 8, 13, 9, 8, 3, 3, 1, 2, 2, 8),  # depthwise dilation 2
    (1, 5, 9, 10, 5, 5, 5, 1, (2, 1, 0, 3), 1, 5),  # depthwise 5x5 asymmetric pads
    (1, 8, 21, 37, 8, 3, 3, 1, 1, 1, 8),  # depthwise, wide odd rows
    (2, 6, 19, 45, 6, 3, 3, 2, 1, 1, 6),  # depthwise, wide rows, stride 2
    (1, 4, 17, 50, 4, 5, 5, 1, (2, 1, 0, 3), 2, 4),  # depthwise, dilation 2, asymmetric pads
    (1, 3, 5, 18, 3, 1, 3, 1, 0, 1, 3),  # depthwise 1x3, no padding
    (1, 4, 8, 8, 8, 3, 3, 1, 1, 1, 4),  # channel multiplier 2: grouped GEMM path
    (2, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1),  # ResNet-like, large-ish
    (1, 3, 57, 61, 8, 7, 7, 2, 3, 1, 1),  # stem-like
    (1, 2048, 8, 8, 4, 3, 3, 1, 1, 1, 1),  # huge K, narrow rows: one-row blocks
]


def _conv_case(rng: np.random.Generator, case: tuple) -> tuple[np.ndarray, np.ndarray, dict, int]:  # type: ignore[type-arg]
    n, c, h, w, m, kh, kw, strides, pads, dilations, groups = case
    x, wt = randn(rng, n, c, h, w), randn(rng, m, c // groups, kh, kw)
    kw_args = {"strides": strides, "pads": pads, "dilations": dilations, "groups": groups}
    return x, wt, kw_args, (c // groups) * kh * kw


@pytest.mark.parametrize("case", CONVS)
def test_conv2d_shapes(rng: np.random.Generator, case: tuple) -> None:  # type: ignore[type-arg]
    x, w, kw, k = _conv_case(rng, case)
    assert_close_conv(ops.conv2d(x, w, **kw), ref.conv2d(x, w, **kw), k)


EPILOGUES = [
    ("none", {}),
    ("relu", {}),
    ("clip", {"clip_min": 0.0, "clip_max": 6.0}),  # relu6
    ("gelu", {}),
    ("sigmoid", {}),
]


# One of each path: pointwise, im2col with stride 2, grouped, depthwise (stride 1 and 2, narrow
# and wide rows), channel multiplier.
EPILOGUE_CASES = [CONVS[i] for i in (2, 6, 8, 13, 14, 17, 21)]


@pytest.mark.parametrize("case", EPILOGUE_CASES)
@pytest.mark.parametrize(("act", "clip"), EPILOGUES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_conv2d_epilogue(
    rng: np.random.Generator,
    case: tuple,
    act: str,
    clip: dict,
    with_residual: bool,  # type: ignore[type-arg]
) -> None:
    x, w, kw, k = _conv_case(rng, case)
    bias = randn(rng, w.shape[0])
    shape = ref.conv2d(x, w, **kw).shape
    res = randn(rng, *shape) if with_residual else None
    out = ops.conv2d(x, w, bias, act, residual=res, **kw, **clip)
    assert_close_conv(out, ref.conv2d(x, w, bias, act, residual=res, **kw, **clip), k)


# Each large enough (> 4 MFLOP) for the kernel to use both threads.
THREADED = [
    (1, 32, 40, 40, 32, 3, 3, 1, 1, 1, 1),  # one image: its row blocks are split
    (3, 16, 33, 31, 24, 3, 3, 2, 1, 1, 1),  # batch images are split
    (3, 64, 30, 30, 64, 1, 1, 1, 0, 1, 1),  # pointwise
    (2, 64, 24, 24, 64, 3, 3, 1, 1, 2, 2),  # grouped, dilated
    (2, 96, 48, 48, 96, 3, 3, 1, 1, 1, 96),  # depthwise
    (1, 256, 4, 4, 256, 3, 3, 1, 1, 1, 1),  # one block only: the GEMM takes the threads
]


@pytest.mark.parametrize("case", THREADED)
def test_conv2d_threads_agree(rng: np.random.Generator, case: tuple) -> None:  # type: ignore[type-arg]
    x, w, kw, k = _conv_case(rng, case)
    bias = randn(rng, w.shape[0])
    one = ops.conv2d(x, w, bias, "relu", threads=1, **kw)
    two = ops.conv2d(x, w, bias, "relu", threads=2, **kw)
    np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-6 * np.sqrt(k))
    assert_close_conv(two, ref.conv2d(x, w, bias, "relu", **kw), k)


# The panel path: output rows under 16 pixels in a batch of at least one panel (64 pixels on
# AVX-512), where panels span images. Each row: the case, and what it exercises.
PANELS = [
    (32, 16, 2, 2, 24, 3, 3, 1, 1, 1, 1),  # 2 x 2 images, 16 to a panel
    (7, 8, 3, 5, 13, 3, 3, 1, 1, 1, 1),  # 15-pixel images split across panels; a partial last panel
    (5, 12, 8, 8, 10, 1, 1, 1, 0, 1, 1),  # 1 x 1, 8 x 8 images: a panel is one image, read in place
    (9, 6, 5, 5, 7, 1, 1, 1, 0, 1, 1),  # 1 x 1 on 5 x 5 images: panels span images, copied
    (6, 10, 9, 7, 11, 1, 1, 2, 0, 1, 1),  # 1 x 1 stride 2 (a projection shortcut)
    (4, 8, 11, 9, 6, 3, 3, 2, 1, 1, 1),  # stride 2 with padding
    (3, 6, 10, 10, 8, 3, 3, 1, 2, 2, 1),  # dilation 2
    (5, 8, 6, 6, 12, 3, 3, 1, 1, 1, 2),  # groups 2
    (2, 3, 9, 13, 5, 5, 3, (1, 2), (2, 0, 1, 2), (1, 2), 1),  # asymmetric everything
    (40, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1),  # 1 x 1 images: only the kernel's centre tap is inside
    (8, 64, 4, 4, 64, 3, 3, 1, 1, 1, 1),  # ResNet stage-3-like
    # More than one block of W's rows, partial tiles, one tiny image, everything asymmetric:
    (3, 9, 5, 6, 70, 3, 3, 1, 1, 1, 1),  # 70 channels: a 64-block and a 6-channel one
    (2, 12, 4, 4, 130, 3, 3, 1, 1, 1, 1),  # three blocks, 32 pixels: a partial last tile
    (1, 20, 2, 2, 128, 3, 3, 1, 1, 1, 1),  # batch 1, 2 x 2: one 4-pixel tile
    (5, 7, 9, 9, 33, 3, 2, 2, (1, 0, 0, 1), (1, 2), 1),  # stride 2, dilation, asymmetric pads
]


def _check_fused_and_plain(rng: np.random.Generator, case: tuple, threads: int) -> tuple:  # type: ignore[type-arg]
    """The case with bias, residual and ReLU, then plain; its operands for further checks."""
    x, w, kw, k = _conv_case(rng, case)
    bias = randn(rng, w.shape[0])
    res = randn(rng, *ref.conv2d(x, w, **kw).shape)
    out = ops.conv2d(x, w, bias, "relu", residual=res, threads=threads, **kw)
    assert_close_conv(out, ref.conv2d(x, w, bias, "relu", residual=res, **kw), k)
    plain = ops.conv2d(x, w, threads=threads, **kw)
    assert_close_conv(plain, ref.conv2d(x, w, **kw), k)
    return x, w, bias, res, kw, k


@pytest.mark.parametrize("case", PANELS)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_panels(rng: np.random.Generator, case: tuple, threads: int) -> None:  # type: ignore[type-arg]
    _check_fused_and_plain(rng, case, threads)


# The direct path (AVX-512): at most 32 output channels, one group, output rows of 16 pixels or
# more. Vectors run along output rows over the image copied into stride phases.
DIRECT = [
    (2, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1),  # a ResNet stage-1 layer: one tile per row
    (2, 3, 64, 64, 16, 7, 7, 2, 3, 1, 1),  # the 7 x 7 stride-2 stem
    (1, 5, 20, 37, 17, 3, 3, 1, 1, 1, 1),  # 17 channels: a second block of one; partial tiles
    (3, 4, 19, 52, 32, 5, 3, 3, (2, 0, 1, 4), 1, 1),  # stride 3, asymmetric pads
    (1, 6, 21, 40, 9, 3, 3, 1, 2, 2, 1),  # dilation 2
    (2, 8, 18, 35, 12, 3, 5, (1, 2), (1, 2, 0, 3), (2, 1), 1),  # everything asymmetric
    (2, 7, 17, 16, 24, 1, 1, 1, 0, 1, 1),  # 1 x 1
    (1, 2, 3, 70, 5, 3, 3, 1, 0, 1, 1),  # one output row, no padding
    (4, 32, 8, 8, 32, 3, 3, 1, 1, 1, 1),  # 8-pixel rows, two to a vector (a stage-2 layer)
    (1, 6, 9, 10, 20, 3, 3, 1, (1, 0, 1, 0), 1, 1),  # 8-pixel rows, an odd count: a half vector
    (2, 5, 11, 12, 7, 5, 5, 1, (2, 0, 1, 0), 1, 1),  # 8-pixel rows from a 5 x 5 window
]


@pytest.mark.parametrize("case", DIRECT)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_direct(rng: np.random.Generator, case: tuple, threads: int) -> None:  # type: ignore[type-arg]
    x, w, bias, res, kw, k = _check_fused_and_plain(rng, case, threads)
    for act, clip in EPILOGUES[2:]:  # the activations applied after the tile
        got = ops.conv2d(x, w, bias, act, residual=res, threads=threads, **kw, **clip)
        assert_close_conv(got, ref.conv2d(x, w, bias, act, residual=res, **kw, **clip), k)


def test_conv2d_direct_nan_stays_in_its_image(rng: np.random.Generator) -> None:
    x, w = randn(rng, 3, 4, 18, 20), randn(rng, 8, 4, 3, 3)
    x[1, 2, 5, 7] = np.nan
    out = ops.conv2d(x, w, pads=1, activation="relu")
    assert np.isnan(out[1, :, 4:7, 6:9]).all()  # the 3 x 3 outputs whose window holds it
    assert not np.isnan(out[[0, 2]]).any() and np.isnan(out[1]).sum() == 8 * 9
    want = ref.conv2d(x, w, pads=1, activation="relu")
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("act", "clip"), EPILOGUES)
def test_conv2d_small_images_every_activation(
    rng: np.random.Generator,
    act: str,
    clip: dict,  # type: ignore[type-arg]
) -> None:
    x, w, kw, k = _conv_case(rng, (6, 8, 4, 4, 20, 3, 3, 1, 1, 1, 1))
    bias = randn(rng, w.shape[0])
    res = randn(rng, *ref.conv2d(x, w, **kw).shape)
    out = ops.conv2d(x, w, bias, act, residual=res, threads=2, **kw, **clip)
    assert_close_conv(out, ref.conv2d(x, w, bias, act, residual=res, **kw, **clip), k)


def test_conv2d_panels_keep_nan_and_padding_apart(rng: np.random.Generator) -> None:
    """A NaN in one image stays in the outputs that read it: padding columns of other images
    in the same panel are zeros, not gathers of a neighbour's pixels."""
    x = randn(rng, 16, 4, 3, 3)
    x[5, 2, 1, 1] = np.nan
    w = randn(rng, 6, 4, 3, 3)
    out = ops.conv2d(x, w, pads=1)
    expected = ref.conv2d(x, w, pads=1)
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(out[5]).all() and not np.isnan(np.delete(out, 5, axis=0)).any()
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(out[ok], expected[ok], rtol=1e-4, atol=1e-4)


def test_conv2d_batch_one_vs_three(rng: np.random.Generator) -> None:
    x, w = randn(rng, 3, 16, 20, 18), randn(rng, 24, 16, 3, 3)
    bias = randn(rng, 24)
    batch = ops.conv2d(x, w, bias, "relu", pads=1)
    for i in range(3):
        single = ops.conv2d(x[i : i + 1], w, bias, "relu", pads=1)
        np.testing.assert_allclose(batch[i : i + 1], single, rtol=1e-6, atol=1e-5)


def test_conv2d_noncontiguous(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 9, 30, 26)[:, ::2, ::2, 1:]  # (2, 5, 15, 25), strided
    w = randn(rng, 7, 3, 3, 5).transpose(0, 3, 2, 1)  # (7, 5, 3, 3), transposed
    bias = randn(rng, 14)[::2]
    res = randn(rng, 2, 5, 15, 7).transpose(0, 3, 2, 1)  # (2, 7, 15, 5), transposed
    kw = {"strides": (1, 5), "pads": 1}
    out = ops.conv2d(x, w, bias, "relu", residual=res, **kw)
    assert_close_conv(out, ref.conv2d(x, w, bias, "relu", residual=res, **kw), 45)


def _conv_error(match: str, x: np.ndarray, w: np.ndarray, **kw: object) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[conv2d\].*{match}"):
        ops.conv2d(x, w, **kw)  # type: ignore[arg-type]


def test_conv2d_bad_inputs() -> None:
    x, w = np.ones((1, 4, 8, 8), np.float32), np.ones((6, 4, 3, 3), np.float32)
    _conv_error("float32", x.astype(np.float64), w)
    _conv_error("float32", x, w.astype(np.float16))
    _conv_error("rank 4", x[0], w)
    _conv_error("rank 4", x, w[0])
    _conv_error("input channels per group", x, np.ones((6, 3, 3, 3), np.float32))
    _conv_error("divisible by groups", x, np.ones((6, 4, 3, 3), np.float32), groups=4)
    _conv_error("divisible by groups", x, np.ones((6, 1, 3, 3), np.float32), groups=3)
    _conv_error("groups must be positive", x, w, groups=0)
    _conv_error("strides must be positive", x, w, strides=0)
    _conv_error("dilations must be positive", x, w, dilations=(1, -1))
    _conv_error("pads must be non-negative", x, w, pads=(0, -1, 0, 0))
    _conv_error("pads must have 4", x, w, pads=(1, 1))
    _conv_error("larger than the padded input", x, np.ones((6, 4, 9, 3), np.float32))
    _conv_error("bias", x, w, bias=np.ones(5, np.float32))
    _conv_error("residual", x, w, residual=np.ones((1, 6, 8, 8), np.float32))
    _conv_error("activation", x, w, activation="swish")
    _conv_error("strides", x, w, strides="ab")


# ---- pooling ------------------------------------------------------------------------------

# (N, C, H, W, kernel, strides, pads, dilations, ceil_mode)
POOLS = [
    (1, 1, 1, 1, 1, 1, 0, 1, False),
    (2, 3, 8, 8, 2, 2, 0, 1, False),
    (1, 4, 9, 11, 3, 2, 1, 1, False),  # ResNet stem max pool on odd sizes
    (1, 4, 9, 11, 3, 2, 1, 1, True),
    (2, 5, 13, 7, 3, 1, 1, 1, False),
    (1, 3, 10, 10, 2, 3, 0, 1, True),  # ceil mode: a partial last window
    (1, 2, 7, 7, 3, 3, (1, 0, 1, 2), 1, True),  # the last window would start in the end pad
    (3, 2, 12, 17, (2, 3), (1, 2), (1, 1, 0, 2), 1, False),
    (1, 3, 15, 14, 3, 1, 2, 2, False),  # dilation 2
    (1, 3, 15, 14, (3, 2), (2, 3), (2, 1, 2, 1), (2, 3), True),
    (4, 64, 28, 28, 3, 2, 1, 1, False),  # large-ish
    (2, 3, 13, 16, 3, 2, 2, 2, False),  # stride 2, dilation 2: every tap on the even columns
    (1, 2, 11, 19, (2, 3), 2, (1, 2, 0, 1), (1, 3), True),  # stride 2, dilation 3: both parities
    (2, 3, 9, 101, 3, 2, 1, 1, True),  # stride 2 over rows of several vectors, ceil mode
    (1, 2, 150, 37, (70, 3), (3, 2), (2, 1, 0, 1), 1, False),  # windows of over 64 rows
    (1, 2, 20, 150, (3, 70), 2, (1, 5, 1, 5), (1, 2), False),  # over 64 columns, stride 2
    (2, 3, 32, 32, 3, 2, 1, 1, False),  # the CNN's stem pool: 32-float rows, two vectors each
]


@pytest.mark.parametrize("case", POOLS)
def test_max_pool2d(rng: np.random.Generator, case: tuple) -> None:  # type: ignore[type-arg]
    n, c, h, w, kernel, strides, pads, dilations, ceil_mode = case
    x = randn(rng, n, c, h, w)
    kw = {"strides": strides, "pads": pads, "dilations": dilations, "ceil_mode": ceil_mode}
    out = ops.max_pool2d(x, kernel, **kw)
    np.testing.assert_array_equal(out, ref.max_pool2d(x, kernel, **kw), strict=True)


@pytest.mark.parametrize("case", POOLS)
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool2d(rng: np.random.Generator, case: tuple, count_include_pad: bool) -> None:  # type: ignore[type-arg]
    n, c, h, w, kernel, strides, pads, dilations, ceil_mode = case
    x = randn(rng, n, c, h, w)
    kw = {
        "strides": strides,
        "pads": pads,
        "dilations": dilations,
        "ceil_mode": ceil_mode,
        "count_include_pad": count_include_pad,
    }
    out = ops.avg_pool2d(x, kernel, **kw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.avg_pool2d(x, kernel, **kw), rtol=1e-5, atol=1e-6)


def test_pool_known_values() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(ops.max_pool2d(x, 2, strides=2), [[[[5, 7], [13, 15]]]])
    # 3x3 windows, pad 1: the corner window holds 4 real cells (0, 1, 4, 5) of 9.
    avg = ops.avg_pool2d(x, 3, strides=3, pads=1)
    incl = ops.avg_pool2d(x, 3, strides=3, pads=1, count_include_pad=True)
    assert avg[0, 0, 0, 0] == pytest.approx(2.5) and incl[0, 0, 0, 0] == pytest.approx(10 / 9)
    # ceil mode: 5 -> windows at 0 and 2 of size 2, stride 2, and a partial one at 4.
    y = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_array_equal(
        ops.avg_pool2d(y, (1, 2), strides=2, ceil_mode=True), [[[[0.5, 2.5, 4]]]]
    )


@pytest.mark.parametrize("op", [ops.max_pool2d, ops.avg_pool2d])
def test_pool_threads_and_noncontiguous(rng: np.random.Generator, op: object) -> None:
    x = randn(rng, 3, 40, 31, 30)[:, ::2, :, ::-1]
    pool = ops.max_pool2d if op is ops.max_pool2d else ops.avg_pool2d
    reference = ref.max_pool2d if op is ops.max_pool2d else ref.avg_pool2d
    one = pool(x, 3, strides=2, pads=1, threads=1)
    np.testing.assert_array_equal(one, pool(x, 3, strides=2, pads=1, threads=2))
    np.testing.assert_allclose(one, reference(x, 3, strides=2, pads=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_bad_inputs(op: str) -> None:
    pool = getattr(ops, op)
    x = np.ones((1, 2, 6, 6), np.float32)
    cases = [
        ("float32", (x.astype(np.float64), 2), {}),
        ("rank 4", (x[0], 2), {}),
        ("kernel_shape must be positive", (x, 0), {}),
        ("kernel_shape must have 2", (x, (2, 2, 2)), {}),
        ("strides must be positive", (x, 2), {"strides": (1, 0)}),
        ("dilations must be positive", (x, 2), {"dilations": 0}),
        ("pads must be smaller", (x, 2), {"pads": 2}),
        ("pads must be non-negative", (x, 2), {"pads": -1}),
        ("larger than the padded input", (x, 7), {}),
    ]
    for match, args, kw in cases:
        with pytest.raises(InvalidRequestError, match=rf"\[{op}\].*{match}"):
            pool(*args, **kw)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (2, 3, 1, 1), (1, 5, 7, 9), (3, 64, 56, 56), (2, 3, 4, 5, 6), (8, 2, 97)]
)
def test_global_avg_pool(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    x = randn(rng, *shape) + 3.0  # a non-zero mean, so relative error means something
    expected = ref.global_avg_pool(x)
    out = ops.global_avg_pool(x, threads=1)
    assert out.shape == (*shape[:2], *([1] * (len(shape) - 2)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ops.global_avg_pool(x[:, ::-1], threads=2), expected[:, ::-1], rtol=1e-5, atol=1e-6
    )


def test_global_avg_pool_bad_inputs() -> None:
    with pytest.raises(InvalidRequestError, match=r"\[global_avg_pool\].*float32"):
        ops.global_avg_pool(np.ones((1, 2, 3), np.int32))
    with pytest.raises(InvalidRequestError, match=r"\[global_avg_pool\].*rank"):
        ops.global_avg_pool(np.ones((2, 3), np.float32))
    with pytest.raises(InvalidRequestError, match=r"\[global_avg_pool\].*non-empty"):
        ops.global_avg_pool(np.ones((2, 3, 0), np.float32))


# ---- robustness: NaN, windows on padding only, extreme attributes, random cases -------------


@pytest.mark.parametrize("threads", [1, 2])
def test_max_pool_propagates_nan(rng: np.random.Generator, threads: int) -> None:
    # numpy's max and PyTorch's max_pool2d give NaN for a window holding one; the native sweep
    # used a plain compare, so NaN never won and silently disappeared.
    x = randn(rng, 2, 3, 80, 20)
    x[0, 1, 5, 7] = np.nan
    x[1, 2, 32, 0] = np.nan
    tall = {"strides": 2, "pads": 1, "kernel_shape": (67, 3)}  # the row groups of 64 hold it too
    cases = [{"strides": 2, "pads": 1}, {"strides": 1}, {"strides": (1, 3), "dilations": 2}, tall]
    for kw in cases:
        kw = dict(kw)
        kernel = kw.pop("kernel_shape", 3)
        out = ops.max_pool2d(x, kernel, threads=threads, **kw)
        np.testing.assert_array_equal(out, ref.max_pool2d(x, kernel, **kw), strict=True)
        assert np.isnan(out[0, 1]).any() and not np.isnan(out[0, 0]).any()


def test_avg_pool_window_on_padding_only_is_nan() -> None:
    # Taps at -1 and 2 of a 1-wide image (kernel 2, dilation 3, pad 1): none inside, so the
    # average of nothing is 0/0, as in ONNX Runtime and the reference (it used to be 0).
    x = np.full((1, 1, 1, 2), 4.0, np.float32)
    kw = {"dilations": (1, 3), "pads": (0, 2, 0, 2), "strides": 1}
    out = ops.avg_pool2d(x, (1, 2), **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, ref.avg_pool2d(x, (1, 2), **kw))  # type: ignore[arg-type]
    assert np.isnan(out).any() and (out[~np.isnan(out)] == 4.0).all()


@pytest.mark.parametrize(
    ("op", "call", "match"),
    [
        ("conv2d", lambda x, w: ops.conv2d(x, w, pads=2**62), "below 2\\^31"),
        ("conv2d", lambda x, w: ops.conv2d(x, w, dilations=2**62), "below 2\\^31"),
        ("conv2d", lambda x, w: ops.conv2d(x, w, strides=2**40), "below 2\\^31"),
        ("conv2d", lambda x, w: ops.conv2d(x, w, groups="2"), "groups"),  # type: ignore[arg-type]
        ("conv2d", lambda x, w: ops.conv2d(x, w, clip_min="0"), "clip_min"),  # type: ignore[arg-type]
        ("max_pool2d", lambda x, w: ops.max_pool2d(x, 2**62, pads=2**62 - 1), "below 2\\^31"),
        ("avg_pool2d", lambda x, w: ops.avg_pool2d(x, 2, ceil_mode=np.ones(2)), "ceil_mode"),  # type: ignore[arg-type]
    ],
)
def test_extreme_window_attributes_are_refused(op: str, call: object, match: str) -> None:
    # These overflowed int64 window arithmetic (a negative "dilated kernel" size in the message,
    # or a std::length_error leaking as ValueError), or leaked TypeError / ValueError.
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(InvalidRequestError, match=rf"^\[{op}\].*{match}"):
        call(x, w)  # type: ignore[operator]


def test_avg_pool_huge_kernel_is_fast() -> None:
    # 2^20 output columns of a 2^20-wide kernel: the divisor table used to count every tap of
    # every window (2^40 steps, effectively a hang); each window here covers the one real cell.
    x = np.full((1, 1, 1, 1), 3.0, np.float32)
    k = 1 << 20
    out = ops.avg_pool2d(x, (1, k), pads=(0, k - 1, 0, k - 1))
    assert out.shape == (1, 1, 1, k) and (out == 3.0).all()


def random_window_case(
    rng: np.random.Generator,
) -> tuple[str, tuple[object, ...], dict[str, object]]:
    """A conv2d or pooling call on small NCHW inputs with size-0 and size-1 dims, NaN and inf,
    and random (sometimes impossible) kernels, strides, pads, dilations and groups."""
    n, c, h, w = (int(rng.choice(d)) for d in ([0, 1, 2], [0, 1, 2, 4], [0, 1, 3, 6], [0, 1, 4, 7]))
    x = randn(rng, n, c, h, w)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.03] = np.inf
    window: dict[str, object] = {
        "strides": [int(s) for s in rng.integers(1, 3, 2)],
        "pads": [int(p) for p in rng.integers(0, 3, 4)],
        "dilations": [int(d) for d in rng.integers(1, 3, 2)],
    }
    kernel = [int(k) for k in rng.integers(1, 4, 2)]
    op = str(rng.choice(["conv2d", "max_pool2d", "avg_pool2d"]))
    if op == "conv2d":
        groups = int(rng.choice([g for g in (1, 2, max(c, 1)) if c % g == 0]))
        m = groups * int(rng.integers(0, 3))
        wt = randn(rng, m, c // groups, *kernel)
        window.update(groups=groups, activation=str(rng.choice(["none", "relu", "tanh"])))
        if rng.random() < 0.5:
            window["bias"] = randn(rng, m)
        return op, (x, wt), window
    window["ceil_mode"] = bool(rng.random() < 0.3)
    if op == "avg_pool2d":
        window["count_include_pad"] = bool(rng.random() < 0.5)
    return op, (x, kernel), window


def test_fuzz_matches_reference_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Either numpy's result (NaN where it has NaN) or an InvalidRequestError naming the op;
    never a crash or another exception type."""
    for _ in range(600):
        op, args, kw = random_window_case(rng)
        try:
            out = getattr(ops, op)(*args, **kw, threads=int(rng.integers(0, 4)))
        except InvalidRequestError as e:
            assert str(e).startswith(f"[{op}]")
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = getattr(ref, op)(*args, **kw)
        assert out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
