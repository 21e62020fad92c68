"""A deployment: a model served under one id, with traffic routing between versions.

A deployment routes each request to a :class:`~phi_engine.serving._slot.Slot` (one model version
with its replicas and schedulers). It holds one slot, or two during an update:

- ``blue_green``: the new slot is built and warmed, then all traffic moves at once;
- ``rolling``: the new slot is built and warmed, then traffic moves in steps (25, 50, 75, 100 %);
- ``canary``: the new slot takes ``canary_percent`` of requests until :meth:`promote` or
  :meth:`rollback`.

Routing and retiring happen under one lock, and a retired slot drains (answers everything it
queued) before it closes, so no request fails because of an update. Scaling swaps in a slot with
another replica count the same way.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.errors import ConflictError, InvalidRequestError, OverloadedError
from phi_engine.observability._metrics import DeploymentMetrics, Gauges
from phi_engine.serving._inputs import InputLimits, InputSpec, parse_inputs
from phi_engine.serving._scheduler import Admitted, ScheduledResult
from phi_engine.serving._slot import Slot

if TYPE_CHECKING:
    from phi_engine.registry import ModelRecord
    from phi_engine.serving._autoscale import ScalingPolicy
    from phi_engine.serving._resources import Placement

__all__ = ["STRATEGIES", "Deployment", "InferenceResult"]

STRATEGIES = ("rolling", "canary", "blue_green")
# A lone request on an event loop runs there when its batch is estimated at or under this: two
# thread hand-offs cost tens to hundreds of microseconds, and blocking the loop for longer than
# this would delay whatever else it serves.
INLINE_BUDGET_MS = 0.5
ROLLING_STEPS = (25.0, 50.0, 75.0)


@dataclass(slots=True)
class InferenceResult:
    """The answer to one inference request (API.md 1.3).

    Attributes:
        outputs: Each model output's rows for this request, by name.
        deployment_id: The deployment that served it.
        model_id: The model version that computed it.
        model_version: That model's version string.
        model_sha256: The SHA-256 of that model's verified artifact.
        request_id: The engine's id of the request.
        execution_time_ms: How long its batch ran (measured).
        queue_time_ms: From submission to the start of its batch (measured).
        batch_size: Requests in its batch.
    """

    outputs: dict[str, np.ndarray]
    deployment_id: str
    model_id: str
    model_version: str
    request_id: str
    execution_time_ms: float
    queue_time_ms: float
    batch_size: int
    model_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON response: ``{"output", "execution_time", "queue_time", ...}`` (times in ms)."""
        return {
            "output": {name: a.tolist() for name, a in self.outputs.items()},
            "execution_time": self.execution_time_ms,
            "queue_time": self.queue_time_ms,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "request_id": self.request_id,
            "deployment_id": self.deployment_id,
            "batch_size": self.batch_size,
        }


@dataclass
class DeploymentSpec:
    """What a deployment was asked for and what it got; persisted as JSON."""

    execution_mode: str
    resource_allocation: dict[str, Any]
    placement_mode: str
    placement: Placement
    scaling: ScalingPolicy
    execution_policy: str
    max_batch: int
    slo_ms: dict[str | int, float] = field(default_factory=dict)
    limits: InputLimits = field(default_factory=InputLimits)
    precision: str = "fp32"


class Deployment:
    """A served model: send it requests through :class:`~phi_engine.Engine`, or directly.

    Attributes:
        deployment_id: Its id (``dep_`` and 16 hex digits).
        spec: What it was asked for, and the placement it got.
        status: ``ready``, ``updating`` (two versions serving), ``stopped`` or ``failed``.
    """

    def __init__(
        self,
        deployment_id: str,
        spec: DeploymentSpec,
        primary: Slot,
    ) -> None:
        self.deployment_id = deployment_id
        self.spec = spec
        self._primary = primary
        self._candidate: Slot | None = None
        self._candidate_percent = 0.0
        self._strategy: str | None = None
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._routed = itertools.count()
        self._ids = itertools.count(1)
        self._id_prefix = f"req_{deployment_id[4:12]}_"
        self.metrics = DeploymentMetrics()
        self._stopped = False
        #: Set when a runtime re-hash found the stored artifact changed (status ``failed``).
        self.integrity_failed = False
        self._local = threading.local()  # per event loop thread: ainfer calls in progress
        #: A lone request whose batch the latency model puts at or under this many
        #: milliseconds runs in the event loop's thread (see :meth:`ainfer`); 0 turns it off.
        self.inline_budget_ms = INLINE_BUDGET_MS
        self.created_at = time.time()

    # ---- what it serves -----------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self._stopped:
            return "stopped"
        if self.integrity_failed:
            return "failed"
        return "updating" if self._candidate is not None else "ready"

    @property
    def model_id(self) -> str:
        """The model version that takes the traffic not sent to a candidate."""
        return self._primary.record.model_id

    @property
    def candidate_model_id(self) -> str | None:
        """The version an update is moving to, while it is in progress."""
        return None if self._candidate is None else self._candidate.record.model_id

    @property
    def candidate_percent(self) -> float:
        return self._candidate_percent if self._candidate is not None else 0.0

    @property
    def replicas(self) -> int:
        return self._primary.settings.replicas

    @property
    def primary(self) -> Slot:
        return self._primary

    @property
    def candidate(self) -> Slot | None:
        return self._candidate

    # ---- requests -----------------------------------------------------------------------------

    def submit(
        self,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> Future[InferenceResult]:
        """Validate a request and queue it on the version the router picks.

        Raises:
            InvalidRequestError: inputs that do not fit the model (``field`` names the input),
                an unknown priority or policy, or a bad deadline.
            ConflictError: the deployment is stopped.
        """
        slot, found, request_id = self._enter(
            inputs, priority, deadline_ms, execution_policy, tenant, mode="future"
        )
        assert isinstance(found, Future)
        return self._wrap(found, slot, request_id)

    async def ainfer(
        self,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> InferenceResult:
        """:meth:`submit` and await the result, on the running event loop.

        A queued request waits on an :class:`asyncio.Future` that the worker resolves together
        with the rest of its batch (one loop callback per batch), not on a thread future per
        request. Cancelling the awaiting task withdraws a request still queued.

        A request that is alone (no other request of this deployment in progress on this
        loop, after one yield to let requests that arrived with it show themselves), finds the
        scheduler idle, and whose batch the latency model puts under :attr:`inline_budget_ms`
        runs in the loop's thread, as :meth:`infer` does: the scheduler still decides, and the
        two thread hand-offs, which cost more than such a model, are saved. Under concurrent
        load requests always queue, so they are ranked and batched.

        Raises:
            InvalidRequestError, ConflictError: as :meth:`submit`.
            OverloadedError: shed or rejected.
            Exception: the model's error for this request.
        """
        local = self._local
        active = getattr(local, "active", 0) + 1
        local.active = active
        try:
            arrays, rows = self._parse(inputs)
            mode = "async"
            if active == 1 and self.inline_budget_ms > 0:
                slot = self._primary
                estimate = slot.scheduler(execution_policy).estimate_seconds(rows)
                if estimate is not None and estimate * 1000.0 <= self.inline_budget_ms:
                    await asyncio.sleep(0)
                    if local.active == 1:
                        mode = "here-async"
            slot, found, request_id = self._queue(
                arrays, rows, priority, deadline_ms, execution_policy, tenant, mode
            )
            if isinstance(found, Admitted):
                return self._run_here(found, slot, execution_policy, request_id)
            rid, waiting = found
            try:
                r = await waiting
            except asyncio.CancelledError:
                slot.scheduler(execution_policy).withdraw(rid)
                self.metrics.ended("cancelled")
                raise
            except OverloadedError as exc:
                self.metrics.ended(exc.reason)
                raise
            except BaseException:
                self.metrics.ended("failed")
                raise
            return self._result(r, slot, request_id)
        finally:
            local.active -= 1

    def infer(
        self,
        inputs: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        execution_policy: str | None = None,
        tenant: str = "default",
    ) -> InferenceResult:
        """:meth:`submit` and wait; on an idle deployment the request runs in this thread.

        The scheduler still decides (it dispatches the request to this thread only when the
        queue is empty, a replica is free and the policy would start it now), so this changes
        no scheduling decision; it saves the two thread hand-offs of a queued request.

        Raises:
            InvalidRequestError, ConflictError: as :meth:`submit`.
            OverloadedError: shed or rejected.
            Exception: the model's error for this request.
        """
        slot, found, request_id = self._enter(
            inputs, priority, deadline_ms, execution_policy, tenant, mode="here"
        )
        if isinstance(found, Future):
            return self._wrap(found, slot, request_id).result()
        return self._run_here(found, slot, execution_policy, request_id)

    def _run_here(
        self, admitted: Admitted, slot: Slot, policy: str | None, request_id: str
    ) -> InferenceResult:
        """Run a request the scheduler handed to the calling thread, as a batch of one."""
        try:
            r = slot.run_admitted(admitted, policy)
        except BaseException:
            slot.meter.count_failure()
            self.metrics.ended("failed")
            raise
        return self._result(r, slot, request_id)

    def _enter(
        self,
        inputs: Any,
        priority: str | int,
        deadline_ms: float | None,
        execution_policy: str | None,
        tenant: str,
        mode: str,
    ) -> tuple[Slot, Any, str]:
        arrays, rows = self._parse(inputs)
        return self._queue(arrays, rows, priority, deadline_ms, execution_policy, tenant, mode)

    def _parse(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        if self._stopped:
            raise ConflictError(
                f"deployment {self.deployment_id} is stopped", field="deployment_id"
            )
        arrays = parse_inputs(inputs, self._primary.inputs, self.spec.limits)
        rows = next(iter(arrays.values())).shape[0] if arrays else 1
        return arrays, rows

    def _queue(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        priority: str | int,
        deadline_ms: float | None,
        execution_policy: str | None,
        tenant: str,
        mode: str,
    ) -> tuple[Slot, Any, str]:
        request_id = f"{self._id_prefix}{next(self._ids)}"
        # Routing and queueing under one lock: a slot an update retires has accepted every
        # request routed to it before its drain begins.
        with self._lock:
            if self._stopped:  # checked again under the lock: stop() may have run meanwhile
                raise ConflictError(
                    f"deployment {self.deployment_id} is stopped", field="deployment_id"
                )
            slot = self._route()
            found = slot.submit(
                arrays,
                rows,
                priority=priority,
                deadline_ms=deadline_ms,
                policy=execution_policy,
                tenant=tenant,
                mode=mode,
            )
        return slot, found, request_id

    def _wrap(
        self, inner: Future[ScheduledResult], slot: Slot, request_id: str
    ) -> Future[InferenceResult]:
        outer: Future[InferenceResult] = Future()
        inner.add_done_callback(lambda f: self._finish(f, outer, slot, request_id))
        outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        return outer

    def _route(self) -> Slot:
        """The slot for the next request (callers hold the lock).

        The candidate's share is spread evenly: request n goes to it when ``floor(n·p/100)``
        steps up, so a 10 % canary takes every tenth request rather than bursts.
        """
        cand = self._candidate
        if cand is None:
            return self._primary
        n = next(self._routed)
        p = self._candidate_percent
        return cand if int((n + 1) * p / 100.0) > int(n * p / 100.0) else self._primary

    def _finish(
        self,
        inner: Future[ScheduledResult],
        outer: Future[InferenceResult],
        slot: Slot,
        request_id: str,
    ) -> None:
        if inner.cancelled():
            self.metrics.ended("cancelled")
            outer.cancel()
            return
        if not outer.set_running_or_notify_cancel():
            return
        exc = inner.exception()
        if exc is not None:
            self.metrics.ended(exc.reason if isinstance(exc, OverloadedError) else "failed")
            outer.set_exception(exc)
            return
        outer.set_result(self._result(inner.result(), slot, request_id))

    def _result(self, r: ScheduledResult, slot: Slot, request_id: str) -> InferenceResult:
        slot.note_result(r)
        self.metrics.served(r.queue_time_ms, r.execution_time_ms, r.batch_size)
        record = slot.record
        return InferenceResult(
            outputs=r.value,
            deployment_id=self.deployment_id,
            model_id=record.model_id,
            model_version=record.version,
            request_id=request_id,
            execution_time_ms=r.execution_time_ms,
            queue_time_ms=r.queue_time_ms,
            batch_size=r.batch_size,
            model_sha256=record.sha256,
        )

    # ---- updates ------------------------------------------------------------------------------

    def claim_update(self, record: ModelRecord) -> None:
        """Take the deployment's one update slot for a move to ``record`` (before building it).

        Raises:
            ConflictError: another update is in progress.
            InvalidRequestError: the model takes other inputs than the deployment serves.
        """
        check_compatible(self._primary.inputs, record)
        if not self._update_lock.acquire(blocking=False):
            raise ConflictError(
                f"deployment {self.deployment_id} is already being updated", field="deployment_id"
            )

    def release_update(self) -> None:
        """Give the update slot back (an update that failed before :meth:`begin_update`)."""
        self._release_update()

    def begin_update(self, new: Slot, strategy: str, canary_percent: float) -> None:
        """Put a built, warmed slot beside the current one and start moving traffic to it
        (the caller holds the update slot, see :meth:`claim_update`)."""
        if strategy not in STRATEGIES:
            raise InvalidRequestError(
                f"unknown update strategy {strategy!r}; use one of {', '.join(STRATEGIES)}",
                field="strategy",
            )
        first = {"canary": canary_percent, "rolling": ROLLING_STEPS[0], "blue_green": 100.0}
        with self._lock:
            if self._stopped:
                raise ConflictError(
                    f"deployment {self.deployment_id} is stopped", field="deployment_id"
                )
            self._candidate = new
            self._candidate_percent = first[strategy]
            self._strategy = strategy

    def set_candidate_percent(self, percent: float) -> None:
        with self._lock:
            if self._candidate is not None:
                self._candidate_percent = percent

    def promote(self) -> Slot:
        """Send all traffic to the candidate; returns the old slot (draining)."""
        with self._lock:
            if self._candidate is None:
                raise ConflictError(
                    f"deployment {self.deployment_id} has no update in progress",
                    field="deployment_id",
                )
            old, self._primary, self._candidate = self._primary, self._candidate, None
            self._strategy = None
        self._release_update()
        old.close_in_background()
        return old

    def rollback(self, drain: bool = True) -> Slot:
        """Send all traffic back to the current version; returns the candidate (draining, or
        with ``drain=False`` closed at once: what it queued ends with ``OverloadedError``)."""
        with self._lock:
            if self._candidate is None:
                raise ConflictError(
                    f"deployment {self.deployment_id} has no update in progress",
                    field="deployment_id",
                )
            cand, self._candidate = self._candidate, None
            self._strategy = None
        self._release_update()
        if drain:
            cand.close_in_background()
        else:
            cand.close(drain=False)
        return cand

    def _release_update(self) -> None:
        if self._update_lock.locked():
            self._update_lock.release()

    @property
    def strategy(self) -> str | None:
        """The update strategy in progress, if any."""
        return self._strategy if self._candidate is not None else None

    def swap_primary(self, expected: Slot, new: Slot) -> bool:
        """Replace the primary slot (scaling): traffic moves at once, the old slot drains.

        Only if the primary is still ``expected``: an update promoted meanwhile must not be
        undone by a slot built from the version it replaced (``new`` is closed instead).
        """
        with self._lock:
            swapped = self._primary is expected and not self._stopped
            if swapped:
                self._primary = new
        (expected if swapped else new).close_in_background()
        return swapped

    # ---- the rest -----------------------------------------------------------------------------

    def stop(self, drain: bool = True) -> None:
        """Stop taking requests; with ``drain``, answer everything queued first."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            slots = [s for s in (self._primary, self._candidate) if s is not None]
        for s in slots:
            s.close(drain=drain)
        self._release_update()

    def gauges(self) -> Gauges:
        """Its state now, for the metrics endpoint."""
        queued = in_flight = 0
        for slot in (self._primary, self._candidate):
            for stats in slot.stats().values() if slot is not None else ():
                queued += int(stats["queued"])
                in_flight += int(stats["in_flight"])
        record = self._primary.record
        return Gauges(
            self.deployment_id,
            record.name,
            record.version,
            self.replicas,
            queued,
            in_flight,
            self.metrics,
            model_id=record.model_id,
            sha256=record.sha256,
            ready=self.status in ("ready", "updating"),
        )

    def info(self) -> dict[str, Any]:
        """A JSON-able description: ids, status, placement, scaling, versions and traffic."""
        p = self._primary.record
        out: dict[str, Any] = {
            "deployment_id": self.deployment_id,
            "status": self.status,
            "model_id": p.model_id,
            "model_name": p.name,
            "model_version": p.version,
            "execution_mode": self.spec.execution_mode,
            "execution_policy": self.spec.execution_policy,
            "replicas": self.replicas,
            "placement": self.spec.placement.to_dict(),
            "scaling_policy": self.spec.scaling.to_dict(),
            "max_batch": self.spec.max_batch,
            "precision": self.spec.precision,
        }
        if self._candidate is not None:
            out["update"] = {
                "strategy": self._strategy,
                "candidate_model_id": self._candidate.record.model_id,
                "candidate_version": self._candidate.record.version,
                "candidate_percent": self._candidate_percent,
            }
        return out

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td>{html.escape(str(v))}</td></tr>"
            for k, v in self.info().items()
            if not isinstance(v, dict)
        )
        where = html.escape(self.spec.placement.describe())
        return f"<table><caption>Deployment</caption>{rows}</table><p>{where}</p>"

    def __repr__(self) -> str:
        return (
            f"Deployment({self.deployment_id!r}, model={self._primary.record.name}:"
            f"{self._primary.record.version}, status={self.status!r}, replicas={self.replicas})"
        )


def check_compatible(inputs: list[InputSpec], record: ModelRecord) -> None:
    """Clients keep sending what they sent: a new version must take the same inputs — names,
    dtypes, ranks and fixed dimensions (symbolic ones may differ).

    Raises:
        InvalidRequestError: naming ``model_id`` and both signatures.
    """
    old = {s.name: (s.dtype, s.shape) for s in inputs}
    new = {
        name: (np.dtype(t["dtype"]), None if t.get("shape") is None else tuple(t["shape"]))
        for name, t in record.inputs.items()
    }

    def same(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
        if a[0] != b[0]:
            return False
        if a[1] is None or b[1] is None:
            return True
        return len(a[1]) == len(b[1]) and all(
            x == y or isinstance(x, str) or isinstance(y, str)
            for x, y in zip(a[1][1:], b[1][1:], strict=True)
        )

    if set(old) != set(new) or not all(same(old[n], new[n]) for n in old):
        raise InvalidRequestError(
            f"model {record.model_id} takes inputs {_describe(new)}, but the deployment serves "
            f"{_describe(old)}; deploy it separately",
            field="model_id",
        )


def _describe(specs: dict[str, Any]) -> str:
    def dims(shape: Any) -> str:
        return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"

    return ", ".join(f"{n}: {d[0].name}{dims(d[1])}" for n, d in sorted(specs.items()))
