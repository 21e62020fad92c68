"""The Python face of the native scheduler: futures in, batches out to worker threads.

Requests are queued, ranked, admitted, shed and batched in the native core (``_core.Scheduler``,
DESIGN.md "Φ(a)"); its blocking calls release the GIL. Python holds what the core cannot: each
request's payload and what resolves it: a :class:`concurrent.futures.Future` for threads, or an
:class:`asyncio.Future` for coroutines (:meth:`Scheduler.enqueue_async`; a batch's asyncio futures
are resolved by one callback per event loop, not one thread hand-off each). Worker threads take
batches from the core and call ``run_batch`` (holding the GIL only while it runs Python); a reaper
thread answers requests the core ended without running. Every request ends exactly once: a
result, an :class:`~phi_engine.errors.OverloadedError` (rejected or shed), the batch's exception,
or cancelled.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError, OverloadedError, PhiEngineError
from phi_engine.serving._policy import (
    PRIORITIES,
    SchedulerConfig,
    deadline_seconds,
    priority_class,
    request_cost,
)

__all__ = ["Admitted", "ScheduledResult", "Scheduler"]

RunBatch = Callable[[list[Any]], Sequence[Any]]

_MAX_TENANTS = 65_536
_BATCH_LOG = 10_000  # recent batches kept for recent_batches()
_POLL_S = 0.5  # how often idle threads look up from the core (they are woken sooner by work)

_REASONS = {
    "queue_full": "the queue is full",
    "deadline_infeasible": "it cannot finish by its deadline given the work ahead of it",
    "shed": "it could no longer finish by its deadline",
    "closed": "the scheduler is closed",
}


# Schedulers not yet closed. One at-exit hook closes them, so that no worker thread is still
# inside the core while the interpreter shuts down; weak, so it keeps none of them alive.
_OPEN: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_open_schedulers() -> None:
    for sched in list(_OPEN):
        sched.close(drain=False, timeout=1.0)


@dataclass(slots=True)
class ScheduledResult:
    """What a request's future resolves to.

    Attributes:
        value: What ``run_batch`` returned for this request.
        request_id: The scheduler's id of the request.
        queue_time_ms: From submission to the start of its batch (measured).
        execution_time_ms: How long its batch ran (measured).
        batch_size: Requests in its batch.
    """

    value: Any
    request_id: int
    queue_time_ms: float
    execution_time_ms: float
    batch_size: int


@dataclass(slots=True)
class Admitted:
    """A request :meth:`Scheduler.admit` dispatched to its caller: run it with
    :meth:`Scheduler.run_admitted` (until then it counts as a batch in flight)."""

    token: int
    start: float
    arrival: float
    request_id: int
    payload: Any


class _Pending:
    """A queued request: its payload and its future (threads') or asyncio future and loop."""

    __slots__ = ("future", "loop", "payload")

    def __init__(
        self,
        payload: Any,
        future: Future[ScheduledResult] | asyncio.Future[ScheduledResult],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.payload = payload
        self.future = future
        self.loop = loop

    def start(self) -> bool:
        """Whether it is still wanted (an asyncio future's flag is read across threads: a
        cancellation that races the read costs a wasted row, never a second answer)."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()  # type: ignore[union-attr]
        return not self.future.done()


def _resolve(items: list[tuple[asyncio.Future[ScheduledResult], Any, bool]]) -> None:
    """Settle asyncio futures on their loop (one call per batch and loop)."""
    for future, value, failed in items:
        if not future.done():
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)


def _post(loop: asyncio.AbstractEventLoop, items: list[Any]) -> None:
    # A closed loop raises RuntimeError: nobody is left to await these futures.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, items)


def _overloaded(reason: str) -> OverloadedError:
    why = _REASONS.get(reason, reason)
    return OverloadedError(f"request not served: {why}", reason=reason)


def _settle(future: Future[ScheduledResult], *, result: Any = None, error: Any = None) -> None:
    """Resolve a future unless the caller cancelled it first (then it has ended already)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Scheduler:
    """Batches requests to ``run_batch`` under a scheduling policy, on worker threads.

    Args:
        run_batch: Called with a list of payloads; returns one value per payload, in order.
        config: The policy and its settings (see :class:`SchedulerConfig`); keyword arguments
            build one instead.

    Example::

        sched = Scheduler(lambda xs: [x * 2 for x in xs], max_batch=8)
        assert sched.infer(21, priority="high", deadline_ms=50).value == 42
        sched.close()
    """

    def __init__(
        self, run_batch: RunBatch, config: SchedulerConfig | None = None, **settings: Any
    ) -> None:
        if config is not None and settings:
            raise InvalidRequestError("pass either a SchedulerConfig or keyword settings, not both")
        if not callable(run_batch):
            raise InvalidRequestError("run_batch must be callable", field="run_batch")
        self.config = config if config is not None else SchedulerConfig(**settings)
        self._run_batch = run_batch
        self._num_classes = len(self.config.class_weights)
        self._slo = self.config.slo_by_class()
        self._max_cost = float(self.config.max_batch_cost or self.config.max_batch)
        self._tenants = {name: i for i, name in enumerate(self.config.tenant_weights)}
        self._classes = {
            name: index for name, index in PRIORITIES.items() if index < self._num_classes
        }
        self._core = require_core().Scheduler(self.config.native(self._tenants))
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._batches: deque[tuple[int, float]] = deque(maxlen=_BATCH_LOG)
        self._table: list[tuple[float, float]] = []
        self._table_due = 0.0
        self._threads = [
            threading.Thread(target=self._work, name=f"phi-scheduler-worker-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        self._threads.append(
            threading.Thread(target=self._reap, name="phi-scheduler-reaper", daemon=True)
        )
        for t in self._threads:
            t.start()
        _OPEN.add(self)

    # ---- submitting -------------------------------------------------------------------------

    def submit(
        self,
        payload: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        cost: float = 1.0,
        tenant: str = "default",
    ) -> Future[ScheduledResult]:
        """Queue a request; its future resolves to a :class:`ScheduledResult`.

        Args:
            payload: Passed to ``run_batch`` with the rest of its batch.
            priority: ``low``, ``normal``, ``high``, ``ultra-high`` or an integer class.
            deadline_ms: Time from now by which it must finish; ``None``: its class SLO, or best
                effort (never shed) for a class without one.
            cost: Its share of a batch (rows or tokens); at most ``max_batch_cost``.
            tenant: Who sent it (Φ's tenant weight; fairness is measured per tenant).

        Returns:
            A future that ends exactly once: with the result, with ``OverloadedError`` (its
            ``reason``: ``queue_full``, ``deadline_infeasible``, ``shed`` or ``closed``), with
            the exception ``run_batch`` raised for its batch, or cancelled (``future.cancel()``
            withdraws a request still queued).

        Raises:
            InvalidRequestError: an unknown priority, a deadline or cost that is not a positive
                number, or a cost over the most one batch holds (``field`` names it).
        """
        result = self._enter(payload, priority, deadline_ms, cost, tenant, here=False)
        assert isinstance(result, Future)
        return result

    def run_or_submit(
        self,
        payload: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        cost: float = 1.0,
        tenant: str = "default",
    ) -> ScheduledResult | Future[ScheduledResult]:
        """Like :meth:`submit`, but an idle scheduler runs the request in the calling thread.

        When the queue is empty, a worker is free and the policy dispatches the request at once
        (the decision a waking worker would make), the caller runs it as a batch of one and gets
        its :class:`ScheduledResult` (or ``run_batch``'s exception) directly: two thread
        hand-offs and the future are saved. Otherwise it is queued and a future is returned.
        Not for event-loop threads, which must not run a model.
        """
        found = self._enter(payload, priority, deadline_ms, cost, tenant, here=True)
        if isinstance(found, Admitted):
            return self.run_admitted(found)
        assert isinstance(found, Future)
        return found

    def admit(
        self,
        payload: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        cost: float = 1.0,
        tenant: str = "default",
    ) -> Admitted | Future[ScheduledResult]:
        """:meth:`run_or_submit` in two steps: an :class:`Admitted` request is dispatched to the
        caller, who must pass it to :meth:`run_admitted` (a router admits under its lock and runs
        outside it)."""
        found = self._enter(payload, priority, deadline_ms, cost, tenant, here=True)
        assert not isinstance(found, tuple)
        return found

    def admit_async(
        self,
        payload: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        cost: float = 1.0,
        tenant: str = "default",
    ) -> Admitted | tuple[int, asyncio.Future[ScheduledResult]]:
        """:meth:`admit` for a coroutine: :class:`Admitted` on an idle scheduler, else
        :meth:`enqueue_async`'s answer."""
        loop = asyncio.get_running_loop()
        found = self._enter(payload, priority, deadline_ms, cost, tenant, here=True, loop=loop)
        assert not isinstance(found, Future)
        return found

    def estimate_seconds(self, cost: float) -> float | None:
        """The latency model's tail estimate for a batch of this cost (``None``: not measured).
        Read from a copy of the table refreshed at most every 0.5 s."""
        now = time.monotonic()
        if now >= self._table_due:
            self._table = sorted((c, s) for c, s, n in self._core.latency_table() if n)
            self._table_due = now + 0.5
        for c, seconds in self._table:
            if c >= cost:
                return seconds
        return None

    def enqueue_async(
        self,
        payload: Any,
        *,
        priority: str | int = "normal",
        deadline_ms: float | None = None,
        cost: float = 1.0,
        tenant: str = "default",
    ) -> tuple[int, asyncio.Future[ScheduledResult]]:
        """Queue a request from a coroutine: its id and an :class:`asyncio.Future` of the running
        loop (call on the loop's thread). Takes :meth:`submit`'s arguments and raises what it
        raises. A caller that stops waiting passes the id to :meth:`withdraw`.
        """
        loop = asyncio.get_running_loop()
        found = self._enter(payload, priority, deadline_ms, cost, tenant, here=False, loop=loop)
        assert isinstance(found, tuple)
        return found

    def _enter(
        self,
        payload: Any,
        priority: str | int,
        deadline_ms: float | None,
        cost: float,
        tenant: str,
        here: bool,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Admitted | Future[ScheduledResult] | tuple[int, asyncio.Future[ScheduledResult]]:
        # Dictionary hits first: the common names and values cost no parsing per request.
        cls = self._classes.get(priority) if isinstance(priority, str) else None
        if cls is None:
            cls = priority_class(priority, self._num_classes)
        due = deadline_seconds(deadline_ms, self._slo.get(cls))
        rows = cost if type(cost) is float and 0.0 < cost < math.inf else request_cost(cost)
        if rows > self._max_cost:
            raise InvalidRequestError(
                f"cost {cost} is more than one batch holds ({self._max_cost:g})", field="cost"
            )
        tenant_id = self._tenants.get(tenant) if isinstance(tenant, str) else None
        if tenant_id is None:
            tenant_id = self._tenant(tenant)
        rid = next(self._ids)
        # The lock is held across the core's (brief, GIL-holding) submit: a worker that
        # dispatches the request at once finds its entry only through this lock, so the entry
        # and its future can be made after the core's answer, and not at all when it runs here.
        with self._lock:
            if here:
                outcome = self._core.submit_inline(rid, cls, tenant_id, rows, due)
                if type(outcome) is tuple:
                    token, start, arrival = outcome
                    return Admitted(token, start, arrival, rid, payload)
            else:
                outcome = self._core.submit(rid, cls, tenant_id, rows, due)
            if loop is not None:
                waiting: asyncio.Future[ScheduledResult] = loop.create_future()
                if outcome == "pending":
                    self._pending[rid] = _Pending(payload, waiting, loop)
                else:
                    waiting.set_exception(_overloaded(outcome))
                return rid, waiting
            future: Future[ScheduledResult] = Future()
            if outcome == "pending":
                self._pending[rid] = _Pending(payload, future)
        if outcome != "pending":
            _settle(future, error=_overloaded(outcome))
            return future
        future.add_done_callback(lambda f: self._withdraw(rid) if f.cancelled() else None)
        return future

    def run_admitted(self, admitted: Admitted) -> ScheduledResult:
        """Run a request :meth:`admit` dispatched to the caller, as a batch of one.

        Raises:
            Exception: what ``run_batch`` raised (the request has then ended, failed).
        """
        t0 = time.perf_counter()
        ok = False
        try:
            values = self._run_batch([admitted.payload])
            if len(values) != 1:
                raise PhiEngineError(f"[scheduler] run_batch returned {len(values)} values for 1")
            ok = True
        finally:
            elapsed = time.perf_counter() - t0
            self._core.release(admitted.token, ok)
            self._batches.append((1, elapsed))
        queued_ms = (admitted.start - admitted.arrival) * 1000.0
        return ScheduledResult(values[0], admitted.request_id, queued_ms, elapsed * 1000.0, 1)

    def infer(self, payload: Any, **kwargs: Any) -> ScheduledResult:
        """:meth:`run_or_submit` and wait for the result (its exception is raised here)."""
        found = self.run_or_submit(payload, **kwargs)
        return found.result() if isinstance(found, Future) else found

    async def ainfer(self, payload: Any, **kwargs: Any) -> ScheduledResult:
        """:meth:`enqueue_async` and await the result; cancelling the awaiting task withdraws
        a request still queued."""
        rid, waiting = self.enqueue_async(payload, **kwargs)
        try:
            return await waiting
        except asyncio.CancelledError:
            self.withdraw(rid)
            raise

    def _tenant(self, tenant: str) -> int:
        if not isinstance(tenant, str):
            raise InvalidRequestError("tenant must be a string", field="tenant")
        with self._lock:
            index = self._tenants.get(tenant)
            if index is None:
                if len(self._tenants) >= _MAX_TENANTS:
                    raise InvalidRequestError(
                        f"more than {_MAX_TENANTS} distinct tenants", field="tenant"
                    )
                index = self._tenants[tenant] = len(self._tenants)
            return index

    def withdraw(self, rid: int) -> None:
        """Take a request out of the queue if it is still there (its caller stopped waiting)."""
        self._withdraw(rid)

    def _withdraw(self, rid: int) -> None:
        """A caller cancelled the future: take the request out of the queue if it is still there."""
        with self._lock:
            self._pending.pop(rid, None)
        self._core.cancel(rid)

    # ---- the threads --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            got = self._core.acquire(_POLL_S)
            if got is None:
                return
            token, start, ids, arrivals, _ = got
            if ids:
                self._run(token, start, ids, arrivals)

    def _run(self, token: int, start: float, ids: list[int], arrivals: list[float]) -> None:
        cycle = time.perf_counter()
        with self._lock:
            entries = [
                (self._pending.pop(r, None), r, t) for r, t in zip(ids, arrivals, strict=True)
            ]
        # A future cancelled after dispatch is skipped; Future's own state machine decides the race.
        live = [(e, rid, t) for e, rid, t in entries if e is not None and e.start()]
        ok = False
        try:
            ok = self._execute(live, start)
        finally:
            # Released only once every future is settled, so that the latency the core learns is
            # the worker's whole cycle, which is what the next request waits for.
            self._core.release(token, ok)
            self._batches.append((len(ids), time.perf_counter() - cycle))

    def _execute(self, live: list[tuple[_Pending, int, float]], start: float) -> bool:
        t0 = time.perf_counter()
        try:
            values = self._run_batch([e.payload for e, _, _ in live]) if live else []
            if len(values) != len(live):
                got, want = len(values), len(live)
                raise PhiEngineError(f"[scheduler] run_batch returned {got} values for {want}")
        except BaseException as exc:  # every request of the batch must end, whatever was raised
            self._settle_all([(e, exc, True) for e, _, _ in live])
            return False
        exec_ms = (time.perf_counter() - t0) * 1000.0
        n = len(live)
        self._settle_all(
            [
                (e, ScheduledResult(value, rid, (start - arrival) * 1000.0, exec_ms, n), False)
                for (e, rid, arrival), value in zip(live, values, strict=True)
            ]
        )
        return True

    @staticmethod
    def _settle_all(ended: list[tuple[_Pending, Any, bool]]) -> None:
        """End requests: threads' futures here, asyncio futures by one callback per loop."""
        posts: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for e, value, failed in ended:
            if e.loop is None:
                if failed:
                    _settle(e.future, error=value)  # type: ignore[arg-type]
                else:
                    _settle(e.future, result=value)  # type: ignore[arg-type]
            else:
                posts.setdefault(e.loop, []).append((e.future, value, failed))
        for loop, items in posts.items():
            _post(loop, items)

    def _reap(self) -> None:
        while True:
            ended = self._core.reap(_POLL_S)
            if ended is None:
                return
            with self._lock:
                entries = [(self._pending.pop(rid, None), reason) for rid, reason in ended]
            self._settle_all([(e, _overloaded(r), True) for e, r in entries if e is not None])

    # ---- everything else ----------------------------------------------------------------------

    def warm_up(
        self,
        make_batch: Callable[[int], list[Any]],
        batch_sizes: Sequence[int] | None = None,
        repeats: int = 5,
    ) -> None:
        """Seed the latency model by timing ``run_batch`` on batches of each size (before traffic).

        Args:
            make_batch: Returns a list of that many payloads, each of cost 1.
            batch_sizes: Sizes to time (default: powers of two up to ``max_batch``, and it).
            repeats: Timed runs per size, after one untimed run.
        """
        if batch_sizes is None:
            sizes = {
                1 << k
                for k in range(self.config.max_batch.bit_length())
                if 1 << k <= self.config.max_batch
            }
            batch_sizes = sorted(sizes | {self.config.max_batch})
        for size in batch_sizes:
            payloads = make_batch(size)
            self._run_batch(payloads)
            for _ in range(repeats):
                t0 = time.perf_counter()
                self._run_batch(payloads)
                self._core.record_latency(float(size), time.perf_counter() - t0)

    def seed_latencies(self, samples: Mapping[float, Sequence[float]]) -> None:
        """Seed the latency model with batch latencies measured elsewhere (seconds by cost).

        Raises:
            InvalidRequestError: a cost that is not a positive number, or a latency that is not
                a finite number of seconds >= 0.
        """
        checked = []
        for cost, seconds in samples.items():
            rows = request_cost(cost)
            for s in seconds:
                if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < math.inf:
                    raise InvalidRequestError(
                        f"latency {s!r} is not a finite number of seconds >= 0", field="seconds"
                    )
                checked.append((rows, float(s)))
        for rows, s in checked:
            self._core.record_latency(rows, s)

    def recent_batches(self) -> list[tuple[int, float]]:
        """The last batches run: (requests, seconds the worker spent on it, futures included)."""
        return list(self._batches)

    def latency_table(self) -> list[tuple[float, float, int]]:
        """The latency model: ``(batch cost, estimated p99 seconds, samples)`` per bucket."""
        return list(self._core.latency_table())

    def stats(self) -> dict[str, Any]:
        """Queue length, requests in flight, counts by outcome and decision times."""
        return dict(self._core.stats())

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests and stop the threads.

        Args:
            drain: Serve what is queued first; otherwise queued requests end with
                ``OverloadedError("closed")``.
            timeout: Seconds to wait for the threads (``None``: until they finish).
        """
        self._closed = True
        _OPEN.discard(self)
        self._core.close(drain)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
