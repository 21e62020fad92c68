"""The engine's control loop: once per interval, each deployment's measurements go to its
autoscaler, and the requests it shed or refused since the last look go to the event log.

Shed requests are logged in aggregate, one ``shed`` event per interval and deployment with the
counts by reason, rather than one event per request: under overload that would put the log on the
hot path exactly when the engine has least time for it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from phi_engine.errors import PhiEngineError
from phi_engine.observability import EventLog
from phi_engine.serving._autoscale import Autoscaler, Sample, ScalingPolicy
from phi_engine.serving._deployment import Deployment
from phi_engine.serving._slot import Slot

__all__ = ["SHED_REASONS", "Controller"]

#: Scheduler outcomes that mean "not served" (API.md 1.3: answered with 503 and the reason).
SHED_REASONS = ("queue_full", "deadline_infeasible", "shed")

Scale = Callable[[str, int, str], Any]


class Controller:
    """Runs the control loop on a thread of its own.

    Args:
        deployments: Returns the deployments to look at.
        scale: Called as ``scale(deployment_id, replicas, reason)`` when an autoscaler decides.
        events: Where shed counts and control errors are logged.
        interval_s: Seconds between looks.
    """

    def __init__(
        self,
        deployments: Callable[[], list[Deployment]],
        scale: Scale,
        events: EventLog,
        interval_s: float = 1.0,
    ) -> None:
        self._deployments = deployments
        self._scale = scale
        self._events = events
        self.interval_s = interval_s
        self._scalers: dict[str, Autoscaler] = {}
        # Outcome counts already logged, per slot (a slot's scheduler counts from its start).
        self._logged: weakref.WeakKeyDictionary[Slot, dict[str, int]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="phi-engine-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def set_policy(self, deployment_id: str, policy: ScalingPolicy | None) -> None:
        """Scale a deployment by this policy (``None`` or a fixed policy: not at all)."""
        with self._lock:
            if policy is None or policy.mode != "auto":
                self._scalers.pop(deployment_id, None)
            else:
                self._scalers[deployment_id] = Autoscaler(policy)

    def scaler(self, deployment_id: str) -> Autoscaler | None:
        with self._lock:
            return self._scalers.get(deployment_id)

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            elapsed, last = now - last, now
            for dep in self._deployments():
                try:
                    self.look(dep, elapsed)
                except PhiEngineError as exc:
                    self._events.append(
                        "control_error",
                        deployment_id=dep.deployment_id,
                        level="warning",
                        message=str(exc)[:300],
                    )

    def look(self, dep: Deployment, elapsed: float) -> None:
        """One look at a deployment: log what it shed, feed and apply its autoscaler."""
        busy_s, queue_ms, _ = dep.primary.meter.take()
        self.log_shed(dep)
        scaler = self.scaler(dep.deployment_id)
        if scaler is None or dep.status != "ready":
            return
        sample = Sample(
            time=time.monotonic(),
            busy_fraction=min(1.0, busy_s / max(elapsed * dep.replicas, 1e-9)),
            queue_delay_ms=float(np.median(queue_ms)) if queue_ms else 0.0,
            replicas=dep.replicas,
        )
        decision = scaler.observe(sample)
        if decision is not None and decision.replicas != dep.replicas:
            self._scale(dep.deployment_id, decision.replicas, decision.reason)

    def log_shed(self, dep: Deployment) -> None:
        """One ``shed`` event with the requests each reason ended since the last look."""
        new = dict.fromkeys(SHED_REASONS, 0)
        for slot in (dep.primary, dep.candidate):
            if slot is None:
                continue
            counts = dict.fromkeys(SHED_REASONS, 0)
            for stats in slot.stats().values():
                for reason in SHED_REASONS:
                    counts[reason] += int(stats["ended"].get(reason, 0))
            seen = self._logged.get(slot, dict.fromkeys(SHED_REASONS, 0))
            for reason in SHED_REASONS:
                new[reason] += max(0, counts[reason] - seen[reason])
            self._logged[slot] = counts
        if any(new.values()):
            self._events.append(
                "shed",
                deployment_id=dep.deployment_id,
                level="warning",
                count=sum(new.values()),
                **{r: n for r, n in new.items() if n},
            )
