"""Priorities, policies and the scheduler's settings, checked before the core sees them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phi_engine.errors import InvalidRequestError

#: The scheduling policies (DESIGN.md, "Φ(a)"); ``phi-optimized`` is the default.
POLICIES = (
    "phi-optimized",
    "fifo",
    "priority",
    "edf",
    "clockwork",
    "quantum-optimized",
    "latency",
    "throughput",
)

#: Priority names and the class index each stands for (API.md 1.3: or an integer class).
PRIORITIES = {"low": 0, "normal": 1, "high": 2, "ultra-high": 3, "ultra": 3}

#: Φ's class weights w_c for low, normal, high, ultra-high (DESIGN.md defaults).
DEFAULT_CLASS_WEIGHTS = (1.0, 4.0, 64.0, 1024.0)


def priority_class(priority: str | int, num_classes: int) -> int:
    """The class index of a priority name or integer class.

    Raises:
        InvalidRequestError: an unknown name, or an integer outside ``[0, num_classes)``.
    """
    if isinstance(priority, bool):
        raise InvalidRequestError("priority must be a name or an integer class", field="priority")
    if isinstance(priority, int):
        if not 0 <= priority < num_classes:
            raise InvalidRequestError(
                f"priority class {priority} is outside 0..{num_classes - 1}", field="priority"
            )
        return priority
    if isinstance(priority, str):
        key = priority.strip().lower().replace("_", "-")
        if key in PRIORITIES and PRIORITIES[key] < num_classes:
            return PRIORITIES[key]
        if key.isdigit():
            return priority_class(int(key), num_classes)
    names = ", ".join(sorted(set(PRIORITIES) - {"ultra"}))
    raise InvalidRequestError(
        f"unknown priority {priority!r}; use one of {names} or an integer class", field="priority"
    )


def _positive(value: float, name: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name} must be a number", field=name)
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        raise InvalidRequestError(f"{name} must be a positive number, got {value!r}", field=name)
    return v


def deadline_seconds(deadline_ms: float | None, slo_ms: float | None) -> float:
    """A request's relative deadline in seconds: its own, else its class SLO, else none (inf)."""
    if deadline_ms is not None:
        return _positive(deadline_ms, "deadline_ms", allow_inf=True) / 1000.0
    return math.inf if slo_ms is None else slo_ms / 1000.0


def request_cost(cost: float) -> float:
    """A request's cost (rows or tokens), checked."""
    return _positive(cost, "cost")


@dataclass(frozen=True)
class SchedulerConfig:
    """How one deployment's requests are batched and ordered.

    Attributes:
        policy: One of :data:`POLICIES`.
        max_batch: Requests per batch.
        max_batch_cost: Total cost per batch (``None``: ``max_batch``), for costs in rows or tokens.
        workers: Batches that may run at once (worker threads).
        max_queue: Queued requests beyond this are rejected with ``OverloadedError("queue_full")``.
        slo_ms: Per class (name or index) the deadline a request without ``deadline_ms`` gets.
            Classes left out are best effort: never shed, aged until served.
        class_weights: Φ's ``w_c`` by class index (the number of entries is the number of classes).
        tenant_weights: Φ's ``ω`` by tenant name (others weigh 1).
        min_share: By class, the least share of dispatched cost a class with queued work gets.
        margin: Safety margin on the latency model (``L̂·(1 + margin)`` is planned with).
        max_queue_delay_ms: fifo and throughput: how long the oldest request may wait for a batch
            to fill (fifo's default 0 is Triton's: dispatch at once).
        preferred_batch_sizes: fifo: sizes dispatched as soon as they can be formed.
    """

    policy: str = "phi-optimized"
    max_batch: int = 32
    max_batch_cost: float | None = None
    workers: int = 1
    max_queue: int = 100_000
    slo_ms: Mapping[str | int, float] = field(default_factory=dict)
    class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    min_share: Mapping[str | int, float] = field(default_factory=dict)
    margin: float = 0.15
    max_queue_delay_ms: float = 0.0
    preferred_batch_sizes: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidRequestError(
                f"unknown execution policy {self.policy!r}; use one of {', '.join(POLICIES)}",
                field="execution_policy",
            )
        for name in ("max_batch", "workers", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"{name} must be a positive integer", field=name)
        if self.max_batch_cost is not None:
            _positive(self.max_batch_cost, "max_batch_cost")
        for key, ms in self.slo_ms.items():
            priority_class(key, len(self.class_weights))
            _positive(ms, "slo_ms")

    def slo_by_class(self) -> dict[int, float]:
        """``slo_ms`` keyed by class index."""
        n = len(self.class_weights)
        return {priority_class(k, n): float(v) for k, v in self.slo_ms.items()}

    def native(self, tenants: Mapping[str, int]) -> dict[str, Any]:
        """The config dict the native scheduler takes (tenant names mapped to indices)."""
        n = len(self.class_weights)
        shares = [0.0] * n
        for key, share in self.min_share.items():
            shares[priority_class(key, n)] = float(share)
        weights = [1.0] * len(tenants)
        for name, w in self.tenant_weights.items():
            weights[tenants[name]] = _positive(w, "tenant_weights")
        return {
            "policy": self.policy,
            "max_batch": self.max_batch,
            "max_batch_cost": float(self.max_batch_cost or 0.0),
            "workers": self.workers,
            "max_queue": self.max_queue,
            "class_weights": [float(w) for w in self.class_weights],
            "tenant_weights": weights,
            "min_share": shares,
            "margin": float(self.margin),
            "max_queue_delay": float(self.max_queue_delay_ms) / 1000.0,
            "preferred_batch_sizes": [int(p) for p in self.preferred_batch_sizes],
        }
