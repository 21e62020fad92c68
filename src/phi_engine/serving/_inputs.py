"""Inline request tensors: parsed, converted and checked against the model before they queue.

API.md 1.3 accepts ``input.data`` as a list (a single-input model), a mapping ``{name: rows}``, or
V2-style typed tensors (``[{"name", "shape", "datatype", "data"}]``, the Open Inference Protocol's
request tensors). Every check happens here, in the caller's thread, so that a bad request is
refused with a clear :class:`~phi_engine.errors.InvalidRequestError` naming the input and never
reaches a batch where it could fail its neighbours.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError

__all__ = ["InputLimits", "InputSpec", "parse_inputs"]

# Open Inference Protocol datatypes (V2 "Tensor Data Types") and their numpy equivalents.
V2_DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


_all_finite = require_core().all_finite
_float_input = require_core().float_input
_NATIVE_FINITE = (np.dtype(np.float32), np.dtype(np.float64))
_MAX = (1 << 62) - 1  # the largest limit handed to the native check (it holds 64-bit sizes)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its dtype and shape (symbolic dimensions are strings)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | str, ...] | None
    # For the native check of a float input: bytes per float (0: not float32 or float64) and
    # the shape with -1 for each symbolic dimension.
    width: int = field(init=False, repr=False, compare=False)
    dims: tuple[int, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        shape = self.shape or ()
        fixed_ok = all(not isinstance(d, int) or d >= 0 for d in shape)
        native = self.dtype in _NATIVE_FINITE and fixed_ok
        object.__setattr__(self, "width", self.dtype.itemsize if native else 0)
        dims = None if self.shape is None else tuple(d if isinstance(d, int) else -1 for d in shape)
        object.__setattr__(self, "dims", dims)


@dataclass(frozen=True)
class InputLimits:
    """What one inline request may carry.

    Attributes:
        max_rows: Rows (the leading axis) per request.
        max_bytes: Bytes of all input tensors together, after conversion.
        allow_non_finite: Whether NaN and infinity may appear in floating-point inputs; refused by
            default, since a NaN fed to a model yields NaN outputs that look like answers.
    """

    max_rows: int = 64
    max_bytes: int = 64 << 20
    allow_non_finite: bool = False
    # Whether the native float check can take these limits: plain integers it holds as sizes
    # (a float or infinity, allowed here, leaves the checks to Python).
    native: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_bytes"):
            value: Any = getattr(self, name)
            number = isinstance(value, numbers.Real)
            if not number or not value >= 1:  # NaN fails this too
                raise InvalidRequestError(
                    f"{name} must be a number >= 1 (infinity: no limit), got {value!r}",
                    field=name,
                )
        native = all(type(v) is int and 0 <= v <= _MAX for v in (self.max_rows, self.max_bytes))
        object.__setattr__(self, "native", native)


def parse_inputs(
    data: Any, specs: Sequence[InputSpec], limits: InputLimits
) -> dict[str, np.ndarray]:
    """Turn a request's inline ``input`` into checked arrays, one per model input.

    Args:
        data: A mapping of input name to rows, a list (the rows of a single-input model, or one
            array per input in order), or V2-style typed tensors.
        specs: The model's inputs, in order.
        limits: Size and value limits.

    Returns:
        Arrays by input name, each with the input's dtype and a leading batch axis; every input
        has the same number of rows.

    Raises:
        InvalidRequestError: a missing or unknown input, a value that does not convert to the
            input's dtype without loss, a wrong rank or fixed dimension, disagreeing row counts,
            too many rows or bytes, or non-finite values where refused (``field`` names the input).
    """
    if len(specs) == 1:
        if type(data) is np.ndarray:  # the rows of a one-input model, as the native decoder gives
            fast = _one_float_array(data, specs[0], limits)
        elif type(data) is dict and len(data) == 1:
            fast = _one_float_array(data.get(specs[0].name), specs[0], limits)
        elif type(data) is list and len(data) == 1 and type(data[0]) is dict:
            fast = _one_v2_float_tensor(data[0], specs[0], limits)
        else:
            fast = None
        if fast is not None:
            return fast
    named = _by_name(data, specs)
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec in specs:
        array = _convert(spec, named[spec.name])
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        total = _check_array(spec, array, limits, total)
        arrays[spec.name] = array
    if len(arrays) > 1:
        _check_rows(arrays)
        _check_symbols(arrays, specs)
    return arrays


def _one_float_array(
    value: Any, spec: InputSpec, limits: InputLimits
) -> dict[str, np.ndarray] | None:
    """The common request, a float array for a model's one float input (what the native JSON
    decoder gives), checked as :func:`parse_inputs` would; ``None`` for anything else."""
    if type(value) is not np.ndarray:
        return None
    if spec.width and (a := _native_float(value, spec, limits)) is not None:
        return {spec.name: a}
    if value.dtype.kind != "f" or spec.dtype.kind != "f" or not value.flags.c_contiguous:
        return None
    array = value if value.dtype == spec.dtype else value.astype(spec.dtype)
    _check_array(spec, array, limits, 0)
    return {spec.name: array}


def _one_v2_float_tensor(
    tensor: dict[str, Any], spec: InputSpec, limits: InputLimits
) -> dict[str, np.ndarray] | None:
    """The common V2 request, one tensor of the model's float input type with its data decoded
    into a float array (what the native decoder gives), checked as :func:`_from_v2` and
    :func:`parse_inputs` would; ``None`` for anything else (the general path then decides)."""
    value, shape = tensor.get("data"), tensor.get("shape")
    if type(shape) is np.ndarray and shape.ndim == 1 and shape.dtype.kind == "i":
        shape = shape.tolist()  # the native decoder reads number arrays into arrays
    if (
        tensor.get("name") != spec.name
        or spec.dtype.kind != "f"
        or V2_DATATYPES.get(tensor.get("datatype")) != spec.dtype  # type: ignore[arg-type]
        or type(value) is not np.ndarray
        or value.dtype.kind != "f"
        or type(shape) is not list
        or not all(type(d) is int and d >= 0 for d in shape)
        or value.size != math.prod(shape)
    ):
        return None
    shaped = value.reshape(shape)
    if spec.width and (a := _native_float(shaped, spec, limits)) is not None:
        return {spec.name: a}
    array = shaped if shaped.dtype == spec.dtype else shaped.astype(spec.dtype)
    _check_array(spec, array, limits, 0)
    return {spec.name: array}


def _native_float(value: np.ndarray, spec: InputSpec, limits: InputLimits) -> np.ndarray | None:
    """A float32 or float64 input checked (and converted) in one native call, as
    :func:`_check_array` would check it; ``None`` when any check fails or the array is not one
    the native check takes (the Python checks then decide and name the problem). Limits that
    are not plain integers the native side can hold (a float, infinity) take the Python path."""
    if not limits.native:
        return None
    a: np.ndarray | None = _float_input(
        value, spec.width, spec.dims, limits.max_rows, limits.max_bytes, limits.allow_non_finite
    )
    return a


def _check_array(spec: InputSpec, array: np.ndarray, limits: InputLimits, total: int) -> int:
    """Shape, finite values and the byte limit of one input; returns the bytes so far."""
    _check_shape(spec, array, limits)
    if not limits.allow_non_finite and array.dtype.kind in "fc" and not _finite(array):
        raise InvalidRequestError(
            f"input {spec.name!r} holds NaN or infinity, which this deployment refuses",
            field=spec.name,
        )
    total += array.nbytes
    if total > limits.max_bytes:
        raise InvalidRequestError(
            f"inputs are over the {limits.max_bytes} byte limit of one request", field=spec.name
        )
    return total


def _finite(array: np.ndarray) -> bool:
    """No NaN or infinity. A C-contiguous float32 or float64 array is checked natively (one
    pass over the bits); another large one by one reduction when it has none (a sum that
    overflows to infinity falls back to the element-wise check); a small one directly, since
    setting the floating-point error state costs more than checking it."""
    if array.dtype in _NATIVE_FINITE and array.flags.c_contiguous:
        return bool(_all_finite(array))
    if array.dtype.kind == "f" and array.size >= 4096:
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(np.add.reduce(array, axis=None)):
                return True
    return bool(np.isfinite(array).all())


def _by_name(data: Any, specs: Sequence[InputSpec]) -> dict[str, Any]:
    if type(data) is dict and len(data) == len(specs) and all(s.name in data for s in specs):
        return data  # the common case, checked without building anything
    names = [s.name for s in specs]
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise InvalidRequestError(
                f"unknown input {unknown[0]!r}; the model's inputs are {names}",
                field=str(unknown[0]),
            )
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidRequestError(f"input {missing[0]!r} is missing", field=missing[0])
        return dict(data)
    if isinstance(data, np.ndarray) and len(specs) == 1:
        return {names[0]: data}
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if data and all(isinstance(t, Mapping) and "datatype" in t for t in data):
            return _from_v2(data, specs)
        if len(specs) == 1:
            return {names[0]: data}
        if len(data) == len(specs):
            return dict(zip(names, data, strict=True))
        raise InvalidRequestError(
            f"the model has {len(specs)} inputs {names}; send {{name: rows}} or one array each",
            field="input",
        )
    raise InvalidRequestError(
        "input must be a list of rows, a mapping of input name to rows, or V2 typed tensors",
        field="input",
    )


def _from_v2(tensors: Sequence[Any], specs: Sequence[InputSpec]) -> dict[str, Any]:
    """V2 request tensors: ``data`` is flat (row-major) or nested, ``shape`` is authoritative."""
    by_name = {s.name: s for s in specs}
    out: dict[str, Any] = {}
    for t in tensors:
        name = t.get("name")
        if name not in by_name:
            raise InvalidRequestError(
                f"unknown input {name!r}; the model's inputs are {list(by_name)}",
                field=str(name),
            )
        datatype = str(t.get("datatype", "")).upper()
        if datatype not in V2_DATATYPES:
            raise InvalidRequestError(
                f"input {name!r}: unknown datatype {t.get('datatype')!r}; "
                f"use one of {', '.join(V2_DATATYPES)}",
                field=f"{name}.datatype",
            )
        shape = t.get("shape")
        if isinstance(shape, np.ndarray) and shape.ndim == 1 and shape.dtype.kind == "i":
            shape = shape.tolist()  # a decoder that reads number arrays into arrays
        if not isinstance(shape, Sequence) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidRequestError(
                f"input {name!r}: shape must be a list of non-negative integers",
                field=f"{name}.shape",
            )
        if name in out:
            raise InvalidRequestError(f"input {name!r} is given twice", field=str(name))
        if t.get("data") is None:
            raise InvalidRequestError(f"input {name!r} has no data", field=f"{name}.data")
        array = _convert(by_name[name], t.get("data"), source=V2_DATATYPES[datatype])
        if array.size != math.prod(shape):
            raise InvalidRequestError(
                f"input {name!r}: {array.size} values do not fill shape {list(shape)}",
                field=f"{name}.shape",
            )
        out[name] = array.reshape(shape)
    missing = [s.name for s in specs if s.name not in out]
    if missing:
        raise InvalidRequestError(f"input {missing[0]!r} is missing", field=missing[0])
    return out


def _convert(spec: InputSpec, value: Any, source: np.dtype[Any] | None = None) -> np.ndarray:
    """The value as an array of the input's dtype; refuses conversions that would lose data.
    ``source`` is the datatype a V2 tensor declares: its values must be numbers that datatype
    holds (not strings, not 1000 as INT8, not 1.5 as INT32)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequestError(
            f"input {spec.name!r} is not a rectangular array of numbers: {exc}", field=spec.name
        ) from exc
    if source is not None and array.dtype != source:
        array = _as_declared(spec, value, array, source)
    if array.dtype == spec.dtype:
        return array
    if array.dtype.kind not in "biufc" or array.dtype == object:
        raise InvalidRequestError(
            f"input {spec.name!r} must be numbers of type {spec.dtype.name} "
            f"(got {array.dtype.name}; is it ragged?)",
            field=spec.name,
        )
    if _lossless(array, spec.dtype):
        return array.astype(spec.dtype)
    raise InvalidRequestError(
        f"input {spec.name!r} must be {spec.dtype.name}; {array.dtype.name} values do not "
        "convert without loss",
        field=spec.name,
    )


def _as_declared(
    spec: InputSpec, value: Any, array: np.ndarray, source: np.dtype[Any]
) -> np.ndarray:
    """A V2 tensor's data as the datatype it declares. A JSON number is a number: any of them
    narrows to a float datatype (FP32 data may be written 3 or 16777217). An integer datatype
    takes only whole values it holds, checked one by one when numpy did not read them as
    integers (a list with a value past int64, such as UINT64's largest, reads as float64)."""
    kind = array.dtype.kind
    if source.kind == "f" and kind in "iuf":
        with np.errstate(over="ignore"):  # past the datatype's range: the finite check refuses
            return array.astype(source)
    if kind in "biu" and _lossless(array, source):  # BOOL, or integers in range
        return array.astype(source)
    if source.kind == "b" and kind == "f" and _lossless(array, source):  # 0.0 / 1.0 as BOOL
        return array.astype(source)
    if source.kind in "iu" and kind in "fO":  # whole numbers, even past float64's precision
        exact = _whole_values(value, source)
        if exact is not None:
            return exact
    raise InvalidRequestError(
        f"input {spec.name!r}: its data are not {_v2_name(source)} values "
        f"(got {array.dtype.name}{'; is it ragged?' if array.dtype == object else ''})",
        field=f"{spec.name}.data",
    )


def _whole_values(value: Any, dtype: np.dtype[Any]) -> np.ndarray | None:
    """``value``'s numbers as an array of the integer ``dtype``, each converted exactly from
    the Python number; ``None`` if any is not a whole number within the dtype's range (or the
    value is not a rectangular array of numbers)."""
    try:
        grid = np.asarray(value, dtype=object)
    except (TypeError, ValueError):
        return None
    info = np.iinfo(dtype)
    ints = []
    for v in grid.ravel():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int | np.integer) or not info.min <= int(v) <= info.max:
            return None
        ints.append(int(v))
    return np.array(ints, dtype=dtype).reshape(grid.shape)


def _v2_name(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (``FP32``)."""
    return next((name for name, d in V2_DATATYPES.items() if d == dtype), dtype.name)


def _lossless(array: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """Whether converting ``array`` to ``dtype`` keeps every value.

    Python ints and floats arrive as int64/float64. Float narrowing is what a JSON client means
    (a value that overflows to infinity is then refused by the finite check); any other narrowing
    or change of kind is allowed only when every value survives the round trip (1.0 -> int 1,
    3 -> uint8; not 2**32 + 5 -> int32, nor 1.5 -> int).
    """
    if np.can_cast(array.dtype, dtype, casting="safe"):
        return True
    if array.dtype.kind == "f" and dtype.kind == "f":
        return True
    if "c" in (array.dtype.kind, dtype.kind):
        return False
    if array.dtype.kind in "iu" and dtype.kind in "iu":
        # By range: a round trip through the other signedness of one width hides the wrap
        # (-1 -> uint64 2**64 - 1 -> int64 -1).
        if not array.size:
            return True
        info = np.iinfo(dtype)
        return bool(int(array.min()) >= info.min and int(array.max()) <= info.max)
    with np.errstate(all="ignore"):
        converted = array.astype(dtype)
        return bool(np.array_equal(converted.astype(array.dtype), array))


def _check_shape(spec: InputSpec, array: np.ndarray, limits: InputLimits) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        dims = ", ".join(str(d) for d in spec.shape)
        hint = " (add the leading batch axis)" if array.ndim == len(spec.shape) - 1 else ""
        raise InvalidRequestError(
            f"input {spec.name!r} must have rank {len(spec.shape)} ([{dims}]), got shape "
            f"{list(array.shape)}{hint}",
            field=spec.name,
        )
    if array.ndim == 0:
        return
    if array.shape[0] == 0:
        raise InvalidRequestError(f"input {spec.name!r} has no rows", field=spec.name)
    if array.shape[0] > limits.max_rows:
        raise InvalidRequestError(
            f"input {spec.name!r} has {array.shape[0]} rows; one request holds at most "
            f"{limits.max_rows} (send a batch job for more)",
            field=spec.name,
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want != got and isinstance(want, int):
            raise InvalidRequestError(
                f"input {spec.name!r} dimension {axis} must be {want}, got {got}", field=spec.name
            )


def _check_rows(arrays: Mapping[str, np.ndarray]) -> None:
    rows = {name: a.shape[0] for name, a in arrays.items() if a.ndim}
    if len(set(rows.values())) > 1:
        raise InvalidRequestError(
            f"inputs disagree on the number of rows: {rows}", field=next(iter(rows))
        )


def _check_symbols(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
    """Inputs that share a symbolic dimension (e.g. ``seq``) must agree on its size."""
    seen: dict[str, tuple[int, str]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape or ()):
            if axis == 0 or not isinstance(dim, str):
                continue
            got = arrays[spec.name].shape[axis]
            first = seen.setdefault(dim, (got, spec.name))
            if first[0] != got:
                raise InvalidRequestError(
                    f"input {spec.name!r} dimension {axis} ({dim!r}) is {got}, but input "
                    f"{first[1]!r} has {dim!r} = {first[0]}",
                    field=spec.name,
                )
