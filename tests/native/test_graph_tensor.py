"""The tensor and shape ops of the graph compiler (phi_engine.graph.ops.tensor).

Every case builds a one-node ONNX model on random inputs and runs it twice: compiled for "cpu"
(native layout kernels where the op lowers) and for "reference" (numpy only). Both must equal an
independent numpy expectation exactly: these ops move or pick elements, so there is no rounding
(assert_array_equal throughout). Where an op lowers, the cpu program must have no reference
nodes.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from phi_engine.errors import InvalidRequestError
from phi_engine.graph import compile
from phi_test_models.onnx_nodes import Const, node_model

DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_]
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "O":
        return np.array(
            [f"s{v}" for v in rng.integers(0, 99, int(np.prod(shape)))], object
        ).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 100), shape, endpoint=True).astype(
            dtype
        )
    return (rng.standard_normal(shape) * 10).astype(dtype)


def i64(*values: int) -> Const:
    return Const(np.array(values, dtype=np.int64))


def _info(name: str, dtype: Any, shape: Any) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape
    )


model = functools.partial(node_model, opset=18)


def feeds(args: list[np.ndarray | Const | None]) -> dict[str, np.ndarray]:
    return {f"x{i}": a for i, a in enumerate(args) if isinstance(a, np.ndarray)}


def run(
    op_type: str,
    args: list[np.ndarray | Const | None],
    attrs: dict[str, Any] | None = None,
    *,
    outputs: int = 1,
    opset: int = 18,
    native: bool | None = None,
) -> list[np.ndarray]:
    """Run on both devices; they must agree exactly. ``native``: whether cpu must be all native."""
    m = model(op_type, args, attrs, outputs=outputs, opset=opset)
    cpu, ref = compile(m), compile(m, device="reference")
    given = feeds(args)
    got = [cpu.run(given)[f"y{j}"] for j in range(outputs)]
    want = [ref.run(given)[f"y{j}"] for j in range(outputs)]
    for g, w in zip(got, want, strict=True):
        same(g, w)
    if native is not None:
        program = cpu.program({k: v.shape for k, v in given.items()})
        assert (program.reference_nodes == []) is native, program.reference_nodes
    return got


def same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual, expected, strict=True)


# ---- shape arithmetic folds per shape bucket ------------------------------------------------


def _dynamic_reshape_model() -> onnx.ModelProto:
    """y = x.reshape(batch, -1, 4), the target built from Shape -> Gather -> Concat."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "zero"], ["b1"]),
        helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "rest"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_info("x", np.float32, ["batch", "seq", 8])],
        [_info("y", np.float32, None)],
        inits,
    )
    graph.initializer[0].dims[:] = []
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_shape_subgraph_folds_per_bucket_and_reshape_runs_natively(
    rng: np.random.Generator,
) -> None:
    cm = compile(_dynamic_reshape_model())
    assert cm.outputs["y"].rank == 3
    for shape in [(2, 3, 8), (5, 1, 8), (1, 7, 8)]:
        x = rand(rng, shape)
        program = cm.program({"x": shape})
        assert program.reference_nodes == []
        assert [n.op_type for n in program.graph.nodes] == ["Reshape"]
        same(cm.run({"x": x})["y"], x.reshape(shape[0], -1, 4))


def test_symbolic_inference_keeps_symbols_where_exact() -> None:
    x = np.zeros((2, 12, 64), np.float32)
    cases: list[tuple[str, list[Any], dict[str, Any], tuple[Any, ...]]] = [
        ("Reshape", [x, i64(0, -1)], {}, ("batch", 768)),
        ("Reshape", [x, i64(0, 0, 8, 8)], {}, ("batch", 12, 8, 8)),
        ("Flatten", [x], {"axis": 1}, ("batch", 768)),
        ("Flatten", [x], {"axis": 0}, (1, None)),
        ("Slice", [x, i64(0), i64(INT64_MAX), i64(0)], {}, ("batch", 12, 64)),
        ("Slice", [x, i64(1), i64(5), i64(1)], {}, ("batch", 4, 64)),
        ("Transpose", [x], {"perm": [2, 0, 1]}, (64, "batch", 12)),
        ("Unsqueeze", [x, i64(0, -1)], {}, (1, "batch", 12, 64, 1)),
        ("Expand", [x, i64(3, 1, 1, 1)], {}, (3, "batch", 12, 64)),
        ("Tile", [x, i64(1, 2, 1)], {}, ("batch", 24, 64)),
        ("Pad", [x, i64(0, 1, 0, 0, 2, 0)], {}, ("batch", 15, 64)),
    ]
    for op_type, args, attrs, want in cases:
        m = model(op_type, args, attrs, shapes={0: ["batch", 12, 64]})
        got = compile(m).outputs["y0"].shape
        assert got is not None
        assert len(got) == len(want), (op_type, got)
        for g, w in zip(got, want, strict=True):
            assert w is None or g == w, (op_type, got, want)


def test_shape_publishes_its_static_part_at_compile_time() -> None:
    x = np.zeros((2, 3, 4), np.float32)
    m = model("Shape", [x], {"start": 1}, shapes={0: ["batch", 3, 4]})
    cm = compile(m)
    assert cm.graph.nodes == []
    same(cm.run({"x0": x})["y0"], np.array([3, 4], np.int64))
    cm = compile(model("Shape", [x], {"end": -1}, shapes={0: ["batch", 3, 4]}))
    assert [n.op_type for n in cm.graph.nodes] == ["Shape"]
    same(cm.run({"x0": x})["y0"], np.array([2, 3], np.int64))


@pytest.mark.parametrize(
    ("attrs", "want"),
    [({}, [2, 3, 4]), ({"start": -2}, [3, 4]), ({"start": 5}, []), ({"start": 2, "end": 1}, [])],
)
def test_shape_start_end(attrs: dict[str, int], want: list[int]) -> None:
    (got,) = run("Shape", [np.zeros((2, 3, 4), np.int8)], attrs)
    same(got, np.array(want, np.int64))


def test_size_and_constant() -> None:
    same(run("Size", [np.zeros((2, 3, 4), np.bool_)])[0], np.array(24, np.int64))
    same(run("Constant", [], {"value_floats": [1.5, 2.0]})[0], np.array([1.5, 2.0], np.float32))
    same(run("Constant", [], {"value_int": 7})[0], np.array(7, np.int64))
    strings = run("Constant", [], {"value_strings": ["a", "bc"]})[0]
    assert strings.tolist() == ["a", "bc"]


# ---- native layout lowerings, every native dtype --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_family_runs_natively(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (2, 3, 4), dtype)
    same(run("Reshape", [x, i64(4, 0, -1)], native=True)[0], x.reshape(4, 3, 2))
    same(run("Flatten", [x], {"axis": -1}, native=True)[0], x.reshape(6, 4))
    y = rand(rng, (1, 3, 1), dtype)
    same(run("Squeeze", [y], native=True)[0], y.reshape(3))
    same(run("Squeeze", [y, i64(-1)], native=True)[0], y.reshape(1, 3))
    same(run("Squeeze", [y], {"axes": [0]}, opset=11, native=True)[0], y.reshape(3, 1))
    same(run("Unsqueeze", [x, i64(3, 0)], native=True)[0], x.reshape(1, 2, 3, 1, 4))
    same(run("Unsqueeze", [x], {"axes": [-1]}, opset=11, native=True)[0], x[..., None])


def test_reshape_allowzero(rng: np.random.Generator) -> None:
    x = rand(rng, (0, 3))
    same(run("Reshape", [x, i64(3, 0)], {"allowzero": 1}, native=True)[0], x.reshape(3, 0))
    y = rand(rng, (2, 3))
    same(run("Reshape", [y, i64(0, 3)], native=True)[0], y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_concat_split_run_natively(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (2, 3, 4), dtype)
    same(run("Transpose", [x], {"perm": [1, 2, 0]}, native=True)[0], x.transpose(1, 2, 0))
    same(run("Transpose", [x], native=True)[0], x.transpose())
    z = rand(rng, (2, 5, 4), dtype)
    got = run("Concat", [x, Const(z), x], {"axis": -2}, native=True)[0]
    same(got, np.concatenate([x, z, x], axis=1))
    parts = run("Split", [z, i64(1, 0, 4)], {"axis": 1}, outputs=3, native=True)
    for g, w in zip(parts, [z[:, :1], z[:, 1:1], z[:, 1:]], strict=True):
        same(g, w)
    parts = run("Split", [z], {"axis": 1, "num_outputs": 2}, outputs=2, native=True)
    for g, w in zip(parts, [z[:, :3], z[:, 3:]], strict=True):
        same(g, w)


SLICES = [
    ((1,), (3,), (1,), (1,)),
    ((-1,), (INT64_MIN,), (0,), (-1,)),
    ((0, 3), (INT64_MAX, -1), (2, 1), (2, 1)),
    ((-100,), (-200,), (0,), (-1,)),  # ONNX clamps the start to 0: one element
    ((10,), (-10,), (1,), (-2,)),
    ((5,), (2,), (2,), (1,)),  # empty
]


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), SLICES)
@pytest.mark.parametrize("dtype", [np.float32, np.bool_, np.int64])
def test_slice_runs_natively(
    rng: np.random.Generator, starts: Any, ends: Any, axes: Any, steps: Any, dtype: Any
) -> None:
    x = rand(rng, (4, 5, 6), dtype)
    got = run("Slice", [x, i64(*starts), i64(*ends), i64(*axes), i64(*steps)], native=True)[0]
    want = x
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        want = np.take(want, _onnx_slice(x.shape[a], s, e, st), axis=a)
    same(got, want)


def _onnx_slice(dim: int, start: int, end: int, step: int) -> Any:
    """The spec's clamping, written out as a list of positions."""
    start, end = (v + dim if v < 0 else v for v in (start, end))
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return list(range(start, end, step))


def test_slice_with_runtime_starts_and_opset_1_attributes(rng: np.random.Generator) -> None:
    x = rand(rng, (4, 5))
    got = run("Slice", [x, np.array([1], np.int64), i64(3)], native=False)[0]
    same(got, x[1:3])
    got = run("Slice", [x], {"starts": [1, -2], "ends": [3, 100]}, opset=9, native=True)[0]
    same(got, x[1:3, -2:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_runs_natively_with_negative_indices(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (3, 4, 5), dtype)
    idx = np.array([[0, -1], [3, -4]], np.int64)
    same(run("Gather", [x, Const(idx)], {"axis": 1}, native=True)[0], np.take(x, idx, axis=1))
    idx32 = np.array([-3, 2], np.int32)
    same(run("Gather", [x, idx32], native=True)[0], x[[0, 2]])
    same(run("Gather", [x, Const(np.array(-1))], {"axis": -1}, native=True)[0], x[..., 4])


def test_gather_out_of_range_index() -> None:
    x = np.ones((3, 4), np.float32)
    with pytest.raises(InvalidRequestError, match=r"node_under_test.*index 3 is out of range"):
        compile(model("Gather", [x, Const(np.array([3], np.int64))]))
    bad = {"x0": x, "x1": np.array([0, -4], np.int64)}
    ref = compile(model("Gather", [x, bad["x1"]]), device="reference")
    with pytest.raises(InvalidRequestError, match=r"node_under_test.*index -4 is out of range"):
        ref.run(bad)
    with pytest.raises(InvalidRequestError, match="out of range"):
        compile(model("Gather", [x, bad["x1"]])).run(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.bool_, np.float16])
def test_expand_and_tile_run_natively(rng: np.random.Generator, dtype: Any) -> None:
    x = rand(rng, (3, 1), dtype)
    same(run("Expand", [x, i64(2, 1, 4)], native=True)[0], np.broadcast_to(x, (2, 3, 4)))
    same(run("Expand", [x, i64(1)], native=True)[0], x)
    same(run("Expand", [x, i64(0, 3, 1)], native=True)[0], np.zeros((0, 3, 1), dtype))
    y = rand(rng, (2, 3), dtype)
    same(run("Tile", [y, i64(2, 3)], native=True)[0], np.tile(y, (2, 3)))
    same(run("Tile", [y, i64(1, 0)], native=True)[0], np.tile(y, (1, 0)))


PADS = [
    ([1, 2, 0, 3], None),
    ([0, -1, 2, -2], None),
    ([2, 1], [-1]),
    ([0, 0, 0, 0], None),
]


@pytest.mark.parametrize(("pads", "axes"), PADS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
def test_pad_runs_natively(
    rng: np.random.Generator, pads: list[int], axes: list[int] | None, mode: str, dtype: Any
) -> None:
    x = rand(rng, (3, 5), dtype)
    fill = np.array(7, dtype)
    args: list[Any] = [x, i64(*pads), Const(fill), None if axes is None else i64(*axes)]
    got = run("Pad", args, {"mode": mode}, opset=19, native=True)[0]
    same(got, _numpy_pad(x, pads, axes, mode, fill))


def _numpy_pad(x: np.ndarray, pads: list[int], axes: list[int] | None, mode: str, fill: Any) -> Any:
    axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in axes]
    n = len(axes)
    for a, before, after in zip(axes, pads[:n], pads[n:], strict=True):
        index = [slice(None)] * x.ndim
        index[a] = slice(max(-before, 0), x.shape[a] - max(-after, 0))
        x = x[tuple(index)]
        width = [(0, 0)] * x.ndim
        width[a] = (max(before, 0), max(after, 0))
        kw = {"constant_values": fill} if mode == "constant" else {}
        x = np.pad(x, width, mode=mode, **kw)  # type: ignore[call-overload]
    return x


def test_pad_of_strings_and_opset_2_attributes(rng: np.random.Generator) -> None:
    s = rand(rng, (2, 2), object)
    got = run("Pad", [s, i64(1, 0, 0, 1)], opset=18)[0]
    assert got.tolist() == [["", "", ""], [*s[0].tolist(), ""], [*s[1].tolist(), ""]]
    x = rand(rng, (2, 3))
    got = run("Pad", [x], {"pads": [0, 1, 1, 0], "value": 1.5}, opset=2, native=True)[0]
    same(got, np.pad(x, [(0, 1), (1, 0)], constant_values=1.5))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float64])
@pytest.mark.parametrize(("upper", "k"), [(1, 0), (0, 0), (1, -1), (0, 2), (1, 9)])
def test_trilu(rng: np.random.Generator, dtype: Any, upper: int, k: int) -> None:
    x = rand(rng, (2, 4, 5), dtype)
    want = np.triu(x, k) if upper else np.tril(x, k)
    native = np.dtype(dtype) != np.float64  # the native "where" has no float64
    same(run("Trilu", [x, Const(np.array(k))], {"upper": upper}, native=native)[0], want)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_depth_to_space_and_back(rng: np.random.Generator, mode: str, dtype: Any) -> None:
    x = rand(rng, (2, 8, 3, 5), dtype)
    (y,) = run("DepthToSpace", [x], {"blocksize": 2, "mode": mode}, opset=13, native=True)
    b, c, h, w = x.shape
    if mode == "DCR":
        want = x.reshape(b, 2, 2, c // 4, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        want = x.reshape(b, c // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3)
    same(y, want.reshape(b, c // 4, h * 2, w * 2))
    back = run("SpaceToDepth", [y], {"blocksize": 2, "mode": mode}, opset=28, native=True)[0]
    same(back, x)


# ---- reference-only ops against independent expectations -----------------------------------


def test_gather_elements_and_nd(rng: np.random.Generator) -> None:
    x = rand(rng, (3, 4, 2))
    idx = rng.integers(-4, 4, (3, 2, 2))
    got = run("GatherElements", [x, idx], {"axis": 1})[0]
    want = np.empty(idx.shape, x.dtype)
    for i, j, k in np.ndindex(*idx.shape):
        want[i, j, k] = x[i, idx[i, j, k] % 4, k]
    same(got, want)
    nd = np.stack([rng.integers(0, 4, (3, 5)), rng.integers(-2, 2, (3, 5))], axis=-1)
    got = run("GatherND", [x, nd], {"batch_dims": 1})[0]
    want = np.stack([[x[b, i, j] for i, j in nd[b]] for b in range(3)])
    same(got, want)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_and_nd(rng: np.random.Generator, reduction: str) -> None:
    data = rand(rng, (3, 4), np.int64)
    idx = rng.integers(-4, 4, (3, 3))
    upd = rand(rng, (3, 3), np.int64)
    got = run("ScatterElements", [data, idx, upd], {"axis": 1, "reduction": reduction})[0]
    ops = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
    want = data.copy()
    for i, j in np.ndindex(*idx.shape):
        at = (i, idx[i, j] % 4)
        want[at] = upd[i, j] if reduction == "none" else ops[reduction](want[at], upd[i, j])
    same(got, want)
    nd_idx = rng.integers(0, 3, (5, 1)) if reduction != "none" else np.array([[2], [0]])
    nd_upd = rand(rng, (len(nd_idx), 4), np.int64)
    got = run("ScatterND", [data, nd_idx, nd_upd], {"reduction": reduction})[0]
    want = data.copy()
    for r, (row,) in enumerate(nd_idx):
        want[row] = nd_upd[r] if reduction == "none" else ops[reduction](want[row], nd_upd[r])
    same(got, want)


@pytest.mark.parametrize("largest", [1, 0])
def test_top_k_is_stable_on_ties(rng: np.random.Generator, largest: int) -> None:
    x = rng.integers(0, 4, (3, 9)).astype(np.float32)
    values, indices = run("TopK", [x, i64(5)], {"largest": largest, "axis": -1}, outputs=2)
    for row in range(3):
        key = sorted(range(9), key=lambda i: (-x[row, i] if largest else x[row, i], i))[:5]
        same(indices[row], np.array(key, np.int64))
        same(values[row], x[row, key])


def test_cumsum_modes(rng: np.random.Generator) -> None:
    x = rand(rng, (3, 4), np.int32)
    for exclusive in (0, 1):
        for reverse in (0, 1):
            got = run(
                "CumSum", [x, Const(np.array(1))], {"exclusive": exclusive, "reverse": reverse}
            )
            w = x[:, ::-1] if reverse else x
            w = np.cumsum(w, axis=1, dtype=np.int32) - (w if exclusive else 0)
            same(got[0], w[:, ::-1] if reverse else w)


def test_one_hot_eye_like_non_zero_compress(rng: np.random.Generator) -> None:
    idx = np.array([[1, -1], [5, 0]], np.int64)
    values = np.array([0.5, 2.0], np.float32)
    got = run("OneHot", [idx, Const(np.array(3)), Const(values)], {"axis": 1})[0]
    want = np.full((2, 3, 2), 0.5, np.float32)
    want[0, 1, 0] = want[0, 2, 1] = want[1, 0, 1] = 2.0  # 5 is out of range: all off
    same(got, want)
    (eye,) = run("EyeLike", [np.zeros((3, 4), np.int32)], {"k": 1, "dtype": 9})
    same(eye, np.eye(3, 4, 1, dtype=np.bool_))
    x = rand(rng, (3, 4), np.int8) * (rng.random((3, 4)) < 0.5)
    same(run("NonZero", [x])[0], np.array(np.nonzero(x), np.int64))
    cond = np.array([True, False, True])
    same(run("Compress", [x, cond], {"axis": 0})[0], x[[0, 2]])
    same(run("Compress", [x, cond])[0], x.reshape(-1)[[0, 2]])


def test_unique_in_order_of_first_occurrence() -> None:
    x = np.array([2, 1, 1, 3, 4, 3], np.int64)
    y, first, inverse, counts = run("Unique", [x], {"sorted": 0}, outputs=4)
    same(y, np.array([2, 1, 3, 4], np.int64))
    same(first, np.array([0, 1, 3, 4], np.int64))
    same(inverse, np.array([0, 1, 1, 2, 3, 2], np.int64))
    same(counts, np.array([1, 2, 2, 1], np.int64))


def test_reverse_sequence(rng: np.random.Generator) -> None:
    x = rand(rng, (4, 3, 2))
    lens = np.array([4, 0, 2], np.int64)
    got = run("ReverseSequence", [x, lens], {"time_axis": 0, "batch_axis": 1})[0]
    want = x.copy()
    for b, n in enumerate(lens):
        want[:n, b] = x[:n, b][::-1]
    same(got, want)


def test_range_and_constant_of_shape() -> None:
    got = run("Range", [np.array(10, np.int32), np.array(4, np.int32), np.array(-3, np.int32)])
    same(got[0], np.array([10, 7], np.int32))
    start, limit, delta = (np.array(v, np.float16) for v in (2048, 2060, 1))
    got = run("Range", [start, limit, delta], opset=27)  # stash_type=1: steps in float32
    same(got[0], np.arange(2048, 2060, dtype=np.float32).astype(np.float16))
    value = helper.make_tensor("v", onnx.TensorProto.INT8, [1], [-3])
    got = run("ConstantOfShape", [i64(2, 0)], {"value": value})
    same(got[0], np.full((2, 0), -3, np.int8))


def test_strings_move_through_layout_ops(rng: np.random.Generator) -> None:
    s = rand(rng, (2, 3), object)
    assert run("Transpose", [s])[0].tolist() == s.T.tolist()
    assert run("Gather", [s, Const(np.array([-1]))], {"axis": 1})[0].tolist() == s[:, [-1]].tolist()
    assert run("Reshape", [s, i64(-1)])[0].tolist() == s.reshape(-1).tolist()


# ---- invalid nodes are refused naming the node --------------------------------------------------


def f32(*shape: int) -> np.ndarray:
    return np.full(shape, 0.5, np.float32)


BAD = [
    ("Reshape", [f32(2, 3), i64(4, -1)], {}, "cannot split"),
    ("Reshape", [f32(2, 3), i64(5)], {}, "cannot reshape"),
    ("Reshape", [f32(2, 3), i64(-1, -1)], {}, "more than one -1"),
    ("Squeeze", [f32(2, 3), i64(0)], {}, "cannot squeeze axis 0"),
    ("Concat", [f32(2, 3), np.ones((2, 3), np.int64)], {"axis": 0}, "different dtypes"),
    ("Concat", [f32(2, 3), f32(3, 3)], {"axis": 1}, "sizes .* differ"),
    ("Transpose", [f32(2, 3)], {"perm": [0, 0]}, "not a permutation"),
    ("Split", [f32(5)], {}, "equal parts"),
    ("Slice", [f32(5), i64(0), i64(1), i64(0), i64(0)], {}, "contain 0"),
    ("TopK", [f32(2, 3), i64(4)], {}, "exceeds"),
    ("Expand", [f32(2, 3), i64(4, 3)], {}, "do not broadcast"),
    ("Unsqueeze", [f32(2, 3), i64(0, 0)], {}, "repeat"),
    ("Pad", [f32(2, 3), i64(0, -2, 0, -2)], {}, "crop more"),
    ("Gather", [f32(2, 3), Const(np.array([[2]]))], {}, "out of range"),
]


@pytest.mark.parametrize(("op_type", "args", "attrs", "match"), BAD)
def test_invalid_nodes_are_refused_at_compile_naming_the_node(
    op_type: str, args: list[Any], attrs: dict[str, Any], match: str
) -> None:
    outputs = 2 if op_type in ("Split", "TopK") else 1
    with pytest.raises(InvalidRequestError, match=f"node 'node_under_test'.*{match}"):
        compile(model(op_type, args, attrs, outputs=outputs))


def test_data_dependent_shapes_run_on_the_reference_downstream(rng: np.random.Generator) -> None:
    """NonZero's output length is known only when it runs: the Transpose after it has no static
    shape in any bucket, so it falls back to the reference instead of failing to lower."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["y"], perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes, "g", [_info("x", np.int32, ["n", 4])], [_info("y", np.int64, None)]
    )
    cm = compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    x = rand(rng, (3, 4), np.int32) * (rng.random((3, 4)) < 0.5)
    same(cm.run({"x": x})["y"], np.argwhere(x).astype(np.int64))
    assert [n.op_type for n in cm.program({"x": (3, 4)}).reference_nodes] == [
        "NonZero",
        "Transpose",
    ]


def test_runtime_reshape_target_errors_name_the_node() -> None:
    x = np.ones((2, 3), np.float32)
    target = np.array([4, -1], np.int64)
    cm = compile(model("Reshape", [x, target]))
    with pytest.raises(InvalidRequestError, match=r"node 'node_under_test'.*cannot split"):
        cm.run({"x0": x, "x1": target})
