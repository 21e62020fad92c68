"""Inline request tensors: conversion and checks against the model's inputs (serving._inputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phi_engine.errors import InvalidRequestError
from phi_engine.serving._inputs import InputLimits, InputSpec, parse_inputs

X = InputSpec("x", np.dtype(np.float32), ("batch", 4))
IDS = InputSpec("ids", np.dtype(np.int64), ("batch", "seq"))
MASK = InputSpec("mask", np.dtype(np.int64), ("batch", "seq"))
LIMITS = InputLimits(max_rows=8, max_bytes=1 << 20)


def refused(data: object, specs: list[InputSpec], field: str, limits: InputLimits = LIMITS) -> str:
    with pytest.raises(InvalidRequestError) as info:
        parse_inputs(data, specs, limits)
    assert info.value.field == field, info.value.message
    return info.value.message


def test_list_mapping_and_array_forms_agree(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for data in (x, x.tolist(), {"x": x.tolist()}):
        got = parse_inputs(data, [X], LIMITS)["x"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x)


def test_python_numbers_narrow_to_the_input_dtype() -> None:
    got = parse_inputs({"ids": [[1, 2, 3]], "mask": [[1, 1, 0]]}, [IDS, MASK], LIMITS)
    assert got["ids"].dtype == np.int64 and got["ids"].shape == (1, 3)
    # whole-valued floats are exact as integers; 1.5 is not
    got = parse_inputs({"ids": [[1.0, 2.0]], "mask": [[1, 1]]}, [IDS, MASK], LIMITS)
    np.testing.assert_array_equal(got["ids"], [[1, 2]])
    assert "without loss" in refused({"ids": [[1.5, 2.0]], "mask": [[1, 1]]}, [IDS, MASK], "ids")


def test_v2_typed_tensors() -> None:
    tensors = [
        {"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "mask", "shape": [2, 2], "datatype": "INT64", "data": [[1, 1], [1, 0]]},
    ]
    got = parse_inputs(tensors, [IDS, MASK], LIMITS)
    np.testing.assert_array_equal(got["ids"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(got["mask"], [[1, 1], [1, 0]])
    bad = [dict(tensors[0], datatype="FP8"), tensors[1]]
    assert "datatype" in refused(bad, [IDS, MASK], "ids.datatype")
    short = [dict(tensors[0], data=[1, 2, 3]), tensors[1]]
    refused(short, [IDS, MASK], "ids.shape")
    refused([tensors[0]], [IDS, MASK], "mask")


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"x": [[1, 2, 3]]}, "x", "dimension 1 must be 4"),
        ({"x": [1, 2, 3, 4]}, "x", "add the leading batch axis"),
        ({"x": [[1, 2], [3]]}, "x", "rectangular"),
        ({"x": [["a", "b", "c", "d"]]}, "x", "numbers"),
        ({"y": [[1, 2, 3, 4]]}, "y", "unknown input"),
        ({}, "x", "missing"),
        ({"x": np.zeros((0, 4), np.float32)}, "x", "no rows"),
        ({"x": np.zeros((9, 4), np.float32)}, "x", "at most 8"),
        ({"x": [[1, 2, 3, float("nan")]]}, "x", "NaN"),
        ({"x": [[1, 2, 3, float("inf")]]}, "x", "NaN or infinity"),
        ("text", "input", "input must be"),
    ],
)
def test_bad_inputs_name_the_field(data: object, field: str, words: str) -> None:
    assert words in refused(data, [X], field)


def test_non_finite_allowed_when_the_deployment_says_so() -> None:
    limits = InputLimits(max_rows=8, allow_non_finite=True)
    got = parse_inputs({"x": [[1, 2, 3, float("nan")]]}, [X], limits)
    assert np.isnan(got["x"][0, 3])


def test_byte_limit_and_row_agreement() -> None:
    big = np.zeros((8, 4), np.float32)
    refused({"x": big}, [X], "x", InputLimits(max_rows=8, max_bytes=64))
    refused({"ids": [[1, 2]], "mask": [[1, 1], [1, 1]]}, [IDS, MASK], "ids")
    refused([[[1, 2]]], [IDS, MASK], "input")  # one array for a two-input model
    assert "'seq'" in refused({"ids": [[1, 2]], "mask": [[1, 1, 1]]}, [IDS, MASK], "mask")


def test_integers_that_do_not_fit_are_refused_not_wrapped() -> None:
    small = InputSpec("ids", np.dtype(np.int32), ("batch", 2))
    got = parse_inputs({"ids": [[1, 2**31 - 1]]}, [small], LIMITS)
    assert got["ids"].dtype == np.int32 and got["ids"][0, 1] == 2**31 - 1
    for value in (2**31, 2**32 + 5, -(2**31) - 1):
        assert "without loss" in refused({"ids": [[1, value]]}, [small], "ids")
    assert "without loss" in refused({"x": [[2**60 + 1, 0, 0, 0]]}, [X], "x")  # not exact in f32


def test_decoded_float_arrays_are_checked_like_lists(rng: np.random.Generator) -> None:
    """The float64 arrays the native JSON decoder makes take a shorter path through
    parse_inputs; it must answer exactly as the list path does."""
    rows = rng.standard_normal((3, 4))
    got = parse_inputs({"x": rows}, [X], LIMITS)["x"]
    want = parse_inputs({"x": rows.tolist()}, [X], LIMITS)["x"]
    assert got.dtype == np.float32 and np.array_equal(got, want)
    for bad, words in (
        (rows[0], "rank 2"),
        (rng.standard_normal((2, 5)), "dimension 1 must be 4"),
        (np.full((1, 4), np.nan), "NaN"),
        (np.full((1, 4), np.inf), "NaN or infinity"),
        (rng.standard_normal((9, 4)), "at most 8"),
    ):
        message = refused({"x": bad}, [X], "x")
        assert words in message, message
        assert refused({"x": bad.tolist()}, [X], "x") == message
    assert "no rows" in refused({"x": np.zeros((0, 4))}, [X], "x")
    small = InputLimits(max_rows=64, max_bytes=32)
    assert "byte limit" in refused({"x": rows}, [X], "x", small)


def test_decoded_bare_arrays_and_v2_tensors_are_checked_like_lists(
    rng: np.random.Generator,
) -> None:
    """A one-input model's rows as a bare decoded array (/v1's "data"), and one V2 tensor whose
    data and shape the decoder read into arrays, take shorter paths; they must answer as the
    list forms do, field names included."""
    rows = rng.standard_normal((3, 4))
    want = parse_inputs({"x": rows.tolist()}, [X], LIMITS)["x"]

    def v2(data: object, shape: object, datatype: str = "FP32") -> list[dict[str, object]]:
        return [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]

    for form in (rows, v2(rows.ravel(), np.array([3, 4])), v2(rows.ravel(), [3, 4])):
        got = parse_inputs(form, [X], LIMITS)["x"]
        assert got.dtype == np.float32 and np.array_equal(got, want)
    flat = rows.ravel()
    for array_form, list_form, field in (
        (v2(flat, np.array([4, 3])), v2(flat.tolist(), [4, 3]), "x"),  # dimension 1 must be 4
        (v2(flat, np.array([2, 4])), v2(flat.tolist(), [2, 4]), "x.shape"),  # 12 values, 8 slots
        (v2(np.full(4, np.nan), [1, 4]), v2([float("nan")] * 4, [1, 4]), "x"),
        (v2(flat, [3, 4], "FP8"), v2(flat.tolist(), [3, 4], "FP8"), "x.datatype"),
        (v2(flat, [3, -4]), v2(flat.tolist(), [3, -4]), "x.shape"),
    ):
        assert refused(array_form, [X], field) == refused(list_form, [X], field)
    for bad, words in ((rows[0], "rank 2"), (np.full((1, 4), np.inf), "NaN or infinity")):
        assert words in refused(bad, [X], "x")
        assert refused(bad, [X], "x") == refused(bad.tolist(), [X], "x")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_finite_check_agrees_with_numpy(rng: np.random.Generator, dtype: type) -> None:
    from phi_engine._native import require_core

    all_finite = require_core().all_finite
    info = np.finfo(dtype)
    for n in (0, 1, 7, 8, 33, 1000):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(dtype)
        a[: n // 3] = info.max  # the largest finite values pass
        a[n // 3 : n // 2] = info.smallest_subnormal
        assert all_finite(a) is True
        for bad in (np.nan, np.inf, -np.inf, -np.nan):
            for where in {0, n // 2, n - 1} if n else set():
                b = a.copy()
                b[where] = bad
                assert all_finite(b) is False and not np.isfinite(b).all()
        assert all_finite(a.reshape(1, -1)) is bool(np.isfinite(a).all())
    with pytest.raises(TypeError):
        all_finite(np.zeros((4, 4), dtype)[:, ::2])  # not C-contiguous
    with pytest.raises(TypeError):
        all_finite(np.zeros(4, np.float16))
    # parse_inputs still refuses non-finite values in the layouts the native check does not take
    strided = np.zeros((2, 8), np.float32)[:, ::2]
    strided[1, 1] = np.nan
    refused({"x": strided}, [X], "x")


def _outcome(data: object, spec: InputSpec, limits: InputLimits) -> object:
    try:
        return parse_inputs(data, [spec], limits)[spec.name]
    except InvalidRequestError as exc:
        return (exc.field, exc.message)


def test_the_native_float_check_agrees_with_the_python_checks(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float inputs take one native call (check and conversion); turned off, the Python checks
    decide. Both must give the same array, or the same error, on every case."""
    from phi_engine.serving import _inputs

    specs = [
        InputSpec("x", np.dtype(np.float32), ("batch", 4)),
        InputSpec("x", np.dtype(np.float64), ("batch", "seq")),
        InputSpec("x", np.dtype(np.float32), (2, 3)),
        InputSpec("x", np.dtype(np.float32), None),
        InputSpec("x", np.dtype(np.float32), ()),
    ]
    arrays = []
    for _ in range(300):
        shape = tuple(int(d) for d in rng.integers(0, 11, size=int(rng.integers(0, 4))))
        dtype = rng.choice(["<f4", "<f8", "<f2", ">f4"])
        with np.errstate(over="ignore"):  # large values become infinities in the narrow types
            a = (rng.standard_normal(shape) * rng.choice([1.0, 1e39, 1e300])).astype(dtype)
        if a.size and rng.random() < 0.2:
            a.flat[int(rng.integers(a.size))] = rng.choice([np.nan, np.inf, -np.inf])
        if a.ndim == 2 and a.shape[1] > 1 and rng.random() < 0.2:
            a = a[:, ::2]  # not contiguous
        arrays.append(a)
    arrays += [np.ones((2, 4), np.float32), np.ones((2, 3)), np.array(1.5, np.float32)]
    limits = [LIMITS, InputLimits(max_rows=3, max_bytes=64), InputLimits(allow_non_finite=True)]
    with np.errstate(over="ignore"):  # numpy's astype warns of the infinities it makes
        native = [[_outcome(a, s, lim) for s in specs for lim in limits] for a in arrays]
        monkeypatch.setattr(_inputs, "_float_input", lambda *args: None)
        python = [[_outcome(a, s, lim) for s in specs for lim in limits] for a in arrays]
    accepted = 0
    for a, got, want in zip(arrays, native, python, strict=True):
        for g, w in zip(got, want, strict=True):
            if isinstance(w, tuple):
                assert g == w, (a.dtype, a.shape)
                continue
            accepted += 1
            assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    assert accepted > 200  # the cases are not all refusals


def test_the_native_float_check_hands_back_the_array_it_was_given() -> None:
    x = np.ones((2, 4), np.float32)
    assert parse_inputs(x, [X], LIMITS)["x"] is x  # no copy when the dtype already fits
    wide = np.full((2, 4), 0.1)
    got = parse_inputs(wide, [X], LIMITS)["x"]
    assert got.dtype == np.float32 and not np.shares_memory(got, wide)
    np.testing.assert_array_equal(got, wide.astype(np.float32))  # rounds as numpy's astype


@pytest.mark.parametrize(
    "limits",
    [
        InputLimits(max_rows=64.0, max_bytes=1e9),  # type: ignore[arg-type]
        InputLimits(max_rows=math.inf, max_bytes=math.inf),  # type: ignore[arg-type]
        InputLimits(max_rows=1 << 64, max_bytes=1 << 70),
        InputLimits(max_rows=True, max_bytes=64),  # a bool is not a row count for the native side
    ],
)
def test_limits_the_native_check_cannot_hold_take_the_python_path(limits: InputLimits) -> None:
    """Limits given as floats, infinity or integers past 64 bits still work: the request goes
    through the Python checks instead of failing in the native call."""
    x = np.ones((1, 4), np.float32)
    assert parse_inputs(x, [X], limits)["x"] is x
    np.testing.assert_array_equal(parse_inputs(np.ones((1, 4)), [X], limits)["x"], x)
    with pytest.raises(InvalidRequestError) as exc:
        parse_inputs(np.full((1, 4), np.nan, np.float32), [X], limits)
    assert exc.value.field == "x"


def test_the_native_float_check_declines_dims_it_cannot_read() -> None:
    from phi_engine._native import require_core

    float_input = require_core().float_input
    x = np.ones((2, 4), np.float32)
    assert float_input(x, 4, (-1, 4), 64, 1 << 20, False) is x
    assert float_input(x, 4, [-1, 4], 64, 1 << 20, False) is None  # not a tuple
    assert float_input(x, 4, (-1, "4"), 64, 1 << 20, False) is None  # not an int
    assert float_input(x, 4, (-1, 1 << 70), 64, 1 << 20, False) is None  # past any size
    assert float_input(x, 4, (-1, 4), 64, 31, False) is None  # 32 bytes over a 31 byte limit


def test_large_inputs_are_checked_and_converted_natively(rng: np.random.Generator) -> None:
    """Past 65,536 floats the native check runs without the GIL; its answers are the same."""
    spec = InputSpec("x", np.dtype(np.float32), ("batch", 1 << 14))
    wide = rng.standard_normal((8, 1 << 14))
    got = parse_inputs(wide, [spec], LIMITS)["x"]
    np.testing.assert_array_equal(got, wide.astype(np.float32))
    same = got.copy()
    assert parse_inputs(same, [spec], LIMITS)["x"] is same
    for a in (wide, same):
        a[7, -1] = np.inf
        with pytest.raises(InvalidRequestError, match="NaN or infinity"):
            parse_inputs(a, [spec], LIMITS)


def test_an_input_spec_takes_a_dtype_by_name() -> None:
    spec = InputSpec("x", "float32", ("batch", 4))  # type: ignore[arg-type]
    assert spec.dtype == np.dtype(np.float32) and spec.width == 4
    np.testing.assert_array_equal(parse_inputs([[1, 2, 3, 4]], [spec], LIMITS)["x"], [[1, 2, 3, 4]])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_rows": -1}, "max_rows"),
        ({"max_rows": 0}, "max_rows"),
        ({"max_rows": math.nan}, "max_rows"),
        ({"max_rows": "64"}, "max_rows"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": None}, "max_bytes"),
    ],
)
def test_limits_that_are_not_sizes_are_refused(kwargs: dict[str, object], field: str) -> None:
    """A negative, zero, NaN or non-number limit was accepted, and then refused every request
    (or, as NaN, none)."""
    with pytest.raises(InvalidRequestError) as info:
        InputLimits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_v2_integer_data_past_int64_is_exact() -> None:
    """A list holding UINT64's largest value reads as float64 in numpy: it was refused, and
    2**63 + 1 was accepted as 2**63."""
    spec = [InputSpec("x", np.dtype(np.uint64), ("N", 2))]
    for row in ([2**64 - 1, 2], [2**63 + 1, 2], [1.0, 2]):
        tensor = {"name": "x", "shape": [1, 2], "datatype": "UINT64", "data": row}
        got = parse_inputs([tensor], spec, InputLimits())["x"]
        assert got.dtype == np.uint64 and [int(v) for v in got[0]] == [int(v) for v in row]
    for row in ([2**64, 2], [-1, 2], [2.5, 2]):
        tensor = {"name": "x", "shape": [1, 2], "datatype": "UINT64", "data": row}
        with pytest.raises(InvalidRequestError) as info:
            parse_inputs([tensor], spec, InputLimits())
        assert info.value.field == "x.data"


def test_v2_float_datatypes_take_any_json_number() -> None:
    """JSON does not tell 16777217 from 16777217.0: both narrow to FP32 (the int was refused)."""
    spec = [InputSpec("x", np.dtype(np.float32), ("N", 2))]
    for datatype, row in (("FP32", [16777217, 3]), ("FP16", [2049, 3]), ("FP64", [2**53 + 1, 3])):
        tensor = {"name": "x", "shape": [1, 2], "datatype": datatype, "data": row}
        got = parse_inputs([tensor], spec, InputLimits())["x"]
        want = np.array([row], dtype=np.dtype(datatype.replace("FP", "float")))
        assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
    # past FP16's range: infinity, refused as any non-finite input is
    tensor = {"name": "x", "shape": [1, 2], "datatype": "FP16", "data": [70000, 3]}
    with pytest.raises(InvalidRequestError) as info:
        parse_inputs([tensor], spec, InputLimits())
    assert info.value.field == "x"


def test_limits_may_be_numpy_numbers() -> None:
    limits = InputLimits(max_rows=np.int64(2), max_bytes=np.float64(1 << 20))  # type: ignore[arg-type]
    x = np.ones((2, 4), np.float32)
    spec = [InputSpec("x", np.dtype(np.float32), ("N", 4))]
    assert parse_inputs({"x": x}, spec, limits)["x"].shape == (2, 4)
    with pytest.raises(InvalidRequestError):
        parse_inputs({"x": np.ones((3, 4), np.float32)}, spec, limits)
