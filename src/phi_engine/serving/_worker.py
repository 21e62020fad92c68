"""A worker process of :class:`~phi_engine.serving.ProcessRunner`: both ends of its pipe.

:func:`serve` is the worker's main function: it compiles the model once, then answers run
messages until told to stop or until its parent goes away. :class:`WorkerSlot` is the parent's
handle on one worker: it starts it, feeds it batches, and tells its death from its answers.

Pipe messages are tuples; tensors are :class:`TensorSpec` records in shared memory that the
parent owns (see ``_shm``)::

    parent -> worker   ("run", input_segment, output_segment, [[TensorSpec, ...] per group])
                       ("out", output_segment)          answer to "need"
                       ("stop",)
    worker -> parent   ("ready", input_names)           once, after compiling
                       ("need", nbytes)                 the outputs do not fit: grow the region
                       ("ok", [[TensorSpec, ...] per group])
                       ("error", class_name, message, field)
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine import errors
from phi_engine.serving._shm import Attachment, Region, TensorSpec, layout

__all__ = ["WorkerConfig", "WorkerDied", "WorkerSlot", "describe", "rebuild", "serve"]

_WATCH_S = 1.0  # how often an idle worker checks that its parent is still there
_POLL_S = 0.25  # how often the parent, waiting for an answer, checks the worker's exit code
_REAP_S = 2.0  # how long a dead worker may take to be reaped

Message = tuple[Any, ...]


def describe(exc: BaseException) -> Message:
    """An ``("error", class, message, field)`` message for an exception raised in the worker."""
    if isinstance(exc, errors.PhiEngineError):
        return ("error", type(exc).__name__, exc.message, exc.field)
    return ("error", type(exc).__name__, str(exc), None)


def rebuild(class_name: str, message: str, field: str | None) -> errors.PhiEngineError:
    """The parent's copy of an error the worker described: the same class when it is ours."""
    cls = getattr(errors, class_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.PhiEngineError):
        return cls(message, field=field)
    return errors.PhiEngineError(f"[process] the model raised {class_name}: {message}")


def serve(
    conn: Connection,
    model_path: str,
    max_batch: int,
    threads: int,
    parent: int,
    sha256: str | None = None,
) -> None:
    """The worker's main function: compile, report ready, then serve until stopped.

    Args:
        conn: This worker's end of its pipe to the parent.
        model_path: The ONNX file to compile.
        max_batch: Passed to :func:`phi_engine.compile`.
        threads: Kernel threads (:func:`phi_engine.set_num_threads`).
        parent: The parent's pid; the worker exits when it changes (the parent died).
        sha256: The file's registered digest: the worker compiles the bytes it hashed.
    """
    # Ctrl-C reaches the whole process group; stopping workers is the parent's decision.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from phi_engine import compile, set_num_threads

    try:
        set_num_threads(threads)
        source: str | bytes = model_path
        if sha256 is not None:
            from phi_engine.registry._store import read_verified

            source = read_verified(Path(model_path), sha256)
        model = compile(source, max_batch=max_batch)
    except Exception as exc:
        conn.send(describe(exc))
        return
    conn.send(("ready", list(model.inputs)))
    worker = _Worker(conn, model)
    try:
        while (message := _next(conn, parent)) is not None and message[0] == "run":
            conn.send(worker.handle(message))
    except (EOFError, OSError):
        pass  # the parent closed the pipe or died: there is no one left to answer
    finally:
        worker.close()


def _next(conn: Connection, parent: int) -> Message | None:
    """The next message, or None once the parent is gone (an orphan must not linger)."""
    while not conn.poll(_WATCH_S):
        if os.getppid() != parent:
            return None
    message: Message = conn.recv()
    return message


class _Worker:
    def __init__(self, conn: Connection, model: Any) -> None:
        self.conn = conn
        self.model = model
        self.inputs = Attachment()
        self.outputs = Attachment()

    def handle(self, message: Message) -> Message:
        _, input_segment, output_segment, groups = message
        try:
            results = [self._run(input_segment, specs) for specs in groups]
        except Exception as exc:  # the model's error goes back to the caller; the worker lives
            return describe(exc)
        return self._deliver(output_segment, results)

    def _run(self, segment: str, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
        buf = self.inputs.buffer(segment)
        # Views, not copies: the parent stacked the rows in place, and nothing else writes there
        # until this batch is answered.
        feeds = {spec.name: spec.view(buf) for spec in specs}
        outputs: dict[str, np.ndarray] = self.model.run(feeds)
        return outputs

    def _deliver(self, segment: str, results: list[dict[str, np.ndarray]]) -> Message:
        groups: list[list[TensorSpec]] = []
        end = 0
        for outputs in results:
            specs, end = layout(((n, a.shape, a.dtype) for n, a in outputs.items()), end)
            groups.append(specs)
        buf = self.outputs.buffer(segment)
        if end > buf.nbytes:
            self.conn.send(("need", end))
            _, segment = self.conn.recv()
            buf = self.outputs.buffer(segment)
        for specs, outputs in zip(groups, results, strict=True):
            for spec in specs:
                np.copyto(spec.view(buf), outputs[spec.name])
        return ("ok", groups)

    def close(self) -> None:
        self.inputs.close()
        self.outputs.close()


# ---- the parent's side ----------------------------------------------------------------------


class WorkerDied(Exception):
    """A worker exited or closed its pipe; the message says how (e.g. ``killed by SIGKILL``)."""


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str
    max_batch: int
    threads: int
    start_timeout_s: float
    run_timeout_s: float
    sha256: str | None = None


def _exit_reason(process: SpawnProcess) -> str:
    process.join(_REAP_S)
    if process.exitcode is None:  # it closed its pipe but lives on: it can serve no one
        process.kill()
        process.join(_REAP_S)
        return f"worker {process.pid} closed its pipe"
    code = process.exitcode
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    return f"worker {process.pid} {how}"


class WorkerSlot:
    """One worker process with its pipe and its input and output regions."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.lock = threading.Lock()  # held by the one caller using it, or by close()
        self.inputs = Region()
        self.outputs = Region()
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None

    @property
    def pid(self) -> int:
        return -1 if self.process is None or self.process.pid is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    def spawn(self) -> None:
        """Start a worker (the previous one, if any, is dead or stopped); does not wait."""
        self.discard()
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=True)
        c = self.config
        self.process = ctx.Process(
            target=serve,
            args=(child_end, c.model_path, c.max_batch, c.threads, os.getpid(), c.sha256),
            name="phi-process-worker",
            daemon=True,
        )
        self.conn = parent_end
        try:
            self.process.start()
        except BaseException:
            self.process = self.conn = None
            parent_end.close()
            raise
        finally:
            # Only the worker may hold its end: its exit must read as EOF here.
            child_end.close()

    def await_ready(self, deadline: float) -> list[str]:
        """Wait for the worker to compile; returns the model's input names.

        Raises:
            WorkerDied: it died while starting.
            PhiEngineError: the model failed to compile (the worker's own error).
            WorkerError: it did not start before ``deadline``.
        """
        reply = self.receive(deadline)
        if reply[0] == "error":
            _exit_reason(self.process_or_raise())
            raise rebuild(*reply[1:])
        names: list[str] = reply[1]
        return names

    def process_or_raise(self) -> SpawnProcess:
        if self.process is None or self.conn is None:
            raise WorkerDied("no worker is running")
        return self.process

    def send(self, message: Message) -> None:
        process = self.process_or_raise()
        assert self.conn is not None
        try:
            self.conn.send(message)
        except OSError:
            raise WorkerDied(_exit_reason(process)) from None

    def receive(self, deadline: float) -> Message:
        """The worker's next message, or how it died; a worker silent past ``deadline`` is
        stopped (:class:`WorkerError`)."""
        process = self.process_or_raise()
        assert self.conn is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pid = process.pid
                self.discard()  # hung: the next call on this slot starts a fresh worker
                raise errors.WorkerError(
                    f"[process] worker {pid} did not answer in time; it was stopped"
                )
            # A dead worker's end of the pipe is closed by the kernel, so death reads as EOF
            # here at once; the exit code is checked too in case it left the pipe open.
            if self.conn.poll(min(left, _POLL_S)):
                try:
                    message: Message = self.conn.recv()
                    return message
                except (EOFError, OSError):
                    raise WorkerDied(_exit_reason(process)) from None
            if process.exitcode is not None:
                raise WorkerDied(_exit_reason(process))

    def run(
        self, specs: list[list[TensorSpec]], parts: list[list[list[np.ndarray]]]
    ) -> list[dict[str, np.ndarray]]:
        """Run one batch: stack its inputs into shared memory, send, wait, copy the outputs out.

        Args:
            specs: Per group, per input: where its stacked rows go in the input region.
            parts: Per group, per input: the arrays to stack there.

        Raises:
            WorkerDied: the worker died before it answered.
            PhiEngineError: the model's own error (the worker lives on).
            WorkerError: it did not answer within the run timeout (it was stopped).
        """
        end = max((s.offset + _nbytes(s) for group in specs for s in group), default=0)
        self.inputs.reserve(end)
        for group, arrays in zip(specs, parts, strict=True):
            for spec, pieces in zip(group, arrays, strict=True):
                self.inputs.write(spec, pieces)
        self.send(("run", self.inputs.name, self.outputs.name, specs))
        deadline = time.monotonic() + self.config.run_timeout_s
        reply = self.receive(deadline)
        if reply[0] == "need":
            self.outputs.reserve(reply[1])
            self.send(("out", self.outputs.name))
            reply = self.receive(deadline)
        if reply[0] == "error":
            raise rebuild(*reply[1:])
        return [{s.name: self.outputs.read(s) for s in specs} for specs in reply[1]]

    def kill(self) -> None:
        process = self.process
        # close() may call this while the caller using the slot reaps and closes the process.
        with contextlib.suppress(ValueError):
            if process is not None and process.exitcode is None:
                process.kill()

    def ask_to_stop(self) -> None:
        """Tell the worker to exit after its current message; does not wait."""
        if self.alive() and self.conn is not None:
            with contextlib.suppress(OSError):  # it is already gone
                self.conn.send(("stop",))

    def stop(self, timeout: float) -> None:
        """Wait for a worker told to stop to exit; kill it if it has not within ``timeout``."""
        if self.process is not None and self.alive():
            self.process.join(max(timeout, 0.0))
        self.discard()

    def discard(self) -> None:
        """Kill (if needed) and reap the current worker and close its pipe."""
        process, conn = self.process, self.conn
        self.process = self.conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.exitcode is None:
                process.kill()
                process.join(_REAP_S)
            if process.exitcode is not None:
                process.close()

    def release(self) -> None:
        self.inputs.release()
        self.outputs.release()


def _nbytes(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
