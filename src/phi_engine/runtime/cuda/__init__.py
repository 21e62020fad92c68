"""The CUDA backend: phi_engine's float32 kernels on an NVIDIA GPU.

Each op takes numpy arrays (or array-likes) and returns a new numpy array; it uploads its inputs,
runs on the current CUDA device and copies the result back. Device arrays that expose
``__cuda_array_interface__`` (CuPy, PyTorch, Numba) are read in place when they are float32,
C-contiguous and already of the shape the kernel needs; otherwise they are copied to the host
first. The signatures follow :mod:`phi_engine.ops` and :mod:`phi_engine.runtime.reference`.

Errors (messages start with ``[cuda:<op>]``):

- :class:`~phi_engine.errors.UnsupportedError`: the CUDA module was not built, there is no GPU
  or driver, or the build has no cuBLAS (``gemm`` only).
- :class:`~phi_engine.errors.InvalidRequestError`: a wrong dtype, rank or shape, or a bad
  attribute.
- :class:`~phi_engine.errors.PhiEngineError`: a CUDA failure (a kernel fault).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from phi_engine import _native
from phi_engine.errors import InvalidRequestError, UnsupportedError

__all__ = [
    "abs",
    "add",
    "clip",
    "device_count",
    "devices",
    "div",
    "erf",
    "exp",
    "gelu",
    "gelu_tanh",
    "gemm",
    "is_available",
    "layer_norm",
    "leaky_relu",
    "log",
    "maximum",
    "minimum",
    "mul",
    "neg",
    "pow",
    "reciprocal",
    "relu",
    "sigmoid",
    "softmax",
    "sqrt",
    "sub",
    "tanh",
]

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")

# Tests set this so every output buffer starts as NaN (all bits set): an element a kernel failed
# to write then shows up as NaN instead of as plausible leftover memory.
_POISON_OUTPUTS = False


def is_available() -> bool:
    """Whether the CUDA module was built and can see at least one GPU."""
    return _native.cuda is not None and int(_native.cuda.device_count()) > 0


def device_count() -> int:
    """CUDA devices visible to phi_engine (0 without the CUDA module, a driver or a GPU)."""
    return 0 if _native.cuda is None else int(_native.cuda.device_count())


def devices() -> list[dict[str, Any]]:
    """One dict per CUDA device: index, name, memory_bytes, compute_capability, multiprocessors,
    l2_bytes and shared_per_block_optin (empty without the CUDA module or a GPU)."""
    return [] if _native.cuda is None else list(_native.cuda.device_list())


def _why_not_built() -> str:
    try:
        importlib.import_module("phi_engine._core_cuda")
    except ImportError as exc:
        return str(exc)
    return "it failed to load earlier in this process"


def _module(op: str) -> Any:
    """The compiled CUDA module, after checking that a device can run `op`."""
    cu = _native.cuda
    if cu is None:
        raise UnsupportedError(
            f"[cuda:{op}] phi_engine's CUDA module (phi_engine._core_cuda) is not available: "
            f"{_why_not_built()}. Build it where nvcc exists (PHI_ENGINE_CUDA=ON pip install .)."
        )
    if int(cu.device_count()) == 0:
        raise UnsupportedError(f"[cuda:{op}] no CUDA device is available: {cu.device_status()}")
    return cu


@dataclass(frozen=True)
class _Dev:
    """A dense float32 array in device memory."""

    ptr: int
    shape: tuple[int, ...]


def _device_interface(x: Any) -> dict[str, Any] | None:
    iface = getattr(x, "__cuda_array_interface__", None)
    return iface if isinstance(iface, dict) else None


def _is_c_contiguous(shape: tuple[int, ...], strides: Any, itemsize: int) -> bool:
    if strides is None:
        return True
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(tuple(strides)), strict=True):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


class _Call:
    """The device memory of one op call: inputs uploaded or borrowed, outputs allocated; all of
    it is released when the call ends."""

    def __init__(self, cu: Any, op: str) -> None:
        self.cu = cu
        self.op = op
        self._buffers: list[Any] = []
        self._synced = False

    def __enter__(self) -> _Call:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._buffers.clear()

    def _alloc(self, nbytes: int) -> int:
        buffer = self.cu.DeviceBuffer(nbytes)
        self._buffers.append(buffer)
        return int(buffer.ptr)

    def host(self, x: Any, name: str) -> np.ndarray:
        """`x` as a float32 numpy array (a device array is copied to the host)."""
        iface = _device_interface(x)
        if iface is not None:
            dev = self._borrow(iface, name)
            arr = np.empty(dev.shape, np.float32)
            self.cu.copy_to_host(arr, dev.ptr)
            return arr
        return self._host_float32(x, name)

    def _host_float32(self, x: Any, name: str) -> np.ndarray:
        arr: np.ndarray
        if isinstance(x, int | float) and not isinstance(x, bool):
            arr = np.asarray(x, np.float32)  # a Python number is a weak scalar, as in numpy
        else:
            try:
                arr = np.asarray(x)
            except (TypeError, ValueError) as exc:
                raise _invalid(self.op, f"{name} is not array-like: {exc}", name) from None
        if arr.dtype != np.float32:
            raise _invalid(self.op, f"{name} must be float32, got {arr.dtype}", name)
        return arr

    def _borrow(self, iface: dict[str, Any], name: str) -> _Dev:
        shape = tuple(int(s) for s in iface["shape"])
        dtype = np.dtype(iface["typestr"])
        if dtype != np.float32:
            raise _invalid(self.op, f"{name} must be float32, got {dtype}", name)
        if not _is_c_contiguous(shape, iface.get("strides"), dtype.itemsize):
            raise _invalid(self.op, f"device array {name} must be C-contiguous", name)
        if not self._synced and iface.get("stream") is not None:
            # The producer may still be writing it on a stream of its own: wait for the device.
            self.cu.synchronize()
            self._synced = True
        return _Dev(int(iface["data"][0]), shape)

    def input(self, x: Any, name: str, shape: tuple[int, ...] | None = None) -> _Dev:
        """`x` on the device as dense float32, broadcast to `shape` when one is given."""
        iface = _device_interface(x)
        if iface is not None:
            dev = self._borrow(iface, name)
            if shape is None or dev.shape == shape:
                return dev
        arr = self.host(x, name)
        if shape is not None and arr.shape != shape:
            try:
                arr = np.broadcast_to(arr, shape)
            except ValueError:
                message = f"{name} of shape {arr.shape} does not broadcast to {shape}"
                raise _invalid(self.op, message, name) from None
        arr = np.ascontiguousarray(arr)
        ptr = self._alloc(arr.nbytes)
        self.cu.copy_to_device(ptr, arr)
        return _Dev(ptr, arr.shape)

    def output(self, shape: tuple[int, ...]) -> _Dev:
        nbytes = math.prod(shape) * 4
        ptr = self._alloc(nbytes)
        if _POISON_OUTPUTS:
            self.cu.fill_bytes(ptr, 0xFF, nbytes)
        return _Dev(ptr, shape)

    def fetch(self, dev: _Dev) -> np.ndarray:
        """Copy `dev` back to a new numpy array (waits for the kernels before it)."""
        out = np.empty(dev.shape, np.float32)
        self.cu.copy_to_host(out, dev.ptr)
        return out


def _invalid(op: str, message: str, field: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(f"[cuda:{op}] {message}", field=field)


def _activation(op: str, activation: str | None) -> str:
    name = activation or "none"
    if name not in ACTIVATIONS:
        raise _invalid(
            op,
            f"unknown activation {name!r} (expected one of {', '.join(ACTIVATIONS)})",
            "activation",
        )
    return name


def _bound(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _axis(op: str, axis: int, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -ndim <= axis < ndim:
        raise _invalid(op, f"axis {axis} is out of range for {ndim} dimensions", "axis")
    return int(axis) % ndim


def gemm(
    a: ArrayLike,
    b: ArrayLike,
    bias: ArrayLike | None = None,
    activation: str | None = None,
    *,
    residual: ArrayLike | None = None,
    alpha: float = 1.0,
    trans_a: bool = False,
    trans_b: bool = False,
    clip_min: float | None = None,
    clip_max: float | None = None,
    tf32: bool = False,
) -> np.ndarray:
    """``activation(alpha * op(a) @ op(b) + bias + residual)`` on the GPU: cuBLAS, then one fused
    epilogue pass.

    Args:
        a: ``(M, K)`` float32 (``(K, M)`` when ``trans_a``).
        b: ``(K, N)`` float32 (``(N, K)`` when ``trans_b``).
        bias: ``N`` values or one, added to every row.
        activation: ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``tanh``, ``sigmoid`` or ``clip``.
        residual: Broadcastable to ``(M, N)``, added before the activation.
        alpha: Scale of the product.
        trans_a: Use ``a`` transposed.
        trans_b: Use ``b`` transposed (a linear layer's weight layout).
        clip_min: Lower bound of ``clip`` (None: unbounded).
        clip_max: Upper bound of ``clip`` (None: unbounded).
        tf32: Allow TF32 tensor cores (faster, ~3e-4 relative error) instead of float32 FMA.

    Returns:
        The ``(M, N)`` float32 result.

    Raises:
        UnsupportedError: no CUDA module, GPU or cuBLAS.
        InvalidRequestError: wrong dtype or rank, or shapes that do not match.
    """
    op = "gemm"
    act = _activation(op, activation)
    cu = _module(op)
    with _Call(cu, op) as call:
        da, db = call.input(a, "a"), call.input(b, "b")
        if len(da.shape) != 2 or len(db.shape) != 2:
            raise _invalid(op, f"a and b must be 2-D, got shapes {da.shape} and {db.shape}")
        m, k = da.shape[::-1] if trans_a else da.shape
        kb, n = db.shape[::-1] if trans_b else db.shape
        if k != kb:
            raise _invalid(op, f"inner dimensions differ: op(a) is {(m, k)}, op(b) is {(kb, n)}")
        bias_ptr = 0
        if bias is not None:
            host_bias = call.host(bias, "bias").reshape(-1)
            if host_bias.size not in (1, n):
                raise _invalid(
                    op, f"bias must have {n} values or one, got {host_bias.size}", "bias"
                )
            bias_ptr = call.input(host_bias, "bias", (n,)).ptr
        residual_ptr = 0 if residual is None else call.input(residual, "residual", (m, n)).ptr
        out = call.output((m, n))
        cu.gemm(
            da.ptr,
            db.ptr,
            out.ptr,
            m,
            n,
            k,
            trans_a=bool(trans_a),
            trans_b=bool(trans_b),
            alpha=float(alpha),
            bias=bias_ptr,
            residual=residual_ptr,
            activation=act,
            clip_min=_bound(clip_min, -math.inf),
            clip_max=_bound(clip_max, math.inf),
            tf32=bool(tf32),
        )
        return call.fetch(out)


def softmax(
    x: ArrayLike, mask: ArrayLike | None = None, axis: int = -1, scale: float = 1.0
) -> np.ndarray:
    """``softmax(scale * x + mask)`` along ``axis`` on the GPU.

    Args:
        x: A float32 array.
        mask: float32, broadcastable to ``x``, added after scaling (``-inf`` excludes an element).
        axis: The axis to normalise over.
        scale: Multiplies ``x`` first (``1/sqrt(d)`` in attention).

    Returns:
        A float32 array of ``x``'s shape. A slice whose maximum is not finite (all ``-inf``, or a
        NaN or ``+inf`` in it) is NaN, as in numpy.

    Raises:
        UnsupportedError: no CUDA module or GPU.
        InvalidRequestError: wrong dtype, a mask that does not broadcast, a bad axis or scale.
    """
    op = "softmax"
    if not math.isfinite(float(scale)):
        raise _invalid(op, f"scale must be finite, got {scale}", "scale")
    cu = _module(op)
    with _Call(cu, op) as call:
        iface = _device_interface(x)
        shape = tuple(int(s) for s in iface["shape"]) if iface is not None else np.shape(x)
        if len(shape) == 0:
            raise _invalid(op, "x must have at least one dimension")
        ax = _axis(op, axis, len(shape))
        last = ax == len(shape) - 1
        # The kernel normalises the last axis; another axis is moved there on the host.
        moved = x if last else np.moveaxis(call.host(x, "x"), ax, -1)
        dx = call.input(moved, "x")
        mask_ptr, mask_shape = 0, dx.shape[:0]
        if mask is not None:
            dm = _softmax_mask(call, mask, shape, ax)
            mask_ptr, mask_shape = dm.ptr, dm.shape
        out = call.output(dx.shape)
        cu.softmax(
            dx.ptr,
            out.ptr,
            list(dx.shape),
            scale=float(scale),
            mask=mask_ptr,
            mask_shape=list(mask_shape),
        )
        result = call.fetch(out)
    return result if last else np.moveaxis(result, -1, ax)


def _softmax_mask(call: _Call, mask: Any, shape: tuple[int, ...], axis: int) -> _Dev:
    """The mask on the device, its dimensions in the order the kernel sees x's (axis last)."""
    iface = _device_interface(mask)
    mask_shape = tuple(int(s) for s in iface["shape"]) if iface is not None else np.shape(mask)
    try:
        fits = len(mask_shape) <= len(shape) and np.broadcast_shapes(mask_shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise _invalid(
            call.op, f"mask of shape {mask_shape} does not broadcast to x's shape {shape}", "mask"
        )
    if axis == len(shape) - 1:
        return call.input(mask, "mask")
    host = call.host(mask, "mask")
    host = host.reshape((1,) * (len(shape) - host.ndim) + host.shape)
    return call.input(np.moveaxis(host, axis, -1), "mask")


def layer_norm(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike | None = None,
    axis: int = -1,
    epsilon: float = 1e-5,
    residual: ArrayLike | None = None,
) -> np.ndarray:
    """Layer normalisation over ``x.shape[axis:]`` (ONNX LayerNormalization) of ``x + residual``.

    Args:
        x: A float32 array of rank >= 1.
        gamma: Scale, of the normalised shape ``x.shape[axis:]`` (leading 1s allowed).
        beta: Shift, of the same shape (None: no shift).
        axis: The first normalised dimension.
        epsilon: Added to the variance; finite and > 0.
        residual: Added to ``x`` first; must have ``x``'s shape.

    Returns:
        A float32 array of ``x``'s shape.

    Raises:
        UnsupportedError: no CUDA module or GPU.
        InvalidRequestError: wrong dtype, shapes, axis or epsilon.
    """
    op = "layer_norm"
    eps = float(epsilon)
    if not math.isfinite(eps) or not np.float32(eps) > 0:
        raise _invalid(op, f"epsilon must be finite and > 0 in float32, got {epsilon}", "epsilon")
    cu = _module(op)
    with _Call(cu, op) as call:
        dx = call.input(x, "x")
        if len(dx.shape) == 0:
            raise _invalid(op, "x must have rank >= 1")
        ax = _axis(op, axis, len(dx.shape))
        norm = dx.shape[ax:]
        rows, cols = math.prod(dx.shape[:ax]), math.prod(norm)
        dg = _norm_param(call, gamma, "gamma", norm)
        beta_ptr = 0 if beta is None else _norm_param(call, beta, "beta", norm).ptr
        residual_ptr = 0
        if residual is not None:
            dr = call.input(residual, "residual")
            if dr.shape != dx.shape:
                raise _invalid(
                    op, f"residual must have x's shape {dx.shape}, got {dr.shape}", "residual"
                )
            residual_ptr = dr.ptr
        out = call.output(dx.shape)
        cu.layer_norm(
            dx.ptr, out.ptr, rows, cols, dg.ptr, beta=beta_ptr, residual=residual_ptr, epsilon=eps
        )
        return call.fetch(out)


def _norm_param(call: _Call, value: Any, name: str, norm: tuple[int, ...]) -> _Dev:
    """gamma or beta: the normalised shape, up to leading 1s on either side."""
    dev = call.input(value, name)

    def strip(s: tuple[int, ...]) -> tuple[int, ...]:
        while s and s[0] == 1:
            s = s[1:]
        return s

    if strip(dev.shape) != strip(norm):
        raise _invalid(
            call.op, f"{name} must have the normalised shape {norm}, got {dev.shape}", name
        )
    return dev


def _binary(
    op: str,
    a: Any,
    b: Any,
    activation: str | None = None,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    act = _activation(op, activation)
    cu = _module(op)
    with _Call(cu, op) as call:
        da, db = call.input(a, "a"), call.input(b, "b")
        try:
            shape = np.broadcast_shapes(da.shape, db.shape)
        except ValueError:
            raise _invalid(op, f"shapes {da.shape} and {db.shape} do not broadcast") from None
        out = call.output(shape)
        cu.binary(
            op,
            da.ptr,
            list(da.shape),
            db.ptr,
            list(db.shape),
            out.ptr,
            list(shape),
            activation=act,
            clip_min=_bound(clip_min, -math.inf),
            clip_max=_bound(clip_max, math.inf),
        )
        return call.fetch(out)


def _unary(op: str, x: Any, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    cu = _module(op)
    with _Call(cu, op) as call:
        dx = call.input(x, "x")
        out = call.output(dx.shape)
        cu.unary(op, dx.ptr, out.ptr, math.prod(dx.shape), p0=p0, p1=p1)
        return call.fetch(out)


def add(
    a: ArrayLike,
    b: ArrayLike,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """``activation(a + b)`` with numpy broadcasting, in one pass.

    Args:
        a: A float32 array (or a Python number).
        b: A float32 array (or a Python number) broadcastable against ``a``.
        activation: ``none``, ``relu``, ``gelu``, ``gelu_tanh``, ``tanh``, ``sigmoid`` or ``clip``.
        clip_min: Lower bound of ``clip``.
        clip_max: Upper bound of ``clip``.

    Returns:
        A float32 array of the broadcast shape.

    Raises:
        UnsupportedError: no CUDA module or GPU.
        InvalidRequestError: a dtype other than float32, shapes that do not broadcast, or more
            than 8 dimensions.
    """
    return _binary("add", a, b, activation, clip_min, clip_max)


def mul(
    a: ArrayLike,
    b: ArrayLike,
    activation: str | None = None,
    *,
    clip_min: float | None = None,
    clip_max: float | None = None,
) -> np.ndarray:
    """``activation(a * b)`` with numpy broadcasting, in one pass (arguments as in :func:`add`)."""
    return _binary("mul", a, b, activation, clip_min, clip_max)


def sub(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``a - b`` with numpy broadcasting (float32; errors as in :func:`add`)."""
    return _binary("sub", a, b)


def div(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``a / b`` with numpy broadcasting (float32, IEEE division; errors as in :func:`add`)."""
    return _binary("div", a, b)


def pow(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``a ** b`` with numpy broadcasting (float32; errors as in :func:`add`)."""
    return _binary("pow", a, b)


def maximum(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Elementwise maximum with numpy broadcasting; NaN propagates (errors as in :func:`add`)."""
    return _binary("maximum", a, b)


def minimum(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Elementwise minimum with numpy broadcasting; NaN propagates (errors as in :func:`add`)."""
    return _binary("minimum", a, b)


def neg(x: ArrayLike) -> np.ndarray:
    """``-x`` (float32). Raises UnsupportedError without a GPU, InvalidRequestError if not
    float32."""
    return _unary("neg", x)


def abs(x: ArrayLike) -> np.ndarray:
    """``|x|`` (float32; errors as in :func:`neg`)."""
    return _unary("abs", x)


def exp(x: ArrayLike) -> np.ndarray:
    """``e**x`` (float32, CUDA's expf: 2 ulp; errors as in :func:`neg`)."""
    return _unary("exp", x)


def log(x: ArrayLike) -> np.ndarray:
    """Natural logarithm (float32, CUDA's logf: 1 ulp; errors as in :func:`neg`)."""
    return _unary("log", x)


def sqrt(x: ArrayLike) -> np.ndarray:
    """Square root (float32, correctly rounded; errors as in :func:`neg`)."""
    return _unary("sqrt", x)


def reciprocal(x: ArrayLike) -> np.ndarray:
    """``1 / x`` (float32, correctly rounded; errors as in :func:`neg`)."""
    return _unary("reciprocal", x)


def erf(x: ArrayLike) -> np.ndarray:
    """The error function (float32, CUDA's erff: 2 ulp; errors as in :func:`neg`)."""
    return _unary("erf", x)


def relu(x: ArrayLike) -> np.ndarray:
    """``max(x, 0)``; NaN stays NaN (errors as in :func:`neg`)."""
    return _unary("relu", x)


def gelu(x: ArrayLike) -> np.ndarray:
    """GELU, erf form ``0.5 x (1 + erf(x / sqrt(2)))`` (errors as in :func:`neg`)."""
    return _unary("gelu", x)


def gelu_tanh(x: ArrayLike) -> np.ndarray:
    """GELU, tanh approximation (errors as in :func:`neg`)."""
    return _unary("gelu_tanh", x)


def tanh(x: ArrayLike) -> np.ndarray:
    """Hyperbolic tangent (errors as in :func:`neg`)."""
    return _unary("tanh", x)


def sigmoid(x: ArrayLike) -> np.ndarray:
    """``1 / (1 + e**-x)`` (errors as in :func:`neg`)."""
    return _unary("sigmoid", x)


def clip(x: ArrayLike, min: float | None = None, max: float | None = None) -> np.ndarray:
    """Clamp ``x`` to ``[min, max]``; NaN stays NaN.

    Args:
        x: A float32 array.
        min: Lower bound (None: unbounded).
        max: Upper bound (None: unbounded).

    Returns:
        A float32 array of ``x``'s shape.

    Raises:
        UnsupportedError: no CUDA module or GPU.
        InvalidRequestError: ``x`` is not float32, or ``min > max``.
    """
    lo, hi = _bound(min, -math.inf), _bound(max, math.inf)
    if not lo <= hi:
        raise _invalid("clip", f"min ({min}) must not exceed max ({max})", "min")
    return _unary("clip", x, lo, hi)


def leaky_relu(x: ArrayLike, alpha: float = 0.01) -> np.ndarray:
    """``x`` where ``x >= 0``, else ``alpha * x`` (errors as in :func:`neg`)."""
    if not math.isfinite(float(alpha)):
        raise _invalid("leaky_relu", f"alpha must be finite, got {alpha}", "alpha")
    return _unary("leaky_relu", x, float(alpha))
