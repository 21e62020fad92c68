"""Deterministic request workloads for the scheduler's simulator.

A workload is a dict of 1-D numpy arrays, one entry per request in arrival order, as
``phi_engine._core.simulate`` takes it: ``arrival`` (s), ``cls``, ``tenant``, ``cost`` (rows) and
``deadline`` (absolute s). Everything is drawn from a ``numpy.random.Generator`` the caller seeds,
so a (seed, parameters) pair always gives the same requests.

The mix (issue 4):

* classes 3 ultra-high / 2 high / 1 normal / 0 low in 5 / 15 / 40 / 40 %, with SLOs of
  50 / 100 / 250 / 1000 ms, each request's deadline its arrival + SLO × U(0.5, 1.5);
* tenants 0..3 sending 40 / 30 / 20 / 10 % of the requests, independently of class;
* cost ``unit`` (every request one row) or ``variable`` (1..8 rows, a truncated geometric
  distribution, mean :func:`mean_cost`).

Loads are multiples of :func:`capacity`, in cost units per second: the request rate for a load
is ``load × capacity / mean_cost``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASS_NAMES = ("low", "normal", "high", "ultra")  # by class index
CLASS_SHARES = np.array([0.40, 0.40, 0.15, 0.05])  # by class index: low, normal, high, ultra
CLASS_SLO_S = np.array([1.0, 0.25, 0.10, 0.05])  # by class index
DEADLINE_JITTER = 0.5  # deadline = arrival + SLO × U(1 − jitter, 1 + jitter)
TENANT_SHARES = np.array([0.4, 0.3, 0.2, 0.1])

# Variable cost: P(k) ∝ (1 − p)^(k − 1) on 1..8 rows. p = 0.35 gives a mean near 2.5 rows with
# a tail to 8, like a mix of short single queries and a few batched clients.
VARIABLE_MAX_ROWS = 8
VARIABLE_P = 0.35

Workload = dict[str, np.ndarray]


def poisson(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s, ascending) of a Poisson process of ``rate`` per second on [0, duration).

    Drawn as a Poisson count of uniform times, sorted: the same process as exponential gaps,
    and vectorised.
    """
    if rate < 0 or duration < 0:
        raise ValueError("rate and duration must be >= 0")
    n = rng.poisson(rate * duration)
    return np.sort(rng.uniform(0.0, duration, size=n))


def mmpp(
    rate: float,
    duration: float,
    rng: np.random.Generator,
    burst: float = 4.0,
    low_sojourn: float = 1.0,
    high_sojourn: float = 0.25,
) -> np.ndarray:
    """Arrival times of a two-state Markov-modulated Poisson process with mean rate ``rate``.

    The process alternates between a low state and a high state whose rate is ``burst`` times the
    low one; the time spent in each visit is exponential with mean ``low_sojourn`` and
    ``high_sojourn`` seconds. In the long run it is in the high state a fraction
    h = high_sojourn / (low_sojourn + high_sojourn) of the time (0.2 by default), so the low rate
    is rate / (1 − h + h·burst) and the mean rate is ``rate``: the same offered load as
    :func:`poisson`, in bursts (by default 4× for a quarter second, about once a second plus a
    quarter). The first state is drawn from that long-run distribution, so the process is
    stationary from time 0.

    Args:
        rate: Mean arrivals per second.
        duration: Length of the arrival window, seconds.
        rng: Source of randomness.
        burst: High-state rate over low-state rate (>= 1).
        low_sojourn: Mean seconds per visit to the low state.
        high_sojourn: Mean seconds per visit to the high state.

    Returns:
        Ascending arrival times in [0, duration).
    """
    if burst < 1 or low_sojourn <= 0 or high_sojourn <= 0:
        raise ValueError("burst must be >= 1 and the sojourn times positive")
    h = high_sojourn / (low_sojourn + high_sojourn)
    low_rate = rate / (1 - h + h * burst)
    high = bool(rng.random() < h)
    t = 0.0
    pieces = []
    while t < duration:
        stay = rng.exponential(high_sojourn if high else low_sojourn)
        end = min(duration, t + stay)
        pieces.append(t + poisson(low_rate * (burst if high else 1.0), end - t, rng))
        t = end
        high = not high
    return np.concatenate(pieces) if pieces else np.empty(0)


def variable_cost_probabilities() -> np.ndarray:
    """P(cost = k rows) for k = 1..VARIABLE_MAX_ROWS."""
    p = VARIABLE_P * (1 - VARIABLE_P) ** np.arange(VARIABLE_MAX_ROWS)
    return p / p.sum()


def mean_cost(kind: str) -> float:
    """Expected cost (rows) of one request for a cost kind (``unit`` or ``variable``)."""
    if kind == "unit":
        return 1.0
    if kind == "variable":
        rows = np.arange(1, VARIABLE_MAX_ROWS + 1)
        return float((rows * variable_cost_probabilities()).sum())
    raise ValueError(f"unknown cost kind {kind!r}; choose unit or variable")


def costs(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` request costs (rows, float64) of a cost kind."""
    if kind == "unit":
        return np.ones(n)
    if kind == "variable":
        rows = np.arange(1, VARIABLE_MAX_ROWS + 1)
        return rng.choice(rows, size=n, p=variable_cost_probabilities()).astype(np.float64)
    raise ValueError(f"unknown cost kind {kind!r}; choose unit or variable")


def label_requests(arrival: np.ndarray, rng: np.random.Generator, cost: str = "unit") -> Workload:
    """Classes, tenants, costs and deadlines for requests arriving at ``arrival``."""
    n = arrival.size
    cls = rng.choice(CLASS_SHARES.size, size=n, p=CLASS_SHARES).astype(np.int32)
    tenant = rng.choice(TENANT_SHARES.size, size=n, p=TENANT_SHARES).astype(np.int32)
    jitter = rng.uniform(1 - DEADLINE_JITTER, 1 + DEADLINE_JITTER, size=n)
    return {
        "arrival": np.ascontiguousarray(arrival, dtype=np.float64),
        "cls": cls,
        "tenant": tenant,
        "cost": costs(cost, n, rng),
        "deadline": arrival + CLASS_SLO_S[cls] * jitter,
    }


def generate(
    arrivals: str, rate: float, duration: float, seed: int | Sequence[int], cost: str = "unit"
) -> Workload:
    """A whole workload: ``arrivals`` is ``poisson`` or ``mmpp``, ``rate`` in requests/s.

    ``seed`` seeds ``numpy.random.default_rng`` (an int or a sequence of ints, e.g. a base seed
    followed by the indices of a run, so every run of a sweep gets its own stream).
    """
    rng = np.random.default_rng(seed)
    if arrivals == "poisson":
        times = poisson(rate, duration, rng)
    elif arrivals == "mmpp":
        times = mmpp(rate, duration, rng)
    else:
        raise ValueError(f"unknown arrival process {arrivals!r}; choose poisson or mmpp")
    return label_requests(times, rng, cost)


def capacity(
    table_cost: Sequence[float], table_seconds: Sequence[Sequence[float]], max_batch: float
) -> float:
    """Cost units per second one worker sustains: the best, over the measured batch costs up to
    ``max_batch``, of cost over median latency.

    A real model is not always fastest per row at its largest batch (caches), so the capacity is
    the throughput of the best batch size a scheduler could choose, not of ``max_batch`` alone.
    """
    best = 0.0
    for cost, seconds in zip(table_cost, table_seconds, strict=True):
        if cost <= max_batch:
            best = max(best, float(cost) / float(np.median(seconds)))
    if best == 0.0:
        raise ValueError(f"no measured batch cost is at most max_batch={max_batch}")
    return best
