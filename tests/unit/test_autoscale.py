"""Scaling policies and the autoscaler's decisions, driven by an injected clock (sample times)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from phi_engine.errors import InvalidRequestError, ResourceError
from phi_engine.serving._autoscale import (
    Autoscaler,
    Decision,
    Sample,
    ScalingPolicy,
    parse_autoscale_request,
    parse_scaling_policy,
    parse_threshold,
)

AUTO = ScalingPolicy("auto", 1, 8, threshold=0.8, up_window_s=15.0, down_window_s=120.0)


def run(
    scaler: Autoscaler,
    seconds: int,
    busy: Callable[[int], float],
    replicas: int,
    queue_ms: float = 0.0,
    start: int = 0,
) -> list[tuple[int, Decision]]:
    """Feed one sample a second for ``seconds`` seconds, applying each decision at once."""
    decisions = []
    for t in range(start, start + seconds):
        decision = scaler.observe(Sample(float(t), busy(t), queue_ms, replicas))
        if decision is not None:
            decisions.append((t, decision))
            replicas = decision.replicas
    return decisions


# --- policies -----------------------------------------------------------------------------------


def test_fixed_and_auto_defaults() -> None:
    assert parse_scaling_policy("fixed", replicas=3) == ScalingPolicy("fixed", 3, 3)
    assert parse_scaling_policy(None, replicas=2).replicas_max == 2
    auto = parse_scaling_policy("auto", replicas=1, device="cuda")
    assert (auto.mode, auto.replicas_min, auto.replicas_max, auto.device) == ("auto", 1, 4, "cuda")
    assert parse_scaling_policy("auto", replicas=6).replicas_max == 6
    # The default maximum never promises more replicas than the machine holds.
    assert parse_scaling_policy("auto", replicas=1, capacity=2).replicas_max == 2


def test_policy_object() -> None:
    p = parse_scaling_policy(
        {"gpu_min": 2, "gpu_max": 6, "threshold": "70% utilization", "up_window_s": 5},
        replicas=2,
        device="cuda",
    )
    assert (p.mode, p.replicas_min, p.replicas_max, p.threshold, p.up_window_s) == (
        "auto",
        2,
        6,
        0.7,
        5.0,
    )
    assert p.notes == ()
    assert p.to_dict()["replicas_max"] == 6 and p.to_dict()["notes"] == []
    fixed = parse_scaling_policy(
        {"mode": "fixed", "replicas_min": 3, "replicas_max": 3}, replicas=3
    )
    assert fixed.mode == "fixed"


def test_policy_object_outside_its_bounds_starts_clamped_with_a_note() -> None:
    p = parse_scaling_policy({"replicas_max": 3}, replicas=5)
    assert p.clamp(5) == 3
    assert p.notes == ("resource_allocation.nodes asked for 5 replicas, outside 1..3: starts 3",)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("sometimes", "scaling_policy"),
        (3, "scaling_policy"),
        ({"replica_max": 3}, "scaling_policy.replica_max"),
        ({"mode": "adaptive"}, "scaling_policy.mode"),
        ({"mode": "fixed", "replicas_max": 4}, "scaling_policy.mode"),
        ({"replicas_min": 0}, "scaling_policy.replicas_min"),
        ({"replicas_min": 3, "replicas_max": 2}, "scaling_policy.replicas_min"),
        ({"threshold": "lots"}, "scaling_policy.threshold"),
        ({"up_window_s": -1}, "scaling_policy.up_window_s"),
        ({"tpu_enabled": "yes"}, "scaling_policy.tpu_enabled"),
    ],
)
def test_policy_errors(value: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_scaling_policy(value, replicas=1)  # type: ignore[arg-type]
    assert info.value.field == field


def test_policy_capacity() -> None:
    with pytest.raises(ResourceError) as info:
        parse_scaling_policy({"replicas_max": 9}, replicas=1, capacity=4)
    assert info.value.field == "scaling_policy.replicas_max"
    assert "9 replicas requested, this machine holds 4" in info.value.message


@pytest.mark.parametrize(
    "value", [0.85, 85, 85.0, "85%", "85% utilization", " 85 % Utilisation", "0.85"]
)
def test_threshold_forms(value: float | str) -> None:
    assert parse_threshold(value) == pytest.approx(0.85)


@pytest.mark.parametrize("value", [0, -0.5, 150, "150%", "0%", "high", math.nan, True])
def test_threshold_errors(value: float | str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_threshold(value)
    assert info.value.field == "threshold"


def test_autoscale_request_sheet_body_on_cpu() -> None:
    current = parse_scaling_policy("fixed", replicas=1)
    p = parse_autoscale_request(
        gpu_min=4, gpu_max=16, tpu_enabled=True, threshold="85% utilization", current=current
    )
    assert (p.mode, p.replicas_min, p.replicas_max, p.threshold) == ("auto", 4, 16, 0.85)
    # What the sheet's GPU and TPU fields meant here is recorded, not silently dropped.
    assert len(p.notes) == 2
    assert "gpu_min/gpu_max applied to the replicas of this cpu deployment" in p.notes[0]
    assert "tpu_enabled" in p.notes[1]


def test_autoscale_request_keeps_fields_left_out() -> None:
    current = ScalingPolicy("auto", 2, 6, threshold=0.7, queue_delay_ms=40.0, device="cuda")
    p = parse_autoscale_request(replicas_max=10, current=current)
    assert (p.replicas_min, p.replicas_max, p.threshold, p.queue_delay_ms) == (2, 10, 0.7, 40.0)
    assert parse_autoscale_request(gpu_min=3, replicas_min=3, current=current).replicas_min == 3
    assert parse_autoscale_request(gpu_max=4, current=current).notes == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_min": 2, "replicas_min": 3}, "gpu_min"),
        ({"replicas_min": 5, "replicas_max": 4}, "replicas_min"),
        ({"replicas_max": 1}, "replicas_max"),  # below the current minimum of 2
        ({"gpu_max": 0}, "gpu_max"),
        ({"replicas_min": 1.5}, "replicas_min"),
        ({"threshold": "85 percent"}, "threshold"),
        ({"queue_delay_ms": 0}, "queue_delay_ms"),
    ],
)
def test_autoscale_request_errors(kwargs: dict[str, object], field: str) -> None:
    current = ScalingPolicy("auto", 2, 6)
    with pytest.raises(InvalidRequestError) as info:
        parse_autoscale_request(current=current, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_autoscale_request_capacity() -> None:
    with pytest.raises(ResourceError) as info:
        parse_autoscale_request(gpu_max=16, current=ScalingPolicy("auto", 1, 2), capacity=2)
    assert info.value.field == "gpu_max"


# --- the autoscaler -----------------------------------------------------------------------------


def test_steady_high_load_scales_up_after_the_up_window_not_before() -> None:
    scaler = Autoscaler(AUTO)
    # 2 replicas 100 % busy against a 0.8 target: ceil(2 * 1.0 / 0.8) = 3.
    for t in range(15):
        assert scaler.observe(Sample(float(t), 1.0, 0.0, 2)) is None
    decision = scaler.observe(Sample(15.0, 1.0, 0.0, 2))
    assert decision is not None and decision.replicas == 3
    assert decision.reason.startswith("scale up 2 -> 3")
    assert "utilization 100% vs target 80%" in decision.reason
    # The change restarts the window: the next step needs another 15 s.
    assert run(scaler, 15, lambda t: 1.0, replicas=3, start=16) == []
    assert [d.replicas for _, d in run(scaler, 1, lambda t: 1.0, replicas=3, start=31)] == [4]


def test_scale_up_is_clamped_by_max() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 1, 5, threshold=0.5, up_window_s=10.0))
    # ceil(4 * 1.0 / 0.5) = 8, capped at 5.
    decisions = run(scaler, 11, lambda t: 1.0, replicas=4)
    assert [(t, d.replicas) for t, d in decisions] == [(10, 5)]


def test_low_load_scales_down_only_after_the_down_window() -> None:
    scaler = Autoscaler(AUTO)
    # 4 replicas 30 % busy: ceil(4 * 0.3 / 0.8) = 2.
    decisions = run(scaler, 121, lambda t: 0.3, replicas=4)
    assert [(t, d.replicas) for t, d in decisions] == [(120, 2)]
    assert decisions[0][1].reason.startswith("scale down 4 -> 2")


def test_scale_down_takes_the_largest_recommendation_of_the_window() -> None:
    scaler = Autoscaler(AUTO)
    # A burst at t=60 recommends 3 of 4 replicas; the rest recommend 1.
    decisions = run(scaler, 121, lambda t: 0.5 if t == 60 else 0.1, replicas=4)
    assert [(t, d.replicas) for t, d in decisions] == [(120, 3)]


def test_scale_down_is_clamped_by_min() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 2, 8, down_window_s=30.0))
    decisions = run(scaler, 31, lambda t: 0.0, replicas=6)
    assert [(t, d.replicas) for t, d in decisions] == [(30, 2)]


def serve(
    scaler: Autoscaler, seconds: int, demand: Callable[[int], float], replicas: int
) -> list[int]:
    """Like :func:`run`, with the busy fraction of a ``demand`` in replica-seconds per second."""
    counts = []
    for t in range(seconds):
        busy = min(1.0, demand(t) / replicas)
        decision = scaler.observe(Sample(float(t), busy, 0.0, replicas))
        if decision is not None:
            replicas = decision.replicas
            counts.append(replicas)
    return counts


@pytest.mark.parametrize("period", [1, 2, 5, 10, 14])
def test_oscillating_load_causes_no_change(period: int) -> None:
    scaler = Autoscaler(AUTO)
    # 95 % then 55 % busy around the 0.8 target, each phase shorter than the up window.
    assert serve(scaler, 900, lambda t: 3.8 if (t // period) % 2 == 0 else 2.2, replicas=4) == []


def test_slow_oscillation_scales_up_once_and_never_flaps() -> None:
    scaler = Autoscaler(AUTO)
    # Peaks of 60 s outlast the up window, troughs of 60 s are shorter than the down window:
    # one step up to serve the peaks, then no change.
    assert serve(scaler, 900, lambda t: 3.8 if (t // 60) % 2 == 0 else 2.2, replicas=4) == [5]


def test_demand_converges_without_overshoot() -> None:
    scaler = Autoscaler(AUTO)
    # 6 replica-seconds of work per second against a 0.8 target: stepwise up, each step a full
    # up window after the last, until 7 replicas run 86 % busy, inside the 10 % tolerance.
    counts = serve(scaler, 300, lambda t: 6.0, replicas=2)
    assert counts == [3, 4, 5, 7]


def test_load_within_tolerance_changes_nothing() -> None:
    scaler = Autoscaler(AUTO)
    # 0.87 / 0.8 = 1.0875, inside the HPA's 10 % tolerance: ceil would otherwise add a replica.
    assert run(scaler, 300, lambda t: 0.87, replicas=4) == []


def test_queue_delay_asks_for_one_more_replica() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 1, 8, threshold=0.8, queue_delay_ms=20.0))
    # Utilization on target, but requests wait 50 ms: one replica more, after the up window.
    decisions = run(scaler, 16, lambda t: 0.8, replicas=3, queue_ms=50.0)
    assert [(t, d.replicas) for t, d in decisions] == [(15, 4)]
    assert "median queue delay 50.0 ms vs target 20 ms" in decisions[0][1].reason
    # A queue delay under its target changes nothing.
    calm = Autoscaler(ScalingPolicy("auto", 1, 8, threshold=0.8, queue_delay_ms=20.0))
    assert run(calm, 200, lambda t: 0.8, replicas=3, queue_ms=5.0) == []


def test_queue_delay_without_target_is_ignored() -> None:
    assert run(Autoscaler(AUTO), 200, lambda t: 0.8, replicas=3, queue_ms=500.0) == []


def test_counts_outside_the_bounds_are_corrected_at_once() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 2, 4))
    low = scaler.observe(Sample(0.0, 0.5, 0.0, 1))
    high = scaler.observe(Sample(1.0, 0.5, 0.0, 7))
    assert low is not None and low.replicas == 2 and "outside" in low.reason
    assert high is not None and high.replicas == 4


def test_fixed_policy_never_scales() -> None:
    scaler = Autoscaler(ScalingPolicy("fixed", 3, 3))
    assert run(scaler, 300, lambda t: 1.0, replicas=3, queue_ms=1000.0) == []
    lost = scaler.observe(Sample(300.0, 1.0, 0.0, 2))
    assert lost is not None and lost.replicas == 3


def test_set_policy_restarts_the_windows() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 1, 2, threshold=0.8))
    assert run(scaler, 20, lambda t: 1.0, replicas=2) == []  # already at max
    scaler.set_policy(ScalingPolicy("auto", 1, 8, threshold=0.8))
    assert scaler.policy.replicas_max == 8
    decisions = run(scaler, 16, lambda t: 1.0, replicas=2, start=20)
    assert [(t, d.replicas) for t, d in decisions] == [(35, 3)]


def test_zero_up_window_acts_at_once() -> None:
    scaler = Autoscaler(ScalingPolicy("auto", 1, 8, up_window_s=0.0))
    decision = scaler.observe(Sample(0.0, 1.0, 0.0, 2))
    assert decision is not None and decision.replicas == 3


@pytest.mark.parametrize(
    ("sample", "field"),
    [
        (Sample(0.0, -0.1, 0.0, 1), "busy_fraction"),
        (Sample(0.0, math.nan, 0.0, 1), "busy_fraction"),
        (Sample(math.inf, 0.5, 0.0, 1), "time"),
        (Sample(0.0, 0.5, -1.0, 1), "queue_delay_ms"),
    ],
)
def test_bad_samples(sample: Sample, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Autoscaler(AUTO).observe(sample)
    assert info.value.field == field


def test_time_must_not_go_backwards() -> None:
    scaler = Autoscaler(AUTO)
    scaler.observe(Sample(10.0, 0.5, 0.0, 2))
    with pytest.raises(InvalidRequestError) as info:
        scaler.observe(Sample(9.0, 0.5, 0.0, 2))
    assert info.value.field == "time"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "adaptive"},
        {"mode": "auto", "replicas_min": 0},
        {"mode": "auto", "threshold": 0.0},
        {"mode": "fixed", "replicas_min": 1, "replicas_max": 2},
        {"mode": "auto", "interval_s": 0.0},
    ],
)
def test_policy_constructor_checks(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        ScalingPolicy(**kwargs)  # type: ignore[arg-type]
