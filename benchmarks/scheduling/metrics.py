"""What a scheduling run achieved, from a workload and ``simulate``'s result.

A request meets its SLO when it completed (outcome 1) by its deadline. Everything else (shed,
rejected at admission, still queued at the end, completed late) is a miss: a scheduler does not
get credit for refusing work. Latency percentiles are over completed requests only, so they must
be read together with attainment (a scheduler that sheds a lot has short latencies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

COMPLETED = 1  # Outcome::completed (csrc/core/scheduler/types.h)
CLASS_WEIGHTS = (1.0, 4.0, 64.0, 1024.0)  # the scheduler's default w_c, by class index
DECISION_WINDOW = (900, 1100)  # "about 1000 queued" for the decision-time target

Result = Mapping[str, np.ndarray | float]
Workload = Mapping[str, np.ndarray]


def meets_slo(workload: Workload, result: Result) -> np.ndarray:
    """Per request: completed by its deadline."""
    outcome = np.asarray(result["outcome"])
    finish = np.asarray(result["finish"])
    with np.errstate(invalid="ignore"):  # NaN finish (never ended) compares False: a miss
        return (outcome == COMPLETED) & (finish <= workload["deadline"])


def goodput(workload: Workload, result: Result, duration: float) -> float:
    """Requests completed within their deadline per second of the workload's duration."""
    return float(meets_slo(workload, result).sum()) / duration


def weighted_goodput(
    workload: Workload,
    result: Result,
    duration: float,
    weights: Sequence[float] = CLASS_WEIGHTS,
) -> float:
    """Goodput with each on-time request counted by its class weight (default 1/4/64/1024)."""
    w = np.asarray(weights, dtype=np.float64)[workload["cls"]]
    return float(w[meets_slo(workload, result)].sum()) / duration


def attainment(workload: Workload, result: Result, mask: np.ndarray | None = None) -> float:
    """Fraction of the requests (those in ``mask``, or all) that met their SLO; NaN for none."""
    ok = meets_slo(workload, result)
    if mask is not None:
        ok = ok[mask]
    return float(ok.mean()) if ok.size else float("nan")


def class_attainment(workload: Workload, result: Result, classes: int = 4) -> list[float]:
    """Attainment of each class by index; rejections and sheds count as misses."""
    cls = workload["cls"]
    return [attainment(workload, result, cls == c) for c in range(classes)]


def latency_ms(
    workload: Workload, result: Result, quantiles: Sequence[float] = (50, 99, 99.9)
) -> list[float]:
    """Percentiles of end-to-end latency (finish − arrival) of completed requests, in ms."""
    done = np.asarray(result["outcome"]) == COMPLETED
    if not done.any():
        return [float("nan")] * len(quantiles)
    e2e = (np.asarray(result["finish"])[done] - workload["arrival"][done]) * 1e3
    return [float(v) for v in np.percentile(e2e, quantiles)]


def wasted_percent(workload: Workload, result: Result) -> float:
    """Cost of completed-but-late requests over all executed cost, in %."""
    done = np.asarray(result["outcome"]) == COMPLETED
    executed = float(workload["cost"][done].sum())
    if executed == 0:
        return 0.0
    late = done & ~meets_slo(workload, result)
    return 100.0 * float(workload["cost"][late].sum()) / executed


@dataclass
class DecisionTimes:
    """Wall time of the dispatch decisions, µs (NaN where there were none)."""

    median_us: float
    p99_us: float
    median_at_1000_us: float  # decisions taken with DECISION_WINDOW requests queued
    count_at_1000: int


def decision_times(result: Result, window: tuple[int, int] = DECISION_WINDOW) -> DecisionTimes:
    """Median and p99 decision time, and the median for decisions with ~1000 queued."""
    ns = np.asarray(result["decision_ns"], dtype=np.float64)
    queued = np.asarray(result["decision_queue"])
    at = (queued >= window[0]) & (queued <= window[1])
    nan = float("nan")
    return DecisionTimes(
        median_us=float(np.median(ns)) / 1e3 if ns.size else nan,
        p99_us=float(np.percentile(ns, 99)) / 1e3 if ns.size else nan,
        median_at_1000_us=float(np.median(ns[at])) / 1e3 if at.any() else nan,
        count_at_1000=int(at.sum()),
    )


def overhead_us_per_request(result: Result, requests: int) -> float:
    """Scheduling wall time per request, µs: admission plus every dispatch decision."""
    if requests == 0:
        return float("nan")
    ns = float(result["submit_ns"]) + float(np.sum(result["decision_ns"]))
    return ns / requests / 1e3


def jain(values: Sequence[float] | np.ndarray) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when all equal, 1/n when one has everything.

    NaN when every value is 0 (no one got anything: fairness is undefined, not perfect).
    """
    x = np.asarray(values, dtype=np.float64)
    squares = float((x * x).sum())
    if x.size == 0 or squares == 0:
        return float("nan")
    return float(x.sum()) ** 2 / (x.size * squares)


def tenant_fairness(workload: Workload, result: Result) -> float:
    """Jain's index over tenants of each tenant's attainment (tenants with requests only)."""
    tenant = workload["tenant"]
    x = [attainment(workload, result, tenant == t) for t in np.unique(tenant)]
    return jain(x)


@dataclass
class PolicyMetrics:
    """One policy's row of the results table."""

    policy: str
    goodput: float  # on-time requests / s
    weighted_goodput: float
    attainment: float  # all classes together
    class_attainment: list[float]  # by class index (low, normal, high, ultra)
    latency_ms: list[float]  # p50, p99, p99.9 of completed requests
    wasted_percent: float
    decisions: DecisionTimes
    overhead_us: float
    jain: float
    sim_seconds: float = 0.0  # wall time the simulation took


def summarize(
    policy: str, workload: Workload, result: Result, duration: float, sim_seconds: float = 0.0
) -> PolicyMetrics:
    """Every metric of one run."""
    return PolicyMetrics(
        policy=policy,
        goodput=goodput(workload, result, duration),
        weighted_goodput=weighted_goodput(workload, result, duration),
        attainment=attainment(workload, result),
        class_attainment=class_attainment(workload, result),
        latency_ms=latency_ms(workload, result),
        wasted_percent=wasted_percent(workload, result),
        decisions=decision_times(result),
        overhead_us=overhead_us_per_request(result, len(workload["arrival"])),
        jain=tenant_fairness(workload, result),
        sim_seconds=sim_seconds,
    )
