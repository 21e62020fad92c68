"""The scheduling benchmark's workload generators and metrics (benchmarks/scheduling)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# The benchmarks are scripts beside the package, not part of it: import them the way they import
# each other, with benchmarks/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scheduling import metrics, workloads


def test_poisson_mean_rate() -> None:
    rng = np.random.default_rng(1)
    t = workloads.poisson(500.0, 200.0, rng)
    # 100000 expected arrivals: the count's standard deviation is 316, so 1 % is over 3 sigma.
    assert t.size == pytest.approx(100000, rel=0.01)
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 200.0
    gaps = np.diff(t)
    # Exponential gaps: the coefficient of variation is 1.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.02)


def test_mmpp_keeps_the_mean_rate_and_is_bursty() -> None:
    rng = np.random.default_rng(2)
    t = workloads.mmpp(400.0, 500.0, rng, burst=4.0)
    assert t.size / 500.0 == pytest.approx(400.0, rel=0.05)
    assert np.all(np.diff(t) >= 0)
    # Counts per 50 ms window vary far more than a Poisson process's (index of dispersion 1).
    counts = np.bincount((t / 0.05).astype(int))
    assert counts.var() / counts.mean() > 2.0


def test_class_mix_tenants_and_deadlines() -> None:
    w = workloads.generate("poisson", 1000.0, 100.0, seed=3)
    n = w["arrival"].size
    shares = np.bincount(w["cls"], minlength=4) / n
    np.testing.assert_allclose(shares, [0.40, 0.40, 0.15, 0.05], atol=0.01)
    tenants = np.bincount(w["tenant"], minlength=4) / n
    np.testing.assert_allclose(tenants, [0.4, 0.3, 0.2, 0.1], atol=0.01)
    rel = (w["deadline"] - w["arrival"]) / workloads.CLASS_SLO_S[w["cls"]]
    assert rel.min() >= 0.5 and rel.max() <= 1.5
    assert rel.mean() == pytest.approx(1.0, abs=0.01)
    assert w["cls"].dtype == np.int32 and w["arrival"].dtype == np.float64


def test_generation_is_deterministic() -> None:
    a = workloads.generate("mmpp", 300.0, 10.0, seed=[7, 1], cost="variable")
    b = workloads.generate("mmpp", 300.0, 10.0, seed=[7, 1], cost="variable")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_variable_cost_mean_matches_the_draws() -> None:
    c = workloads.costs("variable", 200000, np.random.default_rng(4))
    assert c.min() >= 1 and c.max() <= workloads.VARIABLE_MAX_ROWS
    assert c.mean() == pytest.approx(workloads.mean_cost("variable"), rel=0.01)
    assert workloads.mean_cost("unit") == 1.0


def test_capacity_is_the_best_measured_throughput() -> None:
    cost = [1.0, 4.0, 8.0]
    seconds = [[0.01, 0.02, 0.03], [0.04, 0.05, 0.06], [0.15, 0.16, 0.17]]
    assert workloads.capacity(cost, seconds, 8) == pytest.approx(4 / 0.05)  # 80/s beats 8/0.16
    assert workloads.capacity(cost, seconds, 2) == pytest.approx(1 / 0.02)
    with pytest.raises(ValueError):
        workloads.capacity(cost, seconds, 0.5)


def test_jain_index() -> None:
    assert metrics.jain([0.7, 0.7, 0.7, 0.7]) == pytest.approx(1.0)
    assert metrics.jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert np.isnan(metrics.jain([0.0, 0.0]))


def tiny() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | float]]:
    """Five requests, each ending differently."""
    workload = {
        "arrival": np.array([0.0, 0.0, 0.1, 0.2, 0.3]),
        "cls": np.array([3, 3, 3, 0, 0], dtype=np.int32),
        "tenant": np.array([0, 1, 0, 1, 0], dtype=np.int32),
        "cost": np.array([1.0, 1.0, 1.0, 2.0, 1.0]),
        "deadline": np.array([0.05, 0.05, 0.15, 1.2, 1.3]),
    }
    nan = float("nan")
    result = {
        # on time, shed, rejected as infeasible, completed late, completed on time
        "outcome": np.array([1, 2, 4, 1, 1], dtype=np.uint8),
        "finish": np.array([0.04, 0.01, 0.1, 1.5, 0.4]),
        "start": np.array([0.0, nan, nan, 1.4, 0.35]),
        "decision_ns": np.array([1000.0, 3000.0]),
        "decision_queue": np.array([1000, 5]),
        "submit_ns": 1000.0,
    }
    return workload, result


def test_attainment_counts_rejections_and_sheds_as_misses() -> None:
    w, r = tiny()
    np.testing.assert_array_equal(metrics.meets_slo(w, r), [True, False, False, False, True])
    low, normal, high, ultra = metrics.class_attainment(w, r)
    assert ultra == pytest.approx(1 / 3)
    assert low == pytest.approx(1 / 2)
    assert np.isnan(normal) and np.isnan(high)
    assert metrics.goodput(w, r, duration=2.0) == pytest.approx(1.0)
    assert metrics.weighted_goodput(w, r, duration=1.0) == pytest.approx(1024 + 1)


def test_wasted_work_latency_and_overhead() -> None:
    w, r = tiny()
    # Executed: requests 0, 3, 4 (cost 1 + 2 + 1); late: request 3 (cost 2).
    assert metrics.wasted_percent(w, r) == pytest.approx(50.0)
    p50, _, _ = metrics.latency_ms(w, r, (50, 99, 99.9))
    assert p50 == pytest.approx(100.0)  # of 40, 100 and 1300 ms
    assert metrics.overhead_us_per_request(r, 5) == pytest.approx(1.0)
    d = metrics.decision_times(r)
    assert d.median_at_1000_us == pytest.approx(1.0) and d.count_at_1000 == 1
    # Tenant 0: 2 of 3 on time; tenant 1: 0 of 2.
    assert metrics.tenant_fairness(w, r) == pytest.approx(1 / 2)
