"""One model version serving behind a deployment: its runner, replicas and schedulers.

A deployment holds one slot, or two while an update moves traffic from the old version to the
new. A slot is built whole (model compiled or worker processes started, latency model warmed)
before it receives a request, and retired by closing its schedulers with ``drain=True``, so that
every request it accepted is still answered: that is what makes updates and scaling zero-downtime.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.errors import ConflictError
from phi_engine.serving._inputs import InputSpec
from phi_engine.serving._policy import SchedulerConfig
from phi_engine.serving._scheduler import Admitted, ScheduledResult, Scheduler

if TYPE_CHECKING:
    from phi_engine.registry import ModelRecord

__all__ = ["Slot", "SlotSettings"]

# Symbolic dimensions other than the batch axis (e.g. a sequence length) take this size when a
# slot warms up; real requests bring their own.
WARM_UP_DIM = 8


@dataclass(frozen=True)
class SlotSettings:
    """How a slot runs: where, how many replicas, and how requests are scheduled."""

    execution_mode: str  # "local" | "process"
    replicas: int
    threads_per_replica: int
    max_batch: int
    policy: str
    slo_ms: Mapping[str | int, float]
    max_queue: int = 100_000
    device: str = "cpu"  # "cpu" (native kernels), "cuda" or "xla" (compiled by JAX)
    precision: str = "fp32"  # the products' arithmetic (phi.compile's precision)

    def scheduler_config(self, policy: str) -> SchedulerConfig:
        return SchedulerConfig(
            policy=policy,
            max_batch=self.max_batch,
            workers=self.replicas,
            max_queue=self.max_queue,
            slo_ms=dict(self.slo_ms),
        )


class _Meter:
    """Busy time of the replicas and queue delays, read and reset by the autoscaler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.queue_ms: deque[float] = deque(maxlen=4096)
        self.failed = 0
        # The last results (their outputs dropped), for a profile of live traffic.
        self.results: deque[tuple[int, float, float, int]] = deque(maxlen=10_000)

    def count_failure(self, requests: int = 1) -> None:
        with self._lock:
            self.failed += requests

    def take(self) -> tuple[float, list[float], int]:
        with self._lock:
            out = (self.busy_s, list(self.queue_ms), self.failed)
            self.busy_s = 0.0
            self.queue_ms.clear()
            self.failed = 0
        return out


class Slot:
    """A model version with its runner and one scheduler per execution policy in use.

    Args:
        record: The registered model.
        path: Its stored artifact.
        settings: Replicas, threads, batch limit and the default policy.
        runner: A runner to share (scaling a local slot reuses the compiled model); built when
            ``None``: a local slot compiles ``source``, a process slot's workers each read
            ``path`` and check its bytes against the record's SHA-256 themselves.
        source: The artifact's bytes, already checked against the record's SHA-256 (local
            slots that build a runner).
    """

    def __init__(
        self,
        record: ModelRecord,
        path: Path,
        settings: SlotSettings,
        runner: Any | None = None,
        source: bytes | None = None,
    ) -> None:
        self.record = record
        self.path = path
        self.settings = settings
        self.meter = _Meter()
        self.runner = runner if runner is not None else self._build_runner(source)
        self._owns_runner = runner is None
        self.inputs = [
            InputSpec(name, np.dtype(t["dtype"]), _shape(t.get("shape")))
            for name, t in record.inputs.items()
        ]
        self._schedulers: dict[str, Scheduler] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _build_runner(self, source: bytes | None) -> Any:
        s = self.settings
        if s.execution_mode == "process":
            from phi_engine.serving._process import ProcessRunner

            return ProcessRunner(
                self.path,
                processes=s.replicas,
                threads=s.threads_per_replica,
                max_batch=s.max_batch,
                sha256=self.record.sha256,
            )
        from phi_engine.graph import compile as compile_model
        from phi_engine.serving._runner import ModelRunner

        if source is None:
            from phi_engine.registry._store import read_verified

            source = read_verified(self.path, self.record.sha256)
        model = compile_model(source, device=s.device, max_batch=s.max_batch, precision=s.precision)
        return ModelRunner(model, threads=s.threads_per_replica, checked=True)

    # ---- serving ------------------------------------------------------------------------------

    def _run_batch(self, payloads: list[Any]) -> Sequence[Any]:
        t0 = time.perf_counter()
        try:
            return self.runner(payloads)  # type: ignore[no-any-return]
        except BaseException:
            self.meter.count_failure(len(payloads))
            raise
        finally:
            elapsed = time.perf_counter() - t0
            with self.meter._lock:
                self.meter.busy_s += elapsed

    def scheduler(self, policy: str | None = None) -> Scheduler:
        """The scheduler for a policy, started on first use (the slot's default policy: warmed)."""
        policy = policy or self.settings.policy
        found = self._schedulers.get(policy)
        if found is not None:
            return found
        with self._lock:
            if self._closed:
                raise ConflictError(
                    f"model {self.record.model_id} is no longer served here", field="deployment_id"
                )
            found = self._schedulers.get(policy)
            if found is None:
                found = Scheduler(self._run_batch, self.settings.scheduler_config(policy))
                if self._schedulers:
                    # Another policy's scheduler already learned this model's latencies.
                    first = next(iter(self._schedulers.values()))
                    found.seed_latencies({c: [s] for c, s, n in first.latency_table() if n})
                self._schedulers[policy] = found
            return found

    def submit(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        *,
        priority: str | int,
        deadline_ms: float | None,
        policy: str | None,
        tenant: str,
        mode: str = "future",
    ) -> Admitted | Future[ScheduledResult] | tuple[int, asyncio.Future[ScheduledResult]]:
        """Queue a request. ``mode``: ``future`` (a thread future), ``async`` (an id and an
        asyncio future, see :meth:`Scheduler.enqueue_async`), ``here`` (an idle scheduler hands
        it back to run in the caller's thread, see :meth:`Scheduler.admit`) or ``here-async``
        (``here``, else ``async``)."""
        sched = self.scheduler(policy)
        cost = float(rows)
        if mode == "async":
            return sched.enqueue_async(
                arrays, priority=priority, deadline_ms=deadline_ms, cost=cost, tenant=tenant
            )
        if mode == "here-async":
            return sched.admit_async(
                arrays, priority=priority, deadline_ms=deadline_ms, cost=cost, tenant=tenant
            )
        enter = sched.admit if mode == "here" else sched.submit
        return enter(arrays, priority=priority, deadline_ms=deadline_ms, cost=cost, tenant=tenant)

    def run_admitted(self, admitted: Admitted, policy: str | None) -> ScheduledResult:
        return self.scheduler(policy).run_admitted(admitted)

    def note_result(self, result: ScheduledResult) -> None:
        """Note a served request's measured times (for the autoscaler and live profiles)."""
        kept = (result.request_id, result.queue_time_ms, result.execution_time_ms)
        with self.meter._lock:
            self.meter.queue_ms.append(result.queue_time_ms)
            self.meter.results.append((*kept, result.batch_size))

    def recent_results(self) -> list[ScheduledResult]:
        """The last requests served (without their outputs), oldest first."""
        with self.meter._lock:
            kept = list(self.meter.results)
        return [ScheduledResult(None, rid, q, e, b) for rid, q, e, b in kept]

    # ---- lifecycle ----------------------------------------------------------------------------

    def sample_inputs(self, rows: int) -> dict[str, np.ndarray]:
        """Zero-valued inputs of ``rows`` rows (symbolic dimensions: :data:`WARM_UP_DIM`)."""
        out = {}
        for spec in self.inputs:
            dims = [
                rows if axis == 0 else (d if isinstance(d, int) else WARM_UP_DIM)
                for axis, d in enumerate(spec.shape or (rows,))
            ]
            out[spec.name] = np.zeros(dims, dtype=spec.dtype)
        return out

    def warm_up(self, repeats: int = 2) -> None:
        """Run the model at batch sizes up to the limit: seeds the default scheduler's latencies."""
        one = self.sample_inputs(1)
        self.scheduler().warm_up(lambda n: [one] * n, repeats=repeats)

    def measured_latencies(self) -> dict[float, list[float]]:
        """The default scheduler's measured latency buckets, as ``seed_latencies`` takes them."""
        return {c: [sec] for c, sec, n in self.scheduler().latency_table() if n}

    def with_replicas(self, replicas: int) -> Slot:
        """A slot like this one with another replica count (local slots share the model)."""
        settings = replace(self.settings, replicas=replicas)
        shared = self.runner if self.settings.execution_mode == "local" else None
        slot = Slot(self.record, self.path, settings, runner=shared)
        with self._lock:
            tables = {p: s.latency_table() for p, s in self._schedulers.items()}
        for policy, table in tables.items():
            slot.scheduler(policy).seed_latencies({c: [s] for c, s, n in table if n})
        return slot

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {policy: s.stats() for policy, s in self._schedulers.items()}

    def recent_batches(self) -> list[tuple[int, float]]:
        with self._lock:
            scheds = list(self._schedulers.values())
        return [b for s in scheds for b in s.recent_batches()]

    def close(self, drain: bool = True, timeout: float | None = 60.0) -> None:
        """Stop taking requests; with ``drain``, answer every queued one first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            scheds = list(self._schedulers.values())
        for s in scheds:
            s.close(drain=drain, timeout=timeout)
        close_runner: Callable[[], None] | None = getattr(self.runner, "close", None)
        if self._owns_runner and close_runner is not None:
            close_runner()

    def close_in_background(self) -> threading.Thread:
        """Drain and close on a thread of its own (an update must not wait for the old queue)."""
        t = threading.Thread(target=self.close, name="phi-slot-drain", daemon=True)
        t.start()
        return t


def _shape(shape: Any) -> tuple[int | str, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in shape)
