"""What a deployment is asked for, checked and turned into a :class:`DeploymentSpec`; its JSON
form (persisted in the deployments table and read back at restart); and its planned memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.runtime.backends import available_devices
from phi_engine.serving._autoscale import ScalingPolicy, parse_scaling_policy
from phi_engine.serving._deployment import Deployment, DeploymentSpec
from phi_engine.serving._inputs import InputLimits
from phi_engine.serving._policy import POLICIES, SchedulerConfig
from phi_engine.serving._resources import (
    PLACEMENTS,
    Placement,
    check_device_memory,
    check_memory,
    place,
)

if TYPE_CHECKING:
    from phi_engine.serving._slot import Slot

__all__ = [
    "EXECUTION_MODES",
    "MAX_BATCH",
    "build_spec",
    "check_planned_memory",
    "check_policy",
    "planned_memory",
    "spec_from_json",
    "spec_json",
]

EXECUTION_MODES = ("local", "process", "distributed")

MAX_BATCH = 1 << 20
"""The largest ``max_batch`` a deployment takes: its warm-up runs a full batch of every power of
two up to it, so a larger one would hold ``deploy`` for minutes and allocate without bound."""


def build_spec(
    execution_mode: str,
    resource_allocation: Mapping[str, Any] | None,
    scaling_policy: str | Mapping[str, Any] | None,
    placement: str,
    execution_policy: str,
    max_batch: int,
    slo_ms: Mapping[str, float] | None,
    limits: InputLimits | None,
    precision: str = "fp32",
) -> DeploymentSpec:
    """Check a deploy request's fields and place it on this machine.

    Raises:
        InvalidRequestError: a malformed field (``field`` names it).
        UnsupportedError: ``distributed`` execution (Ray is not wired in yet).
        ResourceError: resources that do not exist here (with ``placement="strict"``).
    """
    if execution_mode not in EXECUTION_MODES:
        raise InvalidRequestError(
            f"unknown execution_mode {execution_mode!r}; use one of {', '.join(EXECUTION_MODES)}",
            field="execution_mode",
        )
    if execution_mode == "distributed":
        raise UnsupportedError(
            "execution_mode 'distributed' (replicas on a Ray cluster) is not available yet; "
            "use 'local' or 'process'",
            field="execution_mode",
        )
    if placement not in PLACEMENTS:
        raise InvalidRequestError(
            f"placement must be one of {', '.join(PLACEMENTS)}", field="placement"
        )
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InvalidRequestError("max_batch must be a positive integer", field="max_batch")
    if max_batch > MAX_BATCH:
        raise InvalidRequestError(
            f"max_batch must be at most {MAX_BATCH}, got {max_batch}", field="max_batch"
        )
    for name, value in (("resource_allocation", resource_allocation), ("slo_ms", slo_ms)):
        if value is not None and not isinstance(value, Mapping):
            raise InvalidRequestError(f"{name} must be an object, got {value!r}", field=name)
    if limits is not None and not isinstance(limits, InputLimits):
        raise InvalidRequestError(
            f"limits must be an InputLimits, got {type(limits).__name__}", field="limits"
        )
    # The scheduler settings check the policy and SLOs and name the field at fault.
    slos: dict[str | int, float] = {k: v for k, v in (slo_ms or {}).items()}
    try:
        SchedulerConfig(policy=execution_policy, max_batch=max_batch, slo_ms=slos)
    except InvalidRequestError as exc:
        if exc.field == "priority":  # an slo_ms key that names no priority class
            exc.field = "slo_ms"
        raise
    where = place(
        dict(resource_allocation or {}),
        placement=placement,
        available_devices=_runnable(resource_allocation),
    )
    if where.device in ("xla", "cuda") and execution_mode == "process":
        kind = "an XLA placement (tpu)" if where.device == "xla" else "a GPU placement"
        raise InvalidRequestError(
            f"execution_mode 'process' runs replicas on the CPU; {kind} runs in-process: use "
            "execution_mode 'local'",
            field="execution_mode",
        )
    where, precision = _check_precision(precision, where, execution_mode, placement)
    scaling = parse_scaling_policy(
        scaling_policy, replicas=where.replicas, device=where.device, capacity=where.max_replicas
    )
    base = limits or InputLimits()
    return DeploymentSpec(
        execution_mode=execution_mode,
        resource_allocation=dict(resource_allocation or {}),
        placement_mode=placement,
        placement=where,
        scaling=scaling,
        execution_policy=execution_policy,
        max_batch=max_batch,
        slo_ms={str(k): float(v) for k, v in (slo_ms or {}).items()},
        limits=InputLimits(max_batch, base.max_bytes, base.allow_non_finite),
        precision=precision,
    )


def _check_precision(
    precision: str, where: Placement, execution_mode: str, placement: str
) -> tuple[Placement, str]:
    """The precision a deployment runs in: ``fp32`` anywhere; ``tf32``, ``fp16`` and ``bf16``
    products on a GPU placement, ``bf16`` on the CPU too (``phi.compile``'s rules). Where the
    placement cannot, ``strict`` refuses and ``best_effort`` runs fp32 and notes it."""
    from phi_engine.graph.compiled import PRECISIONS

    if precision not in PRECISIONS:
        raise InvalidRequestError(
            f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}",
            field="precision",
        )
    if precision == "fp32":
        return where, precision
    if execution_mode == "process":
        reason = "execution_mode 'process' runs fp32"
    elif where.device == "cuda" or (precision == "bf16" and where.device == "cpu"):
        return where, precision
    else:
        also = " (bf16 also runs on the CPU)" if precision == "bf16" else ""
        reason = f"precision {precision!r} needs a GPU placement{also}; this one is {where.device}"
    if placement == "strict":
        raise InvalidRequestError(reason, field="precision")
    note = f"{reason}: fp32 instead of {precision}"
    return replace(where, notes=(*where.notes, note)), "fp32"


def check_policy(execution_policy: str | None) -> None:
    """A request's ``execution_policy``, when it names one, must be a known policy."""
    if execution_policy is not None and execution_policy not in POLICIES:
        raise InvalidRequestError(
            f"unknown execution_policy {execution_policy!r}; use one of {', '.join(POLICIES)}",
            field="execution_policy",
        )


def spec_json(spec: DeploymentSpec, dep: Deployment | None = None) -> dict[str, Any]:
    """The spec as persisted: the request's fields (re-placed at restart) and the live state."""
    out = {
        "execution_mode": spec.execution_mode,
        "resource_allocation": spec.resource_allocation,
        "placement_mode": spec.placement_mode,
        "scaling_policy": _scaling_json(spec.scaling),
        "execution_policy": spec.execution_policy,
        "max_batch": spec.max_batch,
        "slo_ms": spec.slo_ms,
        "max_bytes": spec.limits.max_bytes,
        "allow_non_finite": spec.limits.allow_non_finite,
        "replicas": spec.placement.replicas if dep is None else dep.replicas,
        "precision": spec.precision,
    }
    if dep is not None and dep.candidate is not None:
        out["candidate_percent"] = dep.candidate_percent
    return out


def spec_from_json(saved: Mapping[str, Any]) -> tuple[DeploymentSpec, int]:
    """A persisted spec, placed again on this machine (best effort: the machine may have
    changed since), and the replica count it had."""
    spec = build_spec(
        saved["execution_mode"],
        saved["resource_allocation"],
        saved["scaling_policy"],
        "best_effort",
        saved["execution_policy"],
        saved["max_batch"],
        saved["slo_ms"],
        InputLimits(saved["max_batch"], saved["max_bytes"], saved["allow_non_finite"]),
        saved.get("precision", "fp32"),
    )
    return spec, int(saved.get("replicas", spec.placement.replicas))


def _scaling_json(policy: ScalingPolicy) -> dict[str, Any]:
    """The policy in the object form ``scaling_policy`` accepts, to rebuild it at restart."""
    keys: tuple[str, ...] = ("mode", "replicas_min", "replicas_max", "threshold")
    keys += ("queue_delay_ms", "up_window_s", "down_window_s", "interval_s")
    values = policy.to_dict()
    return {k: values[k] for k in keys if values.get(k) is not None}


def _runnable(resource_allocation: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The backends a placement may use: ``cuda`` when its module sees a GPU, ``xla`` when a
    TPU is asked for and JAX is there (looked up only then: importing JAX takes seconds)."""
    from phi_engine.runtime.backends import get_backend

    wanted = dict(resource_allocation or {}) if isinstance(resource_allocation, Mapping) else {}
    found = ["cpu"]
    if wanted.get("gpu") and get_backend("cuda").available():
        found.append("cuda")
    if wanted.get("tpu") and "xla" in available_devices():
        found.append("xla")
    return tuple(found)


def check_planned_memory(slot: Slot, spec: DeploymentSpec) -> None:
    """The planned memory must fit the deployment's budget, when it has one, and on a GPU the
    memory of the GPU.

    Raises:
        ResourceError: it does not (both numbers are in the message).
    """
    placement = spec.placement
    if placement.memory_budget_bytes is None and placement.device != "cuda":
        return
    planned = planned_memory(slot, spec)
    check_memory(placement, planned)
    if placement.device == "cuda":
        check_device_memory(placement, planned)


def planned_memory(slot: Slot, spec: DeploymentSpec) -> int:
    """Bytes a slot plans to use: its weights once, plus a full batch's arena per replica.

    The arena is planned for ``max_batch`` rows with other symbolic dimensions at the warm-up
    size, so a request with a longer sequence can use more.
    """
    from phi_engine.graph import compile as compile_model
    from phi_engine.graph.lower import NativeSegment

    model = getattr(slot.runner, "model", None) or compile_model(
        str(slot.path), max_batch=spec.max_batch
    )
    weights = sum(np.asarray(c).nbytes for c in model.graph.constants.values())
    sample = slot.sample_inputs(spec.max_batch)
    program = model.program({k: v.shape for k, v in sample.items()})
    cuda = getattr(program, "cuda_segments", None)
    if cuda is not None:
        # On a GPU each replica's run context holds a device arena and, for its stream's
        # products, a cuBLAS workspace.
        from phi_engine import _native

        workspace = int(getattr(_native.cuda, "blas_workspace_bytes", 0))
        arena = sum(seg.arena_bytes for seg in cuda.values()) + workspace
    else:
        arena = sum(s.plan.arena_bytes for s in program.steps if isinstance(s, NativeSegment))
    return int(weights + arena * slot.settings.replicas)
