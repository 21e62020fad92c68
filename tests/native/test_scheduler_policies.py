"""The native policies on the simulator's virtual clock: properties that must hold on any workload.

The simulator drives exactly the code the real scheduler runs, so these are the scheduler's
guarantees: no request lost or answered twice, never served after its deadline (policies that
shed), strict classes in order, best-effort work served under sustained load.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError
from phi_engine.serving import POLICIES

core = require_core()

PENDING, COMPLETED, SHED, QUEUE_FULL, INFEASIBLE = 0, 1, 2, 3, 4
SLO = np.array([1.0, 0.25, 0.1, 0.05])  # low, normal, high, ultra-high (seconds)


def linear_table(base: float = 0.002, per_row: float = 0.0005, jitter: float = 0.0, seed: int = 0):
    """Latency samples of a batch of c rows: base + per_row·c, times a lognormal jitter."""
    rng = np.random.default_rng(seed)
    costs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    samples = [
        list((base + per_row * c) * (rng.lognormal(0, jitter, 50) if jitter else np.ones(1)))
        for c in costs
    ]
    return costs, samples


def workload(n: int, rate: float, seed: int, *, best_effort: float = 0.0, max_cost: int = 1):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    cls = rng.choice(4, n, p=[0.4, 0.4, 0.15, 0.05]).astype(np.int32)
    deadline = arrival + SLO[cls] * rng.uniform(0.5, 1.5, n)
    deadline[rng.random(n) < best_effort] = math.inf
    return {
        "arrival": arrival,
        "cls": cls,
        "tenant": rng.integers(0, 3, n).astype(np.int32),
        "cost": rng.integers(1, max_cost + 1, n).astype(np.float64),
        "deadline": deadline,
    }


def simulate(policy: str, wl: dict, table=None, seed: int = 1, **config):
    costs, samples = table or linear_table()
    return core.simulate({"policy": policy, **config}, wl, costs, samples, seed)


@settings(max_examples=25, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    load=st.floats(0.2, 4.0),
    seed=st.integers(0, 2**31),
    max_cost=st.integers(1, 4),
    best_effort=st.sampled_from([0.0, 0.3]),
    max_queue=st.sampled_from([50, 100_000]),
)
def test_every_request_ends_exactly_once(
    policy: str, load: float, seed: int, max_cost: int, best_effort: float, max_queue: int
) -> None:
    wl = workload(600, 1700 * load, seed, best_effort=best_effort, max_cost=max_cost)
    r = simulate(policy, wl, max_batch=32, max_queue=max_queue)
    outcome = r["outcome"]
    assert not (outcome == PENDING).any(), "a request never ended"
    ran = outcome == COMPLETED
    # Ran exactly once: in exactly one batch, and batches hold what they say.
    assert (r["batch"][ran] >= 0).all() and (r["batch"][~ran] == -1).all()
    sizes = np.bincount(r["batch"][ran], weights=wl["cost"][ran], minlength=len(r["batch_cost"]))
    np.testing.assert_allclose(sizes, r["batch_cost"])
    assert (r["batch_cost"] <= 32).all()
    assert (r["start"][ran] >= wl["arrival"][ran]).all()
    assert (r["finish"] >= wl["arrival"]).all()
    if max_queue == 100_000:
        assert not (outcome == QUEUE_FULL).any()


@settings(max_examples=20, deadline=None)
@given(
    policy=st.sampled_from(["phi-optimized", "clockwork"]),
    load=st.floats(0.3, 4.0),
    seed=st.integers(0, 2**31),
    max_cost=st.integers(1, 3),
)
def test_shedding_policies_never_serve_late(
    policy: str, load: float, seed: int, max_cost: int
) -> None:
    # With latencies the model has measured exactly, a dispatch that plans to meet every member's
    # deadline does; so no completed request may finish after its deadline.
    wl = workload(800, 1700 * load, seed, max_cost=max_cost)
    r = simulate(policy, wl, max_batch=32)
    done = r["outcome"] == COMPLETED
    assert (r["finish"][done] <= wl["deadline"][done] + 1e-12).all()
    assert done.any()


def test_fifo_serves_late_under_overload() -> None:
    # The contrast with the test above: a policy blind to deadlines serves requests late.
    wl = workload(10_000, 1700 * 2, 3)
    r = simulate("fifo", wl, max_batch=32)
    done = r["outcome"] == COMPLETED
    assert done.all()
    assert (r["finish"] > wl["deadline"]).mean() > 0.7


@settings(max_examples=15, deadline=None)
@given(load=st.floats(0.5, 3.0), seed=st.integers(0, 2**31))
def test_strict_priority_keeps_class_order(load: float, seed: int) -> None:
    wl = workload(800, 1700 * load, seed)
    r = simulate("priority", wl, max_batch=8)
    done = np.flatnonzero(r["outcome"] == COMPLETED)
    start = r["start"]
    for b in np.unique(r["batch"][done]):
        members = done[r["batch"][done] == b]
        t, lowest = start[members[0]], wl["cls"][members].min()
        # Anyone of a higher class waiting at this dispatch must be in this batch or an earlier one.
        waiting = (wl["arrival"] <= t) & (start > t) & (wl["cls"] > lowest)
        assert not waiting.any(), f"batch {b} at {t} passed over a higher class"


def overload_with_best_effort(rate: float, seconds: float, slo: float, seed: int = 5) -> dict:
    """High-class deadline traffic plus 10 % best-effort low requests (no deadline)."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    cls = np.where(rng.random(n) < 0.1, 0, 2).astype(np.int32)
    return {
        "arrival": arrival,
        "cls": cls,
        "tenant": np.zeros(n, np.int32),
        "cost": np.ones(n),
        "deadline": np.where(cls == 0, math.inf, arrival + slo),
    }


def test_minimum_share_serves_best_effort_under_sustained_overload() -> None:
    wl = overload_with_best_effort(3400, 1.8, 0.1)  # about 2x what one worker sustains
    low, during = wl["cls"] == 0, wl["arrival"][-1]
    # Best effort is 10 % of arrivals, a fifth of what the worker can do: a 25 % share covers it.
    r = simulate("phi-optimized", wl, max_batch=32, min_share=[0.25, 0, 0, 0])
    assert ((r["outcome"][low] == COMPLETED) & (r["start"][low] < during)).mean() > 0.9
    assert (r["outcome"][low] == COMPLETED).all(), "best-effort requests are never shed"
    # Without a share, high-class overload holds best effort back until the overload ends.
    r = simulate("phi-optimized", wl, max_batch=32)
    assert ((r["outcome"][low] == COMPLETED) & (r["start"][low] < during)).mean() < 0.5
    assert (r["outcome"][low] == COMPLETED).all()


def test_aging_serves_best_effort_within_its_bound() -> None:
    # A low request (w 1) outranks a high one (w 64, urgency up to e^θ, at most `slo` old) once
    # 1 + g/G > 64·e·(1 + slo/G): with G = 0.1 ms and slo = 10 ms, after about 1.8 s.
    table = linear_table(base=0.001, per_row=0.0001)
    slo, aging = 0.01, 1e-4
    bound = aging * (64 * math.e * (1 + slo / aging) - 1)
    wl = overload_with_best_effort(15_000, 4.0, slo)
    low = wl["cls"] == 0
    r = simulate("phi-optimized", wl, table, max_batch=32, aging=aging)
    waited = r["start"][low] - wl["arrival"][low]
    assert (r["outcome"][low] == COMPLETED).all()
    assert waited.max() < bound + 0.05
    assert (r["start"][low] < wl["arrival"][-1]).mean() > 0.3, "served while the overload lasts"


def test_phi_protects_urgent_classes_in_overload() -> None:
    table = linear_table(jitter=0.1)
    wl = workload(20_000, 1700 * 2, 11)
    r = simulate("phi-optimized", wl, table, max_batch=32)
    met = (r["outcome"] == COMPLETED) & (r["finish"] <= wl["deadline"])
    for c in (2, 3):
        assert met[wl["cls"] == c].mean() > 0.99
    fifo = simulate("fifo", wl, table, max_batch=32)
    fifo_met = (fifo["outcome"] == COMPLETED) & (fifo["finish"] <= wl["deadline"])
    assert met.sum() > 5 * fifo_met.sum()


def test_heavy_tailed_latencies_neither_collapse_batches_nor_refuse_urgent_work() -> None:
    # 3 % of batches run 4x slower: the p99 is four times the median. Judging admission and the
    # headroom by the p99 alone would refuse urgent requests that nearly always finish in time and
    # cap every batch at one request; phi must do about as well as FIFO at half load.
    costs, samples = linear_table(jitter=0.05, seed=3)
    rng = np.random.default_rng(4)
    heavy = [list(np.where(rng.random(len(s)) < 0.03, np.array(s) * 4, s)) for s in samples]
    wl = workload(20_000, 1700 * 0.5, 12)
    phi = simulate("phi-optimized", wl, (costs, heavy), max_batch=32)
    fifo = simulate("fifo", wl, (costs, heavy), max_batch=32)

    def met(r: dict) -> np.ndarray:
        return (r["outcome"] == COMPLETED) & (r["finish"] <= wl["deadline"])

    for c in range(4):
        in_class = wl["cls"] == c
        assert met(phi)[in_class].mean() >= met(fifo)[in_class].mean() - 0.01, c
    assert np.mean(phi["batch_cost"]) >= 0.9 * np.mean(fifo["batch_cost"])


def test_simulation_is_deterministic() -> None:
    table = linear_table(jitter=0.2)
    wl = workload(2000, 3000, 2)
    a = simulate("phi-optimized", wl, table, seed=9)
    b = simulate("phi-optimized", wl, table, seed=9)
    for key in ("outcome", "start", "finish", "batch", "batch_seconds"):
        np.testing.assert_array_equal(a[key], b[key])
    c = simulate("phi-optimized", wl, table, seed=10)
    assert not np.array_equal(a["batch_seconds"], c["batch_seconds"])


def test_fifo_waits_at_most_the_queue_delay() -> None:
    wl = workload(500, 300, 4)
    r = simulate("fifo", wl, max_batch=32, max_queue_delay=0.004)
    done = r["outcome"] == COMPLETED
    assert done.all()
    wait = r["start"] - wl["arrival"]
    # A request waits for the delay (to fill a batch) plus, at most, one running batch.
    assert wait.max() <= 0.004 + 0.002 + 0.0005 * 32 + 1e-9
    assert np.bincount(r["batch"]).max() > 1


def test_quantum_optimized_backs_off_when_batches_run_late() -> None:
    # Batches that take longer than any deadline allows: AIMD must shrink the batch cap.
    costs, samples = linear_table(base=0.01, per_row=0.01)
    wl = workload(1500, 200, 6)
    wl["deadline"] = wl["arrival"] + 0.05
    r = simulate("quantum-optimized", wl, (costs, samples), max_batch=32)
    sizes = r["batch_cost"]
    assert sizes[-len(sizes) // 4 :].mean() < 8


def test_latency_model_reports_the_p99() -> None:
    s = core.Scheduler({"max_batch": 8})
    for ms in range(1, 101):
        s.record_latency(4.0, ms / 1000)
    table = {int(c): (sec, n) for c, sec, n in s.latency_table()}
    # 100 samples: enough for the bucket's own nearest-rank p99.
    assert table[4] == (pytest.approx(0.099), 100)
    # Unmeasured sizes: the first measurement below it, and past the last one in proportion to
    # cost, so that a bigger batch is never predicted to be faster.
    assert table[1][0] == pytest.approx(0.099) and table[1][1] == 0
    assert table[8][0] == pytest.approx(0.099 * 2)


def jittered(rng: np.random.Generator, median: float, n: int) -> np.ndarray:
    """Latencies with a known spread: median × U(0.8, 1.2) (p99 / median = 1.196)."""
    return median * rng.uniform(0.8, 1.2, n)


def test_sparse_bucket_tail_is_its_median_times_the_pooled_tail_ratio() -> None:
    rng = np.random.default_rng(0)
    s = core.Scheduler({"max_batch": 16})
    for cost in (1, 2, 4):
        for x in jittered(rng, 0.001 * (1 + cost), 300):
            s.record_latency(float(cost), float(x))
    for x in (0.009, 0.0085, 0.0095):  # three samples at 8 rows: median 9 ms, far too few for a p99
        s.record_latency(8.0, x)
    table = {int(c): (sec, n) for c, sec, n in s.latency_table()}
    # Well-measured buckets: their own p99 (1.2 × median at most, 1.19 here).
    for cost in (1, 2, 4):
        assert table[cost][0] == pytest.approx(0.001 * (1 + cost) * 1.19, rel=0.01)
    # The sparse bucket: its median times the ratio measured on the others, not its slowest sample.
    assert table[8][0] == pytest.approx(0.009 * 1.19, rel=0.02)


def test_one_stall_in_a_sparse_bucket_does_not_become_every_larger_batch_tail() -> None:
    # On a shared machine a batch now and then waits for a descheduled CPU. One such sample in a
    # rarely used size must not be planned as that size's p99, nor (by the running maximum) as the
    # p99 of every larger batch.
    rng = np.random.default_rng(1)
    s = core.Scheduler({"max_batch": 32})
    for cost in (1, 2, 4, 8, 16, 32):
        for x in jittered(rng, 0.002 + 0.001 * cost, 40):
            s.record_latency(float(cost), float(x))
    s.record_latency(9.0, 0.2)  # a 200 ms stall on an 11 ms batch
    table = {int(c): sec for c, sec, _ in s.latency_table()}
    assert table[16] < 0.018 * 1.3 and table[32] < 0.034 * 1.3
    assert table[9] < 0.05
    estimates = [table[c] for c in sorted(table)]
    assert estimates == sorted(estimates)


def slow_table() -> tuple[list[float], list[list[float]]]:
    """2 ms + 1 ms a row: 34 ms for a full batch, more than an ultra-high deadline leaves."""
    return linear_table(base=0.002, per_row=0.001)


def half_load_with_burst(burst: int) -> tuple[dict, int]:
    """Poisson arrivals at half of slow_table's capacity, plus ``burst`` low-class requests all
    arriving at t = 1 s; returns the workload and the burst's first index."""
    wl = workload(1500, 941 * 0.5, 21)
    at = int(np.searchsorted(wl["arrival"], 1.0))
    for key in ("arrival", "cls", "tenant", "cost", "deadline"):
        wl[key] = np.insert(wl[key], at, np.repeat(wl[key][at : at + 1], burst))
    wl["arrival"][at : at + burst] = 1.0
    wl["cls"][at : at + burst] = 0
    wl["deadline"][at : at + burst] = 1.0 + SLO[0]
    return wl, at


def test_phi_drains_a_short_backlog_in_full_batches_below_capacity() -> None:
    # Half load, and at t = 1 s a burst of 40 low-class requests (1.25 full batches). The headroom
    # kept for ultra-high arrivals would cut batches to about 17 rows; below capacity a queue this
    # short must drain in full batches (as FIFO drains it) instead, or everyone behind it waits
    # longer for nothing. (Who goes first is still Φ's order.)
    wl, at = half_load_with_burst(40)
    r = simulate("phi-optimized", wl, slow_table(), max_batch=32)
    assert (r["outcome"] == COMPLETED).all()
    first = r["batch"][at : at + 40].min()
    assert r["batch_cost"][first] == 32


def test_phi_keeps_headroom_in_a_burst_backlog() -> None:
    # The same at a burst of 160: a queue of five batches is a burst, during whose drain
    # ultra-high requests keep arriving; batches are held to the headroom.
    wl, at = half_load_with_burst(160)
    r = simulate("phi-optimized", wl, slow_table(), max_batch=32)
    first = r["batch"][at : at + 160].min()
    assert r["batch_cost"][first] < 24


def test_phi_keeps_headroom_for_urgent_classes_in_overload() -> None:
    # At twice capacity the backlog never drains: batches are held to the headroom so that an
    # ultra-high request arriving during one can still run after it in time.
    wl = workload(8000, 941 * 2, 22)
    r = simulate("phi-optimized", wl, slow_table(), max_batch=32)
    assert np.median(r["batch_cost"]) < 24
    met = (r["outcome"] == COMPLETED) & (r["finish"] <= wl["deadline"])
    assert met[wl["cls"] == 3].mean() > 0.99


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policy": "round-robin"}, "unknown policy"),
        ({"max_batch": 0}, "max_batch"),
        ({"class_weights": [1, -2]}, "class weights"),
        ({"margin": -1}, "margin"),
        ({"aimd_backoff": 1.5}, "AIMD"),
        ({"colour": "blue"}, "unknown config key"),
    ],
)
def test_bad_native_config_raises(config: dict, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        core.Scheduler(config)


def test_bad_workload_raises() -> None:
    wl = workload(10, 100, 0)
    wl["arrival"] = wl["arrival"][::-1].copy()
    with pytest.raises(InvalidRequestError, match="ascending"):
        simulate("fifo", wl)
    wl = workload(10, 100, 0)
    wl["cls"] = wl["cls"] + 4
    with pytest.raises(InvalidRequestError, match="priority class"):
        simulate("fifo", wl)
