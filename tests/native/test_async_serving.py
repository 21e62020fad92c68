"""Requests awaited on an event loop: asyncio futures resolved per batch, cancellation, refusals,
and the lone request that runs in the loop's thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError, OverloadedError
from phi_engine.serving import Scheduler
from phi_test_models.tiny import mlp, mlp_reference

TOL = {"rtol": 1e-5, "atol": 1e-5}


class Recorder:
    """A run_batch that doubles its payloads and notes each batch's size and thread."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.batches: list[tuple[int, str]] = []
        self.seen: list[Any] = []

    def __call__(self, xs: list[Any]) -> list[Any]:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append((len(xs), threading.current_thread().name))
        self.seen.extend(xs)
        return [2 * x for x in xs]


def test_concurrent_coroutines_are_batched_and_each_gets_its_own_answer() -> None:
    run = Recorder(delay=0.01)

    async def main(s: Scheduler) -> list[Any]:
        return await asyncio.gather(*(s.ainfer(i, priority=i % 4) for i in range(64)))

    with Scheduler(run, max_batch=16) as s:
        results = asyncio.run(main(s))
    assert [r.value for r in results] == [2 * i for i in range(64)]
    assert max(n for n, _ in run.batches) > 1, "64 requests at once must share batches"
    assert all(name.startswith("phi-scheduler-worker") for _, name in run.batches)
    assert sorted(run.seen) == list(range(64)), "every request ran exactly once"


def test_cancelling_the_awaiting_task_withdraws_a_queued_request() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)

    async def main(s: Scheduler) -> tuple[int, bool]:
        first = asyncio.ensure_future(s.ainfer(1))
        await asyncio.sleep(0.05)  # the first batch is now running (held at the gate)
        second = asyncio.ensure_future(s.ainfer(2))
        await asyncio.sleep(0.05)
        second.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        got = (await first).value
        try:
            await second
        except asyncio.CancelledError:
            return got, True
        return got, False

    with Scheduler(run, max_batch=4, workers=1) as s:
        got, cancelled = asyncio.run(main(s))
        stats = s.stats()
    assert got == 2 and cancelled
    assert 2 not in run.seen, "a withdrawn request must not run"
    assert stats["queued"] == 0


def test_refusals_and_failures_reach_the_awaiting_coroutine() -> None:
    gate = threading.Event()

    def boom(xs: list[int]) -> list[int]:
        raise ValueError("model exploded")

    async def refused(s: Scheduler) -> list[BaseException | Any]:
        first = asyncio.ensure_future(s.ainfer(1))
        await asyncio.sleep(0.05)
        rest = asyncio.gather(*(s.ainfer(i) for i in range(2, 6)), return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        assert (await first).value == 2
        return await rest

    with Scheduler(Recorder(gate=gate), max_batch=1, workers=1, max_queue=2) as s:
        results = asyncio.run(refused(s))
    full = [r for r in results if isinstance(r, OverloadedError)]
    assert full and all(r.reason == "queue_full" for r in full)
    served = [r.value for r in results if not isinstance(r, BaseException)]
    assert len(full) + len(served) == 4 and all(v in (4, 6, 8, 10) for v in served)

    async def failing(s: Scheduler) -> None:
        await s.ainfer(1)

    with Scheduler(boom, max_batch=4) as s, pytest.raises(ValueError, match="exploded"):
        asyncio.run(failing(s))


def test_a_loop_closed_before_its_answer_does_not_break_the_worker() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    with Scheduler(run, max_batch=4, workers=1) as s:
        loop = asyncio.new_event_loop()

        async def enqueue() -> None:
            s.enqueue_async(21)

        loop.run_until_complete(enqueue())
        loop.close()
        gate.set()  # the worker now answers a request whose loop is gone
        assert s.infer(5).value == 10, "the worker must go on serving"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "home", progress=False)
    try:
        yield eng
    finally:
        eng.close()


class Threads:
    """Wraps a slot's runner to note the thread each batch runs on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, str]] = []

    def __call__(self, payloads: list[Any]) -> Any:
        self.calls.append((len(payloads), threading.current_thread().name))
        return self.inner(payloads)


def test_a_lone_request_runs_on_the_loop_and_a_crowd_is_queued_and_batched(
    engine: Engine, tmp_path: Path, rng: np.random.Generator
) -> None:
    record = engine.register("mlp", "onnx", "1", str(mlp(tmp_path / "mlp.onnx", seed=0)))
    dep = engine.deployment(engine.deploy(record.model_id, max_batch=32).deployment_id)
    spy = Threads(dep.primary.runner)
    dep.primary.runner = spy
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(48)]
    me = threading.current_thread().name

    async def alone() -> None:
        for x in xs[:5]:
            r = await engine.ainfer(dep.deployment_id, {"x": x})
            np.testing.assert_allclose(r.outputs["y"], mlp_reference(x), **TOL)

    asyncio.run(alone())
    assert spy.calls == [(1, me)] * 5, "a lone request on an idle deployment runs in the loop"

    spy.calls.clear()

    async def crowd() -> list[Any]:
        return await asyncio.gather(*(engine.ainfer(dep.deployment_id, {"x": x}) for x in xs))

    for x, r in zip(xs, asyncio.run(crowd()), strict=True):
        np.testing.assert_allclose(r.outputs["y"], mlp_reference(x), **TOL)
    assert all(name != me for _, name in spy.calls), "requests that arrive together are queued"
    assert max(n for n, _ in spy.calls) > 1

    # A refused request leaves no count behind: the next lone one still runs in the loop.
    spy.calls.clear()

    async def refused_then_alone() -> None:
        with pytest.raises(InvalidRequestError):
            await engine.ainfer(dep.deployment_id, {"x": [[1.0, 2.0]]})
        await engine.ainfer(dep.deployment_id, {"x": xs[0]})

    asyncio.run(refused_then_alone())
    assert spy.calls == [(1, me)]

    # With the budget at zero nothing runs in the loop.
    spy.calls.clear()
    dep.inline_budget_ms = 0.0
    asyncio.run(alone())
    assert len(spy.calls) == 5 and all(name != me for _, name in spy.calls)
