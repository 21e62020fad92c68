"""Backends that execute compiled plans: ``cpu`` (the native core) and ``reference`` (numpy)."""

from phi_engine.runtime.plan import (
    Constant,
    MemoryRegion,
    Plan,
    PlanBuilder,
    PlanStep,
    ProfiledRun,
    TensorSpec,
)

__all__ = [
    "Constant",
    "MemoryRegion",
    "Plan",
    "PlanBuilder",
    "PlanStep",
    "ProfiledRun",
    "TensorSpec",
]
