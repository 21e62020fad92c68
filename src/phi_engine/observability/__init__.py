"""Observability: the persisted, hash-chained event log, latency histograms and the profiler
(DESIGN.md, "observability")."""

from __future__ import annotations

from phi_engine.observability._events import LEVELS, ChainReport, Event, EventLog, PruneReport
from phi_engine.observability._histogram import LatencyHistogram
from phi_engine.observability._profiler import (
    BatchRow,
    OperatorRow,
    Profile,
    Suggestion,
    profile_model,
    summarize_live,
)

__all__ = [
    "LEVELS",
    "BatchRow",
    "ChainReport",
    "Event",
    "EventLog",
    "LatencyHistogram",
    "OperatorRow",
    "Profile",
    "PruneReport",
    "Suggestion",
    "profile_model",
    "summarize_live",
]
