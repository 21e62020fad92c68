"""Batch jobs: a file of rows run through a deployment in ``batch_size`` chunks (API.md §1.3).

Each job lives in its own folder under the store's root (DESIGN.md, "Where the state lives")::

    <root>/job_<16 hex>/job.json        the manifest, rewritten atomically on every change
    <root>/job_<16 hex>/chunk-<i>.npz   chunk i's outputs, written atomically once computed

A crash therefore loses at most the chunk being computed: ``run()`` again skips the chunk files
that exist, computes the rest, assembles the output from the chunks in order and writes it
atomically. No row is written twice and none is lost.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import html
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine.errors import ConflictError, InvalidRequestError, NotFoundError, PhiEngineError
from phi_engine.serving._rows import (
    RowFile,
    atomic_write,
    check_output,
    default_output_path,
    local_path,
    save_npz,
    write_rows,
)

__all__ = ["JOB_STATES", "Job", "JobStore"]

JOB_STATES = ("queued", "running", "completed", "failed", "cancelled")

Infer = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

_JOB_ID = re.compile(r"job_[0-9a-f]{16}")
_CHUNK = re.compile(r"chunk-(\d+)\.npz")
_MANIFEST = "job.json"


@dataclass(frozen=True)
class Job:
    """One batch job, as last persisted.

    Attributes:
        job_id: ``job_`` and 16 hex digits.
        deployment_id: The deployment whose model runs the rows.
        status: One of :data:`JOB_STATES`.
        input_url: The file of rows.
        output_url: Where the results file is written (atomically, once every row is done).
        batch_size: Rows per chunk handed to the model.
        rows_total: Rows in the input file.
        rows_done: Rows whose outputs are safely on disk.
        error: Why the job failed, if it did.
        created_at: Unix time of creation.
        updated_at: Unix time of the last change.
    """

    job_id: str
    deployment_id: str
    status: str
    input_url: str
    output_url: str
    batch_size: int
    rows_total: int
    rows_done: int
    error: str | None
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        """The job as a JSON-ready dict (the REST body of ``GET /inference/{job_id}``)."""
        return dataclasses.asdict(self)

    def _repr_html_(self) -> str:
        """A notebook view: status, a progress bar and the row counts."""
        error = f" — {html.escape(self.error)}" if self.error else ""
        return (
            f"<div><code>{html.escape(self.job_id)}</code> <b>{html.escape(self.status)}</b> "
            f'<progress value="{self.rows_done}" max="{max(self.rows_total, 1)}"></progress> '
            f"{self.rows_done}/{self.rows_total} rows{error}</div>"
        )


class JobStore:
    """Jobs persisted under a directory (one folder per job: manifest + finished chunks).

    Safe to share between threads; several processes may share a root too: a job runs in one
    of them at a time (an OS file lock, released by the kernel if that process dies).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}

    def create(
        self,
        deployment_id: str,
        input_url: str,
        output_url: str | None,
        batch_size: int,
        input_names: Sequence[str],
        dtypes: Mapping[str, np.dtype[Any]],
        *,
        output_names: Sequence[str] | None = None,
    ) -> Job:
        """Check a job's files now and persist it as ``queued``.

        Args:
            deployment_id: The deployment that will run it.
            input_url: The file of rows (local path, ``file://`` or another fsspec URL).
            output_url: Where results go; None puts them beside a local input
                (:func:`default_output_path`).
            batch_size: Rows per chunk, at least 1.
            input_names: The model's input names.
            dtypes: The model's input dtypes.
            output_names: The model's output names, when known: a ``.npy`` output is refused for
                several outputs and the default output becomes ``.npz``.

        Returns:
            The queued job.

        Raises:
            InvalidRequestError: naming ``input_url``, ``output_url`` or ``batch_size``. Nothing
                is written when a check fails.
            UnsupportedError: a ``.parquet`` file without pyarrow installed.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidRequestError("batch_size must be an integer >= 1", field="batch_size")
        with RowFile.open(input_url, input_names, dtypes) as rows:
            rows_total = rows.num_rows
        num_outputs = None if output_names is None else len(output_names)
        output_url = self._output_url(input_url, output_url, num_outputs)
        now = time.time()
        job = Job(
            job_id=f"job_{secrets.token_hex(8)}",
            deployment_id=deployment_id,
            status="queued",
            input_url=input_url,
            output_url=output_url,
            batch_size=batch_size,
            rows_total=rows_total,
            rows_done=0,
            error=None,
            created_at=now,
            updated_at=now,
        )
        extra = {"input_names": list(input_names), "dtypes": _dtype_strs(dtypes)}
        self._persist_new(job, extra)
        return job

    @staticmethod
    def _output_url(input_url: str, output_url: str | None, num_outputs: int | None) -> str:
        if output_url is None:
            if local_path(input_url) is None:
                raise InvalidRequestError(
                    "a remote input needs an output_url for its results", field="output_url"
                )
            output_url = default_output_path(input_url, num_outputs or 1)
        out_path = check_output(output_url, num_outputs)
        in_path = local_path(input_url)
        if in_path is not None and os.path.realpath(in_path) == os.path.realpath(out_path):
            raise InvalidRequestError("output_url must not be the input file", field="output_url")
        return output_url

    def _persist_new(self, job: Job, extra: Mapping[str, Any]) -> None:
        # Fill a hidden folder, then rename it: a crash mid-create leaves no half-made job.
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{job.job_id}."))
        try:
            _write_manifest(staging, job, extra)
            staging.rename(self.root / job.job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def get(self, job_id: str) -> Job:
        """The job as last persisted.

        Raises:
            NotFoundError: (field ``job_id``) no such job.
        """
        return self._read(job_id)[0]

    def list(self, deployment_id: str | None = None) -> list[Job]:
        """Every job (of one deployment, if given), oldest first."""
        jobs = []
        for folder in self.root.iterdir():
            if _JOB_ID.fullmatch(folder.name) and (folder / _MANIFEST).is_file():
                job = self._read(folder.name)[0]
                if deployment_id is None or job.deployment_id == deployment_id:
                    jobs.append(job)
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))

    def incomplete(self) -> builtins.list[Job]:
        """Jobs queued or running, e.g. left so by a crash: the engine resumes these at start."""
        return [j for j in self.list() if j.status in ("queued", "running")]

    def cancel(self, job_id: str) -> Job:
        """Cancel a job for good; one running stops after its current chunk.

        ``cancelled`` is final: ``run()`` returns such a job unchanged, and its chunks are removed.
        Cancelling a cancelled job changes nothing.

        Raises:
            NotFoundError: (field ``job_id``) no such job.
            ConflictError: (field ``job_id``) the job already completed.
        """
        with self._lock:
            stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()

        def to_cancelled(job: Job) -> Job:
            if job.status == "completed":
                raise ConflictError(f"job {job_id} already completed", field="job_id")
            if job.status == "cancelled":
                return job
            return dataclasses.replace(job, status="cancelled")

        job = self._update(job_id, to_cancelled)
        if stop is None:
            self._discard_chunks_if_idle(job_id)
        return job

    def _discard_chunks_if_idle(self, job_id: str) -> None:
        """Remove a cancelled job's chunks, unless a runner elsewhere holds it (it removes them)."""
        folder = self._dir(job_id)
        with open(folder / "run.lock", "wb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            _remove_chunks(folder)

    def run(
        self,
        job_id: str,
        infer: Infer,
        *,
        progress: bool = True,
        stop: threading.Event | None = None,
        pause: threading.Event | None = None,
    ) -> Job:
        """Run (or resume) a job to its end.

        Chunks of ``batch_size`` rows go to ``infer``; each chunk's outputs are saved as soon as
        they are computed, and chunks saved by an earlier, interrupted run are not recomputed.

        Args:
            job_id: The job.
            infer: Model inputs of one chunk -> its outputs (each with the chunk's rows).
            progress: Show a tqdm progress bar over rows (on stderr).
            stop: When set, the job stops after the current chunk and becomes ``cancelled``.
            pause: When set, the job stops after the current chunk and goes back to ``queued``
                with its chunks kept: the next ``run()`` (e.g. an engine restarted on the same
                root) resumes it.

        Returns:
            The final job: ``completed``, ``failed`` (``error`` says why; ``run()`` again
            resumes it) or ``cancelled``. A job already completed or cancelled is returned as is.

        Raises:
            NotFoundError: (field ``job_id``) no such job.
            ConflictError: (field ``job_id``) the job is already running (here or in another
                process sharing the root).
        """
        stop = stop if stop is not None else threading.Event()
        with self._claim(job_id, stop):
            job = self._update(job_id, _start)
            if job.status != "running":
                return job
            try:
                outcome = self._compute(job, self._read(job_id)[1], infer, progress, stop, pause)
                if outcome == "cancelled":
                    _remove_chunks(self._dir(job_id))
                    return self._set_status(job_id, "cancelled")
                if outcome == "paused":
                    return self._update(job_id, _pause)
                self._assemble(job)
            except Exception as exc:
                # Whatever goes wrong (the model, the files) fails this job, not its caller;
                # the saved chunks stay, so a later run() picks up where this one stopped.
                return self._set_status(job_id, "failed", _describe(exc))
            done = self._update(
                job_id, lambda j: dataclasses.replace(j, status="completed", rows_done=j.rows_total)
            )
            # Only after the manifest says completed: a crash before this rebuilds from the chunks.
            _remove_chunks(self._dir(job_id))
            return done

    @contextlib.contextmanager
    def _claim(self, job_id: str, stop: threading.Event) -> Iterator[None]:
        """Hold the job for one runner: a thread here, or another process sharing the root."""
        folder = self._dir(job_id)
        with self._lock:
            if job_id in self._stops:
                raise ConflictError(f"job {job_id} is already running", field="job_id")
            self._stops[job_id] = stop
        try:
            with open(folder / "run.lock", "wb") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise ConflictError(
                        f"job {job_id} is running in another process", field="job_id"
                    ) from exc
                yield
        finally:
            with self._lock:
                del self._stops[job_id]

    def _compute(
        self,
        job: Job,
        extra: Mapping[str, Any],
        infer: Infer,
        progress: bool,
        stop: threading.Event,
        pause: threading.Event | None = None,
    ) -> str:
        """Compute every missing chunk: ``done``, or ``cancelled``/``paused`` before the last."""
        from tqdm import tqdm

        folder = self._dir(job.job_id)
        _remove_temp_files(folder)
        dtypes = {name: np.dtype(s) for name, s in extra["dtypes"].items()}
        with RowFile.open(job.input_url, extra["input_names"], dtypes) as rows:
            if rows.num_rows != job.rows_total:
                raise InvalidRequestError(
                    f"the input changed: it had {job.rows_total} rows, now {rows.num_rows}",
                    field="input_url",
                )
            done = _finished_chunks(folder)
            rows_done = sum(len(_chunk_range(job, i)) for i in done)
            self._set_rows(job.job_id, rows_done)
            with tqdm(
                total=job.rows_total,
                initial=rows_done,
                unit="row",
                desc=job.job_id,
                disable=not progress,
            ) as bar:
                for index in range(math.ceil(job.rows_total / job.batch_size)):
                    if index in done:
                        continue
                    if stop.is_set():
                        return "cancelled"
                    if pause is not None and pause.is_set():
                        return "paused"
                    span = _chunk_range(job, index)
                    outputs = _checked(infer(rows.read(span.start, span.stop)), len(span))
                    _write_chunk(folder, index, outputs)
                    rows_done += len(span)
                    if not self._set_rows(job.job_id, rows_done):
                        return "cancelled"
                    bar.update(len(span))
        return "done"

    def _assemble(self, job: Job) -> None:
        """Join the chunk files in order and write the output atomically."""
        folder = self._dir(job.job_id)
        parts: dict[str, list[np.ndarray]] = {}
        for index in range(math.ceil(job.rows_total / job.batch_size)):
            with np.load(folder / f"chunk-{index}.npz", allow_pickle=False) as chunk:
                if parts and sorted(chunk.files) != sorted(parts):
                    raise PhiEngineError(
                        f"chunk {index} has outputs {chunk.files}, not {list(parts)}"
                    )
                for name in chunk.files:
                    parts.setdefault(name, []).append(chunk[name])
        write_rows(job.output_url, {name: np.concatenate(p) for name, p in parts.items()})

    def _set_rows(self, job_id: str, rows_done: int) -> bool:
        """Persist progress; False if the job was cancelled meanwhile (maybe by another process)."""
        job = self._update(job_id, lambda j: dataclasses.replace(j, rows_done=rows_done))
        return job.status != "cancelled"

    def _set_status(self, job_id: str, status: str, error: str | None = None) -> Job:
        return self._update(job_id, lambda j: dataclasses.replace(j, status=status, error=error))

    def _update(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Read, change and rewrite a manifest as one step, across threads and processes."""
        folder = self._dir(job_id)
        with self._lock, open(folder / "manifest.lock", "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            job, extra = self._read(job_id)
            changed = change(job)
            if changed is job:
                return job
            changed = dataclasses.replace(changed, updated_at=time.time())
            _write_manifest(folder, changed, extra)
        return changed

    def _read(self, job_id: str) -> tuple[Job, dict[str, Any]]:
        doc = json.loads((self._dir(job_id) / _MANIFEST).read_text())
        fields = {f.name for f in dataclasses.fields(Job)}
        job = Job(**{k: v for k, v in doc.items() if k in fields})
        return job, {k: v for k, v in doc.items() if k not in fields}

    def _dir(self, job_id: str) -> Path:
        # The id becomes a path: anything but job_<16 hex> could name a folder outside the root.
        if (
            not isinstance(job_id, str)
            or not _JOB_ID.fullmatch(job_id)
            or not (self.root / job_id / _MANIFEST).is_file()
        ):
            raise NotFoundError(f"no job {job_id!r}", field="job_id")
        return self.root / job_id


def _start(job: Job) -> Job:
    """A job about to run; completed and cancelled jobs stay as they are."""
    if job.status in ("completed", "cancelled"):
        return job
    return dataclasses.replace(job, status="running", error=None)


def _pause(job: Job) -> Job:
    """A running job put back in the queue (cancelled meanwhile: it stays cancelled)."""
    if job.status != "running":
        return job
    return dataclasses.replace(job, status="queued")


def _write_manifest(folder: Path, job: Job, extra: Mapping[str, Any]) -> None:
    data = json.dumps({**job.to_dict(), **extra}, indent=1).encode()
    atomic_write(folder / _MANIFEST, lambda f: f.write(data))


def _write_chunk(folder: Path, index: int, outputs: Mapping[str, np.ndarray]) -> None:
    atomic_write(folder / f"chunk-{index}.npz", lambda f: save_npz(f, outputs))


def _dtype_strs(dtypes: Mapping[str, np.dtype[Any]]) -> dict[str, str]:
    return {name: np.dtype(d).str for name, d in dtypes.items()}


def _chunk_range(job: Job, index: int) -> range:
    start = index * job.batch_size
    return range(start, min(start + job.batch_size, job.rows_total))


def _finished_chunks(folder: Path) -> set[int]:
    return {int(m.group(1)) for p in folder.iterdir() if (m := _CHUNK.fullmatch(p.name))}


def _remove_chunks(folder: Path) -> None:
    for p in folder.iterdir():
        if _CHUNK.fullmatch(p.name):
            p.unlink()


def _remove_temp_files(folder: Path) -> None:
    """Drop half-written files a crash left behind (never under a final name, see atomic_write)."""
    for p in folder.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def _checked(outputs: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
    arrays = {str(name): np.asarray(a) for name, a in outputs.items()}
    if not arrays:
        raise PhiEngineError("the model returned no outputs")
    for name, a in arrays.items():
        if a.ndim == 0 or a.shape[0] != rows:
            raise PhiEngineError(f"output {name!r} has shape {a.shape} for a chunk of {rows} rows")
    return arrays


def _describe(exc: Exception) -> str:
    if isinstance(exc, PhiEngineError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
