"""Serving: deployments, the scheduler that batches, orders, admits and sheds their requests
(DESIGN.md, "Φ(a)"), the runners that execute batches (in process or in worker processes), batch
jobs, auto-scaling and placement.

``Scheduler`` queues requests in the native core and hands batches to worker threads;
``ModelRunner`` makes a compiled model its ``run_batch``, ``ProcessRunner`` does the same in worker
processes. ``Deployment`` routes requests between model versions during updates.
"""

from phi_engine.serving._autoscale import Autoscaler, ScalingPolicy
from phi_engine.serving._deployment import STRATEGIES, Deployment, InferenceResult
from phi_engine.serving._inputs import InputLimits
from phi_engine.serving._jobs import Job, JobStore
from phi_engine.serving._policy import POLICIES, PRIORITIES, SchedulerConfig
from phi_engine.serving._process import ProcessRunner
from phi_engine.serving._resources import Placement
from phi_engine.serving._runner import ModelRunner
from phi_engine.serving._scheduler import ScheduledResult, Scheduler

__all__ = [
    "POLICIES",
    "PRIORITIES",
    "STRATEGIES",
    "Autoscaler",
    "Deployment",
    "InferenceResult",
    "InputLimits",
    "Job",
    "JobStore",
    "ModelRunner",
    "Placement",
    "ProcessRunner",
    "ScalingPolicy",
    "ScheduledResult",
    "Scheduler",
    "SchedulerConfig",
]
