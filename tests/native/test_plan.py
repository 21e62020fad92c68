"""The plan executor: results against the numpy reference, memory reuse, concurrency, errors.

Tolerances: gemm outputs are float32 with float32 accumulation over k, compared with a float64
reference: ``rtol=1e-5`` and ``atol = 8e-6 * sqrt(k)`` per layer, scaled by the number of layers a
value went through (errors of unit-scale inputs add roughly linearly through a short chain).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError, NotFoundError, ResourceError
from phi_engine.runtime import Constant, Plan, PlanBuilder, TensorSpec
from phi_engine.runtime import reference as ref

F32 = np.float32


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=F32) * F32(scale)).astype(F32)


def weight(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    # 1/sqrt(k) keeps activations near unit scale through a chain, so tolerances stay meaningful.
    return randn(rng, k, n, scale=1.0 / np.sqrt(k))


def assert_close(actual: np.ndarray, expected: np.ndarray, k: int, layers: int = 1) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_allclose(
        actual, expected, rtol=1e-5 * layers, atol=8e-6 * np.sqrt(k) * layers
    )


def assert_memory_plan_sound(plan: Plan) -> None:
    """No two arena values alive at the same step may share a byte; all fit in the arena."""
    regions = plan.memory_plan()
    for r in regions:
        assert r.offset % 64 == 0 and r.offset + r.bytes <= plan.arena_bytes
        assert r.first <= r.last
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            alive_together = a.first <= b.last and b.first <= a.last
            overlap = a.offset < b.offset + b.bytes and b.offset < a.offset + a.bytes
            assert not (alive_together and overlap and a.bytes and b.bytes), (a, b)


# ---- correctness ---------------------------------------------------------------------------


def build_mlp(
    rng: np.random.Generator, batch: int, dims: list[int]
) -> tuple[Plan, list[np.ndarray]]:
    w1, b1 = weight(rng, dims[0], dims[1]), randn(rng, dims[1])
    w2, b2 = weight(rng, dims[1], dims[2]), randn(rng, dims[2])
    w3 = weight(rng, dims[2], dims[3])
    b = PlanBuilder()
    x = b.add_input("x", "float32", (batch, dims[0]))
    (h1,) = b.add_step("gemm", [x, b.add_constant(w1), b.add_constant(b1)], {"activation": "gelu"})
    (h2,) = b.add_step("gemm", [h1, b.add_constant(w2), b.add_constant(b2)], {"activation": "relu"})
    (y,) = b.add_step("gemm", [h2, b.add_constant(w3)])
    assert b.spec(h1) == TensorSpec("float32", (batch, dims[1]))
    assert b.spec(y) == TensorSpec("float32", (batch, dims[3]))
    b.mark_output(y, "y")
    return b.build(), [w1, b1, w2, b2, w3]


@pytest.mark.parametrize("batch", [1, 7, 64, 257])
def test_mlp_matches_reference(rng: np.random.Generator, batch: int) -> None:
    dims = [64, 127, 96, 10]
    plan, (w1, b1, w2, b2, w3) = build_mlp(rng, batch, dims)
    for _ in range(3):  # fresh inputs on a reused arena
        x = randn(rng, batch, dims[0])
        expected = ref.gemm(ref.gemm(ref.gemm(x, w1, b1, "gelu"), w2, b2, "relu"), w3)
        out = plan.run({"x": x})
        assert list(out) == ["y"]
        assert_close(out["y"], expected, 127, layers=3)
    assert plan.arena_count == 1
    assert plan.input_specs == {"x": TensorSpec("float32", (batch, 64))}
    assert plan.output_specs == {"y": TensorSpec("float32", (batch, 10))}
    assert [s.op for s in plan.steps] == ["gemm"] * 3


def test_threads_and_input_forms_agree(rng: np.random.Generator) -> None:
    plan, _ = build_mlp(rng, 33, [48, 64, 32, 5])
    x = randn(rng, 66, 48)[::2]  # non-contiguous: copied at the boundary
    base = plan.run({"x": x}, threads=1)["y"]
    np.testing.assert_array_equal(plan.run([x], threads=2)["y"], base)
    np.testing.assert_array_equal(plan.run((np.ascontiguousarray(x),))["y"], base)


def test_profiled_run_times_every_step(rng: np.random.Generator) -> None:
    plan, _ = build_mlp(rng, 16, [32, 64, 32, 8])
    x = randn(rng, 16, 32)
    prof = plan.run_profiled({"x": x})
    np.testing.assert_array_equal(prof.outputs["y"], plan.run({"x": x})["y"])
    assert len(prof.step_ns) == plan.num_steps == 3
    assert all(t > 0 for t in prof.step_ns) and prof.total_ns == sum(prof.step_ns)
    assert [s.op for s in prof.steps] == ["gemm", "gemm", "gemm"]


@pytest.mark.parametrize("batch", [1, 31])
def test_chain_reuses_memory(rng: np.random.Generator, batch: int) -> None:
    width, layers = 96, 6
    weights = [weight(rng, width, width) for _ in range(layers)]
    b = PlanBuilder()
    h = b.add_input("x", F32, (batch, width))
    for w in weights:
        (h,) = b.add_step("matmul", [h, b.add_constant(w)], {"activation": "tanh"})
    b.mark_output(h, "y")
    plan = b.build()
    value_bytes = -(-batch * width * 4 // 64) * 64
    # Five intermediates (the last product goes straight to the output), each alive only between
    # its producer and its one consumer: two buffers, ping-ponged, hold them all.
    assert plan.naive_bytes == 5 * value_bytes
    assert plan.arena_bytes == 2 * value_bytes < plan.naive_bytes
    assert_memory_plan_sound(plan)
    for _ in range(2):
        x = randn(rng, batch, width)
        expected = x
        for w in weights:
            expected = ref.matmul(expected, w, activation="tanh")
        assert_close(plan.run({"x": x})["y"], expected, width, layers=layers)


def test_diamond_respects_lifetimes(rng: np.random.Generator) -> None:
    # a feeds b and c; a must survive b (the planner may not reuse it early), then c and b meet
    # in a gemm with c as the residual.
    m, k = 37, 53
    wa, wb, wc, wd = (weight(rng, k, k) for _ in range(4))
    bias = randn(rng, k)
    builder = PlanBuilder()
    x = builder.add_input("x", "float32", (m, k))
    (a,) = builder.add_step("gemm", [x, builder.add_constant(wa)], {"activation": "gelu"})
    (bv,) = builder.add_step("gemm", [a, builder.add_constant(wb)], {"activation": "relu"})
    (c,) = builder.add_step("matmul", [a, builder.add_constant(wc), builder.add_constant(bias)])
    (d,) = builder.add_step("gemm", [bv, builder.add_constant(wd), None, c], {"activation": "tanh"})
    builder.mark_output(d, "d")
    plan = builder.build()
    assert_memory_plan_sound(plan)
    life = {r.slot: (r.first, r.last) for r in plan.memory_plan()}
    assert life[a] == (0, 2) and life[bv] == (1, 3) and life[c] == (2, 3)
    x_val = randn(rng, m, k)
    av = ref.gemm(x_val, wa, activation="gelu")
    expected = ref.gemm(
        ref.gemm(av, wb, activation="relu"),
        wd,
        residual=ref.matmul(av, wc, bias),
        activation="tanh",
    )
    assert_close(plan.run({"x": x_val})["d"], expected, k, layers=3)


def test_output_also_consumed_later_and_named_twice(rng: np.random.Generator) -> None:
    w1, w2 = weight(rng, 20, 30), weight(rng, 30, 11)
    b = PlanBuilder()
    x = b.add_input("x", "float32", (9, 20))
    (h,) = b.add_step("gemm", [x, b.add_constant(w1)], {"activation": "relu"})
    (y,) = b.add_step("gemm", [h, b.add_constant(w2)])
    b.mark_output(h, "hidden")
    b.mark_output(y, "y")
    b.mark_output(h, "hidden_again")
    plan = b.build()
    assert plan.arena_bytes == 0  # h lives in the caller's output array, y too
    x_val = randn(rng, 9, 20)
    out = plan.run({"x": x_val})
    hidden = ref.gemm(x_val, w1, activation="relu")
    assert list(out) == ["hidden", "y", "hidden_again"]
    assert_close(out["hidden"], hidden, 20)
    assert_close(out["y"], ref.gemm(hidden, w2), 30, layers=2)
    np.testing.assert_array_equal(out["hidden_again"], out["hidden"])
    assert not np.shares_memory(out["hidden_again"], out["hidden"])


def test_constant_and_input_as_outputs(rng: np.random.Generator) -> None:
    table = randn(rng, 4, 6)
    b = PlanBuilder()
    x = b.add_input("x", "float32", (3, 6))
    c = b.add_constant(table)
    (y,) = b.add_step("gemm", [x, c], {"trans_b": 1})
    b.mark_output(c, "table")
    b.mark_output(x, "echo")
    b.mark_output(y, "y")
    plan = b.build()
    assert b.kind(c) == "constant" and b.kind(x) == "input" and b.kind(y) == "intermediate"
    table[:] = 0  # the plan copied the constant when it was added
    x_val = randn(rng, 3, 6)
    out = plan.run({"x": x_val})
    np.testing.assert_array_equal(out["table"], plan.run({"x": x_val})["table"])
    assert np.any(out["table"] != 0)
    np.testing.assert_array_equal(out["echo"], x_val)
    assert not np.shares_memory(out["echo"], x_val)
    assert_close(out["y"], ref.gemm(x_val, out["table"], trans_b=True), 6)


def test_shared_constant_across_plans(rng: np.random.Generator) -> None:
    w_val = weight(rng, 16, 8)
    w = Constant(w_val)
    assert w.spec == TensorSpec("float32", (16, 8)) and w.nbytes == 16 * 8 * 4
    plans = {}
    for batch in (1, 8):  # two shape buckets of one model, one copy of the weight
        b = PlanBuilder()
        (y,) = b.add_step("gemm", [b.add_input("x", "float32", (batch, 16)), b.add_constant(w)])
        b.mark_output(y, "y")
        plans[batch] = b.build()
    for batch, plan in plans.items():
        x = randn(rng, batch, 16)
        assert_close(plan.run({"x": x})["y"], ref.gemm(x, w_val), 16)


def test_empty_batch(rng: np.random.Generator) -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (0, 5))
    (h,) = b.add_step("gemm", [x, b.add_constant(weight(rng, 5, 4))], {"activation": "relu"})
    (y,) = b.add_step("gemm", [h, b.add_constant(weight(rng, 4, 3))])
    b.mark_output(y, "y")
    out = b.build().run({"x": np.empty((0, 5), F32)})
    assert out["y"].shape == (0, 3)


@pytest.mark.parametrize("seed", range(4))
def test_random_dag_matches_interpreter(seed: int) -> None:
    """Random DAGs of gemm/matmul with residual joins: the memory plan is sound and every
    output matches a step-by-step numpy evaluation."""
    rng = np.random.default_rng(1000 + seed)
    m = int(rng.integers(1, 20))
    b = PlanBuilder()
    x = b.add_input("x", "float32", (m, 24))
    x_val = randn(rng, m, 24)
    values = {x: x_val}
    depth = {x: 0}
    for _ in range(14):
        src = int(rng.choice(list(values)))
        n = int(rng.choice([8, 24, 40]))
        w = weight(rng, values[src].shape[1], n)
        same = [v for v in values if values[v].shape == (m, n) and v != src]
        res = int(rng.choice(same)) if same and rng.random() < 0.6 else None
        act = str(rng.choice(["none", "relu", "tanh"]))
        op = str(rng.choice(["gemm", "matmul"]))
        (out,) = b.add_step(op, [src, b.add_constant(w), None, res], {"activation": act})
        fn = ref.gemm if op == "gemm" else ref.matmul
        values[out] = fn(values[src], w, None, act, residual=None if res is None else values[res])
        depth[out] = 1 + max(depth[src], depth[res] if res is not None else 0)
    outputs = sorted({int(v) for v in rng.choice(list(values)[1:], size=3)} | {max(values)})
    for v in outputs:
        b.mark_output(v, f"v{v}")
    plan = b.build()
    assert_memory_plan_sound(plan)
    assert plan.arena_bytes <= plan.naive_bytes
    got = plan.run({"x": x_val})
    for v in outputs:
        assert_close(got[f"v{v}"], values[v], 40, layers=depth[v] + 1)


# ---- concurrency and the GIL -----------------------------------------------------------------


def test_concurrent_runs_use_separate_arenas(rng: np.random.Generator) -> None:
    batch, dims = 24, [40, 80, 60, 12]
    plan, (w1, b1, w2, b2, w3) = build_mlp(rng, batch, dims)
    per_thread = 15
    inputs = [[randn(rng, batch, dims[0]) for _ in range(per_thread)] for _ in range(8)]
    expected = [
        [ref.gemm(ref.gemm(ref.gemm(x, w1, b1, "gelu"), w2, b2, "relu"), w3) for x in xs]
        for xs in inputs
    ]
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for x, e in zip(inputs[t], expected[t], strict=True):
                assert_close(plan.run({"x": x}, threads=1)["y"], e, 80, layers=3)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert 1 <= plan.arena_count <= 8
    plan.release_idle_arenas()
    assert plan.arena_count == 0
    x = inputs[0][0]
    assert_close(plan.run({"x": x})["y"], expected[0][0], 80, layers=3)
    assert plan.arena_count == 1


def test_gil_is_released_during_run(rng: np.random.Generator) -> None:
    n = 768
    b = PlanBuilder()
    h = b.add_input("x", "float32", (n, n))
    for _ in range(6):
        (h,) = b.add_step("gemm", [h, b.add_constant(weight(rng, n, n))], {"activation": "tanh"})
    b.mark_output(h, "y")
    plan = b.build()
    x = randn(rng, n, n)
    plan.run({"x": x}, threads=1)  # warm up: arena and BLAS buffers

    count = [0]
    max_gap = [0.0]
    stop = threading.Event()
    started = threading.Event()

    def spin() -> None:
        last = time.perf_counter()
        started.set()
        while not stop.is_set():
            now = time.perf_counter()
            max_gap[0] = max(max_gap[0], now - last)
            last = now
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    started.wait()
    time.sleep(0.01)
    before, max_gap[0] = count[0], 0.0
    t0 = time.perf_counter()
    plan.run({"x": x}, threads=1)
    elapsed = time.perf_counter() - t0
    advanced = count[0] - before
    gap = max_gap[0]
    stop.set()
    thread.join()
    # Held for the whole run, the GIL would stall the counter for about `elapsed` seconds.
    assert advanced > 1000, advanced
    assert gap < max(0.05, elapsed / 2), (gap, elapsed)


# ---- errors ----------------------------------------------------------------------------------


@pytest.fixture
def small_plan(rng: np.random.Generator) -> Plan:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (5, 7))
    (y,) = b.add_step("gemm", [x, b.add_constant(weight(rng, 7, 3))])
    b.mark_output(y, "y")
    return b.build()


@pytest.mark.parametrize(
    ("make_inputs", "message"),
    [
        (lambda: {}, r"\[plan\] missing input 'x'"),
        (lambda: {"x": np.ones((5, 7), F32), "z": np.ones(1, F32)}, r"\[plan\] unknown input 'z'"),
        (
            lambda: {"x": np.ones((5, 8), F32)},
            r"\[plan\] input 'x' must be float32 \(5, 7\), got float32 \(5, 8\)",
        ),
        (
            lambda: {"x": np.ones((5, 7), np.float64)},
            r"\[plan\] input 'x' must be float32 .*got float64",
        ),
        (lambda: {"x": np.ones((5, 7), np.complex64)}, r"\[plan\] input 'x' has unsupported dtype"),
        (lambda: {"x": [[1.0] * 7] * 5}, r"\[plan\] input 'x' must be float32 .*got float64"),
        (lambda: [], r"\[plan\] expects 1 inputs"),
        (lambda: {"x": None}, r"\[plan\] inputs cannot be None"),
    ],
)
def test_bad_run_inputs(small_plan: Plan, make_inputs: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        small_plan.run(make_inputs())  # type: ignore[arg-type]


def test_bad_run_arguments(small_plan: Plan) -> None:
    with pytest.raises(InvalidRequestError, match=r"\[plan\] inputs must be"):
        small_plan.run(np.ones((5, 7), F32))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] threads"):
        small_plan.run({"x": np.ones((5, 7), F32)}, threads=-1)
    with pytest.raises(InvalidRequestError, match=r"\[plan\] threads must be >= 0"):
        small_plan.native.run({"x": np.ones((5, 7), F32)}, -2)


def test_bad_steps(rng: np.random.Generator) -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (4, 6))
    w = b.add_constant(weight(rng, 6, 2))
    with pytest.raises(NotFoundError, match=r"\[no_such_op\] step 0: no such op"):
        b.add_step("no_such_op", [x])
    with pytest.raises(InvalidRequestError, match=r"\[gemm\] step 0: expects 2 to 4 inputs, got 1"):
        b.add_step("gemm", [x])
    with pytest.raises(InvalidRequestError, match=r"\[gemm\] step 0: expects 2 to 4 inputs, got 5"):
        b.add_step("gemm", [x, w, None, None, None])
    with pytest.raises(InvalidRequestError, match=r"\[gemm\] step 0: inner dimensions differ"):
        b.add_step("gemm", [w, x])
    with pytest.raises(InvalidRequestError, match=r"\[gemm\] step 0: input 1 is required"):
        b.add_step("gemm", [x, None])
    with pytest.raises(InvalidRequestError, match=r"\[gemm\] step 0: .*activation"):
        b.add_step("gemm", [x, w], {"activation": "nope"})
    with pytest.raises(
        InvalidRequestError, match=r"\[plan\] step 0 \(gemm\) input 1 refers to slot 99"
    ):
        b.add_step("gemm", [x, 99])
    with pytest.raises(InvalidRequestError, match=r"\[plan\] slot numbers are non-negative"):
        b.add_step("gemm", [x, -1])
    with pytest.raises(
        InvalidRequestError, match=r"\[plan\] step 0 \(gemm\) output 0 is declared float32 \(4, 3\)"
    ):
        b.add_step("gemm", [x, w], outputs=[("float32", (4, 3))])
    assert b.num_steps == 0  # failed steps leave no trace
    (y,) = b.add_step("gemm", [x, w], outputs=[(F32, (4, 2))])
    with pytest.raises(InvalidRequestError, match=r"\[plan\] input 'x' is declared twice"):
        b.add_input("x", "float32", (1,))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] unknown dtype 'float33'"):
        b.add_input("z", "float33", (1,))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] output 'y' refers to slot 42"):
        b.mark_output(42, "y")
    b.mark_output(y, "y")
    with pytest.raises(InvalidRequestError, match=r"\[plan\] output 'y' is declared twice"):
        b.mark_output(x, "y")


def test_building_after_finalize_is_refused(rng: np.random.Generator) -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (2, 3))
    (y,) = b.add_step("gemm", [x, b.add_constant(weight(rng, 3, 3))])
    b.mark_output(y, "y")
    b.build()
    with pytest.raises(InvalidRequestError, match=r"\[plan\] cannot add a step after finalize"):
        b.add_step("gemm", [y, x])
    with pytest.raises(InvalidRequestError, match=r"\[plan\] cannot add an input after finalize"):
        b.add_input("z", "float32", (1,))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] cannot add a constant after finalize"):
        b.add_constant(np.ones(3, F32))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] cannot mark an output after finalize"):
        b.mark_output(x, "again")
    with pytest.raises(InvalidRequestError, match=r"\[plan\] cannot finalize after finalize"):
        b.build()


def test_unfinished_plans_are_refused() -> None:
    b = PlanBuilder()
    b.add_input("x", "float32", (2,))
    with pytest.raises(InvalidRequestError, match=r"\[plan\] a plan needs at least one output"):
        b.build()
    native = require_core().Plan()
    with pytest.raises(InvalidRequestError, match=r"\[plan\] run\(\) needs a finalized plan"):
        native.run({})
    with pytest.raises(InvalidRequestError, match=r"\[plan\] Plan wraps a finalized"):
        Plan(native)


# ---- other kernels, where they exist ---------------------------------------------------------


def test_mixed_ops_when_available(rng: np.random.Generator) -> None:
    names = set(require_core().op_names())
    if not {"add", "softmax"} <= names or not hasattr(ref, "add") or not hasattr(ref, "softmax"):
        pytest.skip("add/softmax kernels are not built yet")
    w = weight(rng, 12, 9)
    bias = randn(rng, 9)
    b = PlanBuilder()
    x = b.add_input("x", "float32", (6, 12))
    (h,) = b.add_step("matmul", [x, b.add_constant(w)])
    (s,) = b.add_step("add", [h, b.add_constant(bias)])
    (p,) = b.add_step("softmax", [s], {"axis": -1})
    b.mark_output(p, "p")
    x_val = randn(rng, 6, 12)
    expected = ref.softmax(ref.add(ref.matmul(x_val, w), bias), axis=-1)
    np.testing.assert_allclose(b.build().run({"x": x_val})["p"], expected, rtol=1e-5, atol=1e-6)


# ---- robustness: argument types, huge declarations, failing runs under concurrency -----------


def test_slot_numbers_past_int_range_are_refused(rng: np.random.Generator) -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (4, 6))
    w = b.add_constant(weight(rng, 6, 2))
    # 2**32 was cast to a C int and became slot 0 (x): a wrong value, silently.
    with pytest.raises(
        InvalidRequestError, match=r"^\[plan\] a step input refers to slot 4294967297"
    ):
        b.add_step("gemm", [x, 2**32 + w])
    with pytest.raises(InvalidRequestError, match=r"^\[plan\] .*slot"):
        b.spec(2**40)
    with pytest.raises(InvalidRequestError, match=r"^\[plan\] .*must be an integer, got str"):
        b.mark_output("x", "y")  # type: ignore[arg-type]
    assert b.num_steps == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        # Each of these leaked a TypeError or ValueError from pybind11, numpy or int().
        (lambda b, x: b.add_input(5, "float32", (2,)), "input name must be a str"),
        (lambda b, x: b.add_input("z", object(), (2,)), "dtype must be"),
        (lambda b, x: b.add_input("z", "float32", ("a",)), "must be an integer"),
        (lambda b, x: b.add_input("z", "float32", (2.5,)), "must be an integer"),  # was int(2.5)
        (lambda b, x: b.add_input("z", "float32", 3), "shape must be a sequence"),
        (lambda b, x: b.add_input("z", "float32", (2**64,)), "does not fit"),
        (lambda b, x: b.add_step(5, [x]), "op name must be a str"),
        (lambda b, x: b.add_step("relu", x), "inputs must be a sequence"),
        (lambda b, x: b.add_step("relu", [x], [("a", 1)]), "attrs must be a mapping"),
        (lambda b, x: b.add_step("relu", [x], {1: 2}), "attribute names must be strings"),
        (lambda b, x: b.add_step("relu", [x], outputs=[("float32",)]), "a \\(dtype, shape\\) pair"),
        (lambda b, x: b.add_step("relu", [x], outputs=5), "outputs must be a sequence"),
        (lambda b, x: b.add_constant(object()), "unsupported dtype object"),
    ],
)
def test_bad_builder_arguments(call: Callable[[PlanBuilder, int], object], match: str) -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (2,))
    with pytest.raises(InvalidRequestError, match=rf"^\[(plan|relu)\] .*{match}"):
        call(b, x)


def test_bad_thread_counts(small_plan: Plan) -> None:
    x = {"x": np.ones((5, 7), F32)}
    with pytest.raises(InvalidRequestError, match=r"^\[plan\] threads"):
        small_plan.run(x, threads=1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=r"^\[plan\] threads"):
        small_plan.native.run(x, 2.0)
    # More threads than exist means all of them (was a TypeError from the int conversion).
    assert small_plan.run(x, threads=2**40)["y"].shape == (5, 3)


def test_declared_shapes_past_the_tensor_limit_are_a_resource_error() -> None:
    b = PlanBuilder()
    x = b.add_input("x", "float32", (1 << 30, 1 << 30))  # declared, never allocated
    with pytest.raises(ResourceError, match=r"^\[relu\] step 0: input 0 of shape"):
        b.add_step("relu", [x])
    # Inputs each within the limit whose broadcast is not: (2^24, 1) + (1, 2^24).
    col = b.add_input("col", "float32", (1 << 24, 1))
    row = b.add_input("row", "float32", (1, 1 << 24))
    with pytest.raises(ResourceError, match=r"^\[add\] step 0: output 0 of shape"):
        b.add_step("add", [col, row])
    assert b.num_steps == 0


def test_arena_past_its_limit_is_a_resource_error() -> None:
    # 600 values of 2^47 bytes alive at once: each within the tensor limit, their sum (2^56.2)
    # past what an arena may hold. Refused when planned, long before anything is allocated.
    b = PlanBuilder()
    x = b.add_input("x", "float32", (1 << 45,))
    live = [b.add_step("relu", [x])[0] for _ in range(600)]
    total = live[0]
    for v in live[1:]:
        (total,) = b.add_step("add", [total, v])
    b.mark_output(total, "y")
    with pytest.raises(ResourceError, match=r"^\[plan\] the arena would need more than"):
        b.build()


def test_failing_runs_return_their_arenas_under_concurrency(rng: np.random.Generator) -> None:
    # A run that fails mid-plan (a gather index out of range, found at run time) must give its
    # arena back and leave the plan usable, also while other threads run and free arenas.
    b = PlanBuilder()
    table = b.add_constant(randn(rng, 16, 8))
    i = b.add_input("i", "int64", (32,))
    (e,) = b.add_step("gather", [table, i])
    (y,) = b.add_step("relu", [e])
    b.mark_output(y, "y")
    plan = b.build()
    good = {"i": rng.integers(0, 16, 32)}
    bad = {"i": np.full(32, 99, np.int64)}
    expected = plan.run(good)["y"]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(200):
                if local.random() < 0.5:
                    with pytest.raises(InvalidRequestError, match=r"^\[gather\] index 99"):
                        plan.run(bad, threads=int(local.integers(0, 3)))
                else:
                    np.testing.assert_array_equal(plan.run(good)["y"], expected)
                if local.random() < 0.1:
                    plan.release_idle_arenas()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert plan.arena_count <= 4  # one per concurrent run at most (0 after a final release)
    np.testing.assert_array_equal(plan.run(good)["y"], expected)


def test_reshapes_view_their_input(rng: np.random.Generator) -> None:
    """A reshape's output views its input's bytes (an arena value, a caller's input or a
    constant): no copy runs, the storage lives while any view is read, and a reshape written
    into a caller's output still copies."""
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    c = rng.standard_normal((3, 8)).astype(np.float32)
    b = PlanBuilder()
    xs = b.add_input("x", "float32", (4, 6))
    ws = b.add_constant(w)
    cs = b.add_constant(c)
    (x2,) = b.add_step("reshape", [xs], {"shape": [2, 12]})  # views the caller's input
    (h,) = b.add_step("matmul", [xs, ws])  # an arena value
    (h2,) = b.add_step("reshape", [h], {"shape": [24]})
    (h3,) = b.add_step("reshape", [h2], {"shape": [3, 8]})  # a view of a view
    (c2,) = b.add_step("reshape", [cs], {"shape": [3, 8]})  # views a constant
    (s,) = b.add_step("add", [h3, c2])
    (t,) = b.add_step("tanh", [s])  # may reuse memory only where no view is alive
    (u,) = b.add_step("add", [t, h3])  # h's storage must still hold h here
    (x3,) = b.add_step("reshape", [x2], {"shape": [24]})
    (out_r,) = b.add_step("reshape", [u], {"shape": [24]})  # a plan output: copied
    b.mark_output(out_r, "y")
    b.mark_output(x3, "x_flat")
    plan = b.build()
    got = plan.run({"x": x})
    hh = (x @ w).reshape(3, 8)
    want = (np.tanh(hh + c) + hh).reshape(24)
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["x_flat"], x.reshape(24))
    profiled = plan.run_profiled({"x": x})
    np.testing.assert_allclose(profiled.outputs["y"], want, rtol=1e-5, atol=1e-5)
    # Only the matmul's result and the two adds' and tanh's need arena room, not the reshapes'.
    assert plan.arena_bytes < plan.naive_bytes
