"""The profiler (API.md 3.2): a sweep over batch sizes and thread counts, or live traffic.

A sweep measures, for each batch size and thread count: the model's compute time (direct
``CompiledModel.run`` calls), then the same requests driven through a fresh
:class:`~phi_engine.serving.Scheduler` by concurrent clients, for end-to-end latency, queue time
and served throughput. Per-operator time comes from :meth:`Program.run_profiled` at the largest
batch size. :func:`suggest` turns those numbers into suggestions whose text and evidence are the
measurements themselves: there is no canned advice.
"""

from __future__ import annotations

import html
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine._system import get_num_threads
from phi_engine.errors import InvalidRequestError
from phi_engine.graph.compiled import CompiledModel
from phi_engine.observability._histogram import LatencyHistogram
from phi_engine.serving._scheduler import ScheduledResult, Scheduler

__all__ = [
    "BatchRow",
    "OperatorRow",
    "Profile",
    "Suggestion",
    "profile_model",
    "suggest",
    "summarize_live",
]

_OPERATOR_RUNS = 5  # profiled runs summed per operator: enough to smooth one-off stalls
_QUEUE_DOMINATES = 0.5  # queue share of request time above which more workers would help
_MAX_REQUESTS = 1_000_000


@dataclass(frozen=True)
class BatchRow:
    """One configuration's measurements.

    Attributes:
        batch_size: Rows per request (sweep), or requests per batch the scheduler formed (live).
        threads: Threads per kernel call (0 in a live profile: not recorded).
        latency_ms: End-to-end latency of its requests (:meth:`LatencyHistogram.summary`).
        throughput_rows_per_s: Rows served per second (live: requests per second of worker time).
        queue_ms_median: Median time a request waited before its batch started.
        compute_ms_median: Median time one batch of this size took to compute.
    """

    batch_size: int
    threads: int
    latency_ms: dict[str, float]
    throughput_rows_per_s: float
    queue_ms_median: float
    compute_ms_median: float

    @property
    def queue_share(self) -> float:
        """The queue's share of a median request's time (queue + compute)."""
        total = self.queue_ms_median + self.compute_ms_median
        return self.queue_ms_median / total if total > 0 else 0.0


@dataclass(frozen=True)
class OperatorRow:
    """Time spent in one op type, summed over the profiled runs.

    Attributes:
        op_type: The graph op type after fusion (e.g. ``Linear`` for Gemm + bias + Relu).
        nodes: Distinct nodes of that type.
        total_ms: Their time, summed over every profiled run.
        share: Their share of all operators' time (the shares sum to 1).
    """

    op_type: str
    nodes: int
    total_ms: float
    share: float


@dataclass(frozen=True)
class Suggestion:
    """One optimization suggestion, worded from its evidence.

    Attributes:
        kind: ``batch_size``, ``deadline_missed``, ``queue`` or ``operator``.
        message: A sentence built from the numbers in ``evidence``.
        evidence: The measurements it rests on.
    """

    kind: str
    message: str
    evidence: dict[str, float]


@dataclass(frozen=True)
class Profile:
    """What :func:`profile_model` and :func:`summarize_live` return.

    Attributes:
        execution_time_ms: Median compute time of one batch-1 request (live: of the smallest batch).
        latency_distribution: End-to-end latency of the smallest batch size at the first thread
            count (live: of every request), as :meth:`LatencyHistogram.summary` gives it.
        batches: One row per batch size and thread count, in sweep order.
        operators: Time per op type, most first (empty for a live profile).
        suggestions: Derived from the rows above.
        source: ``sweep`` or ``live``.
        deadline_ms: The deadline the suggestions were judged against, if any.
        operator_batch_size: The batch size the operators were profiled at (0: none).
        operator_wall_ms: Wall time of the profiled runs; operator times sum to at most this.
    """

    execution_time_ms: float
    latency_distribution: dict[str, float]
    batches: list[BatchRow]
    operators: list[OperatorRow]
    suggestions: list[Suggestion]
    source: str
    deadline_ms: float | None
    operator_batch_size: int = 0
    operator_wall_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The API.md 3.2 response: ``execution_time`` and ``latency_distribution`` (ms) first,
        then ``throughput``, ``queue_vs_compute``, ``operators``, ``optimization_suggestions``
        (messages) and the details behind them."""
        return {
            "execution_time": self.execution_time_ms,
            "latency_distribution": dict(self.latency_distribution),
            "time_unit": "ms",
            "throughput": [
                {
                    "batch_size": r.batch_size,
                    "threads": r.threads,
                    "rows_per_second": r.throughput_rows_per_s,
                }
                for r in self.batches
            ],
            "queue_vs_compute": [
                {
                    "batch_size": r.batch_size,
                    "threads": r.threads,
                    "queue_ms_median": r.queue_ms_median,
                    "compute_ms_median": r.compute_ms_median,
                    "queue_share": r.queue_share,
                }
                for r in self.batches
            ],
            "operators": [asdict(op) for op in self.operators],
            "optimization_suggestions": [s.message for s in self.suggestions],
            "suggestions": [asdict(s) for s in self.suggestions],
            "batches": [asdict(r) for r in self.batches],
            "source": self.source,
            "deadline_ms": self.deadline_ms,
            "operator_batch_size": self.operator_batch_size,
            "operator_wall_ms": self.operator_wall_ms,
        }

    def _repr_html_(self) -> str:
        """Tables for notebooks; every text is escaped."""
        head = (
            f"<p>Profile ({_esc(self.source)}): execution time "
            f"{self.execution_time_ms:.3f} ms, p99 "
            f"{self.latency_distribution.get('99th_percentile', 0.0):.3f} ms</p>"
        )
        batch_rows = [
            [r.batch_size, r.threads, r.throughput_rows_per_s, *_medians(r)] for r in self.batches
        ]
        batch_head = ["batch", "threads", "rows/s", "p50 ms", "p99 ms", "queue ms", "compute ms"]
        op_rows = [[o.op_type, o.nodes, o.total_ms, o.share] for o in self.operators]
        items = "".join(f"<li>{_esc(s.message)}</li>" for s in self.suggestions)
        return (
            head
            + _table(batch_head, batch_rows)
            + (_table(["op type", "nodes", "total ms", "share"], op_rows) if op_rows else "")
            + f"<ul>{items}</ul>"
        )


def _medians(row: BatchRow) -> list[float]:
    p50, p99 = row.latency_ms.get("median", 0.0), row.latency_ms.get("99th_percentile", 0.0)
    return [p50, p99, row.queue_ms_median, row.compute_ms_median]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"<td>{_esc(text)}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---- argument checks ------------------------------------------------------------------------


def _positive_int(value: object, name: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= most:
        raise InvalidRequestError(
            f"{name} must be an integer in 1..{most}, got {value!r}", field=name
        )
    return int(value)


def _check_batch_sizes(batch_sizes: object, max_batch: int) -> list[int]:
    if isinstance(batch_sizes, str | bytes) or not isinstance(batch_sizes, Sequence):
        raise InvalidRequestError("batch_sizes must be a list of integers", field="batch_sizes")
    if not batch_sizes:
        raise InvalidRequestError("batch_sizes must not be empty", field="batch_sizes")
    sizes = [_positive_int(b, "batch_sizes", max_batch) for b in batch_sizes]
    return sorted(set(sizes))


def _check_threads(threads: Sequence[int] | None) -> list[int]:
    if threads is None:
        return _default_threads()
    if isinstance(threads, str | bytes) or not isinstance(threads, Sequence) or not threads:
        raise InvalidRequestError("threads must be a non-empty list of integers", field="threads")
    return list(dict.fromkeys(_positive_int(t, "threads", 4096) for t in threads))


def _default_threads() -> list[int]:
    """The current default first (what requests run with today), then 1 and every core."""
    current = get_num_threads()
    cores = int(require_core().available_cpus())
    return list(dict.fromkeys([current, *sorted({1, cores})]))


def _check_deadline(deadline_ms: object) -> float | None:
    if deadline_ms is None:
        return None
    ok = isinstance(deadline_ms, int | float) and not isinstance(deadline_ms, bool)
    if not ok or not 0 < float(deadline_ms) < math.inf:  # type: ignore[arg-type]
        raise InvalidRequestError(
            f"deadline_ms must be a positive number, got {deadline_ms!r}", field="deadline_ms"
        )
    return float(deadline_ms)  # type: ignore[arg-type]


def _check_sample(model: CompiledModel, sample: object) -> dict[str, np.ndarray]:
    """One request's inputs, each with a leading batch axis of 1 and the input's dtype."""
    if not isinstance(sample, Mapping):
        raise InvalidRequestError("sample must map input names to arrays", field="sample")
    feeds = {}
    for name, t in model.inputs.items():
        if name not in sample:
            raise InvalidRequestError(f"sample lacks input {name!r}", field="sample")
        array = np.asarray(sample[name], dtype=t.dtype)
        if array.ndim == 0 or array.shape[0] != 1:
            raise InvalidRequestError(
                f"sample input {name!r} must have a leading batch axis of 1, got shape "
                f"{list(array.shape)}",
                field="sample",
            )
        feeds[name] = array
    model.run(feeds)  # refuses wrong ranks or fixed dimensions now, naming the input
    return feeds


def _tile(feeds: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {name: np.repeat(a, rows, axis=0) for name, a in feeds.items()}


# ---- measuring ------------------------------------------------------------------------------


def _time_compute(
    model: CompiledModel, feeds: Mapping[str, np.ndarray], threads: int, runs: int
) -> float:
    """Median ms of ``runs`` direct runs, after one untimed run (which builds the plan)."""
    model.run(feeds, threads=threads)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(feeds, threads=threads)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _runner(model: CompiledModel, threads: int) -> Callable[[list[Any]], list[Any]]:
    """A ``run_batch`` for one-request batches on ``threads`` threads.

    ``ModelRunner`` runs on the process-wide thread default, and a profile must not change that
    setting under a deployment's live traffic; with one request per batch there is nothing to
    stack, so running each payload is what ``ModelRunner`` would do.
    """
    return lambda payloads: [model.run(p, threads=threads) for p in payloads]


@dataclass
class _Drive:
    results: list[ScheduledResult]
    histogram: LatencyHistogram
    wall_s: float


def _drive(
    model: CompiledModel, feeds: dict[str, np.ndarray], threads: int, requests: int, clients: int
) -> _Drive:
    """Send ``requests`` requests through a fresh one-worker scheduler from ``clients`` threads,
    each waiting for its answer before sending the next (a closed loop)."""
    rows = next(iter(feeds.values())).shape[0]
    # fifo dispatches at once and one request fills a batch: every batch is exactly ``rows``
    # rows, the size the compute time was measured at.
    sched = Scheduler(
        _runner(model, threads), policy="fifo", max_batch=1, max_batch_cost=float(rows), workers=1
    )
    histogram = LatencyHistogram()
    results: list[ScheduledResult] = []
    tickets = itertools.count()  # next() on it is atomic in CPython: each ticket is taken once

    def client() -> None:
        while next(tickets) < requests:
            t0 = time.perf_counter()
            result = sched.submit(feeds, cost=float(rows)).result()
            histogram.record((time.perf_counter() - t0) * 1000.0)
            results.append(result)  # list.append is atomic under the GIL

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients, thread_name_prefix="phi-profile-client") as pool:
            for future in [pool.submit(client) for _ in range(clients)]:
                future.result()
    finally:
        sched.close()
    return _Drive(results, histogram, time.perf_counter() - start)


def _measure(
    model: CompiledModel, feeds: dict[str, np.ndarray], threads: int, requests: int, clients: int
) -> tuple[BatchRow, LatencyHistogram]:
    rows = next(iter(feeds.values())).shape[0]
    compute = _time_compute(model, feeds, threads, max(5, min(requests, 32)))
    drive = _drive(model, feeds, threads, requests, min(clients, requests))
    row = BatchRow(
        batch_size=rows,
        threads=threads,
        latency_ms=drive.histogram.summary(),
        throughput_rows_per_s=requests * rows / drive.wall_s,
        queue_ms_median=statistics.median(r.queue_time_ms for r in drive.results),
        compute_ms_median=compute,
    )
    return row, drive.histogram


def _operators(
    model: CompiledModel, feeds: dict[str, np.ndarray], threads: int
) -> tuple[list[OperatorRow], float]:
    """Per op type time over a few profiled runs, and those runs' total wall ms."""
    program = model.program({name: a.shape for name, a in feeds.items()})
    program.run(feeds, threads)  # untimed: first-touch of the arena and caches
    ns: dict[str, int] = {}
    labels: dict[str, set[str]] = {}
    wall_ns = 0
    for _ in range(_OPERATOR_RUNS):
        run = program.run_profiled(feeds, threads)
        wall_ns += run.total_ns
        for node in run.nodes:
            ns[node.op_type] = ns.get(node.op_type, 0) + node.ns
            labels.setdefault(node.op_type, set()).add(node.label)
    total = sum(ns.values())
    rows = [
        OperatorRow(op, len(labels[op]), t / 1e6, t / total if total else 0.0)
        for op, t in ns.items()
    ]
    rows.sort(key=lambda r: (-r.total_ms, r.op_type))
    return rows, wall_ns / 1e6


def profile_model(
    model: CompiledModel,
    sample: Mapping[str, np.ndarray],
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int] | None = None,
    requests: int = 64,
    deadline_ms: float | None = None,
    concurrency: int = 4,
    progress: bool = False,
) -> Profile:
    """Profile a compiled model over batch sizes and thread counts.

    Args:
        model: The compiled model.
        sample: One request's inputs by name, each with a leading batch axis of 1; its row is
            repeated to each batch size.
        batch_sizes: Rows per request to measure, each at most ``model.max_batch``.
        threads: Threads per kernel call to measure (default: the current default, 1, and
            every core this process may use).
        requests: Requests sent through the scheduler per configuration.
        deadline_ms: The latency target the suggestions judge p99 against.
        concurrency: Client threads sending requests at once.
        progress: Print a line per configuration to stderr.

    Returns:
        A :class:`Profile` with ``source="sweep"``.

    Raises:
        InvalidRequestError: a bad argument (``field`` names it: ``model``, ``sample``,
            ``batch_sizes``, ``threads``, ``requests``, ``deadline_ms``, ``concurrency``).
    """
    if not isinstance(model, CompiledModel):
        raise InvalidRequestError("model must be a CompiledModel", field="model")
    sizes = _check_batch_sizes(batch_sizes, model.max_batch)
    counts = _check_threads(threads)
    requests = _positive_int(requests, "requests", _MAX_REQUESTS)
    concurrency = _positive_int(concurrency, "concurrency", 1024)
    deadline = _check_deadline(deadline_ms)
    one = _check_sample(model, sample)
    rows: list[BatchRow] = []
    first: LatencyHistogram | None = None
    for b, t in itertools.product(sizes, counts):
        row, histogram = _measure(model, _tile(one, b), t, requests, concurrency)
        first = first or histogram
        rows.append(row)
        if progress:
            print(_progress_line(row), file=sys.stderr, flush=True)
    assert first is not None  # sizes and counts are non-empty
    execution = next((r.compute_ms_median for r in rows if r.batch_size == 1), None)
    if execution is None:
        execution = _time_compute(model, one, counts[0], 9)
    operators, wall_ms = _operators(model, _tile(one, sizes[-1]), counts[0])
    return Profile(
        execution_time_ms=execution,
        latency_distribution=first.summary(),
        batches=rows,
        operators=operators,
        suggestions=suggest(rows, operators, deadline, clients=concurrency),
        source="sweep",
        deadline_ms=deadline,
        operator_batch_size=sizes[-1],
        operator_wall_ms=wall_ms,
    )


def _progress_line(row: BatchRow) -> str:
    return (
        f"[profile] batch {row.batch_size} threads {row.threads}: "
        f"{row.throughput_rows_per_s:.0f} rows/s, p99 {row.latency_ms['99th_percentile']:.2f} ms"
    )


# ---- live traffic ---------------------------------------------------------------------------


def summarize_live(
    results: Sequence[ScheduledResult],
    batches: Sequence[tuple[int, float]],
    deadline_ms: float | None = None,
) -> Profile:
    """A profile of traffic a deployment already served.

    Args:
        results: What its requests' futures resolved to (:class:`ScheduledResult`: each carries
            its measured ``queue_time_ms``, ``execution_time_ms`` and ``batch_size``, the
            requests in its batch). A request's latency is its queue plus execution time.
        batches: ``Scheduler.recent_batches()``: ``(requests, seconds)`` per batch run, used for
            throughput (requests per second of worker time, per batch size). A batch size with
            no entry here gets ``batch_size / median execution time``.
        deadline_ms: The latency target the suggestions judge p99 against.

    Returns:
        A :class:`Profile` with ``source="live"``, one row per batch size seen (``threads`` 0:
        not recorded) and no operators.

    Raises:
        InvalidRequestError: no results, an entry that is not a ``ScheduledResult``, or a
            malformed batch entry (``field``: ``results``, ``batches``, ``deadline_ms``).
    """
    _check_live(results, batches)
    deadline = _check_deadline(deadline_ms)
    groups: dict[int, list[ScheduledResult]] = {}
    everything = LatencyHistogram()
    for r in results:
        groups.setdefault(r.batch_size, []).append(r)
        everything.record(r.queue_time_ms + r.execution_time_ms)
    rows = [_live_row(size, groups[size], batches) for size in sorted(groups)]
    smallest = groups[min(groups)]
    return Profile(
        execution_time_ms=statistics.median(r.execution_time_ms for r in smallest),
        latency_distribution=everything.summary(),
        batches=rows,
        operators=[],
        suggestions=suggest(rows, [], deadline),
        source="live",
        deadline_ms=deadline,
    )


def _check_live(results: object, batches: object) -> None:
    if isinstance(results, str | bytes) or not isinstance(results, Sequence) or not results:
        raise InvalidRequestError("results must be a non-empty list", field="results")
    if not all(isinstance(r, ScheduledResult) for r in results):
        raise InvalidRequestError("results must hold ScheduledResult entries", field="results")
    if isinstance(batches, str | bytes) or not isinstance(batches, Sequence):
        raise InvalidRequestError("batches must be a list of (requests, seconds)", field="batches")
    for entry in batches:
        ok = isinstance(entry, tuple | list) and len(entry) == 2
        if not ok or not isinstance(entry[0], int) or not _seconds(entry[1]):
            raise InvalidRequestError(
                f"batch entry {entry!r} is not (requests, seconds)", field="batches"
            )


def _seconds(value: object) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and 0 <= float(value) < math.inf  # type: ignore[arg-type]


def _live_row(
    size: int, group: list[ScheduledResult], batches: Sequence[tuple[int, float]]
) -> BatchRow:
    histogram = LatencyHistogram()
    for r in group:
        histogram.record(r.queue_time_ms + r.execution_time_ms)
    compute = statistics.median(r.execution_time_ms for r in group)
    seconds = sum(s for n, s in batches if n == size)
    count = sum(n for n, s in batches if n == size)
    # Without a recorded batch of this size, one batch per median execution time.
    fallback = size * 1000.0 / compute if compute > 0 else 0.0
    rate = count / seconds if seconds > 0 else fallback
    return BatchRow(
        batch_size=size,
        threads=0,
        latency_ms=histogram.summary(),
        throughput_rows_per_s=rate,
        queue_ms_median=statistics.median(r.queue_time_ms for r in group),
        compute_ms_median=compute,
    )


# ---- suggestions ----------------------------------------------------------------------------


def _best_row(rows: Sequence[BatchRow], deadline_ms: float | None) -> BatchRow | None:
    """The row with the highest throughput among those whose p99 meets the deadline (all rows
    when there is none); ties go to the smaller batch, then fewer threads."""
    fits = [r for r in rows if deadline_ms is None or _p99(r) <= deadline_ms]
    if not fits:
        return None
    return max(fits, key=lambda r: (r.throughput_rows_per_s, -r.batch_size, -r.threads))


def suggest(
    rows: Sequence[BatchRow],
    operators: Sequence[OperatorRow],
    deadline_ms: float | None,
    *,
    clients: int | None = None,
) -> list[Suggestion]:
    """Suggestions derived from measured rows and operator times.

    Args:
        rows: The measured configurations.
        operators: Time per op type, most first.
        deadline_ms: The p99 target, if any.
        clients: Concurrent clients that produced the load (sweep), for the queue advice.

    Returns:
        In order, those that apply: ``deadline_missed`` (even the smallest batch misses the
        deadline), ``batch_size`` (the best configuration within the deadline), ``queue`` (queue
        time dominates the chosen configuration's requests), ``operator`` (the costliest op type).
    """
    found: list[Suggestion] = []
    if not rows:
        return found
    best = _best_row(rows, deadline_ms)
    missed = _deadline_missed(rows, deadline_ms)
    if missed is not None:
        found.append(missed)
    if best is not None:
        found.append(_batch_suggestion(best, rows, deadline_ms))
    queue = _queue_suggestion(best or _smallest(rows), clients)
    if queue is not None:
        found.append(queue)
    if operators:
        found.append(_operator_suggestion(operators[0]))
    return found


def _p99(row: BatchRow) -> float:
    return row.latency_ms.get("99th_percentile", 0.0)


def _smallest(rows: Sequence[BatchRow]) -> BatchRow:
    """The smallest batch size's row with the lowest p99."""
    size = min(r.batch_size for r in rows)
    return min((r for r in rows if r.batch_size == size), key=_p99)


def _threads_text(row: BatchRow) -> str:
    if row.threads == 0:
        return ""
    return f" with {row.threads} thread{'s' if row.threads != 1 else ''}"


def _batch_suggestion(
    best: BatchRow, rows: Sequence[BatchRow], deadline_ms: float | None
) -> Suggestion:
    base = _smallest([r for r in rows if r.threads == best.threads] or rows)
    speedup = best.throughput_rows_per_s / base.throughput_rows_per_s
    within = (
        f"within the {deadline_ms:g} ms deadline"
        if deadline_ms is not None
        else "the highest throughput measured (no deadline given)"
    )
    message = (
        f"batch {best.batch_size}{_threads_text(best)} gives "
        f"{best.throughput_rows_per_s:.0f} rows/s ({speedup:.1f}x batch {base.batch_size}) "
        f"and p99 {_p99(best):.2f} ms, {within}"
    )
    evidence = {
        "batch_size": float(best.batch_size),
        "threads": float(best.threads),
        "throughput_rows_per_s": best.throughput_rows_per_s,
        "p99_ms": _p99(best),
        "speedup": speedup,
        "baseline_batch_size": float(base.batch_size),
    }
    if deadline_ms is not None:
        evidence["deadline_ms"] = deadline_ms
    return Suggestion("batch_size", message, evidence)


def _deadline_missed(rows: Sequence[BatchRow], deadline_ms: float | None) -> Suggestion | None:
    if deadline_ms is None:
        return None
    low = _smallest(rows)
    if _p99(low) <= deadline_ms:
        return None
    cause = (
        "compute alone exceeds it"
        if low.compute_ms_median > deadline_ms
        else f"queueing adds {low.queue_ms_median:.2f} ms to {low.compute_ms_median:.2f} ms "
        "of compute"
    )
    message = (
        f"even batch {low.batch_size}{_threads_text(low)} misses the {deadline_ms:g} ms "
        f"deadline: its p99 is {_p99(low):.2f} ms ({cause})"
    )
    evidence = {
        "batch_size": float(low.batch_size),
        "threads": float(low.threads),
        "p99_ms": _p99(low),
        "deadline_ms": deadline_ms,
        "compute_ms_median": low.compute_ms_median,
        "queue_ms_median": low.queue_ms_median,
    }
    return Suggestion("deadline_missed", message, evidence)


def _queue_suggestion(row: BatchRow, clients: int | None) -> Suggestion | None:
    share = row.queue_share
    if share <= _QUEUE_DOMINATES or row.compute_ms_median <= 0:
        return None
    # Workers needed so a request rarely waits: its whole time over one batch's compute.
    needed = math.ceil((row.queue_ms_median + row.compute_ms_median) / row.compute_ms_median)
    if clients is not None:
        needed = min(needed, clients)
    load = f" under {clients} concurrent clients" if clients is not None else ""
    message = (
        f"queue time is {share:.0%} of a request's time at batch {row.batch_size}"
        f"{_threads_text(row)}{load} (median {row.queue_ms_median:.2f} ms queued vs "
        f"{row.compute_ms_median:.2f} ms compute): about {needed} workers or replicas "
        "would serve that load without the wait"
    )
    evidence = {
        "batch_size": float(row.batch_size),
        "threads": float(row.threads),
        "queue_share": share,
        "queue_ms_median": row.queue_ms_median,
        "compute_ms_median": row.compute_ms_median,
        "suggested_workers": float(needed),
    }
    if clients is not None:
        evidence["clients"] = float(clients)
    return Suggestion("queue", message, evidence)


def _operator_suggestion(top: OperatorRow) -> Suggestion:
    message = (
        f"{top.op_type} takes {top.share:.0%} of operator time ({top.nodes} "
        f"node{'s' if top.nodes != 1 else ''}, {top.total_ms:.3f} ms over the profiled runs): "
        "it is where a faster kernel, quantization or a smaller layer would pay most"
    )
    evidence = {"share": top.share, "total_ms": top.total_ms, "nodes": float(top.nodes)}
    return Suggestion("operator", message, evidence)
