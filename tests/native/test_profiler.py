"""The profiler and its latency histogram, on a real compiled model and a real scheduler.

Nothing here asserts speed: only structure and the internal consistency of what was measured
(percentiles ordered, operator times within the measured wall time, suggestions that match the
table they were derived from).
"""

from __future__ import annotations

import json
import math
import statistics
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import phi_engine
from phi_engine.errors import InvalidRequestError
from phi_engine.graph.compiled import CompiledModel
from phi_engine.observability._histogram import RELATIVE_ERROR, LatencyHistogram
from phi_engine.observability._profiler import (
    BatchRow,
    OperatorRow,
    Profile,
    Suggestion,
    profile_model,
    suggest,
    summarize_live,
)
from phi_engine.serving import ModelRunner, Scheduler

PERCENTILE_KEYS = ("median", "90th_percentile", "99th_percentile", "99.9th_percentile", "max")
MATMUL_LIKE = {"MatMul", "Gemm", "Linear"}
BATCHES = (1, 4, 16)
REQUESTS = 24


def mlp_path(tmp: Path) -> Path:
    """A 2-layer MLP: x float32 [N, 64] -> MatMul + Add + Relu -> MatMul -> y [N, 10]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(128).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((128, 10)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> CompiledModel:
    return phi_engine.compile(mlp_path(tmp_path_factory.mktemp("mlp")), max_batch=32)


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}


@pytest.fixture(scope="module")
def swept(model: CompiledModel, sample: dict[str, np.ndarray]) -> Profile:
    return profile_model(
        model, sample, batch_sizes=BATCHES, requests=REQUESTS, concurrency=3, deadline_ms=10_000
    )


def best_within(rows: list[BatchRow], deadline_ms: float | None) -> BatchRow | None:
    """The test's own pick: highest throughput among rows whose p99 meets the deadline."""
    fits = [
        r for r in rows if deadline_ms is None or r.latency_ms["99th_percentile"] <= deadline_ms
    ]
    return max(fits, key=lambda r: r.throughput_rows_per_s) if fits else None


def by_kind(suggestions: list[Suggestion], kind: str) -> list[Suggestion]:
    return [s for s in suggestions if s.kind == kind]


def assert_ordered(summary: dict[str, float]) -> None:
    values = [summary[k] for k in PERCENTILE_KEYS]
    assert values == sorted(values)
    assert summary["count"] == 0 or summary["median"] > 0


# ---- the histogram --------------------------------------------------------------------------


def test_histogram_percentiles_within_stated_error_of_numpy() -> None:
    samples = np.random.default_rng(2).lognormal(mean=1.5, sigma=1.2, size=20_000)
    h = LatencyHistogram()
    for ms in samples:
        h.record(float(ms))
    assert RELATIVE_ERROR <= 0.01  # the documented bound: half a 2 % bucket on a log scale
    for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
        exact = float(np.percentile(samples, q, method="inverted_cdf"))
        assert abs(h.percentile(q) - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9), q
    summary = h.summary()
    assert summary["count"] == 20_000
    assert summary["mean"] == pytest.approx(samples.mean(), rel=1e-9)
    assert summary["max"] == samples.max()
    assert_ordered(summary)


def test_histogram_merge_equals_recording_all() -> None:
    samples = np.random.default_rng(3).lognormal(mean=0.0, sigma=2.0, size=5_000)
    whole, left, right = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, ms in enumerate(samples):
        whole.record(float(ms))
        (left if i % 3 else right).record(float(ms))
    left.merge(right)
    merged, expected = left.summary(), whole.summary()
    assert merged.keys() == expected.keys()
    for key in expected:
        assert merged[key] == pytest.approx(expected[key], rel=1e-12), key
    for q in (0, 25, 50, 75, 99, 100):
        assert left.percentile(q) == whole.percentile(q)


def test_histogram_records_from_many_threads() -> None:
    h = LatencyHistogram()

    def work(seed: int) -> None:
        for ms in np.random.default_rng(seed).uniform(0.1, 10.0, size=2_000):
            h.record(float(ms))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.count == 8_000
    assert h.summary()["count"] == 8_000


def test_histogram_edges_and_bad_values() -> None:
    h = LatencyHistogram()
    assert h.summary() == dict.fromkeys(("count", "mean", *PERCENTILE_KEYS), 0.0)
    for ms in (0.0, 1e-5, 2e7):  # under the lowest bucket and over the highest
        h.record(ms)
    assert h.percentile(0) == 0.0
    assert h.percentile(100) == 2e7
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(InvalidRequestError) as err:
            h.record(bad)
        assert err.value.field == "ms"
    with pytest.raises(InvalidRequestError) as err:
        h.percentile(101)
    assert err.value.field == "q"


# ---- Program.run_profiled -------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_program_run_profiled_matches_run(tmp_path: Path, device: str) -> None:
    model = phi_engine.compile(mlp_path(tmp_path), device=device)
    x = np.random.default_rng(4).standard_normal((8, 64)).astype(np.float32)
    program = model.program({"x": x.shape})
    run = program.run_profiled({"x": x})
    np.testing.assert_allclose(run.outputs["y"], program.run({"x": x})["y"], rtol=1e-5)
    assert run.nodes and all(n.ns >= 0 for n in run.nodes)
    assert sum(n.ns for n in run.nodes) <= run.total_ns
    assert {n.native for n in run.nodes} == {device == "cpu"}
    assert MATMUL_LIKE & {n.op_type for n in run.nodes}


# ---- the sweep ------------------------------------------------------------------------------


def test_sweep_table_is_complete_and_consistent(swept: Profile) -> None:
    threads = list(dict.fromkeys(r.threads for r in swept.batches))
    assert threads[0] == phi_engine.get_num_threads()
    assert [(r.batch_size, r.threads) for r in swept.batches] == [
        (b, t) for b in BATCHES for t in threads
    ]
    for row in swept.batches:
        assert row.latency_ms["count"] == REQUESTS
        assert_ordered(row.latency_ms)
        assert row.throughput_rows_per_s > 0
        assert row.compute_ms_median > 0 and row.queue_ms_median >= 0
        assert 0 <= row.queue_share <= 1
    first = swept.batches[0]
    assert swept.source == "sweep" and swept.deadline_ms == 10_000
    assert swept.execution_time_ms == first.compute_ms_median
    assert swept.latency_distribution == first.latency_ms


def test_sweep_operators_cover_the_model(swept: Profile) -> None:
    ops = swept.operators
    assert MATMUL_LIKE & {o.op_type for o in ops}
    assert sum(o.share for o in ops) == pytest.approx(1.0)
    assert [o.total_ms for o in ops] == sorted((o.total_ms for o in ops), reverse=True)
    assert sum(o.total_ms for o in ops) <= swept.operator_wall_ms
    assert swept.operator_batch_size == max(BATCHES)
    assert all(o.nodes >= 1 for o in ops)


def test_sweep_suggestions_match_the_table(swept: Profile) -> None:
    expected = best_within(swept.batches, swept.deadline_ms)
    assert expected is not None
    (choice,) = by_kind(swept.suggestions, "batch_size")
    assert (choice.evidence["batch_size"], choice.evidence["threads"]) == (
        expected.batch_size,
        expected.threads,
    )
    assert choice.evidence["throughput_rows_per_s"] == expected.throughput_rows_per_s
    assert f"batch {expected.batch_size} " in choice.message
    assert f"{expected.throughput_rows_per_s:.0f} rows/s" in choice.message
    (top,) = by_kind(swept.suggestions, "operator")
    assert top.message.startswith(swept.operators[0].op_type)
    assert top.evidence["share"] == swept.operators[0].share
    assert not by_kind(swept.suggestions, "deadline_missed")


def test_suggestions_follow_any_deadline_on_measured_rows(swept: Profile) -> None:
    p99s = sorted(r.latency_ms["99th_percentile"] for r in swept.batches)
    for deadline in (p99s[0], statistics.median(p99s), p99s[-1]):
        expected = best_within(swept.batches, deadline)
        assert expected is not None
        (choice,) = by_kind(suggest(swept.batches, swept.operators, deadline), "batch_size")
        assert choice.evidence["batch_size"] == expected.batch_size
        assert choice.evidence["threads"] == expected.threads
        assert choice.evidence["p99_ms"] <= deadline
    tight = p99s[0] / 2
    found = suggest(swept.batches, swept.operators, tight)
    assert not by_kind(found, "batch_size")
    (missed,) = by_kind(found, "deadline_missed")
    assert missed.evidence["batch_size"] == min(BATCHES)
    assert missed.evidence["p99_ms"] > tight
    assert f"{tight:g} ms deadline" in missed.message


def test_profile_without_batch_one_still_times_batch_one(
    model: CompiledModel, sample: dict[str, np.ndarray]
) -> None:
    p = profile_model(model, sample, batch_sizes=[2], threads=[1], requests=4, concurrency=2)
    assert [(r.batch_size, r.threads) for r in p.batches] == [(2, 1)]
    assert p.execution_time_ms > 0
    assert p.deadline_ms is None
    assert "no deadline given" in by_kind(p.suggestions, "batch_size")[0].message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_sizes": []}, "batch_sizes"),
        ({"batch_sizes": [0]}, "batch_sizes"),
        ({"batch_sizes": [33]}, "batch_sizes"),  # over max_batch=32
        ({"batch_sizes": "8"}, "batch_sizes"),
        ({"threads": [0]}, "threads"),
        ({"threads": []}, "threads"),
        ({"requests": 0}, "requests"),
        ({"requests": 2.5}, "requests"),
        ({"deadline_ms": -1.0}, "deadline_ms"),
        ({"deadline_ms": math.nan}, "deadline_ms"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    model: CompiledModel, sample: dict[str, np.ndarray], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        profile_model(model, sample, **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_bad_model_or_sample_refused(model: CompiledModel) -> None:
    with pytest.raises(InvalidRequestError) as err:
        profile_model(object(), {"x": np.zeros((1, 64), np.float32)})  # type: ignore[arg-type]
    assert err.value.field == "model"
    for bad in ({}, {"x": np.zeros((2, 64), np.float32)}, {"x": np.float32(1.0)}):
        with pytest.raises(InvalidRequestError) as err:
            profile_model(model, bad)
        assert err.value.field == "sample"


# ---- live traffic ---------------------------------------------------------------------------


def test_summarize_live_from_a_real_scheduler(
    model: CompiledModel, sample: dict[str, np.ndarray]
) -> None:
    with Scheduler(ModelRunner(model), max_batch=8, workers=1) as sched:
        futures = [sched.submit(sample) for _ in range(60)]
        results = [f.result(timeout=30) for f in futures]
        batches = sched.recent_batches()
    p = summarize_live(results, batches, deadline_ms=10_000)
    assert p.source == "live" and p.operators == []
    assert p.latency_distribution["count"] == len(results)
    assert_ordered(p.latency_distribution)
    sizes = sorted({r.batch_size for r in results})
    assert [r.batch_size for r in p.batches] == sizes
    assert sum(r.latency_ms["count"] for r in p.batches) == len(results)
    smallest = [r.execution_time_ms for r in results if r.batch_size == sizes[0]]
    assert p.execution_time_ms == statistics.median(smallest)
    expected = best_within(p.batches, 10_000)
    assert expected is not None
    (choice,) = by_kind(p.suggestions, "batch_size")
    assert choice.evidence["batch_size"] == expected.batch_size
    assert all(r.threads == 0 and r.throughput_rows_per_s > 0 for r in p.batches)


def test_summarize_live_refuses_bad_input() -> None:
    with pytest.raises(InvalidRequestError) as err:
        summarize_live([], [])
    assert err.value.field == "results"
    with pytest.raises(InvalidRequestError) as err:
        summarize_live([1.0], [])  # type: ignore[list-item]
    assert err.value.field == "results"


def test_summarize_live_refuses_bad_batches(
    model: CompiledModel, sample: dict[str, np.ndarray]
) -> None:
    with Scheduler(ModelRunner(model)) as sched:
        result = sched.infer(sample)
    for bad in ([(1,)], [("1", 0.1)], [(1, -0.5)], [(1, "x")]):
        with pytest.raises(InvalidRequestError) as err:
            summarize_live([result], bad)  # type: ignore[arg-type]
        assert err.value.field == "batches"


# ---- suggestions from stated numbers ----------------------------------------------------------


def row(batch: int, p99: float, rate: float, queue: float, compute: float) -> BatchRow:
    latency = dict.fromkeys(("count", "mean", *PERCENTILE_KEYS), p99)
    return BatchRow(batch, 2, latency, rate, queue, compute)


def test_queue_dominance_is_quantified() -> None:
    rows = [row(1, 4.0, 250.0, 3.0, 1.0), row(8, 9.0, 900.0, 6.0, 2.0)]
    (queue,) = by_kind(suggest(rows, [], 20.0, clients=8), "queue")
    assert queue.evidence["batch_size"] == 8
    assert queue.evidence["queue_share"] == pytest.approx(0.75)
    assert queue.evidence["suggested_workers"] == 4  # (6 + 2) / 2
    assert "75%" in queue.message and "8 concurrent clients" in queue.message
    rows = [row(1, 4.0, 250.0, 0.5, 1.0)]
    assert not by_kind(suggest(rows, [], 20.0), "queue")


def test_deadline_missed_says_why() -> None:
    rows = [row(1, 30.0, 40.0, 1.0, 25.0), row(8, 80.0, 100.0, 1.0, 70.0)]
    found = suggest(rows, [], 20.0)
    (missed,) = by_kind(found, "deadline_missed")
    assert "compute alone exceeds it" in missed.message
    assert missed.evidence["p99_ms"] == 30.0
    assert not by_kind(found, "batch_size")
    (choice,) = by_kind(suggest(rows, [], None), "batch_size")
    assert choice.evidence["batch_size"] == 8
    assert choice.evidence["speedup"] == pytest.approx(2.5)


# ---- output shapes --------------------------------------------------------------------------


def test_to_dict_has_the_api_shape(swept: Profile) -> None:
    body = swept.to_dict()
    for key in (
        "execution_time",
        "latency_distribution",
        "throughput",
        "queue_vs_compute",
        "operators",
        "optimization_suggestions",
    ):
        assert key in body
    assert {"99th_percentile", "median"} <= body["latency_distribution"].keys()
    assert body["execution_time"] == swept.execution_time_ms
    assert body["optimization_suggestions"] == [s.message for s in swept.suggestions]
    assert all(isinstance(m, str) and m for m in body["optimization_suggestions"])
    assert len(body["throughput"]) == len(swept.batches)
    assert {"batch_size", "threads", "rows_per_second"} <= body["throughput"][0].keys()
    assert {"queue_ms_median", "compute_ms_median", "queue_share"} <= body["queue_vs_compute"][
        0
    ].keys()
    assert json.loads(json.dumps(body)) == body


def test_repr_html_escapes_text(swept: Profile) -> None:
    assert "<table>" in swept._repr_html_()
    hostile = Profile(
        execution_time_ms=1.0,
        latency_distribution={"99th_percentile": 2.0},
        batches=[row(1, 2.0, 10.0, 0.1, 1.0)],
        operators=[OperatorRow("<script>alert(1)</script>", 1, 1.0, 1.0)],
        suggestions=[Suggestion("operator", 'use "<b>" & <i>', {})],
        source="<live>",
        deadline_ms=None,
    )
    text = hostile._repr_html_()
    assert "<script>" not in text and "<b>" not in text and "<live>" not in text
    assert "&lt;script&gt;" in text and "&amp;" in text and "&quot;" in text
