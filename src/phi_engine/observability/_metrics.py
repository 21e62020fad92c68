"""Per-deployment request metrics, and their Prometheus exposition.

A :class:`DeploymentMetrics` counts every request's outcome and records its measured queue and
compute time and its batch size, cumulatively for the life of the deployment (across updates and
scaling, which replace schedulers). :func:`prometheus_text` renders every deployment's metrics in
the Prometheus text format with ``phi_`` names, seconds, and ``_total`` counters, as the
Prometheus naming conventions ask.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["OUTCOMES", "DeploymentMetrics", "Gauges", "Snapshot", "prometheus_text"]

#: How a request can end (the scheduler's outcomes).
OUTCOMES = (
    "completed",
    "failed",
    "shed",
    "queue_full",
    "deadline_infeasible",
    "cancelled",
    "closed",
)

# Bucket upper bounds in seconds: 100 µs to 10 s, roughly ×2.5 apart.
TIME_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Histogram:
    """Counts per bucket (non-cumulative), a sum and a count; the caller holds the lock."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


@dataclass(frozen=True)
class Snapshot:
    """Outcome counts, and per histogram (``queue``, ``compute``, ``batch``) its cumulative
    ``(le, count)`` buckets and sum."""

    outcomes: dict[str, int]
    histograms: dict[str, tuple[list[tuple[str, int]], float]]


class DeploymentMetrics:
    """Thread-safe counters and histograms of one deployment's requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.queue = _Histogram(TIME_BUCKETS)
        self.compute = _Histogram(TIME_BUCKETS)
        self.batch = _Histogram(BATCH_BUCKETS)

    def served(self, queue_ms: float, compute_ms: float, batch_size: int) -> None:
        """A request completed: its measured times and the size of its batch."""
        with self._lock:
            self.outcomes["completed"] += 1
            self.queue.observe(queue_ms / 1000.0)
            self.compute.observe(compute_ms / 1000.0)
            self.batch.observe(batch_size)

    def ended(self, outcome: str) -> None:
        """A request ended without a result (``failed``, ``shed``, ``queue_full``, ...)."""
        with self._lock:
            self.outcomes[outcome if outcome in self.outcomes else "failed"] += 1

    def snapshot(self) -> Snapshot:
        """Copies of everything, taken under the lock."""
        with self._lock:
            return Snapshot(
                dict(self.outcomes),
                {
                    "queue": (self.queue.cumulative(), self.queue.sum),
                    "compute": (self.compute.cumulative(), self.compute.sum),
                    "batch": (self.batch.cumulative(), self.batch.sum),
                },
            )


@dataclass(frozen=True)
class Gauges:
    """One deployment's state at scrape time."""

    deployment_id: str
    model: str
    version: str
    replicas: int
    queued: int
    in_flight: int
    metrics: DeploymentMetrics = field(compare=False)
    model_id: str = ""
    sha256: str = ""
    ready: bool = True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def prometheus_text(deployments: Iterable[Gauges]) -> str:
    """The Prometheus text exposition (format 0.0.4) of every deployment's metrics."""
    deps = list(deployments)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("phi_requests_total", "counter", "Requests by how they ended.")
    snaps = {g.deployment_id: g.metrics.snapshot() for g in deps}
    for g in deps:
        for outcome, n in snaps[g.deployment_id].outcomes.items():
            lines.append(
                f"phi_requests_total{_labels(deployment=g.deployment_id, outcome=outcome)} {n}"
            )
    for key, name, help_text in (
        ("queue", "phi_queue_seconds", "Time from submission to the start of the batch."),
        ("compute", "phi_compute_seconds", "Run time of the batch a request was in."),
        ("batch", "phi_batch_size", "Requests in the batch a request was in."),
    ):
        family(name, "histogram", help_text)
        for g in deps:
            buckets, total = snaps[g.deployment_id].histograms[key]
            for le, count in buckets:
                lines.append(f"{name}_bucket{_labels(deployment=g.deployment_id, le=le)} {count}")
            lines.append(f"{name}_sum{_labels(deployment=g.deployment_id)} {total}")
            lines.append(f"{name}_count{_labels(deployment=g.deployment_id)} {buckets[-1][1]}")
    for name, attr, help_text in (
        ("phi_replicas", "replicas", "Replicas serving the deployment's current version."),
        ("phi_queued_requests", "queued", "Requests waiting in the scheduler."),
        ("phi_in_flight_batches", "in_flight", "Batches running."),
    ):
        family(name, "gauge", help_text)
        for g in deps:
            labels = _labels(deployment=g.deployment_id, model=g.model, version=g.version)
            lines.append(f"{name}{labels} {getattr(g, attr)}")
    family(
        "phi_model_info",
        "gauge",
        "The model version a deployment serves, with its artifact's SHA-256; 1 while ready, 0 "
        "when not (e.g. a runtime re-hash found the artifact changed).",
    )
    for g in deps:
        labels = _labels(
            deployment=g.deployment_id,
            model=g.model,
            version=g.version,
            model_id=g.model_id,
            sha256=g.sha256,
        )
        lines.append(f"phi_model_info{labels} {int(g.ready)}")
    return "\n".join(lines) + "\n"
