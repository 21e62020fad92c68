"""A latency histogram with log-spaced buckets: constant relative error, mergeable, thread-safe.

Buckets grow by a factor of :data:`GROWTH` from :data:`LOWEST_MS` (1 µs) to :data:`HIGHEST_MS`
(about 17 minutes), as HdrHistogram and DDSketch do, so a percentile is off by a bounded *relative*
amount at every scale: a value is reported as its bucket's geometric midpoint, at most
:data:`RELATIVE_ERROR` (about 1 %) from any value in that bucket. Values below the lowest bucket
and above the highest are kept in two extra buckets and reported as the smallest and largest value
recorded (exact for those extremes).
"""

from __future__ import annotations

import math
import threading

from phi_engine.errors import InvalidRequestError

__all__ = ["GROWTH", "HIGHEST_MS", "LOWEST_MS", "RELATIVE_ERROR", "LatencyHistogram"]

LOWEST_MS = 1e-3
HIGHEST_MS = 1e6
GROWTH = 1.02
#: The largest relative distance between a reported percentile and the true order statistic it
#: stands for, for values in [LOWEST_MS, HIGHEST_MS]: half a bucket on a log scale.
RELATIVE_ERROR = math.sqrt(GROWTH) - 1.0

_LOG_GROWTH = math.log(GROWTH)
_BUCKETS = math.ceil(math.log(HIGHEST_MS / LOWEST_MS) / _LOG_GROWTH)
# Index 0 holds values under LOWEST_MS; index _BUCKETS + 1 values at or over HIGHEST_MS.
_SLOTS = _BUCKETS + 2

# The percentiles summary() reports, by key (API.md 3.2 names the median and 99th).
_SUMMARY = (
    ("median", 50.0),
    ("90th_percentile", 90.0),
    ("99th_percentile", 99.0),
    ("99.9th_percentile", 99.9),
)


def _bucket(ms: float) -> int:
    if ms < LOWEST_MS:
        return 0
    if ms >= HIGHEST_MS:
        return _SLOTS - 1
    # min() guards the rounding of log() at a bucket's upper edge.
    return min(int(math.log(ms / LOWEST_MS) / _LOG_GROWTH) + 1, _BUCKETS)


class LatencyHistogram:
    """Latencies in milliseconds, bucketed on a log scale.

    ``record`` may be called from any number of threads. Percentiles use the nearest-rank
    definition (numpy's ``method="inverted_cdf"``): the reported value is within
    :data:`RELATIVE_ERROR` of the recorded value of that rank.

    Example::

        h = LatencyHistogram()
        for ms in (1.0, 2.0, 40.0):
            h.record(ms)
        h.summary()["99th_percentile"]  # ~40.0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * _SLOTS
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def record(self, ms: float) -> None:
        """Add one latency.

        Raises:
            InvalidRequestError: ``ms`` is not a finite number >= 0.
        """
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0.0 <= ms < math.inf:
            raise InvalidRequestError(
                f"a latency must be a finite number of ms >= 0, got {ms!r}", field="ms"
            )
        index = _bucket(ms)
        with self._lock:
            self._counts[index] += 1
            self._count += 1
            self._sum += ms
            self._min = min(self._min, ms)
            self._max = max(self._max, ms)

    @property
    def count(self) -> int:
        """Latencies recorded."""
        return self._count

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ms (0.0 when nothing was recorded).

        Args:
            q: In [0, 100].

        Raises:
            InvalidRequestError: ``q`` outside [0, 100].
        """
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 100.0:
            raise InvalidRequestError(f"percentile must be in [0, 100], got {q!r}", field="q")
        with self._lock:
            counts, total = list(self._counts), self._count
            low, high = self._min, self._max
        if total == 0:
            return 0.0
        return _value_at_rank(counts, max(1, math.ceil(q / 100.0 * total)), low, high)

    def summary(self) -> dict[str, float]:
        """``count``, ``mean``, ``median``, ``90th_percentile``, ``99th_percentile``,
        ``99.9th_percentile`` and ``max``, in ms (all 0.0 when nothing was recorded)."""
        with self._lock:
            counts, total, total_ms = list(self._counts), self._count, self._sum
            low, high = self._min, self._max
        result = {"count": float(total), "mean": total_ms / total if total else 0.0}
        for key, q in _SUMMARY:
            rank = max(1, math.ceil(q / 100.0 * total))
            result[key] = _value_at_rank(counts, rank, low, high) if total else 0.0
        result["max"] = high
        return result

    def merge(self, other: LatencyHistogram) -> None:
        """Add everything ``other`` recorded (as if each of its latencies were recorded here)."""
        # Copy other first, then update self: never holding both locks, so two threads merging
        # a pair of histograms into each other cannot deadlock.
        with other._lock:
            counts, total, total_ms = list(other._counts), other._count, other._sum
            low, high = other._min, other._max
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._count += total
            self._sum += total_ms
            self._min = min(self._min, low)
            self._max = max(self._max, high)


def _value_at_rank(counts: list[int], rank: int, low: float, high: float) -> float:
    """The representative value of the ``rank``-th smallest latency (1-based)."""
    index = _index_of_rank(counts, rank)
    if index == 0:
        return low
    if index == _SLOTS - 1:
        return high
    midpoint = LOWEST_MS * math.pow(GROWTH, index - 0.5)
    # Clamping to what was seen keeps e.g. the max exact and never reports beyond the data;
    # the recorded value lies in [low, high] too, so the clamp only moves closer to it.
    return min(max(midpoint, low), high)


def _index_of_rank(counts: list[int], rank: int) -> int:
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return index
    return len(counts) - 1
