"""The neural-network ops of the graph compiler (graph/ops/nn.py, reduce.py).

Every case builds a one-node ONNX model, runs it on the CPU device (native kernels where the op
lowers) and on the numpy reference device, and compares both with an independent numpy
expectation (plain loops for windows). float32 cases that should lower are checked to run with
no reference node. Tolerances: GEMM-like float32 products rtol 1e-4; elementwise and
normalisations rtol 1e-5; float16 1e-2; integer results exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from phi_engine.errors import InvalidRequestError  # noqa: E402
from phi_engine.graph import compile  # noqa: E402

Spec = tuple[str, Any, Sequence[Any] | None]  # name, numpy dtype, shape


def model(
    op: str,
    inputs: Sequence[Spec],
    outputs: Sequence[str] = ("y",),
    *,
    consts: dict[str, np.ndarray] | None = None,
    opset: int = 22,
    node_inputs: Sequence[str] | None = None,
    **attrs: Any,
) -> Any:
    """A one-node model named "n"; ``consts`` become initializers (listed in node_inputs)."""
    consts = consts or {}
    ins = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), s)
        for n, d, s in inputs
    ]
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs if o]
    names = list(node_inputs) if node_inputs is not None else [n for n, _, _ in inputs]
    node = helper.make_node(op, names, list(outputs), name="n", **attrs)
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph([node], "g", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(m: Any, feeds: dict[str, np.ndarray], *, native: bool) -> list[list[np.ndarray]]:
    """Outputs on the cpu and reference devices; ``native``: the cpu program has no reference
    node (else: at least one)."""
    results = []
    for device in ("cpu", "reference"):
        cm = compile(m, device=device, max_batch=1 << 20)
        out = cm.run(feeds)
        results.append([out[name] for name in cm.graph.outputs])
        if device == "cpu":
            shapes = {k: v.shape for k, v in feeds.items()}
            assert (cm.program(shapes).reference_nodes == []) == native
    return results


def check(
    m: Any,
    feeds: dict[str, np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    native: bool,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    for outs in run_both(m, feeds, native=native):
        assert len(outs) == len(expected)
        for got, want in zip(outs, expected, strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype, (got, want)
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol
            )


def randn(rng: np.random.Generator, *shape: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ---- MatMul / Gemm / Einsum ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sa", "sb"),
    [
        ((3, 4), (4, 5)),
        ((4,), (4, 5)),
        ((7, 4), (4,)),
        ((4,), (4,)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 6)),
        ((6, 4), (2, 4, 3)),
    ],
)
def test_matmul_native_matches_numpy(
    rng: np.random.Generator, sa: tuple[int, ...], sb: tuple[int, ...]
) -> None:
    a, b = randn(rng, *sa), randn(rng, *sb)
    m = model("MatMul", [("a", np.float32, sa), ("b", np.float32, sb)], opset=13)
    want = np.matmul(a.astype(np.float64), b).astype(np.float32)
    check(m, {"a": a, "b": b}, [want], native=True, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint64, np.float64, np.float16])
def test_matmul_other_dtypes_run_the_reference(rng: np.random.Generator, dtype: Any) -> None:
    a = rng.integers(-5, 6, (2, 3, 4)).astype(dtype)
    b = rng.integers(-5, 6, (4, 2)).astype(dtype)
    m = model("MatMul", [("a", dtype, a.shape), ("b", dtype, b.shape)], opset=13)
    check(m, {"a": a, "b": b}, [np.matmul(a, b)], native=False)


def _gemm_expected(
    a: np.ndarray, b: np.ndarray, c: np.ndarray | None, alpha: float, beta: float, ta: int, tb: int
) -> np.ndarray:
    y = alpha * ((a.T if ta else a).astype(np.float64) @ (b.T if tb else b))
    return (y if c is None else y + beta * c.astype(np.float64)).astype(np.float32)


@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 5), (3, 1)])
@pytest.mark.parametrize("c_const", [False, True])
@pytest.mark.parametrize(("alpha", "beta", "ta", "tb"), [(1.0, 1.0, 0, 0), (0.5, -2.0, 1, 1)])
def test_gemm_bias_shapes(
    rng: np.random.Generator,
    c_shape: tuple[int, ...] | None,
    c_const: bool,
    alpha: float,
    beta: float,
    ta: int,
    tb: int,
) -> None:
    a = randn(rng, *((4, 3) if ta else (3, 4)))
    b = randn(rng, *((5, 4) if tb else (4, 5)))
    c = None if c_shape is None else randn(rng, *c_shape)
    inputs: list[Spec] = [("a", np.float32, a.shape), ("b", np.float32, b.shape)]
    feeds = {"a": a, "b": b}
    consts = {}
    if c is not None and c_const:
        consts["c"] = c
    elif c is not None:
        inputs.append(("c", np.float32, c.shape))
        feeds["c"] = c
    names = ["a", "b"] + ([] if c is None else ["c"])
    m = model(
        "Gemm",
        inputs,
        consts=consts,
        node_inputs=names,
        opset=13,
        alpha=alpha,
        beta=beta,
        transA=ta,
        transB=tb,
    )
    # Only a per-row C that is a run-time input and not a constant cannot lower.
    native = not (c_shape == (3, 1) and not c_const)
    check(
        m,
        feeds,
        [_gemm_expected(a, b, c, alpha, beta, ta, tb)],
        native=native,
        rtol=1e-4,
        atol=1e-5,
    )


def test_gemm_int_and_float16_reference(rng: np.random.Generator) -> None:
    a = rng.integers(-4, 5, (3, 4)).astype(np.int32)
    b = rng.integers(-4, 5, (4, 2)).astype(np.int32)
    c = rng.integers(-4, 5, (2,)).astype(np.int32)
    m = model("Gemm", [("a", np.int32, (3, 4)), ("b", np.int32, (4, 2)), ("c", np.int32, (2,))])
    check(m, {"a": a, "b": b, "c": c}, [a @ b + c], native=False)
    h = [randn(rng, 3, 4, dtype=np.float16), randn(rng, 4, 2, dtype=np.float16)]
    m = model("Gemm", [("a", np.float16, (3, 4)), ("b", np.float16, (4, 2))], alpha=2.0)
    want = (2.0 * (h[0].astype(np.float32) @ h[1])).astype(np.float16)
    check(m, {"a": h[0], "b": h[1]}, [want], native=False, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("eq", "shapes", "numpy_eq"),
    [
        ("ij,jk", [(2, 3), (3, 4)], "ij,jk->ik"),
        ("bij,bjk->bik", [(2, 2, 3), (2, 3, 4)], None),
        ("ii->i", [(3, 3)], None),
        ("Ba,aB", [(2, 3), (3, 2)], "Ba,aB->"),
        ("bA,aB", [(2, 3), (4, 5)], "bA,aB->ABab"),
        ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 2)], None),
        ("...ii", [(2, 3, 3)], "...ii->..."),
        ("i, i", [(3,), (3,)], "i,i->"),
    ],
)
def test_einsum(
    rng: np.random.Generator, eq: str, shapes: list[tuple[int, ...]], numpy_eq: str | None
) -> None:
    xs = [randn(rng, *s) for s in shapes]
    names = [f"x{i}" for i in range(len(xs))]
    m = model(
        "Einsum", [(n, np.float32, x.shape) for n, x in zip(names, xs, strict=True)], equation=eq
    )
    want = np.einsum(numpy_eq or eq.replace(" ", ""), *(x.astype(np.float64) for x in xs))
    check(m, dict(zip(names, xs, strict=True)), [np.asarray(want, np.float32)], native=False)


# ---- convolution ---------------------------------------------------------------------------------


def naive_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    r = x.ndim - 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *zip(pads[:r], pads[r:], strict=True)])
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - (k[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(r)]
    m, cg = w.shape[0], w.shape[1]
    y = np.zeros((x.shape[0], m, *out))
    for o in itertools.product(*(range(n) for n in out)):
        for kk in itertools.product(*(range(n) for n in k)):
            pos = tuple(o[i] * strides[i] + kk[i] * dilations[i] for i in range(r))
            for g in range(group):
                ms = slice(g * (m // group), (g + 1) * (m // group))
                patch = xp[(slice(None), slice(g * cg, (g + 1) * cg), *pos)]  # (N, cg)
                y[(slice(None), ms, *o)] += patch @ w[(ms, slice(None), *kk)].T
    if b is not None:
        y += b.reshape((1, -1) + (1,) * r)
    return y


@pytest.mark.parametrize(
    ("spatial", "kernel", "strides", "pads", "dilations", "group"),
    [
        ((7, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
        ((9, 8), (3, 2), (2, 3), (0, 1, 2, 0), (2, 1), 2),
        ((5, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
        ((6, 7), (3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 4),
        ((11,), (3,), (2,), (1, 2), (2,), 1),
        ((10,), (4,), (1,), (0, 0), (1,), 2),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_native_matches_loops(
    rng: np.random.Generator,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    group: int,
    bias: bool,
) -> None:
    x = randn(rng, 2, 4, *spatial)
    w = randn(rng, 8, 4 // group, *kernel)
    b = randn(rng, 8) if bias else None
    consts = {"w": w} | ({"b": b} if b is not None else {})
    m = model(
        "Conv",
        [("x", np.float32, x.shape)],
        consts=consts,
        node_inputs=["x", *consts],
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=group,
    )
    want = naive_conv(x, w, b, strides, pads, dilations, group).astype(np.float32)
    check(m, {"x": x}, [want], native=True, rtol=1e-4, atol=1e-5)


def test_conv_1d_weight_as_input_lowers_through_2d(rng: np.random.Generator) -> None:
    x, w, b = randn(rng, 2, 3, 13), randn(rng, 4, 3, 5), randn(rng, 4)
    specs: list[Spec] = [(n, np.float32, a.shape) for n, a in zip("xwb", (x, w, b), strict=True)]
    m = model("Conv", specs, strides=[3], pads=[2, 1], dilations=[2])
    want = naive_conv(x, w, b, (3,), (2, 1), (2,), 1).astype(np.float32)
    check(m, {"x": x, "w": w, "b": b}, [want], native=True, rtol=1e-4, atol=1e-5)


def same_pads(
    sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], upper: bool
) -> list[int]:
    """ONNX SAME_UPPER / SAME_LOWER pads: out = ceil(in / stride), the odd cell at the end
    (upper) or the beginning."""
    begin, end = [], []
    for n, k, s in zip(sizes, kernel, strides, strict=True):
        total = max(0, (-(-n // s) - 1) * s + k - n)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(rng: np.random.Generator, auto_pad: str) -> None:
    x, w = randn(rng, 1, 2, 7, 8), randn(rng, 3, 2, 3, 4)
    m = model(
        "Conv",
        [("x", np.float32, x.shape), ("w", np.float32, w.shape)],
        auto_pad=auto_pad,
        strides=[2, 3],
    )
    pads = [0] * 4 if auto_pad == "VALID" else same_pads((7, 8), (3, 4), (2, 3), "UP" in auto_pad)
    want = naive_conv(x, w, None, (2, 3), pads, (1, 1), 1).astype(np.float32)
    check(m, {"x": x, "w": w}, [want], native=True, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_conv_3d_and_other_dtypes_run_the_reference(rng: np.random.Generator, dtype: Any) -> None:
    x, w, b = randn(rng, 1, 2, 4, 5, 3, dtype=dtype), randn(rng, 2, 1, 2, 3, 2, dtype=dtype), None
    m = model("Conv", [("x", dtype, x.shape), ("w", dtype, w.shape)], group=2, pads=[1] * 6)
    want = naive_conv(x, w, b, (1, 1, 1), [1] * 6, (1, 1, 1), 2).astype(dtype)
    tol = 1e-2 if dtype == np.float16 else 1e-10
    check(m, {"x": x, "w": w}, [want], native=False, rtol=tol, atol=tol)


def naive_conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    group: int,
    begin: Sequence[int],
    out: Sequence[int],
) -> np.ndarray:
    r = x.ndim - 2
    c, mg = w.shape[:2]
    cg = c // group
    full = [
        (x.shape[2 + i] - 1) * strides[i] + (w.shape[2 + i] - 1) * dilations[i] + 1
        for i in range(r)
    ]
    big = np.zeros(
        (x.shape[0], mg * group, *[max(f, begin[i] + out[i]) for i, f in enumerate(full)])
    )
    for ci in range(c):
        g = ci // cg
        for pos in itertools.product(*(range(n) for n in x.shape[2:])):
            for kk in itertools.product(*(range(n) for n in w.shape[2:])):
                at = tuple(pos[i] * strides[i] + kk[i] * dilations[i] for i in range(r))
                big[(slice(None), slice(g * mg, (g + 1) * mg), *at)] += (
                    x[(slice(None), ci, *pos)][:, None] * w[(ci, slice(None), *kk)][None]
                )
    crop = tuple(slice(begin[i], begin[i] + out[i]) for i in range(r))
    return big[(slice(None), slice(None), *crop)]


@pytest.mark.parametrize(
    ("spatial", "kernel", "attrs", "begin", "out"),
    [
        ((3, 3), (3, 3), {}, (0, 0), (5, 5)),
        ((3, 4), (3, 2), {"strides": [3, 2], "pads": [1, 2, 1, 2]}, (1, 2), (7, 4)),
        ((3, 3), (2, 2), {"strides": [2, 2], "output_padding": [1, 1]}, (0, 0), (7, 7)),
        ((3, 3), (3, 3), {"strides": [3, 2], "output_shape": [10, 8]}, (0, 0), (10, 8)),
        ((4,), (3,), {"dilations": [2], "group": 2}, (0,), (8,)),
        # SAME_UPPER crops the odd cell at the end (ConvTranspose-22: begin = total // 2).
        ((3, 3), (3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (0, 0), (6, 6)),
        ((3, 3), (3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, (1, 1), (6, 6)),
    ],
)
def test_conv_transpose(
    rng: np.random.Generator,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    attrs: dict[str, Any],
    begin: tuple[int, ...],
    out: tuple[int, ...],
) -> None:
    group = attrs.get("group", 1)
    x, w = randn(rng, 2, 2, *spatial), randn(rng, 2, 3, *kernel)
    m = model("ConvTranspose", [("x", np.float32, x.shape), ("w", np.float32, w.shape)], **attrs)
    strides = attrs.get("strides", [1] * len(spatial))
    dil = attrs.get("dilations", [1] * len(spatial))
    want = naive_conv_transpose(x, w, strides, dil, group, begin, out).astype(np.float32)
    check(m, {"x": x, "w": w}, [want], native=False, rtol=1e-5, atol=1e-5)


# ---- pooling -------------------------------------------------------------------------------------


def naive_pool(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    ceil: bool,
    kind: str,
    include_pad: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """max / avg pooling and MaxPool's row-major indices by visiting every tap."""
    r = x.ndim - 2
    sizes = x.shape[2:]
    out = []
    for i in range(r):
        span = sizes[i] + pads[i] + pads[r + i] - (kernel[i] - 1) * dilations[i] - 1
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= sizes[i] + pads[i]:
            o -= 1
        out.append(o)
    y = np.zeros((*x.shape[:2], *out))
    idx = np.zeros(y.shape, dtype=np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for o in itertools.product(*(range(v) for v in out)):
            vals, where, count = [], [], 0
            for kk in itertools.product(*(range(v) for v in kernel)):
                pos = [o[i] * strides[i] + kk[i] * dilations[i] - pads[i] for i in range(r)]
                if all(-pads[i] <= pos[i] < sizes[i] + pads[r + i] for i in range(r)):
                    count += 1  # a tap in the padded input (not past the end pad)
                if all(0 <= pos[i] < sizes[i] for i in range(r)):
                    vals.append(float(x[(n, c, *pos)]))
                    where.append(int(np.ravel_multi_index((n, c, *pos), x.shape)))
            if kind == "max":
                j = int(np.argmax(vals))
                y[(n, c, *o)], idx[(n, c, *o)] = vals[j], where[j]
            else:
                y[(n, c, *o)] = sum(vals) / (count if include_pad else len(vals))
    return y, idx


POOL_CASES = [
    ((6, 7), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
    ((7, 7), (3, 2), (2, 3), (0, 1, 2, 0), (1, 2), True),
    ((5, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((9, 6), (3, 3), (1, 1), (0, 0, 0, 0), (2, 2), False),
    ((12,), (3,), (2,), (1, 1), (2,), True),
]


@pytest.mark.parametrize(("spatial", "kernel", "strides", "pads", "dilations", "ceil"), POOL_CASES)
def test_max_pool_native(
    rng: np.random.Generator,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    ceil: bool,
) -> None:
    x = randn(rng, 2, 3, *spatial)
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations)
    m = model("MaxPool", [("x", np.float32, x.shape)], ceil_mode=int(ceil), **attrs)
    want, idx = naive_pool(x, kernel, strides, pads, dilations, ceil, "max")
    check(m, {"x": x}, [want.astype(np.float32)], native=True)
    m = model("MaxPool", [("x", np.float32, x.shape)], ["y", "i"], ceil_mode=int(ceil), **attrs)
    check(m, {"x": x}, [want.astype(np.float32), idx], native=False)


@pytest.mark.parametrize(("spatial", "kernel", "strides", "pads", "dilations", "ceil"), POOL_CASES)
@pytest.mark.parametrize("include_pad", [False, True])
def test_average_pool_native(
    rng: np.random.Generator,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    ceil: bool,
    include_pad: bool,
) -> None:
    x = randn(rng, 2, 3, *spatial)
    m = model(
        "AveragePool",
        [("x", np.float32, x.shape)],
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        ceil_mode=int(ceil),
        count_include_pad=int(include_pad),
    )
    want, _ = naive_pool(x, kernel, strides, pads, dilations, ceil, "avg", include_pad)
    check(m, {"x": x}, [want.astype(np.float32)], native=True)


def test_max_pool_indices_column_major_3d_and_ints(rng: np.random.Generator) -> None:
    x = rng.permutation(2 * 2 * 5 * 4).reshape(2, 2, 5, 4).astype(np.float32)
    m = model(
        "MaxPool", [("x", np.float32, x.shape)], ["y", "i"], kernel_shape=[2, 2], storage_order=1
    )
    y, idx = naive_pool(x, (2, 2), (1, 1), (0,) * 4, (1, 1), False, "max")
    n, c, h, w = np.unravel_index(idx, x.shape)
    column_major = (n * 2 + c) * 20 + w * 5 + h
    check(m, {"x": x}, [y.astype(np.float32), column_major], native=False)
    v = rng.integers(-100, 100, (1, 2, 4, 3, 5)).astype(np.int8)
    m = model("MaxPool", [("x", np.int8, v.shape)], kernel_shape=[2, 2, 2], pads=[1] * 6)
    want, _ = naive_pool(v, (2, 2, 2), (1, 1, 1), (1,) * 6, (1, 1, 1), False, "max")
    check(m, {"x": v}, [want.astype(np.int8)], native=False)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_pool_auto_pad(rng: np.random.Generator, auto_pad: str) -> None:
    x = randn(rng, 1, 2, 5, 6)
    pads = same_pads((5, 6), (3, 3), (2, 2), auto_pad == "SAME_UPPER")
    assert pads[1] != pads[3]  # an odd total: the sides differ
    for op, kind in (("MaxPool", "max"), ("AveragePool", "avg")):
        m = model(
            op, [("x", np.float32, x.shape)], kernel_shape=[3, 3], strides=[2, 2], auto_pad=auto_pad
        )
        want, _ = naive_pool(x, (3, 3), (2, 2), pads, (1, 1), False, kind)
        check(m, {"x": x}, [want.astype(np.float32)], native=True)


def test_lp_pool_and_global_pools(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 3, 5, 4)
    m = model("LpPool", [("x", np.float32, x.shape)], kernel_shape=[2, 3], pads=[1, 0, 0, 1], p=3)
    xp = np.pad(np.abs(x.astype(np.float64)) ** 3, [(0, 0), (0, 0), (1, 0), (0, 1)])
    want = np.zeros((2, 3, 5, 3))
    for i, j in itertools.product(range(5), range(3)):
        want[:, :, i, j] = xp[:, :, i : i + 2, j : j + 3].sum(axis=(2, 3)) ** (1 / 3)
    check(m, {"x": x}, [want.astype(np.float32)], native=False)
    for op, fn in (("GlobalAveragePool", np.mean), ("GlobalMaxPool", np.max)):
        m = model(op, [("x", np.float32, x.shape)])
        check(m, {"x": x}, [fn(x, axis=(2, 3), keepdims=True)], native=True)


# ---- softmax, reductions, arg --------------------------------------------------------------------


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_family(rng: np.random.Generator, axis: int, opset: int) -> None:
    x = randn(rng, 3, 4, 5).astype(np.float64)
    if opset >= 13:
        soft = np_softmax(x, axis)
    else:  # flattened to 2-D at axis
        a = axis % 3
        soft = np_softmax(x.reshape(int(np.prod(x.shape[:a])), -1), 1).reshape(x.shape)
    for op, want in (("Softmax", soft), ("LogSoftmax", np.log(soft))):
        m = model(op, [("x", np.float32, x.shape)], axis=axis, opset=opset)
        check(m, {"x": x.astype(np.float32)}, [want.astype(np.float32)], native=True)
    hard = (soft == soft.max(axis=axis if opset >= 13 else -1, keepdims=True)).astype(np.float32)
    if opset < 13:
        flat = soft.reshape(int(np.prod(x.shape[: axis % 3])), -1)
        hard = (flat == flat.max(axis=1, keepdims=True)).reshape(x.shape).astype(np.float32)
    m = model("Hardmax", [("x", np.float32, x.shape)], axis=axis, opset=opset)
    check(m, {"x": x.astype(np.float32)}, [hard], native=False)


REDUCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "ReduceSum": np.sum,
    "ReduceMean": np.mean,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceL1": lambda x, **k: np.sum(np.abs(x), **k),
    "ReduceL2": lambda x, **k: np.sqrt(np.sum(x * x, **k)),
    "ReduceSumSquare": lambda x, **k: np.sum(x * x, **k),
    "ReduceLogSum": lambda x, **k: np.log(np.sum(x, **k)),
    "ReduceLogSumExp": lambda x, **k: np.log(np.sum(np.exp(x), **k)),
}
NATIVE_REDUCTIONS = set(REDUCTIONS) - {"ReduceLogSumExp"}


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@pytest.mark.parametrize(("axes", "keepdims"), [(None, 1), ([1], 0), ([-1, 0], 1), ([0, 2], 0)])
def test_reductions_native_axes_input(
    rng: np.random.Generator, op: str, axes: list[int] | None, keepdims: int
) -> None:
    x = rng.uniform(0.5, 1.5, (3, 4, 5)).astype(np.float32)  # positive: logs are defined
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    m = model(
        op,
        [("x", np.float32, x.shape)],
        consts=consts,
        node_inputs=["x", *consts],
        keepdims=keepdims,
        opset=18,
    )
    ax = None if axes is None else tuple(a % 3 for a in axes)
    want = REDUCTIONS[op](x.astype(np.float64), axis=ax, keepdims=bool(keepdims))
    check(m, {"x": x}, [np.asarray(want, np.float32)], native=op in NATIVE_REDUCTIONS, rtol=1e-5)


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
def test_reductions_axes_attribute_before_18_and_ints(rng: np.random.Generator, op: str) -> None:
    x = rng.integers(1, 4, (2, 3, 4)).astype(np.int32)
    attrs = {"axes": [0, 2]} if op != "ReduceSum" else {}
    m = model(op, [("x", np.int32, x.shape)], opset=13, keepdims=0, **attrs)
    want = REDUCTIONS[op](x.astype(np.float64), axis=(0, 2) if attrs else None)
    if op == "ReduceMean":
        want = np.trunc(want)
    check(m, {"x": x}, [np.asarray(want).astype(np.int32)], native=False)


def test_reduce_noop_and_empty_sets(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 3)
    m = model(
        "ReduceSum", [("x", np.float32, x.shape), ("axes", np.int64, (0,))], noop_with_empty_axes=1
    )
    check(m, {"x": x, "axes": np.zeros(0, np.int64)}, [x], native=False)
    empty = np.zeros((2, 0, 3), np.float32)
    cases = {
        "ReduceSum": 0.0,
        "ReduceProd": 1.0,
        "ReduceMax": -np.inf,
        "ReduceMin": np.inf,
        "ReduceL2": 0.0,
        "ReduceLogSum": -np.inf,
        "ReduceLogSumExp": -np.inf,
    }
    for op, value in cases.items():
        m = model(
            op,
            [("x", np.float32, empty.shape)],
            consts={"axes": np.array([1])},
            node_inputs=["x", "axes"],
            opset=18,
        )
        check(m, {"x": empty}, [np.full((2, 1, 3), value, np.float32)], native=False)
    b = np.array([[True, False], [False, False]])
    for op, fn in (("ReduceMax", np.any), ("ReduceMin", np.all)):
        m = model(op, [("x", np.bool_, b.shape)], keepdims=0, opset=20)
        check(m, {"x": b}, [fn(b)], native=False)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize(("axis", "keepdims", "last"), [(0, 1, 0), (-1, 0, 1), (1, 1, 1)])
def test_arg_extremes_with_ties(
    rng: np.random.Generator, op: str, axis: int, keepdims: int, last: int
) -> None:
    x = rng.integers(0, 3, (4, 5, 6)).astype(np.float32)  # many ties
    m = model(
        op,
        [("x", np.float32, x.shape)],
        axis=axis,
        keepdims=keepdims,
        select_last_index=last,
        opset=13,
    )
    fn = np.argmax if op == "ArgMax" else np.argmin
    a = axis % 3
    want = x.shape[a] - 1 - fn(np.flip(x, a), axis=a) if last else fn(x, axis=a)
    want = np.expand_dims(want, a) if keepdims else want
    check(m, {"x": x}, [want.astype(np.int64)], native=True)


# ---- normalisations ------------------------------------------------------------------------------


def standardize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_native(rng: np.random.Generator, axis: int, with_bias: bool) -> None:
    x = randn(rng, 2, 3, 8)
    norm = x.shape[axis % 3 :]
    consts = {"s": randn(rng, *norm)} | ({"b": randn(rng, *norm)} if with_bias else {})
    m = model(
        "LayerNormalization",
        [("x", np.float32, x.shape)],
        consts=consts,
        node_inputs=["x", *consts],
        axis=axis,
        epsilon=1e-3,
        opset=17,
    )
    want = standardize(x, tuple(range(axis % 3, 3)), 1e-3) * consts["s"] + consts.get("b", 0)
    check(m, {"x": x}, [want.astype(np.float32)], native=True)


def test_layer_norm_statistics_outputs_run_the_reference(rng: np.random.Generator) -> None:
    x, s = randn(rng, 3, 4), randn(rng, 4)
    m = model(
        "LayerNormalization",
        [("x", np.float32, x.shape)],
        ["y", "mean", "inv"],
        consts={"s": s},
        node_inputs=["x", "s"],
        opset=17,
    )
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=1, keepdims=True), x64.var(axis=1, keepdims=True)
    want = [((x64 - mean) / np.sqrt(var + 1e-5) * s), mean, 1 / np.sqrt(var + 1e-5)]
    check(m, {"x": x}, [w.astype(np.float32) for w in want], native=False)


def test_rms_and_batch_norm_native(rng: np.random.Generator) -> None:
    x, s = randn(rng, 2, 3, 6), randn(rng, 3, 6)
    m = model(
        "RMSNormalization",
        [("x", np.float32, x.shape)],
        consts={"s": s},
        node_inputs=["x", "s"],
        axis=1,
        opset=23,
    )
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 * x64).mean(axis=(1, 2), keepdims=True) + 1e-5) * s
    check(m, {"x": x}, [want.astype(np.float32)], native=True)
    params = [randn(rng, 3), randn(rng, 3), randn(rng, 3), rng.uniform(0.5, 2, 3)]
    consts = dict(zip("sbmv", (p.astype(np.float32) for p in params), strict=True))
    m = model(
        "BatchNormalization",
        [("x", np.float32, x.shape)],
        consts=consts,
        node_inputs=["x", *consts],
        epsilon=1e-3,
        opset=15,
    )
    c = [p.reshape(1, 3, 1) for p in params]
    want = (x64 - c[2]) / np.sqrt(c[3] + 1e-3) * c[0] + c[1]
    check(m, {"x": x}, [want.astype(np.float32)], native=True)


def test_batch_norm_training_mode(rng: np.random.Generator) -> None:
    x = randn(rng, 4, 3, 5)
    s, b, mean, var = randn(rng, 3), randn(rng, 3), randn(rng, 3), rng.uniform(1, 2, 3)
    consts = {"s": s, "b": b, "m": mean, "v": var.astype(np.float32)}
    m = model(
        "BatchNormalization",
        [("x", np.float32, x.shape)],
        ["y", "rm", "rv"],
        consts=consts,
        node_inputs=["x", *consts],
        training_mode=1,
        momentum=0.8,
    )
    cur_mean, cur_var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    y = standardize(x, (0, 2), 1e-5) * s.reshape(1, 3, 1) + b.reshape(1, 3, 1)
    want = [y, 0.8 * mean + 0.2 * cur_mean, 0.8 * var + 0.2 * cur_var]
    check(m, {"x": x}, [w.astype(np.float32) for w in want], native=False)


def test_group_norm_18_scales_per_group(rng: np.random.Generator) -> None:
    x, s, b = randn(rng, 2, 6, 5), randn(rng, 3), randn(rng, 3)
    m = model(
        "GroupNormalization",
        [("x", np.float32, x.shape)],
        consts={"s": s, "b": b},
        node_inputs=["x", "s", "b"],
        num_groups=3,
        epsilon=1e-2,
        opset=18,
    )
    grouped = standardize(x.reshape(2, 3, -1), (2,), 1e-2)
    want = (grouped * s.reshape(1, 3, 1) + b.reshape(1, 3, 1)).reshape(x.shape)
    check(m, {"x": x}, [want.astype(np.float32)], native=False)


def test_layer_norm_float16_stashes_in_float32(rng: np.random.Generator) -> None:
    x, s = randn(rng, 4, 16, dtype=np.float16), randn(rng, 16, dtype=np.float16)
    m = model(
        "LayerNormalization",
        [("x", np.float16, x.shape)],
        consts={"s": s},
        node_inputs=["x", "s"],
        opset=17,
    )
    want = (standardize(x, (1,), 1e-5) * s).astype(np.float16)
    check(m, {"x": x}, [want], native=False, rtol=1e-2, atol=1e-2)


def test_instance_group_lp_mvn_lrn(rng: np.random.Generator) -> None:
    x = randn(rng, 2, 4, 3, 5)
    s, b = randn(rng, 4), randn(rng, 4)
    ch = (1, 4, 1, 1)
    m = model(
        "InstanceNormalization",
        [("x", np.float32, x.shape)],
        consts={"s": s, "b": b},
        node_inputs=["x", "s", "b"],
    )
    want = standardize(x, (2, 3), 1e-5) * s.reshape(ch) + b.reshape(ch)
    check(m, {"x": x}, [want.astype(np.float32)], native=False)
    m = model(
        "GroupNormalization",
        [("x", np.float32, x.shape)],
        consts={"s": s, "b": b},
        node_inputs=["x", "s", "b"],
        num_groups=2,
        opset=21,
    )
    grouped = standardize(x.reshape(2, 2, -1), (2,), 1e-5).reshape(x.shape)
    check(m, {"x": x}, [(grouped * s.reshape(ch) + b.reshape(ch)).astype(np.float32)], native=False)
    x64 = x.astype(np.float64)
    for p, norm in (
        (1, np.abs(x64).sum(1, keepdims=True)),
        (2, np.sqrt((x64 * x64).sum(1, keepdims=True))),
    ):
        m = model("LpNormalization", [("x", np.float32, x.shape)], axis=1, p=p)
        check(m, {"x": x}, [(x64 / norm).astype(np.float32)], native=False)
    m = model("MeanVarianceNormalization", [("x", np.float32, x.shape)], opset=13)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    want = (x64 - mean) / (np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True)) + 1e-9)
    check(m, {"x": x}, [want.astype(np.float32)], native=False, rtol=1e-4, atol=1e-5)
    m = model("LRN", [("x", np.float32, x.shape)], size=3, alpha=0.1, beta=0.6, bias=2.0)
    sq = np.pad(x64 * x64, [(0, 0), (1, 1), (0, 0), (0, 0)])
    window = sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:]
    check(m, {"x": x}, [(x64 / (2.0 + 0.1 / 3 * window) ** 0.6).astype(np.float32)], native=False)


# ---- attention -----------------------------------------------------------------------------------


def naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[3])
    if causal:
        sq, skv = scores.shape[2:]
        scores = np.where(np.tril(np.ones((sq, skv), bool)), scores, -np.inf)
    return np_softmax(scores, -1) @ v


@pytest.mark.parametrize(("hq", "hkv", "causal"), [(2, 2, 0), (4, 2, 1), (3, 1, 0)])
def test_attention_4d_and_3d(rng: np.random.Generator, hq: int, hkv: int, causal: int) -> None:
    q, k, v = randn(rng, 2, hq, 5, 4), randn(rng, 2, hkv, 5, 4), randn(rng, 2, hkv, 5, 3)
    specs: list[Spec] = [(n, np.float32, a.shape) for n, a in zip("qkv", (q, k, v), strict=True)]
    m = model("Attention", specs, is_causal=causal, opset=23)
    want = naive_attention(q, k, v, bool(causal)).astype(np.float32)
    check(m, {"q": q, "k": k, "v": v}, [want], native=False)
    flat = [a.transpose(0, 2, 1, 3).reshape(2, 5, -1) for a in (q, k, v)]
    specs = [(n, np.float32, a.shape) for n, a in zip("qkv", flat, strict=True)]
    m = model("Attention", specs, is_causal=causal, q_num_heads=hq, kv_num_heads=hkv, opset=23)
    check(
        m,
        dict(zip("qkv", flat, strict=True)),
        [want.transpose(0, 2, 1, 3).reshape(2, 5, -1)],
        native=False,
    )


# ---- shapes and errors ---------------------------------------------------------------------------


def test_symbolic_shapes_are_inferred() -> None:
    m = model(
        "Conv",
        [("x", np.float32, ("N", 3, "H", 9))],
        consts={"w": np.ones((4, 3, 3, 3), np.float32)},
        node_inputs=["x", "w"],
        strides=[1, 2],
    )
    (y,) = compile(m).outputs.values()
    assert y.shape is not None and y.shape[:2] == ("N", 4) and y.shape[3] == 4
    assert isinstance(y.shape[2], str)
    m = model("MatMul", [("a", np.float32, ("B", "S", 8)), ("b", np.float32, (8, 5))], opset=13)
    assert compile(m).outputs["y"].shape == ("B", "S", 5)
    m = model(
        "ReduceMean",
        [("x", np.float32, ("B", 7, 3))],
        consts={"a": np.array([1])},
        node_inputs=["x", "a"],
        keepdims=0,
        opset=18,
    )
    assert compile(m).outputs["y"].shape == ("B", 3)


def test_unknown_kernel_gives_symbolic_spatial_dims() -> None:
    m = model("Conv", [("x", np.float32, (1, 2, 9, 9)), ("w", np.float32, (4, 2, "k", "k"))])
    (y,) = compile(m).outputs.values()
    assert y.shape is not None and y.shape[:2] == (1, 4)
    assert all(isinstance(d, str) for d in y.shape[2:])


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "message"),
    [
        ("MatMul", [("a", (3, 4)), ("b", (5, 6))], {}, "inner dimensions"),
        ("Conv", [("x", (1, 4, 5, 5)), ("w", (6, 3, 3, 3))], {"group": 2}, "channels"),
        ("MaxPool", [("x", (1, 1, 2, 2))], {"kernel_shape": [3, 3]}, "larger than"),
        ("Einsum", [("a", (2, 3))], {"equation": "ijk->i"}, "does not fit"),
        ("Softmax", [("x", (2, 3))], {"axis": 2}, "out of range"),
        ("Gemm", [("a", (2, 3, 4)), ("b", (4, 2))], {}, "2-D"),
    ],
)
def test_bad_models_name_the_node(
    op: str, inputs: list[tuple[str, tuple[int, ...]]], attrs: dict[str, Any], message: str
) -> None:
    m = model(
        op, [(n, np.float32, s) for n, s in inputs], opset=13 if op == "MatMul" else 22, **attrs
    )
    with pytest.raises(InvalidRequestError, match=rf"\[{op}\] node 'n'.*{message}"):
        compile(m)
