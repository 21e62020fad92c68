"""Serving: the scheduler that batches, orders, admits and sheds requests (DESIGN.md, "Φ(a)").

``Scheduler`` queues requests in the native core and hands batches to worker threads;
``ModelRunner`` makes a compiled model its ``run_batch``.
"""

from phi_engine.serving._policy import POLICIES, PRIORITIES, SchedulerConfig
from phi_engine.serving._runner import ModelRunner
from phi_engine.serving._scheduler import ScheduledResult, Scheduler

__all__ = [
    "POLICIES",
    "PRIORITIES",
    "ModelRunner",
    "ScheduledResult",
    "Scheduler",
    "SchedulerConfig",
]
