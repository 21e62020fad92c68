"""Signal-processing ops: the Hann, Hamming and Blackman windows, DFT, STFT and MelWeightMatrix.

Complex tensors are ONNX-style real tensors whose last axis holds (real, imaginary), or only the
real part (size 1). Transforms run numpy's FFT in the input's precision (complex128 for float64,
complex64 otherwise, as ONNX Runtime and the conformance data do); windows compute in float64 and
cast to ``output_datatype``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.errors import UnsupportedError
from phi_engine.graph.ir import Dim, TensorType
from phi_engine.graph.ops._nn_util import fresh, is_float
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import onnx_dtype, tt
from phi_engine.graph.registry import InferContext, OpContext, op

_INDEX = frozenset({"int32", "int64"})
_WINDOW_DTYPES = frozenset(
    {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"}
    | {"float16", "float32", "float64", "bfloat16"}
)


def _scalar(ctx: OpContext, value: Any, what: str) -> int:
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in "iu":
        ctx.fail(f"{what} must be an integer scalar, got {a.dtype.name}{list(a.shape)}")
    return int(a.reshape(-1)[0])


def _known_scalar(ctx: InferContext, i: int, what: str) -> int | None:
    value = ctx.value(i) if ctx.has(i) else None
    return None if value is None else _scalar(ctx, value, what)


def _check_index(ctx: InferContext, *indices: int) -> None:
    for i in indices:
        if ctx.has(i) and ctx.type(i).dtype.name not in _INDEX:
            ctx.fail(f"input {i} must be int32 or int64, got {ctx.type(i).dtype.name}")


# ---- windows -------------------------------------------------------------------------------------


def _window_dtype(ctx: OpContext) -> np.dtype[Any]:
    dtype = onnx_dtype(int(ctx.attr("output_datatype", 1)))
    if dtype.name not in _WINDOW_DTYPES:
        ctx.fail(f"output_datatype {dtype.name} is not supported", UnsupportedError)
    return dtype


def _window_infer(ctx: InferContext) -> list[TensorType]:
    _check_index(ctx, 0)
    size = _known_scalar(ctx, 0, "size")
    if size is not None and size < 0:
        ctx.fail(f"size {size} must be non-negative")
    return [tt(_window_dtype(ctx), (fresh(ctx, "size") if size is None else size,))]


def _cosine_window(ctx: OpContext, x: list[Any], coefficients: tuple[float, ...]) -> np.ndarray:
    """``sum_k (-1)**k a_k cos(2 pi k n / N)``, N = size (periodic) or size - 1 (symmetric)."""
    size = _scalar(ctx, x[0], "size")
    if size < 0:
        ctx.fail(f"size {size} must be non-negative")
    period = size if int(ctx.attr("periodic", 1)) else size - 1
    if period == 0:  # a one-point symmetric window: 0 / 0 in the formula; [1] as in torch
        return np.ones(size, _window_dtype(ctx))
    phase = 2 * np.pi * np.arange(size, dtype=np.float64) / period
    w = sum((-1) ** k * a * np.cos(k * phase) for k, a in enumerate(coefficients))
    return np.asarray(w, np.float64).astype(_window_dtype(ctx))


@op("HannWindow", (17,), infer=_window_infer)
def hann_window(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_cosine_window(ctx, x, (0.5, 0.5))]


@op("HammingWindow", (17,), infer=_window_infer)
def hamming_window(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_cosine_window(ctx, x, (25 / 46, 21 / 46))]


@op("BlackmanWindow", (17,), infer=_window_infer)
def blackman_window(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [_cosine_window(ctx, x, (0.42, 0.5, 0.08))]


# ---- DFT -----------------------------------------------------------------------------------------


def _complex(ctx: OpContext, x: np.ndarray) -> np.ndarray:
    """An ONNX complex tensor (last axis 1 or 2) without that axis, as complex128 for float64
    and complex64 otherwise (numpy's FFT keeps single precision)."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        ctx.fail(f"input of shape {list(x.shape)} must end in 1 (real) or 2 (complex)")
    ct = np.complex128 if x.dtype == np.float64 else np.complex64
    f = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    z = np.empty(x.shape[:-1], ct)
    z.real = f[..., 0]
    z.imag = f[..., 1] if x.shape[-1] == 2 else 0
    return z


def _split(z: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _dft_axis(ctx: OpContext, value: Any, rank: int) -> int:
    axis = int(ctx.attr("axis", 1)) if ctx.version < 20 else -2
    if ctx.version >= 20 and value is not None:
        axis = _scalar(ctx, value, "axis")
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        ctx.fail(f"axis {axis} must be in [-{rank}, -2] or [0, {rank - 2}]")
    return axis % rank


def _dft_flags(ctx: OpContext) -> tuple[bool, bool]:
    return bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))


def _dft_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype):
        ctx.fail(f"input must be a float tensor, got {x.dtype.name}")
    _check_index(ctx, 1, 2)
    inverse, onesided = _dft_flags(ctx)
    if x.shape is None:
        return [tt(x.dtype, None)]
    rank = len(x.shape)
    if ctx.version >= 20 and ctx.has(2) and ctx.value(2) is None:
        return [tt(x.dtype, [fresh(ctx, i) for i in range(rank)])]
    axis = _dft_axis(ctx, ctx.value(2) if ctx.version >= 20 and ctx.has(2) else None, rank)
    length: Dim | None = _known_scalar(ctx, 1, "dft_length")
    dim = x.shape[axis]
    if length is None and not ctx.has(1):
        length = (2 * (dim - 1) if isinstance(dim, int) else None) if inverse and onesided else dim
    out: list[Dim] = list(x.shape)
    if onesided and not inverse:
        out[axis] = length // 2 + 1 if isinstance(length, int) else fresh(ctx, "bins")
    else:
        out[axis] = length if length is not None else fresh(ctx, "n")
    out[-1] = 1 if inverse and onesided else 2
    return [tt(x.dtype, out)]


@op("DFT", (17, 20), infer=_dft_infer)
def dft(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    data = x[0]
    axis = _dft_axis(ctx, arg(x, 2) if ctx.version >= 20 else None, data.ndim)
    inverse, onesided = _dft_flags(ctx)
    z = _complex(ctx, data)
    length_v = arg(x, 1)
    if length_v is not None:
        n = _scalar(ctx, length_v, "dft_length")
    else:
        n = 2 * (z.shape[axis] - 1) if inverse and onesided else z.shape[axis]
    if n < 1:
        ctx.fail(f"dft_length {n} must be positive")
    if inverse and onesided:
        return [np.fft.irfft(z, n=n, axis=axis)[..., None].astype(data.dtype)]
    y = np.fft.ifft(z, n=n, axis=axis) if inverse else np.fft.fft(z, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return [_split(y, data.dtype)]


# ---- STFT ----------------------------------------------------------------------------------------


def _stft_infer(ctx: InferContext) -> list[TensorType]:
    x = ctx.type(0)
    if not is_float(x.dtype):
        ctx.fail(f"signal must be a float tensor, got {x.dtype.name}")
    _check_index(ctx, 1, 3)
    if x.shape is not None and len(x.shape) != 3:
        ctx.fail(f"signal must be (batch, length, 1 or 2), got {list(x.shape)}")
    step = _known_scalar(ctx, 1, "frame_step")
    length: Dim | None = _known_scalar(ctx, 3, "frame_length")
    if length is None and ctx.has(2) and ctx.type(2).shape is not None:
        length = (ctx.type(2).shape or (None,))[0]
    elif length is None and not ctx.has(3) and not ctx.has(2) and x.shape is not None:
        length = x.shape[1]
    batch: Dim = x.shape[0] if x.shape is not None else fresh(ctx, "batch")
    signal = x.shape[1] if x.shape is not None else None
    frames: Dim = fresh(ctx, "frames")
    if isinstance(signal, int) and isinstance(length, int) and step:
        frames = (signal - length) // step + 1
    bins: Dim = fresh(ctx, "bins")
    if isinstance(length, int):
        bins = length // 2 + 1 if int(ctx.attr("onesided", 1)) else length
    return [tt(x.dtype, (batch, frames, bins, 2))]


@op("STFT", (17,), infer=_stft_infer)
def stft(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    signal, window, length_v = x[0], arg(x, 2), arg(x, 3)
    step = _scalar(ctx, x[1], "frame_step")
    z = _complex(ctx, signal)  # (batch, length)
    if length_v is not None:
        length = _scalar(ctx, length_v, "frame_length")
    else:
        length = window.shape[0] if window is not None else z.shape[1]
    if window is not None and (window.ndim != 1 or window.shape[0] != length):
        ctx.fail(f"window of shape {list(window.shape)} must be ({length},)")
    if step < 1 or length < 1 or length > z.shape[1]:
        ctx.fail(f"frame_step {step} and frame_length {length} do not fit {z.shape[1]} samples")
    frames = (z.shape[1] - length) // step + 1
    index = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
    w = np.ones(length, z.real.dtype) if window is None else window.astype(z.real.dtype)
    y = np.fft.fft(z[:, index] * w, axis=-1)
    if int(ctx.attr("onesided", 1)):
        y = y[..., : length // 2 + 1]
    return [_split(y, signal.dtype)]


# ---- MelWeightMatrix -----------------------------------------------------------------------------


def _mel_infer(ctx: InferContext) -> list[TensorType]:
    _check_index(ctx, 0, 1, 2)
    for i in (3, 4):
        if not is_float(ctx.type(i).dtype):
            ctx.fail(f"input {i} must be a float scalar, got {ctx.type(i).dtype.name}")
    bins = _known_scalar(ctx, 0, "num_mel_bins")
    length = _known_scalar(ctx, 1, "dft_length")
    rows: Dim = length // 2 + 1 if length is not None else fresh(ctx, "rows")
    return [tt(_window_dtype(ctx), (rows, bins if bins is not None else fresh(ctx, "bins")))]


@op("MelWeightMatrix", (17,), infer=_mel_infer)
def mel_weight_matrix(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    """Triangular filters with peak 1 between mel-spaced edges, the edges snapped down to DFT
    bins as ``floor((dft_length + 1) * hz / sample_rate)`` (the ONNX Runtime kernel the
    conformance data follows); the mel edges are computed in the dtype of the hertz bounds."""
    bins = _scalar(ctx, x[0], "num_mel_bins")
    length = _scalar(ctx, x[1], "dft_length")
    rate = _scalar(ctx, x[2], "sample_rate")
    if bins < 1 or length < 1 or rate < 1:
        ctx.fail(f"num_mel_bins {bins}, dft_length {length}, sample_rate {rate} must be positive")
    low_hz, high_hz = np.asarray(x[3]).reshape(()), np.asarray(x[4]).reshape(())
    low = 2595 * np.log1p(low_hz / 700) / np.log(10)
    high = 2595 * np.log1p(high_hz / 700) / np.log(10)
    step = (high - low) / (bins + 2)
    mel = np.arange(bins + 2) * step + low
    hz = 700 * np.expm1(mel / 2595 * np.log(10))
    edges = ((length + 1) * hz // rate).astype(np.int64)
    rows = length // 2 + 1
    if edges.min() < 0 or edges.max() >= rows + 1:
        ctx.fail(f"the band edges {edges.tolist()} fall outside the {rows} DFT bins")
    out = np.zeros((rows, bins), np.float64)
    for i in range(bins):
        left, centre, right = (int(e) for e in edges[i : i + 3])
        if centre == left:
            if centre < rows:
                out[centre, i] = 1
        else:
            j = np.arange(left, min(centre, rows - 1) + 1)
            out[j, i] = (j - left) / (centre - left)
        if right > centre:
            j = np.arange(centre, min(right, rows))
            out[j, i] = (right - j) / (right - centre)
    return [out.astype(_window_dtype(ctx))]
