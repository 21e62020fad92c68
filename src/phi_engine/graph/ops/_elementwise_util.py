"""Helpers of the elementwise op modules: dtypes, precision, erf, ONNX Cast, builders, lowering.

ONNX tensors of bfloat16, float8, float4 and the sub-byte integers arrive as ``ml_dtypes``
arrays (``onnx.helper.tensor_dtype_to_np_dtype``); numpy's own ufuncs are not defined on all of
them, so the references compute those in float32 (which holds every such value exactly) and round
once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, InferFn, LowerFn, OpContext, op

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
BOOL = np.dtype(np.bool_)
STRING = np.dtype(object)

FLOATS = frozenset({"float16", "float32", "float64", "bfloat16"})
SIGNED = frozenset({"int8", "int16", "int32", "int64"})
UNSIGNED = frozenset({"uint8", "uint16", "uint32", "uint64"})
INTS = SIGNED | UNSIGNED
NUMERIC = FLOATS | INTS
FLOAT8 = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"})
E8M0 = "float8_e8m0fnu"
FLOAT4 = "float4_e2m1fn"
SUB_BYTE_INTS = {"int4": (4, True), "uint4": (4, False), "int2": (2, True), "uint2": (2, False)}
# The largest finite value of each narrow float (ONNX IR "Float8" and "Float4" tables).
_FLOAT8_MAX = {
    "float8_e4m3fn": 448.0,
    "float8_e4m3fnuz": 240.0,
    "float8_e5m2": 57344.0,
    "float8_e5m2fnuz": 57344.0,
    FLOAT4: 6.0,
}
_NARROW_FLOATS = frozenset({"float16", "bfloat16", E8M0, FLOAT4}) | FLOAT8

PLAN_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"}
)
"""dtypes a native plan holds (and copies with ``reshape``)."""
WHERE_DTYPES = frozenset({"float32", "int32", "int64", "bool"})
"""dtypes the native ``where`` selects."""
F32_ONLY = frozenset({"float32"})
BOOL_ONLY = frozenset({"bool"})
FLOAT_LIKE = FLOATS | FLOAT8

ArrayFn = Callable[..., Any]
Compute = Callable[[OpContext, list[Any]], list[np.ndarray]]


def quiet_op(
    name: str, versions: Sequence[int], *, infer: InferFn, lower: LowerFn | None = None, **kw: Any
) -> Callable[[Compute], Compute]:
    """``registry.op`` whose reference runs with numpy's floating-point warnings off and whose
    lowering always yields the node's exact output shapes.

    ONNX defines the IEEE results (inf, NaN, integer division by zero is undefined); numpy's
    RuntimeWarnings about them would otherwise surface in callers that turn warnings to errors.
    """

    def register(fn: Compute) -> Compute:
        def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
            with np.errstate(all="ignore"):
                return fn(ctx, x)

        compute.__doc__ = fn.__doc__
        op(name, versions, infer=infer, lower=None if lower is None else _exact(lower), **kw)(
            compute
        )
        return fn

    return register


def _exact(lower: LowerFn) -> LowerFn:
    def exact(ctx: LowerContext) -> list[int] | None:
        slots = lower(ctx)
        return None if slots is None else finish(ctx, slots)

    return exact


# ---- dtypes ------------------------------------------------------------------------------------


def check_dtype(ctx: InferContext, i: int, allowed: frozenset[str]) -> TensorType:
    """Input ``i``'s type, after checking its dtype is one the op allows."""
    t = ctx.type(i)
    if t.dtype.name not in allowed:
        ctx.fail(f"input {i} has dtype {t.dtype.name}; the op takes {', '.join(sorted(allowed))}")
    return t


def check_same(ctx: InferContext, indices: Sequence[int], allowed: frozenset[str]) -> TensorType:
    """The common type of the given inputs (all one allowed dtype); the first input's type."""
    first = check_dtype(ctx, indices[0], allowed)
    for i in indices[1:]:
        if ctx.type(i).dtype != first.dtype:
            ctx.fail(
                f"inputs {indices[0]} and {i} have different dtypes "
                f"{first.dtype.name} and {ctx.type(i).dtype.name}"
            )
    return first


def is_float(dtype: np.dtype[Any]) -> bool:
    return dtype.name in FLOATS or dtype.name in _NARROW_FLOATS


def widen(x: np.ndarray) -> np.ndarray:
    """float16, bfloat16 and narrower floats as float32 (exact); anything else unchanged."""
    return x.astype(F32) if x.dtype.name in _NARROW_FLOATS else x


def as_dtype(value: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``value`` as an ndarray of ``dtype`` (numpy returns scalars for 0-d ufunc results)."""
    return np.asarray(value).astype(dtype, copy=False)


_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function in float64 (numpy has none; ``math.erf`` is correctly rounded)."""
    return np.asarray(_erf(np.asarray(x, dtype=F64)), dtype=F64)


# ---- Cast --------------------------------------------------------------------------------------


def cast(x: np.ndarray, to: np.dtype[Any], *, saturate: bool, round_mode: str) -> np.ndarray:
    """ONNX Cast of ``x`` to ``to`` (Cast-25 §Description: float8 tables, e8m0 rounding).

    Raises:
        ValueError: a string that is not a number, or an unknown ``round_mode``.
    """
    if to == STRING:
        return _to_strings(x)
    src = _from_strings(x, to) if x.dtype == STRING else _canonical(x)
    name = to.name
    if name in FLOAT8:
        return _to_float8(src, to, saturate)
    if name == E8M0:
        return _to_e8m0(src, saturate=saturate, round_mode=round_mode)
    if name == FLOAT4:
        # float4e2m1 has no inf or NaN encoding: values saturate to its largest magnitude.
        return _to_float8(src, to, saturate=True)
    if name in SUB_BYTE_INTS:
        bits, signed = SUB_BYTE_INTS[name]
        return wrap_int(src, bits, signed).astype(to)
    return src.astype(to)


def _canonical(x: np.ndarray) -> np.ndarray:
    """ml_dtypes floats as float32 and sub-byte integers as int8/uint8 (both exact)."""
    if x.dtype.name in _NARROW_FLOATS and x.dtype.name != "float16":
        return x.astype(F32)
    if x.dtype.name in SUB_BYTE_INTS:
        return x.astype(np.int8 if SUB_BYTE_INTS[x.dtype.name][1] else np.uint8)
    return x


def _to_float8(x: np.ndarray, to: np.dtype[Any], saturate: bool) -> np.ndarray:
    src = x if x.dtype.kind == "f" else x.astype(F64)
    if saturate:
        limit = _FLOAT8_MAX[to.name]
        src = np.clip(src, -limit, limit)  # NaN stays NaN; +-inf and overflow go to +-max
    return src.astype(to)


def _to_e8m0(x: np.ndarray, *, saturate: bool, round_mode: str) -> np.ndarray:
    """float8e8m0 (2**(e - 127), e in 0..254, 255 NaN); negative inputs are undefined: |x|."""
    a = np.abs(x.astype(F64))
    mantissa, exponent = np.frexp(np.where(np.isfinite(a), a, 1.0))
    frac = 2.0 * mantissa - 1.0  # a = (1 + frac) * 2**(exponent - 1), frac in [0, 1)
    if round_mode == "up":
        exponent = exponent + (frac > 0)
    elif round_mode == "nearest":
        exponent = exponent + (frac >= 0.5)  # ties round up
    elif round_mode != "down":
        raise ValueError(f"round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    biased = exponent.astype(np.int64) + 126
    if saturate:
        biased = np.where(np.isinf(a), 254, np.clip(biased, 0, 254))
        biased = np.where(a == 0, 0, biased)
    else:
        bad = (biased < 0) | (biased > 254) | (a == 0) | np.isinf(a)
        biased = np.where(bad, 255, biased)
    biased = np.where(np.isnan(a), 255, biased)
    return biased.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)


def wrap_int(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integers (floats truncated) reduced to ``bits`` bits, two's complement (int64)."""
    v = x.astype(np.int64)
    v = v & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v) if signed else v


def _to_strings(x: np.ndarray) -> np.ndarray:
    # Cast-25: "plain floating-point representation"; numpy's shortest round-trip digits.
    src = _canonical(x)
    if src.dtype == STRING:
        return src.copy()
    return src.astype(np.str_).astype(STRING)


def _from_strings(x: np.ndarray, to: np.dtype[Any]) -> np.ndarray:
    """Strings parsed to float64, or to int64 when ``to`` is an integer (exact)."""
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1)]
    if to.name in INTS or to.name in SUB_BYTE_INTS:
        bits = 64 if to.name in SUB_BYTE_INTS else to.itemsize * 8
        ints = [_parse_int(t) & ((1 << bits) - 1) for t in texts]
        unsigned = np.array(ints, dtype=np.uint64).reshape(x.shape)
        return unsigned.view(np.int64) if to.name not in UNSIGNED else unsigned
    # Python's float() reads "1e-5", "+INF", "inf", "NaN" case-insensitively, as Cast requires.
    return np.array([float(t) for t in texts], dtype=F64).reshape(x.shape)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "100.5" -> 100, as Cast's description allows
        return int(value) if math.isfinite(value) else 0


# ---- lowering ----------------------------------------------------------------------------------


def const(ctx: LowerContext, value: Any, dtype: Any) -> int:
    """A constant slot holding one value, shaped to broadcast against the node's output."""
    rank = max(len(ctx.out_types[0].static_shape()), 1)
    return ctx.constant(np.full((1,) * rank, value, dtype=dtype))


def finish(ctx: LowerContext, slots: list[int]) -> list[int]:
    """``slots`` with every output reshaped to the node's declared shape where it differs.

    One-element constants (ours, and 0-d initializers, which plans hold as shape (1,)) broadcast
    a 0-d result to shape (1,); a plan step must produce the node's exact ONNX shape.
    """
    exact = []
    for slot, t in zip(slots, ctx.out_types, strict=False):
        want = t.static_shape()
        if ctx.spec(slot)[1] != want:
            (slot,) = ctx.step("reshape", [slot], {"shape": list(want)})
        exact.append(slot)
    return exact


def copy(ctx: LowerContext, i: int) -> list[int] | None:
    """A native copy of input ``i`` (None when its dtype has no native copy)."""
    if not dtypes_are(ctx, PLAN_DTYPES, i):
        return None
    return ctx.step("reshape", [ctx.slot(i)], {"shape": list(ctx.shape(i))})


def dtypes_are(ctx: LowerContext, allowed: frozenset[str], *indices: int) -> bool:
    """Lowering guard: the given inputs are present, of one dtype in ``allowed``, and every
    input and output shape is static (a data-dependent shape cannot enter a native plan)."""
    if not all(ctx.has(i) for i in indices):
        return False
    names = {ctx.dtype(i).name for i in indices}
    inputs = [t for t in ctx.types if t is not None]
    static = all(t.is_static for t in [*inputs, *ctx.out_types])
    return static and len(names) == 1 and names <= allowed


# ---- infer, reference and lowering builders shared by the op modules ---------------------------


def unary_infer(allowed: frozenset[str], out: np.dtype[Any] | None = None) -> InferFn:
    """Input 0's dtype in ``allowed``; one output of its shape and dtype (or ``out``)."""

    def infer(ctx: InferContext) -> list[TensorType]:
        t = check_dtype(ctx, 0, allowed)
        return [tt(out if out is not None else t.dtype, t.shape)]

    return infer


def unary(fn: ArrayFn) -> Compute:
    """A unary reference on widened floats, rounded back to the input's dtype."""

    def compute(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
        return [as_dtype(fn(widen(x[0])), x[0].dtype)]

    return compute


def lower_unary(native: str, attrs: Callable[[LowerContext], dict[str, Any] | None]) -> LowerFn:
    """float32 input 0 as the native unary step ``native`` with ``attrs(ctx)`` (None: no step)."""

    def lower(ctx: LowerContext) -> list[int] | None:
        found = attrs(ctx) if dtypes_are(ctx, F32_ONLY, 0) else None
        return None if found is None else ctx.step(native, [ctx.slot(0)], found)

    return lower


def no_attrs(ctx: LowerContext) -> dict[str, Any]:
    """The attributes of a native unary step that takes none."""
    return {}


def where3(ctx: LowerContext, cond: int | None, a: int | None, b: int | None) -> list[int]:
    """A native ``where`` step: ``a`` where ``cond`` holds, else ``b``."""
    return ctx.step("where", [cond, a, b])
