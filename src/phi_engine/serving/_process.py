"""The ``process`` execution mode: a model run in worker processes fed through shared memory.

A crash in a worker (a native fault, the OOM killer, a SIGKILL) cannot take the engine down: the
worker is replaced and the batch it was running is retried once on the replacement; a batch
whose retry dies too fails with :class:`~phi_engine.errors.WorkerError` (DESIGN.md, "What
survives a crash"). Workers are spawned, not forked, because the engine has threads.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError, WorkerError
from phi_engine.serving._shm import TensorSpec, layout
from phi_engine.serving._worker import WorkerConfig, WorkerDied, WorkerSlot

__all__ = ["ProcessRunner"]

Payload = Mapping[str, Any]

_POLL_S = 0.25  # how often a blocked caller looks up to see whether the runner was closed
_LOCK_S = 60.0  # the longest close() may hold a worker's lock

_OPEN: weakref.WeakSet[ProcessRunner] = weakref.WeakSet()


@atexit.register
def _close_open_runners() -> None:
    for runner in list(_OPEN):
        runner.close(timeout=1.0)


@dataclass
class _Batch:
    """Payloads grouped by their inputs' trailing shapes and dtypes, as ModelRunner groups them."""

    rows: list[int]  # per payload
    members: list[list[int]] = field(default_factory=list)  # payload indices, per group
    parts: list[list[list[np.ndarray]]] = field(default_factory=list)  # group, input, member
    specs: list[list[TensorSpec]] = field(default_factory=list)  # group, input: where it goes

    @classmethod
    def of(cls, payloads: Sequence[Payload], names: list[str]) -> _Batch:
        arrays = [[_array(p, n) for n in names] for p in payloads]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, row in enumerate(arrays):
            groups.setdefault(tuple((a.shape[1:], a.dtype.str) for a in row), []).append(i)
        batch = cls([row[0].shape[0] for row in arrays])
        end = 0
        for members in groups.values():
            parts = [[arrays[i][k] for i in members] for k in range(len(names))]
            stacked = [
                (n, (sum(len(a) for a in p), *p[0].shape[1:]), p[0].dtype)
                for n, p in zip(names, parts, strict=True)
            ]
            specs, end = layout(stacked, end)
            batch.members.append(members)
            batch.parts.append(parts)
            batch.specs.append(specs)
        return batch

    def split(self, results: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each payload's rows of its group's outputs, in payload order."""
        out: list[dict[str, np.ndarray]] = [{} for _ in self.rows]
        for members, outputs in zip(self.members, results, strict=True):
            bounds = np.cumsum([0] + [self.rows[i] for i in members])
            for k, i in enumerate(members):
                out[i] = {n: a[bounds[k] : bounds[k + 1]] for n, a in outputs.items()}
        return out


def _array(payload: Payload, name: str) -> np.ndarray:
    if name not in payload:
        raise InvalidRequestError(f"input {name!r} is missing", field=name)
    array = np.asarray(payload[name])
    if array.ndim == 0:
        raise InvalidRequestError(f"input {name!r} needs a batch axis", field=name)
    if array.dtype.hasobject:
        raise InvalidRequestError(f"input {name!r} is not a numeric array", field=name)
    return array


class _Pool:
    """The workers, the queue of idle ones and the closed flag: all that shutting down needs.

    Kept apart from :class:`ProcessRunner` so that a finalizer can shut it down without keeping
    the runner alive.
    """

    def __init__(self) -> None:
        self.slots: list[WorkerSlot] = []
        self.idle: queue.Queue[WorkerSlot] = queue.Queue()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.restarts = 0

    def shutdown(self, timeout: float) -> None:
        """Stop every worker and unlink every region; idempotent."""
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
        deadline = time.monotonic() + timeout
        held = [self._hold(slot) for slot in self.slots]
        for slot in self.slots:
            slot.ask_to_stop()  # all at once, so that they exit in parallel
        for slot, locked in zip(self.slots, held, strict=True):
            try:
                slot.stop(deadline - time.monotonic())
                slot.release()
            finally:
                if locked:
                    slot.lock.release()

    @staticmethod
    def _hold(slot: WorkerSlot) -> bool:
        if slot.lock.acquire(blocking=False):
            return True
        slot.kill()  # a call is running on it: end it; that call raises WorkerError
        return slot.lock.acquire(timeout=_LOCK_S)


def _positive(name: str, value: Any, *, zero: bool = False) -> None:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise InvalidRequestError(
            f"[process] {name} must be at least {low}, got {value!r}", field=name
        )


class ProcessRunner:
    """A ``run_batch`` that runs a compiled ONNX model in worker processes (spawned, not forked).

    Each worker compiles the model itself and runs one batch at a time; tensors travel through
    shared memory, only small control messages through its pipe. A worker that dies (at any
    moment, idle or mid-batch) is replaced, and the batch it was running is retried once on the
    replacement. Concurrent calls run on different idle workers.

    Args:
        model_path: The ONNX file each worker compiles (``phi_engine.compile(path,
            max_batch=max_batch)``).
        processes: Worker processes.
        threads: Kernel threads per worker (0: all CPUs, see :func:`phi_engine.set_num_threads`).
        max_batch: The most rows one model call may have.
        start_timeout_s: How long a worker may take to start and compile.
        run_timeout_s: How long one batch may run before its worker is stopped as hung.
        sha256: When given, each worker reads the file once, checks these bytes' SHA-256 and
            compiles exactly them (a replacement worker too), refusing a changed file.

    Raises:
        InvalidRequestError: bad arguments, or the model is not a valid ONNX file.
        UnsupportedError: the model uses what phi_engine does not support.
        WorkerError: a worker died or timed out while starting.

    Example::

        with ProcessRunner("model.onnx", processes=2) as run:
            [out] = run([{"x": np.ones((3, 4), np.float32)}])
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        processes: int = 1,
        threads: int = 1,
        max_batch: int = 64,
        start_timeout_s: float = 120.0,
        run_timeout_s: float = 300.0,
        sha256: str | None = None,
    ) -> None:
        for name, value in (("processes", processes), ("max_batch", max_batch)):
            if not isinstance(value, int):
                raise InvalidRequestError(f"[process] {name} must be an integer", field=name)
            _positive(name, value)
        if not isinstance(threads, int):
            raise InvalidRequestError("[process] threads must be an integer", field="threads")
        _positive("threads", threads, zero=True)
        _positive("start_timeout_s", start_timeout_s)
        _positive("run_timeout_s", run_timeout_s)
        self._config = WorkerConfig(
            os.path.abspath(model_path),
            max_batch,
            threads,
            start_timeout_s,
            run_timeout_s,
            sha256,
        )
        self._pool = _Pool()
        self._finalizer = weakref.finalize(self, self._pool.shutdown, 5.0)
        try:
            self._input_names = self._start(processes)
        except BaseException:
            self.close()
            raise
        _OPEN.add(self)

    def _start(self, processes: int) -> list[str]:
        pool = self._pool
        for _ in range(processes):
            pool.slots.append(WorkerSlot(self._config))
            pool.slots[-1].spawn()
        deadline = time.monotonic() + self._config.start_timeout_s
        try:
            names = [slot.await_ready(deadline) for slot in pool.slots]
        except WorkerDied as exc:
            raise WorkerError(f"[process] {exc} while starting") from None
        for slot in pool.slots:
            pool.idle.put(slot)
        return names[0]

    @property
    def input_names(self) -> list[str]:
        """The model's input names, in order."""
        return list(self._input_names)

    @property
    def pids(self) -> list[int]:
        """The process id of each worker now (-1 for one being replaced)."""
        return [slot.pid for slot in self._pool.slots]

    @property
    def restarts(self) -> int:
        """Workers replaced after dying."""
        return self._pool.restarts

    def rows(self, payload: Payload) -> int:
        """A payload's rows (its cost), checked against the model's inputs.

        Raises:
            InvalidRequestError: a missing input, an array with no batch axis, or inputs that
                disagree on the number of rows.
        """
        counts = set()
        for name in self._input_names:
            if name not in payload:
                raise InvalidRequestError(f"input {name!r} is missing", field=name)
            shape = np.shape(payload[name])
            if not shape:
                raise InvalidRequestError(f"input {name!r} needs a batch axis", field=name)
            counts.add(shape[0])
        if len(counts) != 1 or 0 in counts:
            raise InvalidRequestError(
                "inputs must have the same, non-zero number of rows", field="input"
            )
        return int(counts.pop())

    def __call__(self, payloads: list[Payload]) -> list[dict[str, np.ndarray]]:
        """Run a batch of payloads on an idle worker (waiting for one).

        Args:
            payloads: Each maps input names to arrays whose first axis holds its rows.

        Returns:
            Per payload, its rows of every output.

        Raises:
            PhiEngineError: what the model raised (e.g. InvalidRequestError for a bad shape).
            WorkerError: the worker died on the batch and on its retry, or the runner closed.
        """
        if not payloads:
            return []
        batch = _Batch.of(payloads, self._input_names)
        slot = self._acquire()
        try:
            return batch.split(self._run(slot, batch))
        finally:
            slot.lock.release()
            self._pool.idle.put(slot)

    def _check_open(self) -> None:
        if self._pool.closed.is_set():
            raise WorkerError("[process] the runner is closed")

    def _acquire(self) -> WorkerSlot:
        while True:
            self._check_open()
            try:
                slot = self._pool.idle.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            # Only close() contends for the lock, and it holds it for a bounded time.
            held = slot.lock.acquire(timeout=_LOCK_S)
            if held and not self._pool.closed.is_set():
                return slot
            if held:
                slot.lock.release()
            self._pool.idle.put(slot)

    def _run(self, slot: WorkerSlot, batch: _Batch) -> list[dict[str, np.ndarray]]:
        try:
            if not slot.alive():  # it died while idle (or its last batch timed out)
                self._replace(slot)
            return slot.run(batch.specs, batch.parts)
        except WorkerDied as first:
            self._check_open()
            self._replace(slot)
            try:
                return slot.run(batch.specs, batch.parts)
            except WorkerDied as second:
                raise WorkerError(
                    f"[process] {first} while running this batch, and {second} on its retry"
                ) from None

    def _replace(self, slot: WorkerSlot) -> None:
        slot.spawn()
        with self._pool.lock:
            self._pool.restarts += 1
        try:
            slot.await_ready(time.monotonic() + self._config.start_timeout_s)
        except (WorkerDied, PhiEngineError) as exc:
            slot.discard()
            raise WorkerError(f"[process] a replacement worker failed to start: {exc}") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers and unlink all shared memory; idempotent.

        Calls still running end with :class:`WorkerError`.

        Args:
            timeout: How long workers may take to exit before they are killed.
        """
        _OPEN.discard(self)
        if self._finalizer.detach() is not None:
            self._pool.shutdown(timeout)

    def __enter__(self) -> ProcessRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
