"""transpose, gather, concat and slice against the numpy reference, for every dtype.

Layout ops only move elements, so every comparison is exact (assert_array_equal).
"""

from __future__ import annotations

import numpy as np
import pytest

from phi_engine import ops
from phi_engine.errors import InvalidRequestError
from phi_engine.runtime import reference as ref

DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32, np.int64, np.bool_]
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(
            max(info.min, -1000), min(info.max, 1000), shape, dtype=dtype, endpoint=True
        )
    return (rng.standard_normal(shape) * 100).astype(dtype)


def same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.flags.c_contiguous
    np.testing.assert_array_equal(actual, expected, strict=True)


# ---- transpose ----------------------------------------------------------------------------

TRANSPOSES = [
    ((1,), None),
    ((7,), (0,)),
    ((1, 1), (1, 0)),
    ((3, 5), None),
    ((33, 65), (1, 0)),  # tiled path, partial tiles on both sides
    ((1, 130, 257), (0, 2, 1)),  # last-two-dims swap, prime sizes
    ((2, 3, 4), (1, 2, 0)),
    ((2, 3, 4), (2, 0, 1)),
    ((2, 3, 4), (-1, -3, -2)),
    ((2, 7, 3, 64), (0, 2, 1, 3)),  # attention [B, S, H, D] -> [B, H, S, D]
    ((3, 1, 5, 1, 7), (4, 2, 0, 3, 1)),  # size-1 axes dropped
    ((2, 3, 5, 7, 2), (3, 0, 4, 2, 1)),
    ((4, 6, 5), (0, 1, 2)),  # identity
    ((0, 3), (1, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "perm"), TRANSPOSES)
def test_transpose(
    rng: np.random.Generator, dtype: type, shape: tuple[int, ...], perm: tuple[int, ...] | None
) -> None:
    x = rand(rng, shape, dtype)
    same(ops.transpose(x, perm), ref.transpose(x, perm))


@pytest.mark.parametrize(
    ("shape", "perm"),
    [
        ((1031, 517), (1, 0)),
        ((4, 128, 12, 64), (0, 2, 1, 3)),
        ((8, 96, 97), (2, 0, 1)),
        ((64, 64, 65), (1, 2, 0)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.float64])
def test_transpose_large_threads(
    rng: np.random.Generator, shape: tuple[int, ...], perm: tuple[int, ...], dtype: type
) -> None:
    x = rand(rng, shape, dtype)
    expected = ref.transpose(x, perm)
    same(ops.transpose(x, perm, threads=1), expected)
    same(ops.transpose(x, perm, threads=2), expected)


def test_transpose_noncontiguous(rng: np.random.Generator) -> None:
    base = rand(rng, (20, 31, 9))
    views = (
        (base[::2, 3:, ::-1], (2, 0, 1)),
        (base.transpose(2, 0, 1), None),
        (base[:, 5], (1, 0)),
    )
    for x, perm in views:
        same(ops.transpose(x, perm), ref.transpose(x, perm))


@pytest.mark.parametrize("perm", [(0,), (0, 1, 1), (0, 1, 3), (0, 1, -4), (0, 1, 2, 3), "abc"])
def test_transpose_bad_perm(perm: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"\[transpose\]"):
        ops.transpose(np.ones((2, 3, 4), np.float32), perm)  # type: ignore[arg-type]


# ---- gather -------------------------------------------------------------------------------

GATHERS = [
    ((1000, 64), (3, 17), 0),  # embedding lookup
    ((1,), (5,), 0),
    ((7, 5), (), 0),  # scalar index drops the axis
    ((7, 5), (4,), 1),
    ((2, 11, 3), (2, 2), -2),
    ((3, 4, 13), (6,), 2),  # last axis: element-sized rows
    ((5, 3), (0,), 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize(("shape", "ishape", "axis"), GATHERS)
def test_gather(
    rng: np.random.Generator,
    dtype: type,
    index_dtype: type,
    shape: tuple[int, ...],
    ishape: tuple[int, ...],
    axis: int,
) -> None:
    data = rand(rng, shape, dtype)
    n = shape[axis]
    idx = rng.integers(-n, n, ishape).astype(index_dtype)  # negative indices wrap
    same(ops.gather(data, idx, axis), ref.gather(data, idx, axis))


def test_gather_large_threads_and_noncontiguous(rng: np.random.Generator) -> None:
    table = rand(rng, (5003, 384))
    idx = rng.integers(-5003, 5003, (8, 129))
    expected = ref.gather(table, idx)
    same(ops.gather(table, idx, threads=1), expected)
    same(ops.gather(table, idx, threads=2), expected)
    strided = table[::3, 7:300:2]
    small = rng.integers(0, strided.shape[0], (4, 3)).astype(np.int32)
    same(ops.gather(strided, small), ref.gather(strided, small))
    same(ops.gather(strided, small[:, ::2].T, axis=0), ref.gather(strided, small[:, ::2].T, axis=0))


@pytest.mark.parametrize("bad", [5, -6, 1 << 40])
def test_gather_out_of_range(bad: int) -> None:
    data = np.arange(10, dtype=np.float32).reshape(5, 2)
    idx = np.array([0, 1, bad, 2], np.int64)
    with pytest.raises(InvalidRequestError, match=r"\[gather\] index .* out of range"):
        ops.gather(data, idx)
    with pytest.raises(InvalidRequestError, match=r"\[gather\] index .* out of range"):
        ops.gather(np.zeros((0, 3), np.float32), np.array([0], np.int32))


def test_gather_bad_inputs() -> None:
    data = np.ones((4, 3), np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[gather\].*int32 or int64"):
        ops.gather(data, np.array([0.0, 1.0]))
    with pytest.raises(InvalidRequestError, match=r"\[gather\].*axis"):
        ops.gather(data, np.array([0]), axis=2)
    with pytest.raises(InvalidRequestError, match=r"\[gather\]"):
        ops.gather(np.float32(1.0), np.array([0]))


# ---- concat -------------------------------------------------------------------------------

CONCATS = [
    ([(5,)], 0),
    ([(1,), (1,)], 0),
    ([(3, 4), (2, 4), (7, 4)], 0),
    ([(3, 4), (3, 1), (3, 0), (3, 5)], 1),
    ([(2, 3, 5), (2, 1, 5), (2, 13, 5)], -2),
    ([(2, 3, 1), (2, 3, 2), (2, 3, 1), (2, 3, 3)], 2),  # element-sized pieces
    ([(4, 2, 3)] * 9, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shapes", "axis"), CONCATS)
def test_concat(
    rng: np.random.Generator, dtype: type, shapes: list[tuple[int, ...]], axis: int
) -> None:
    xs = [rand(rng, s, dtype) for s in shapes]
    same(ops.concat(*xs, axis=axis), ref.concat(*xs, axis=axis))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat_large_threads_and_noncontiguous(rng: np.random.Generator, axis: int) -> None:
    shapes = [[64, 97, 31], [64, 97, 31], [64, 97, 31]]
    for i, s in enumerate(shapes):
        s[axis] = [1, 200, 37][i]
    xs = [rand(rng, tuple(s)) for s in shapes]
    xs[1] = np.ascontiguousarray(xs[1].transpose(2, 1, 0)).transpose(2, 1, 0)  # a strided view
    expected = ref.concat(*xs, axis=axis)
    same(ops.concat(*xs, axis=axis, threads=1), expected)
    same(ops.concat(*xs, axis=axis, threads=2), expected)


def test_concat_bad_inputs() -> None:
    a = np.ones((2, 3), np.float32)
    with pytest.raises(InvalidRequestError, match=r"\[concat\].*int32"):
        ops.concat(a, a.astype(np.int32), axis=0)
    with pytest.raises(InvalidRequestError, match=r"\[concat\].*differs"):
        ops.concat(a, np.ones((2, 4), np.float32), axis=0)
    with pytest.raises(InvalidRequestError, match=r"\[concat\].*differs"):
        ops.concat(a, np.ones((2, 3, 1), np.float32), axis=0)
    with pytest.raises(InvalidRequestError, match=r"\[concat\].*axis"):
        ops.concat(a, a, axis=2)
    with pytest.raises(InvalidRequestError, match=r"\[concat\]"):
        ops.concat(axis=0)
    with pytest.raises(InvalidRequestError, match=r"\[concat\].*rank"):
        ops.concat(np.float32(1.0), axis=0)


# ---- slice --------------------------------------------------------------------------------

SLICES = [
    ((10,), [2], [7], None, None),
    ((10,), [-3], [INT64_MAX], None, None),
    ((10,), [-1], [INT64_MIN], None, [-1]),  # reverse all
    ((10,), [100], [-100], None, [-3]),  # clamped starts with a negative step
    ((10,), [-100], [-200], None, [-1]),  # empty: ONNX clamps start to 0, end to -1
    ((10,), [3], [3], None, None),  # empty
    ((2, 4), [1, 0], [2, 3], [0, 1], [1, 2]),  # ONNX spec example 1
    ((2, 4), [0, 1], [-1, 1000], None, None),  # ONNX spec example 2
    ((5, 7, 11), [1, -2], [4, 0], [2, 1], [3, -2]),
    ((5, 7, 11), [0], [INT64_MAX], [-1], [2]),
    ((3, 13, 17), [1, 2, 3], [3, 11, 16], [0, 1, 2], [1, 3, 5]),
    ((4, 6, 8, 2), [-1, 5], [INT64_MIN, -100], [1, 2], [-2, -1]),
    ((1, 1, 1), [0], [1], [2], None),
    ((6, 5), [], [], None, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "starts", "ends", "axes", "steps"), SLICES)
def test_slice(
    rng: np.random.Generator,
    dtype: type,
    shape: tuple[int, ...],
    starts: list[int],
    ends: list[int],
    axes: list[int] | None,
    steps: list[int] | None,
) -> None:
    x = rand(rng, shape, dtype)
    same(ops.slice(x, starts, ends, axes, steps), ref.slice(x, starts, ends, axes, steps))


def test_slice_onnx_examples() -> None:
    data = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64)
    same(ops.slice(data, [1, 0], [2, 3], [0, 1], [1, 2]), np.array([[5, 7]], np.int64))
    same(ops.slice(data, [0, 1], [-1, 1000]), np.array([[2, 3, 4]], np.int64))


def test_slice_random(rng: np.random.Generator) -> None:
    for _ in range(200):
        shape = tuple(int(d) for d in rng.integers(0, 9, rng.integers(1, 5)))
        k = int(rng.integers(1, len(shape) + 1))
        axes = [int(a) for a in rng.permutation(len(shape))[:k]]
        starts, ends = [], []
        for a in axes:
            choices = [*range(-shape[a] - 3, shape[a] + 4), INT64_MAX, INT64_MIN]
            starts.append(int(rng.choice(choices)))
            ends.append(int(rng.choice(choices)))
        steps = [int(rng.choice([-3, -2, -1, 1, 2, 3])) for _ in axes]
        x = rand(rng, shape, np.int32)
        same(ops.slice(x, starts, ends, axes, steps), ref.slice(x, starts, ends, axes, steps))


def test_slice_large_threads_and_noncontiguous(rng: np.random.Generator) -> None:
    x = rand(rng, (300, 257, 9))
    for args in (
        ([5, 1], [INT64_MAX, -1], [0, 1], [1, 1]),
        ([299, 3], [INT64_MIN, 250], [0, 2], [-2, 2]),
    ):
        expected = ref.slice(x, *args)
        same(ops.slice(x, *args, threads=1), expected)
        same(ops.slice(x, *args, threads=2), expected)
    view = x[::-2, 3:200, ::4]
    same(ops.slice(view, [1], [-1], [1], [3]), ref.slice(view, [1], [-1], [1], [3]))


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "match"),
    [
        ([0], [1], None, [0], "non-zero"),
        ([0, 0], [1, 1], [1, -2], None, "repeated"),
        ([0], [1], [3], None, "axis"),
        ([0], [1, 2], None, None, "same length"),
        ([0], [1], [0, 1], None, "axes"),
        ([0], [1], None, [1, 1], "steps"),
    ],
)
def test_slice_bad_inputs(
    starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None, match: str
) -> None:
    with pytest.raises(InvalidRequestError, match=rf"\[slice\].*{match}"):
        ops.slice(np.ones((2, 3, 4), np.float32), starts, ends, axes, steps)
    with pytest.raises(InvalidRequestError, match=r"\[slice\]"):
        ops.slice(np.ones((2, 3), np.float32), "ab", [1])  # type: ignore[arg-type]


# ---- robustness: extreme attributes, 0-d tensors, random cases -----------------------------


@pytest.mark.parametrize("step", [INT64_MAX, INT64_MIN, 2**62, -(2**62), 11, -11])
@pytest.mark.parametrize(("start", "end"), [(0, INT64_MAX), (2, -100), (-1, INT64_MIN), (9, 0)])
def test_slice_steps_longer_than_the_axis(start: int, end: int, step: int) -> None:
    # A step past the axis length takes at most one element. INT64_MIN used to be negated
    # (overflow) and INT64_MAX added to the span, giving wrong lengths and negative shapes.
    x = np.arange(30, dtype=np.int32).reshape(10, 3)
    same(ops.slice(x, [start], [end], None, [step]), ref.slice(x, [start], [end], None, [step]))


def test_transpose_0d(rng: np.random.Generator) -> None:
    x = np.array(rng.standard_normal(), np.float32)
    perms: list[list[int] | None] = [None, []]
    for perm in perms:
        out = ops.transpose(x, perm)
        same(out, ref.transpose(x, perm))
        assert out.shape == ()


@pytest.mark.parametrize(
    ("op", "call"),
    [
        ("transpose", lambda: ops.transpose(np.ones((2, 3)), [2**64, 0])),
        ("slice", lambda: ops.slice(np.ones(3), [0], [2**63])),
        ("gather", lambda: ops.gather(np.ones(3), np.array([0]), axis=2.0)),  # type: ignore[arg-type]
        ("concat", lambda: ops.concat(np.ones(3), object(), axis=0)),  # type: ignore[arg-type]
        ("gather", lambda: ops.gather(np.ones(3), np.array([0]), threads=-1)),
    ],
)
def test_bad_arguments_raise_phi_errors(op: str, call: object) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^\[{op}\]"):
        call()  # type: ignore[operator]


def random_layout_case(
    rng: np.random.Generator,
) -> tuple[str, tuple[object, ...], dict[str, object]]:
    """A transpose, gather, concat or slice on random ranks 0-4 (size-0 and size-1 dims), of a
    random dtype, with random and sometimes invalid axes, indices and permutations."""
    shape = tuple(int(d) for d in rng.choice([0, 1, 2, 3, 5], rng.integers(0, 5)))
    dtype = DTYPES[rng.integers(0, len(DTYPES))]
    x = rand(rng, shape, dtype)
    rank = max(len(shape), 1)
    axis = int(rng.integers(-rank - 1, rank + 1))
    op = str(rng.choice(["transpose", "gather", "concat", "slice"]))
    if op == "transpose":
        perm = [int(p) for p in rng.permutation(len(shape))]
        if perm and rng.random() < 0.1:
            perm[0] = perm[-1]
        return op, (x,), {"perm": perm if rng.random() < 0.8 else None}
    if op == "gather":
        n = shape[axis] if len(shape) and -len(shape) <= axis < len(shape) else 1
        idx = rng.integers(-n - 1 if rng.random() < 0.1 else -n, n + 1, rng.integers(0, 3, 2))
        index_dtype = np.int32 if rng.random() < 0.5 else np.int64
        return op, (x, idx.astype(index_dtype)), {"axis": axis}
    if op == "concat":
        parts = []
        for _ in range(rng.integers(1, 4)):
            s = list(shape)
            if s and -len(s) <= axis < len(s):
                s[axis] = int(rng.choice([0, 1, 3]))
            parts.append(rand(rng, tuple(s), dtype))
        return op, tuple(parts), {"axis": axis}
    axes = [int(a) for a in rng.permutation(len(shape))[: rng.integers(0, len(shape) + 1)]]
    big = [INT64_MAX, INT64_MIN, *range(-6, 7)]
    return (
        op,
        (x,),
        {
            "starts": [int(rng.choice(big)) for _ in axes],
            "ends": [int(rng.choice(big)) for _ in axes],
            "axes": axes,
            "steps": [int(rng.choice([INT64_MAX, INT64_MIN, -2, -1, 1, 2, 7])) for _ in axes],
        },
    )


def test_fuzz_matches_reference_or_raises_a_phi_error(rng: np.random.Generator) -> None:
    """Either numpy's result, bit for bit, or an InvalidRequestError naming the op; never a
    crash or another exception type."""
    for _ in range(1500):
        op, args, kw = random_layout_case(rng)
        try:
            out = getattr(ops, op)(*args, **kw, threads=int(rng.integers(0, 4)))
        except InvalidRequestError as e:
            assert str(e).startswith(f"[{op}]")
            continue
        same(out, getattr(ref, op)(*args, **kw))
