"""Image, sampling, loss, quantization, signal and other late ops of the graph compiler
(phi_engine.graph.ops: image, sampling, loss, quant, signal, numeric, detection, transformer,
text).

Each case builds a one-node ONNX model on random inputs, runs it compiled for "cpu" and for
"reference", and compares both with an independent numpy expectation (loops, closed forms or
DFT matrices, never the code under test). Tolerances: float32 results 1e-5 relative (the
references compute in float64), integer and gather results exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph import compile
from phi_test_models.onnx_nodes import NODE, Arg, Const, node_model

model = functools.partial(node_model, opset=22)


def run(
    op_type: str,
    args: list[Arg],
    attrs: dict[str, Any] | None = None,
    *,
    outputs: int = 1,
    opset: int = 22,
    native: bool | None = None,
    rtol: float = 1e-5,
) -> list[np.ndarray]:
    """Outputs on "cpu"; the "reference" device must agree (to ``rtol`` for floats)."""
    m = model(op_type, args, attrs, outputs=outputs, opset=opset)
    feeds = {f"x{i}": a for i, a in enumerate(args) if isinstance(a, np.ndarray)}
    cpu, ref = compile(m), compile(m, device="reference")
    got = [cpu.run(feeds)[f"y{j}"] for j in range(outputs)]
    want = [ref.run(feeds)[f"y{j}"] for j in range(outputs)]
    for g, w in zip(got, want, strict=True):
        close(g, w, rtol)
    if native is not None:
        program = cpu.program({k: v.shape for k, v in feeds.items()})
        assert (program.reference_nodes == []) is native, program.reference_nodes
    return got


def close(actual: np.ndarray, expected: Any, rtol: float = 1e-5) -> None:
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.dtype.kind == "f" and actual.dtype.itemsize >= 4:
        np.testing.assert_allclose(actual, expected.astype(actual.dtype), rtol=rtol, atol=rtol)
    else:
        np.testing.assert_array_equal(actual, expected.astype(actual.dtype))


def fails(
    op_type: str,
    args: list[Arg],
    attrs: dict[str, Any] | None = None,
    *,
    opset: int = 22,
    error: type[Exception] = InvalidRequestError,
    match: str = "",
) -> None:
    """Compiling and running must raise ``error`` naming the node."""
    feeds = {f"x{i}": a for i, a in enumerate(args) if isinstance(a, np.ndarray)}
    with pytest.raises(error, match=f"node '{NODE}'.*{match}"):
        compile(model(op_type, args, attrs, opset=opset), device="reference").run(feeds)


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---- losses ----------------------------------------------------------------------------------


def _nll(
    logp: np.ndarray, t: np.ndarray, w: np.ndarray | None, ignore: int | None, reduction: str
) -> np.ndarray:
    n, c = logp.shape[:2]
    lp = logp.reshape(n, c, -1)
    tt = t.reshape(n, -1)
    loss = np.zeros(tt.shape)
    weight = np.zeros(tt.shape)
    for i in range(n):
        for d in range(tt.shape[1]):
            k = int(tt[i, d])
            if k == ignore:
                continue
            weight[i, d] = 1.0 if w is None else w[k]
            loss[i, d] = -lp[i, k, d] * weight[i, d]
    if reduction == "none":
        return loss.reshape(t.shape)
    return np.array(loss.sum() if reduction == "sum" else loss.sum() / weight.sum())


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_negative_log_likelihood_loss(
    rng: np.random.Generator, reduction: str, weighted: bool
) -> None:
    x = f32(rng, 3, 5, 2, 4)
    t = rng.integers(0, 5, (3, 2, 4)).astype(np.int64)
    t[0, 0, :2] = 1
    w = rng.random(5).astype(np.float32) + 0.5 if weighted else None
    attrs = {"reduction": reduction, "ignore_index": 1}
    (y,) = run("NegativeLogLikelihoodLoss", [x, t, w], attrs)
    close(y, _nll(x.astype(np.float64), t, w, 1, reduction))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_softmax_cross_entropy_loss_with_log_prob(rng: np.random.Generator, reduction: str) -> None:
    x = f32(rng, 4, 6, 3)
    t = rng.integers(0, 6, (4, 3)).astype(np.int32)
    w = rng.random(6).astype(np.float32) + 0.5
    loss, logp = run(
        "SoftmaxCrossEntropyLoss", [x, t, w], {"reduction": reduction}, outputs=2, opset=13
    )
    x64 = x.astype(np.float64)
    want_logp = x64 - np.log(np.exp(x64).sum(axis=1, keepdims=True))
    close(logp, want_logp)
    close(loss, _nll(want_logp, t, w, None, reduction))


def test_loss_errors_name_the_node(rng: np.random.Generator) -> None:
    x = f32(rng, 2, 3)
    fails("NegativeLogLikelihoodLoss", [x, np.array([0, 7])], match="out of range")
    fails(
        "NegativeLogLikelihoodLoss", [x, np.array([0, 1])], {"reduction": "max"}, match="reduction"
    )


# ---- Resize ----------------------------------------------------------------------------------


def _resize_1d(
    v: np.ndarray, out: int, scale: float, mode: str, coord: str, a: float = -0.75
) -> np.ndarray:
    """A scalar-loop Resize of one row (ONNX Resize-19 formulas)."""
    n = v.size
    y = np.zeros(out)
    for o in range(out):
        if coord == "half_pixel":
            x = (o + 0.5) / scale - 0.5
        elif coord == "align_corners":  # length_resized is the real scale * n
            x = o * (n - 1) / (scale * n - 1) if scale * n != 1 else 0.0
        else:
            x = o / scale
        if mode == "nearest":  # round_prefer_floor
            k = math.floor(x) + (1 if x - math.floor(x) > 0.5 else 0)
            y[o] = v[min(max(k, 0), n - 1)]
            continue
        base, r = math.floor(x), x - math.floor(x)
        taps = (
            [(0, 1 - r), (1, r)]
            if mode == "linear"
            else [(k, _keys(abs(k - r), a)) for k in (-1, 0, 1, 2)]
        )
        y[o] = sum(w * v[min(max(base + k, 0), n - 1)] for k, w in taps)
    return y


def _keys(d: float, a: float) -> float:
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0


def _separable(x: np.ndarray, axes: dict[int, tuple[int, float]], **kw: Any) -> np.ndarray:
    y = x.astype(np.float64)
    for axis, (out, scale) in axes.items():
        y = np.apply_along_axis(lambda v, o=out, s=scale: _resize_1d(v, o, s, **kw), axis, y)
    return y


@pytest.mark.parametrize(
    ("mode", "coord", "scales"),
    [
        ("nearest", "asymmetric", (2.0, 3.0)),
        ("nearest", "half_pixel", (0.6, 1.7)),
        ("linear", "half_pixel", (2.0, 0.5)),
        ("linear", "align_corners", (1.5, 2.5)),
        ("cubic", "half_pixel", (1.75, 0.8)),
        ("cubic", "asymmetric", (2.0, 2.0)),
    ],
)
def test_resize_scales_float32_runs_native(
    rng: np.random.Generator, mode: str, coord: str, scales: tuple[float, float]
) -> None:
    x = f32(rng, 2, 3, 5, 6)
    s = np.array([1, 1, *scales], np.float32)
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    (y,) = run("Resize", [x, None, Const(s)], attrs, opset=19, native=True)
    out = [math.floor(d * float(f)) for d, f in zip(x.shape, s, strict=True)]
    want = _separable(
        x, {2: (out[2], float(s[2])), 3: (out[3], float(s[3]))}, mode=mode, coord=coord
    )
    close(y, want)


def test_resize_leading_axes_lower_natively(rng: np.random.Generator) -> None:
    # Axis 0 goes through a transpose + matmul, axis 1 a left matmul; int32 nearest gathers.
    x = f32(rng, 4, 6, 3)
    s = np.array([2.0, 0.5, 1.0], np.float32)
    (y,) = run("Resize", [x, None, Const(s)], {"mode": "linear"}, opset=19, native=True)
    close(y, _separable(x, {0: (8, 2.0), 1: (3, 0.5)}, mode="linear", coord="half_pixel"))
    xi = rng.integers(-50, 50, (3, 4)).astype(np.int32)
    (z,) = run("Resize", [xi, None, Const(np.array([1.5, 0.5], np.float32))], opset=19, native=True)
    close(z, _separable(xi, {0: (4, 1.5), 1: (2, 0.5)}, mode="nearest", coord="half_pixel"))


def test_resize_sizes_keep_aspect_ratio_and_axes(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 2, 4, 6)
    attrs = {"mode": "linear", "axes": [3, 2], "keep_aspect_ratio_policy": "not_larger"}
    (y,) = run("Resize", [x, None, None, Const(np.array([9, 10], np.int64))], attrs, opset=19)
    scale = min(9 / 6, 10 / 4)  # 1.5: the output is 6 x 9
    assert y.shape == (1, 2, 6, 9)
    want = _separable(x, {3: (9, scale), 2: (6, scale)}, mode="linear", coord="half_pixel")
    close(y, want)


def test_resize_uint8_rounds_half_to_even_and_nearest_gathers_any_dtype(
    rng: np.random.Generator,
) -> None:
    x = np.array([[[[0, 1, 255, 4]]]], np.uint8)
    scales = Const(np.array([1, 1, 1, 2], np.float32))
    (y,) = run("Resize", [x, None, scales], {"mode": "linear"}, opset=19)
    want = _separable(x, {3: (8, 2.0)}, mode="linear", coord="half_pixel")
    close(y, np.clip(np.round(want), 0, 255))
    s = np.array([["a", "b"], ["c", "d"]], dtype=object)
    (z,) = run(
        "Resize",
        [s, None, Const(np.array([2, 1.5], np.float32))],
        {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    )
    assert z.tolist() == [["a", "a", "b"], ["a", "a", "b"], ["c", "c", "d"], ["c", "c", "d"]]


def test_resize_tf_crop_and_resize_extrapolates(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 1, 4, 4)
    roi = Const(np.array([0, 0, -0.5, 0.25, 1, 1, 0.5, 1.5], np.float32))
    attrs = {
        "mode": "linear",
        "coordinate_transformation_mode": "tf_crop_and_resize",
        "extrapolation_value": 7.5,
    }
    (y,) = run("Resize", [x, roi, None, Const(np.array([1, 1, 3, 3], np.int64))], attrs, opset=19)
    for o in range(3):
        for p in range(3):
            r = -0.5 * 3 + o * 1.0 * 3 / 2
            c = 0.25 * 3 + p * 1.25 * 3 / 2
            if not (0 <= r <= 3 and 0 <= c <= 3):
                assert y[0, 0, o, p] == 7.5
                continue
            r0, c0 = min(int(r), 2), min(int(c), 2)
            a, b = r - r0, c - c0
            v = x[0, 0].astype(np.float64)
            want = (1 - a) * ((1 - b) * v[r0, c0] + b * v[r0, c0 + 1]) + a * (
                (1 - b) * v[r0 + 1, c0] + b * v[r0 + 1, c0 + 1]
            )
            np.testing.assert_allclose(y[0, 0, o, p], want, rtol=1e-5)


def test_resize_antialias_downsample_averages(rng: np.random.Generator) -> None:
    # Halving with antialias: the triangle filter stretched to 4 taps, weights 1/8, 3/8, 3/8, 1/8.
    x = f32(rng, 1, 12)
    attrs = {"mode": "linear", "antialias": 1}
    (y,) = run("Resize", [x, None, Const(np.array([1, 0.5], np.float32))], attrs, opset=19)
    v = np.pad(x[0].astype(np.float64), 1, mode="edge")
    want = [
        v[2 * o] / 8 + 3 * v[2 * o + 1] / 8 + 3 * v[2 * o + 2] / 8 + v[2 * o + 3] / 8
        for o in range(6)
    ]
    close(y, np.array([want]))


def test_resize_infers_symbolic_shapes() -> None:
    x = np.zeros((2, 3, 4, 5), np.float32)
    m = model(
        "Resize",
        [x, None, Const(np.array([1, 1, 2, 0.5], np.float32))],
        shapes={0: ["batch", 3, "h", 5]},
        opset=19,
    )
    shape = compile(m).outputs["y0"].shape
    assert shape is not None and shape[0] == "batch" and shape[1:2] == (3,) and shape[3] == 2
    assert isinstance(shape[2], str)


def test_upsample_nearest_repeats(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 2, 3, 2)
    (y,) = run("Upsample", [x, Const(np.array([1, 1, 2, 3], np.float32))], opset=9, native=True)
    close(y, x.repeat(2, axis=2).repeat(3, axis=3))


def test_resize_errors_name_the_node(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 1, 2, 2)
    both = [x, None, Const(np.ones(4, np.float32)), Const(np.full(4, 2, np.int64))]
    fails("Resize", both, opset=19, match="exactly one of scales and sizes")
    fails(
        "Resize",
        [x, None, Const(np.ones(4, np.float32))],
        {"mode": "nearest", "antialias": 1},
        opset=19,
        match="antialias",
    )
    fails(
        "Resize",
        [x, None, Const(np.ones(4, np.float32))],
        {"mode": "area"},
        opset=19,
        error=UnsupportedError,
        match="mode",
    )


# ---- GridSample, AffineGrid, RoiAlign ---------------------------------------------------------


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    """Zero-padded bilinear sample of a 2-D image at pixel coordinates (y, x)."""
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for dy, wy in ((0, 1 - (y - y0)), (1, y - y0)):
        for dx, wx in ((0, 1 - (x - x0)), (1, x - x0)):
            r, c = y0 + dy, x0 + dx
            if 0 <= r < img.shape[0] and 0 <= c < img.shape[1]:
                total += wy * wx * float(img[r, c])
    return total


@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_bilinear_zeros(rng: np.random.Generator, align: int) -> None:
    x = f32(rng, 2, 3, 4, 5)
    grid = (rng.random((2, 3, 6, 2)) * 2.6 - 1.3).astype(np.float32)
    (y,) = run("GridSample", [x, grid], {"align_corners": align})
    for n in range(2):
        for i in range(3):
            for j in range(6):
                gx, gy = grid[n, i, j].astype(np.float64)
                if align:
                    px, py = (gx + 1) / 2 * 4, (gy + 1) / 2 * 3
                else:
                    px, py = ((gx + 1) * 5 - 1) / 2, ((gy + 1) * 4 - 1) / 2
                for c in range(3):
                    np.testing.assert_allclose(
                        y[n, c, i, j], _bilinear(x[n, c], py, px), rtol=1e-5, atol=1e-6
                    )


def test_grid_sample_nearest_border_on_integers() -> None:
    x = np.arange(12, dtype=np.int32).reshape(1, 1, 3, 4)
    grid = np.array([[[[-1, -1], [1, 1], [3, -3], [0.0, 0.0]]]], np.float32)
    (y,) = run(
        "GridSample", [x, grid], {"mode": "nearest", "padding_mode": "border", "align_corners": 1}
    )
    assert y.tolist() == [[[[0, 11, 3, 6]]]]  # (0, 0), (2, 3), clamped (0, 3), (1, 1.5 -> 2)


def test_affine_grid_identity_is_the_base_grid() -> None:
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
    (grid,) = run(
        "AffineGrid",
        [theta, Const(np.array([1, 1, 2, 3], np.int64))],
        {"align_corners": 0},
        opset=20,
    )
    xs, ys = np.array([-2, 0, 2]) / 3, np.array([-1, 1]) / 2
    close(grid, np.stack(np.meshgrid(xs, ys), axis=-1)[None])


def test_roi_align_average_of_a_ramp_is_the_bin_centre() -> None:
    # Bilinear sampling is exact on a linear ramp and samples are symmetric in each bin.
    h, w = 10, 12
    yy, xx = np.mgrid[0:h, 0:w]
    x = (2 * yy + 3 * xx).astype(np.float32)[None, None]
    rois = np.array([[1.0, 2.0, 7.0, 6.0], [2.5, 1.5, 9.5, 8.5]], np.float32)
    (y,) = run(
        "RoiAlign",
        [x, rois, np.zeros(2, np.int64)],
        {"output_height": 2, "output_width": 3, "sampling_ratio": 2},
    )
    for k, (x0, y0, x1, y1) in enumerate(rois.astype(np.float64) - 0.5):
        for i in range(2):
            for j in range(3):
                cy = y0 + (i + 0.5) * (y1 - y0) / 2
                cx = x0 + (j + 0.5) * (x1 - x0) / 3
                np.testing.assert_allclose(y[k, 0, i, j], 2 * cy + 3 * cx, rtol=1e-5)


# ---- CenterCropPad, Col2Im, MaxUnpool -----------------------------------------------------------


def test_center_crop_pad(rng: np.random.Generator) -> None:
    x = f32(rng, 5, 4, 3)
    (y,) = run("CenterCropPad", [x, Const(np.array([2, 7], np.int64))], {"axes": [0, -2]}, opset=18)
    want = np.zeros((2, 7, 3), np.float32)
    want[:, 1:5] = x[1:3]
    close(y, want)


def test_col2im_sums_overlapping_blocks(rng: np.random.Generator) -> None:
    image, block, stride, pad, dil = (5, 6), (2, 3), (1, 2), (1, 0, 0, 1), (2, 1)
    counts = [
        (image[i] + pad[i] + pad[i + 2] - dil[i] * (block[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    ]
    x = f32(rng, 2, 3 * 6, counts[0] * counts[1])
    attrs = {"strides": list(stride), "pads": list(pad), "dilations": list(dil)}
    (y,) = run("Col2Im", [x, Const(np.array(image)), Const(np.array(block))], attrs, opset=18)
    want = np.zeros((2, 3, *image))
    for c in range(3):
        for ki in range(2):
            for kj in range(3):
                row = (c * 2 + ki) * 3 + kj
                for bi in range(counts[0]):
                    for bj in range(counts[1]):
                        r = bi * stride[0] - pad[0] + ki * dil[0]
                        q = bj * stride[1] - pad[1] + kj * dil[1]
                        if 0 <= r < image[0] and 0 <= q < image[1]:
                            want[:, c, r, q] += x[:, row, bi * counts[1] + bj]
    close(y, want)


def test_max_unpool_scatters_pool_indices(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 2, 4, 4)
    pooled = x.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))
    flat = x.reshape(-1)
    index = np.array([np.flatnonzero(flat == v)[0] for v in pooled.reshape(-1)], np.int64)
    (y,) = run(
        "MaxUnpool",
        [pooled, index.reshape(pooled.shape)],
        {"kernel_shape": [2, 2], "strides": [2, 2]},
    )
    want = np.zeros(flat.size, np.float32)
    want[index] = pooled.reshape(-1)
    close(y, want.reshape(x.shape))


# ---- quantization -------------------------------------------------------------------------------


def test_quantize_linear_per_axis_uint8_rounds_half_to_even(rng: np.random.Generator) -> None:
    x = np.array([[0.5, 1.5, 2.5, -300.0], [3.0, 4.5, 1000.0, -1.0]], np.float32)
    scale, zp = np.array([1.0, 0.5], np.float32), np.array([10, 0], np.uint8)
    (y,) = run("QuantizeLinear", [x, scale, zp], {"axis": 0}, opset=21)
    assert y.dtype == np.uint8
    assert y.tolist() == [[10, 12, 12, 0], [6, 9, 255, 0]]


def test_quantize_linear_blocked_int4_and_dequantize_back(rng: np.random.Generator) -> None:
    x = f32(rng, 2, 7)
    scale = (rng.random((2, 3)) + 0.1).astype(np.float32)
    zp = np.array(
        [[1, -2, 0], [3, 0, -1]], dtype=onnx.helper.tensor_dtype_to_np_dtype(TensorProto.INT4)
    )
    attrs = {"axis": 1, "block_size": 3}
    (q,) = run("QuantizeLinear", [x, scale, zp], attrs, opset=21)
    s = np.repeat(scale, 3, axis=1)[:, :7].astype(np.float64)
    z = np.repeat(zp.astype(np.int64), 3, axis=1)[:, :7]
    want = np.clip(np.rint(x / s) + z, -8, 7)
    close(q.astype(np.int64), want)
    (d,) = run("DequantizeLinear", [q, scale, zp], attrs, opset=21)
    close(d, (want - z) * s)


def test_quantize_float8_saturates(rng: np.random.Generator) -> None:
    x = np.array([1.0, 500.0, -1e6, 0.3], np.float32)
    zp = np.zeros(1, dtype=onnx.helper.tensor_dtype_to_np_dtype(TensorProto.FLOAT8E4M3FN))
    (y,) = run("QuantizeLinear", [x, np.array(1.0, np.float32), zp.reshape(())], opset=21)
    assert y.astype(np.float32).tolist() == [1.0, 448.0, -448.0, 0.3125]


def test_dynamic_quantize_linear(rng: np.random.Generator) -> None:
    x = f32(rng, 3, 4) * 3
    y, scale, zp = run("DynamicQuantizeLinear", [x], outputs=3, opset=11)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    want_scale = np.float32((hi - lo) / 255)
    np.testing.assert_allclose(scale, want_scale, rtol=1e-6)
    assert int(zp) == round(-lo / float(want_scale))
    close(y, np.clip(np.rint(x / scale) + zp.astype(np.int64), 0, 255))


def test_matmul_integer_per_row_zero_point(rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, (3, 4)).astype(np.uint8)
    b = rng.integers(-128, 128, (4, 5)).astype(np.int8)
    azp = np.array([1, 200, 7], np.uint8)
    bzp = np.array(3, np.int8)
    (y,) = run("MatMulInteger", [a, b, azp, bzp], opset=10)
    assert y.dtype == np.int32
    close(y, (a.astype(np.int64) - azp[:, None]) @ (b.astype(np.int64) - 3))


def test_qlinear_matmul(rng: np.random.Generator) -> None:
    a = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    b = rng.integers(0, 256, (4, 5)).astype(np.uint8)
    args = [
        a,
        np.array(0.02, np.float32),
        np.array(120, np.uint8),
        b,
        np.array(0.01, np.float32),
        np.array(130, np.uint8),
        np.array(0.05, np.float32),
        np.array(100, np.uint8),
    ]
    (y,) = run("QLinearMatMul", args, opset=21)
    acc = (a.astype(np.int64) - 120) @ (b.astype(np.int64) - 130)
    mult = float(np.float32(np.float32(0.02) * np.float32(0.01) / np.float32(0.05)))
    close(y, np.clip(np.rint(acc * mult) + 100, 0, 255))


def _conv2d(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = xp.shape
    m, _, kh, kw = w.shape
    out = np.zeros((n, m, h - kh + 1, wd - kw + 1), np.int64)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = np.einsum("nckl,mckl->nm", xp[:, :, i : i + kh, j : j + kw], w)
    return out


def test_conv_integer_and_qlinear_conv(rng: np.random.Generator) -> None:
    x = rng.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
    w = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    wzp = np.array([0, 2, -1], np.int8)
    (y,) = run("ConvInteger", [x, w, np.array(5, np.uint8), wzp], {"pads": [1, 1, 1, 1]}, opset=10)
    acc = _conv2d(x.astype(np.int64) - 5, w.astype(np.int64) - wzp[:, None, None, None], 1)
    close(y, acc)
    bias = np.array([100, -50, 7], np.int32)
    w_scale = np.array([0.01, 0.02, 0.005], np.float32)
    args = [
        x,
        np.array(0.1, np.float32),
        np.array(5, np.uint8),
        w,
        w_scale,
        wzp,
        np.array(0.5, np.float32),
        np.array(128, np.uint8),
        bias,
    ]
    (q,) = run("QLinearConv", args, {"pads": [1, 1, 1, 1]}, opset=10)
    mult = (np.float32(0.1) * w_scale / np.float32(0.5)).astype(np.float64)
    want = np.rint((acc + bias[None, :, None, None]) * mult[None, :, None, None]) + 128
    close(q, np.clip(want, 0, 255))


def test_quant_errors_name_the_node(rng: np.random.Generator) -> None:
    x = f32(rng, 2, 3)
    fails("QuantizeLinear", [x, np.ones(4, np.float32)], {"axis": 1}, opset=21, match="per-axis")
    fails(
        "QuantizeLinear",
        [x, np.ones((2, 2), np.float32)],
        {"axis": 1, "block_size": 1},
        opset=21,
        match="does not block",
    )


# ---- signal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("periodic", [0, 1])
def test_windows(periodic: int) -> None:
    n = 9
    period = n if periodic else n - 1
    k = np.arange(n)
    c = np.cos(2 * np.pi * k / period)
    c2 = np.cos(4 * np.pi * k / period)
    for op_type, want in (
        ("HannWindow", 0.5 - 0.5 * c),
        ("HammingWindow", 25 / 46 - 21 / 46 * c),
        ("BlackmanWindow", 0.42 - 0.5 * c + 0.08 * c2),
    ):
        (y,) = run(op_type, [Const(np.array(n, np.int64))], {"periodic": periodic}, opset=17)
        close(y, want, rtol=1e-6)


def _dft_matrix(n_out: int, n_in: int, sign: float) -> np.ndarray:
    k, t = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    return np.exp(sign * 2j * np.pi * k * t / max(n_out, n_in))


def test_dft_forward_inverse_and_onesided(rng: np.random.Generator) -> None:
    z = rng.standard_normal((2, 6, 3)) + 1j * rng.standard_normal((2, 6, 3))
    x = np.stack([z.real, z.imag], -1)
    (y,) = run("DFT", [x, None, Const(np.array(1, np.int64))], opset=20)
    want = np.einsum("kt,btc->bkc", _dft_matrix(6, 6, -1), z)
    close(y, np.stack([want.real, want.imag], -1))
    (inv,) = run(
        "DFT",
        [x, Const(np.array(8, np.int64)), Const(np.array(-3, np.int64))],
        {"inverse": 1},
        opset=20,
    )
    zp = np.concatenate([z, np.zeros((2, 2, 3))], axis=1)
    want = np.einsum("kt,btc->bkc", _dft_matrix(8, 8, 1), zp) / 8
    close(inv, np.stack([want.real, want.imag], -1))
    r = rng.standard_normal((2, 7, 1))
    (half,) = run("DFT", [r, None, Const(np.array(1, np.int64))], {"onesided": 1}, opset=20)
    want = np.einsum("kt,bt->bk", _dft_matrix(7, 7, -1), r[..., 0])[:, :4]
    close(half, np.stack([want.real, want.imag], -1))


def test_stft_with_window(rng: np.random.Generator) -> None:
    signal = rng.standard_normal((2, 20, 1))
    window = rng.random(8)
    (y,) = run("STFT", [signal, Const(np.array(3, np.int64)), window], opset=17)
    frames = (20 - 8) // 3 + 1
    want = np.zeros((2, frames, 5), complex)
    for f in range(frames):
        seg = signal[:, f * 3 : f * 3 + 8, 0] * window
        want[:, f] = np.einsum("kt,bt->bk", _dft_matrix(8, 8, -1), seg)[:, :5]
    close(y, np.stack([want.real, want.imag], -1))


def test_mel_weight_matrix_triangles_peak_at_one() -> None:
    args = [Const(np.array(v, np.int64)) for v in (8, 64, 8000)] + [
        Const(np.array(v, np.float32)) for v in (0.0, 4000.0)
    ]
    (y,) = run("MelWeightMatrix", args, opset=17)
    assert y.shape == (33, 8)
    assert np.all((y >= 0) & (y <= 1)) and np.allclose(y.max(axis=0), 1)
    peaks = y.argmax(axis=0)
    assert np.all(np.diff(peaks) > 0)  # mel-spaced centres increase


# ---- numeric, detection, transformer, text ------------------------------------------------------


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod(rng: np.random.Generator, exclusive: int, reverse: int) -> None:
    x = rng.integers(-3, 4, (3, 5)).astype(np.int64)
    (y,) = run(
        "CumProd",
        [x, Const(np.array(-1, np.int32))],
        {"exclusive": exclusive, "reverse": reverse},
        opset=26,
    )
    want = np.ones_like(x)
    for i in range(3):
        for j in range(5):
            span = range(j + 1, 5) if reverse else range(j)
            k = list(span) + ([] if exclusive else [j])
            want[i, j] = np.prod(x[i, k]) if k else 1
    close(y, want)


def test_det(rng: np.random.Generator) -> None:
    x = f32(rng, 4, 2, 2)
    (y,) = run("Det", [x])
    close(y, x[:, 0, 0].astype(np.float64) * x[:, 1, 1] - x[:, 0, 1] * x[:, 1, 0])
    fails("Det", [f32(rng, 2, 3)], match="square")


def test_non_max_suppression() -> None:
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3], [0, 0, 0.5, 0.5]]], np.float32)
    scores = np.array([[[0.9, 0.95, 0.5, 0.8], [0.1, 0.2, 0.3, 0.05]]], np.float32)
    args = [
        boxes,
        scores,
        Const(np.array(2, np.int64)),
        Const(np.array(0.5, np.float32)),
        Const(np.array(0.15, np.float32)),
    ]
    (y,) = run("NonMaxSuppression", args, opset=11)
    # class 0: box 1 wins, box 0 overlaps it (IoU 0.82), box 3 (IoU 0.19) is next; class 1:
    # box 2 then box 1 (0.2 > 0.15), box 0 and 3 are below the score threshold.
    assert y.tolist() == [[0, 0, 1], [0, 0, 3], [0, 1, 2], [0, 1, 1]]


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding(rng: np.random.Generator, interleaved: int) -> None:
    x = f32(rng, 2, 3, 5, 8)  # (batch, heads, seq, head_size)
    pos = rng.integers(0, 10, (2, 5)).astype(np.int64)
    angles = rng.random((10, 3)) * 6
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    (y,) = run(
        "RotaryEmbedding",
        [x, cos, sin, pos],
        {"interleaved": interleaved, "rotary_embedding_dim": 6},
        opset=23,
    )
    rot = x[..., :6].astype(np.float64)
    pairs = (
        (rot[..., 0::2] + 1j * rot[..., 1::2])
        if interleaved
        else (rot[..., :3] + 1j * rot[..., 3:])
    )
    turned = pairs * np.exp(1j * angles[pos])[:, None]
    if interleaved:
        out = np.stack([turned.real, turned.imag], -1).reshape(rot.shape)
    else:
        out = np.concatenate([turned.real, turned.imag], -1)
    close(y, np.concatenate([out, x[..., 6:]], -1))


def test_swiglu(rng: np.random.Generator) -> None:
    a, b = f32(rng, 3, 4), f32(rng, 3, 4)
    (y,) = run("SwiGLU", [a, b], {"alpha": 1.5}, opset=28)
    a64 = a.astype(np.float64)
    close(y, a64 / (1 + np.exp(-1.5 * a64)) * b)


def test_tfidf_vectorizer_counts_skip_grams() -> None:
    x = np.array([[1, 2, 3, 2, 3], [3, 1, 1, 2, 9]], np.int64)
    attrs = {
        "mode": "TF",
        "min_gram_length": 1,
        "max_gram_length": 2,
        "max_skip_count": 1,
        "ngram_counts": [0, 2],
        "ngram_indexes": [0, 1, 2, 3],
        "pool_int64s": [2, 3, 2, 3, 1, 2],
    }
    (y,) = run("TfIdfVectorizer", [x], attrs, opset=9)
    # unigrams 2, 3; bigrams (2, 3) and (1, 2), adjacent or one apart.
    assert y.tolist() == [[2, 2, 2, 1], [1, 1, 0, 2]]


# ---- recurrent --------------------------------------------------------------------------------


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def test_lstm_with_peepholes_and_sequence_lengths(rng: np.random.Generator) -> None:
    seq, batch, inp, hid = 4, 3, 2, 5
    x = f32(rng, seq, batch, inp)
    w, r = f32(rng, 1, 4 * hid, inp) * 0.5, f32(rng, 1, 4 * hid, hid) * 0.5
    b, p = f32(rng, 1, 8 * hid) * 0.5, f32(rng, 1, 3 * hid) * 0.5
    lens = np.array([4, 2, 1], np.int32)
    h0, c0 = f32(rng, 1, batch, hid), f32(rng, 1, batch, hid)
    y, yh, yc = run("LSTM", [x, w, r, b, lens, h0, c0, p], {"hidden_size": hid}, outputs=3)
    want = np.zeros((seq, 1, batch, hid))
    for n in range(batch):
        h, c = h0[0, n].astype(np.float64), c0[0, n].astype(np.float64)
        for t in range(lens[n]):
            g = w[0] @ x[t, n] + r[0] @ h + b[0, : 4 * hid] + b[0, 4 * hid :]
            gi, go, gf, gc = np.split(g, 4)
            i = _sigmoid(gi + p[0, :hid] * c)
            f = _sigmoid(gf + p[0, 2 * hid :] * c)
            c = f * c + i * np.tanh(gc)
            h = _sigmoid(go + p[0, hid : 2 * hid] * c) * np.tanh(c)
            want[t, 0, n] = h
        np.testing.assert_allclose(yh[0, n], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(yc[0, n], c, rtol=1e-5, atol=1e-6)
    close(y, want)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_reverse_batch_first(rng: np.random.Generator, linear_before_reset: int) -> None:
    batch, seq, inp, hid = 2, 3, 4, 3
    x = f32(rng, batch, seq, inp)
    w, r, b = f32(rng, 1, 3 * hid, inp), f32(rng, 1, 3 * hid, hid), f32(rng, 1, 6 * hid)
    attrs = {
        "hidden_size": hid,
        "direction": "reverse",
        "layout": 1,
        "linear_before_reset": linear_before_reset,
    }
    y, yh = run("GRU", [x, w, r, b], attrs, outputs=2)
    wz, wr, wh = np.split(w[0].astype(np.float64), 3)
    rz, rr, rh = np.split(r[0].astype(np.float64), 3)
    bz, br, bh, cz, cr, ch = np.split(b[0].astype(np.float64), 6)
    for n in range(batch):
        h = np.zeros(hid)
        for t in reversed(range(seq)):
            z = _sigmoid(wz @ x[n, t] + rz @ h + bz + cz)
            reset = _sigmoid(wr @ x[n, t] + rr @ h + br + cr)
            if linear_before_reset:
                cand = np.tanh(wh @ x[n, t] + reset * (rh @ h + ch) + bh)
            else:
                cand = np.tanh(wh @ x[n, t] + rh @ (reset * h) + ch + bh)
            h = (1 - z) * cand + z * h
            np.testing.assert_allclose(y[n, t, 0], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(yh[n, 0], h, rtol=1e-5, atol=1e-6)


def test_rnn_bidirectional_with_clip_and_activations(rng: np.random.Generator) -> None:
    seq, batch, inp, hid = 3, 2, 3, 4
    x = f32(rng, seq, batch, inp)
    w, r = f32(rng, 2, hid, inp), f32(rng, 2, hid, hid)
    attrs = {
        "hidden_size": hid,
        "direction": "bidirectional",
        "clip": 0.5,
        "activations": ["LeakyRelu", "Affine"],
        "activation_alpha": [0.2, 3.0],
        "activation_beta": [1.5],
    }
    (y,) = run("RNN", [x, w, r], attrs)
    acts = [lambda v: np.where(v >= 0, v, 0.2 * v), lambda v: 3.0 * v + 1.5]
    for d, steps in ((0, range(seq)), (1, reversed(range(seq)))):
        h = np.zeros((batch, hid))
        for t in steps:
            h = acts[d](np.clip(x[t] @ w[d].T + h @ r[d].T, -0.5, 0.5))
            close(y[t, d], h)


def test_recurrent_errors_name_the_node(rng: np.random.Generator) -> None:
    x, w, r = f32(rng, 2, 1, 3), f32(rng, 1, 4, 3), f32(rng, 1, 4, 4)
    fails(
        "RNN",
        [x, w, r],
        {"hidden_size": 4, "activations": ["Gelu"]},
        error=UnsupportedError,
        match="activation",
    )
    fails("RNN", [x, w, r], {"direction": "sideways"}, match="direction")


# ---- DeformConv, TensorScatter, BitCast ------------------------------------------------------


def test_deform_conv_with_zero_offsets_is_conv(rng: np.random.Generator) -> None:
    x, w = f32(rng, 1, 4, 5, 5), f32(rng, 2, 2, 3, 3)
    offset = np.zeros((1, 2 * 9 * 2, 5, 5), np.float32)
    mask = rng.random((1, 2 * 9, 5, 5)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1], "group": 2, "offset_group": 2}
    (y,) = run("DeformConv", [x, w, offset, None, mask], attrs)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    m = mask.reshape(2, 3, 3, 5, 5)
    want = np.zeros((1, 2, 5, 5))
    for o in range(2):
        for ci in range(2):
            c = o * 2 + ci
            for i in range(3):
                for j in range(3):
                    want[0, o] += w[o, ci, i, j] * xp[0, c, i : i + 5, j : j + 5] * m[c // 2, i, j]
    close(y, want)


def test_deform_conv_half_pixel_offset_averages_neighbours(rng: np.random.Generator) -> None:
    x = f32(rng, 1, 1, 4, 4)
    w = np.ones((1, 1, 1, 1), np.float32)
    offset = np.zeros((1, 2, 4, 4), np.float32)
    offset[0, 1] = 0.5  # every tap half a pixel to the right; the last column reads zeros
    (y,) = run("DeformConv", [x, w, offset])
    right = np.concatenate([x[..., 1:], np.zeros((1, 1, 4, 1), np.float32)], axis=3)
    close(y, (x.astype(np.float64) + right) / 2)


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(rng: np.random.Generator, mode: str) -> None:
    past, update = f32(rng, 2, 3, 6, 4), f32(rng, 2, 3, 3, 4)
    index = np.array([1, 3 if mode == "linear" else 5], np.int64)
    (y,) = run("TensorScatter", [past, update, index], {"mode": mode}, opset=24)
    want = past.copy()
    for b in range(2):
        for s in range(3):
            want[b, :, (index[b] + s) % 6] = update[b, :, s]
    close(y, want)
    fails("TensorScatter", [past, update, np.array([4, 0], np.int64)], opset=24, match="exceed")


def test_bitcast(rng: np.random.Generator) -> None:
    x = f32(rng, 2, 3)
    (y,) = run("BitCast", [x], {"to": TensorProto.INT32}, opset=26)
    close(y, x.view(np.int32))
    (z,) = run("BitCast", [np.array(1.5, np.float16)], {"to": TensorProto.UINT16}, opset=26)
    assert z.shape == () and int(z) == 0x3E00
    fails("BitCast", [x], {"to": TensorProto.INT64}, opset=26, match="bits")


# ---- LinearAttention, CausalConvWithState ------------------------------------------------------


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention_recurrence(rng: np.random.Generator, rule: str) -> None:
    b, t, hq, hkv, dk, dv = 2, 3, 4, 2, 3, 2
    q, k, v = f32(rng, b, t, hq * dk), f32(rng, b, t, hkv * dk), f32(rng, b, t, hkv * dv)
    past = f32(rng, b, hkv, dk, dv)
    decay = -rng.random((b, t, hkv * dk)).astype(np.float32) if "gated" in rule else None
    beta = rng.random((b, t, hkv)).astype(np.float32) if "delta" in rule else None
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv, "update_rule": rule}
    y, state = run("LinearAttention", [q, k, v, past, decay, beta], attrs, outputs=2, opset=27)
    want_y = np.zeros((b, t, hq, dv))
    want_s = past.astype(np.float64).copy()
    for n in range(b):
        for h in range(hkv):
            s = want_s[n, h]
            for step in range(t):
                kt = k[n, step, h * dk : (h + 1) * dk].astype(np.float64)
                vt = v[n, step, h * dv : (h + 1) * dv].astype(np.float64)
                if decay is not None:
                    s = np.exp(decay[n, step, h * dk : (h + 1) * dk])[:, None] * s
                if beta is not None:
                    vt = beta[n, step, h] * (vt - s.T @ kt)
                s = s + np.outer(kt, vt)
                for g in range(2):
                    hh = h * 2 + g
                    want_y[n, step, hh] = s.T @ q[n, step, hh * dk : (hh + 1) * dk] / np.sqrt(dk)
            want_s[n, h] = s
    close(y, want_y.reshape(b, t, hq * dv))
    close(state, want_s)


def test_causal_conv_with_state(rng: np.random.Generator) -> None:
    x, w, bias, past = f32(rng, 2, 3, 5), f32(rng, 3, 1, 4), f32(rng, 3), f32(rng, 2, 3, 3)
    y, state = run(
        "CausalConvWithState", [x, w, bias, past], {"activation": "silu"}, outputs=2, opset=27
    )
    seq = np.concatenate([past, x], axis=2).astype(np.float64)
    want = np.zeros((2, 3, 5))
    for t in range(5):
        want[:, :, t] = (seq[:, :, t : t + 4] * w[:, 0]).sum(axis=2) + bias
    close(y, want / (1 + np.exp(-want)))
    close(state, seq[:, :, -3:])


# ---- strings ------------------------------------------------------------------------------------


def _s(*values: str) -> np.ndarray:
    return np.array(values, dtype=object)


def test_string_ops() -> None:
    (z,) = run("StringConcat", [_s("a", "bé"), _s("!")], opset=20)
    assert z.tolist() == ["a!", "bé!"]
    (m,) = run("RegexFullMatch", [_s("ab12", "ab", "X12")], {"pattern": r"[a-z]+\d+"}, opset=20)
    assert m.tolist() == [True, False, False]
    parts, counts = run(
        "StringSplit", [_s("a,,b", "c", "")], {"delimiter": ","}, outputs=2, opset=20
    )
    assert parts.tolist() == [["a", "", "b"], ["c", "", ""], ["", "", ""]]
    assert counts.tolist() == [3, 1, 1]
    parts, counts = run("StringSplit", [_s(" a  b c ")], {"maxsplit": 1}, outputs=2, opset=20)
    assert parts.tolist() == [["a", "b c "]] and counts.tolist() == [2]
    attrs = {"stopwords": ["the"], "case_change_action": "UPPER"}
    (n,) = run("StringNormalizer", [_s("The", "cat", "THE")[None]], attrs, opset=10)
    assert n.tolist() == [["CAT"]]
    (e,) = run("StringNormalizer", [_s("the")], {"stopwords": ["the"]}, opset=10)
    assert e.tolist() == [""]
    fails(
        "RegexFullMatch",
        [_s("a")],
        {"pattern": "("},
        opset=20,
        error=UnsupportedError,
        match="pattern",
    )
