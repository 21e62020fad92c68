"""Auto-scaling: the scaling policy of a deployment and the controller that picks its replica count.

The decision rule is the Kubernetes Horizontal Pod Autoscaler's (kubernetes.io, "Horizontal Pod
Autoscaling", Algorithm details), on the utilization we measure (the busy fraction of replica
time) and the median queue delay:

1. Each sample gives a recommendation ``desired = ceil(current * utilization / threshold)``; within
   the HPA's tolerance (``|utilization / threshold - 1| <= 0.1``) it is ``current``. A median queue
   delay above ``queue_delay_ms`` is demand for at least one more replica: ``max(desired,
   current + 1)``. The recommendation is clamped to ``[replicas_min, replicas_max]``.
2. Scale-up stabilisation: scale up only when every recommendation of the last ``up_window_s``
   was above ``current``, to the minimum of them. Scale-down stabilisation: scale down only when
   every recommendation of the last ``down_window_s`` was below ``current``, to the maximum of them
   (the HPA's ``behavior.scaleUp/scaleDown.stabilizationWindowSeconds``). The window must be
   covered by samples: a controller that has watched for less than a window does not act.
3. A change restarts both windows, as the HPA's former upscale and downscale delays did: samples
   from before it measured another replica count, and a replica just started is still warming.
4. A count outside ``[replicas_min, replicas_max]`` (a new policy, a lost replica) is corrected at
   once.

So a load oscillating around the threshold yields recommendations on both sides of ``current``
within every window, and no change: no flapping.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from phi_engine.errors import InvalidRequestError, ResourceError

__all__ = [
    "MODES",
    "TOLERANCE",
    "Autoscaler",
    "Decision",
    "Sample",
    "ScalingPolicy",
    "parse_autoscale_request",
    "parse_scaling_policy",
]

#: Scaling modes (API.md 1.2): a fixed replica count, or adaptive between bounds.
MODES = ("fixed", "auto")
#: The HPA's default tolerance: a utilization within 10 % of the threshold changes nothing.
TOLERANCE = 0.1
#: ``"auto"``'s default upper bound, when the deployment asked for fewer replicas.
DEFAULT_MAX_REPLICAS = 4

_THRESHOLD = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%)?\s*(utili[sz]ation)?\s*$", re.IGNORECASE)
# Keys of the object form of scaling_policy besides those of POST /models/auto-scale.
_WINDOW_KEYS = ("up_window_s", "down_window_s", "interval_s")
_REQUEST_KEYS = (
    "replicas_min",
    "replicas_max",
    "gpu_min",
    "gpu_max",
    "tpu_enabled",
    "threshold",
    "queue_delay_ms",
)


@dataclass(frozen=True)
class ScalingPolicy:
    """How a deployment's replica count may change.

    Attributes:
        mode: ``"fixed"`` or ``"auto"``.
        replicas_min: The fewest replicas (at least 1: a replica must be up to answer a request).
        replicas_max: The most replicas.
        threshold: The target utilization, the busy fraction of replica time, in ``(0, 1]``.
        queue_delay_ms: Scale up also when the median queue delay exceeds this (``None``: never).
        up_window_s: Scale-up stabilisation window.
        down_window_s: Scale-down stabilisation window.
        interval_s: How often the controller samples.
        device: The device replicas are counted in (``cpu``, ``cuda``, ``xla``).
        notes: How request fields were interpreted (e.g. ``gpu_min`` on a CPU deployment).
    """

    mode: str
    replicas_min: int = 1
    replicas_max: int = 1
    threshold: float = 0.85
    queue_delay_ms: float | None = None
    up_window_s: float = 15.0
    down_window_s: float = 120.0
    interval_s: float = 1.0
    device: str = "cpu"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequestError(
                f"unknown scaling mode {self.mode!r}; use one of {', '.join(MODES)}",
                field="scaling_policy",
            )
        _count(self.replicas_min, "replicas_min")
        _count(self.replicas_max, "replicas_max")
        if self.replicas_min > self.replicas_max:
            raise InvalidRequestError(
                f"replicas_min {self.replicas_min} is above replicas_max {self.replicas_max}",
                field="replicas_min",
            )
        if self.mode == "fixed" and self.replicas_min != self.replicas_max:
            raise InvalidRequestError(
                "a fixed scaling policy has replicas_min equal to replicas_max",
                field="scaling_policy",
            )
        if _number(self.threshold, "threshold", minimum=0.0, strict=True) > 1.0:
            raise InvalidRequestError("threshold must be in (0, 1]", field="threshold")
        for name in ("up_window_s", "down_window_s"):
            _number(getattr(self, name), name, minimum=0.0)
        _number(self.interval_s, "interval_s", minimum=0.0, strict=True)
        if self.queue_delay_ms is not None:
            _number(self.queue_delay_ms, "queue_delay_ms", minimum=0.0, strict=True)

    def clamp(self, replicas: int) -> int:
        """``replicas`` brought into ``[replicas_min, replicas_max]``."""
        return min(max(replicas, self.replicas_min), self.replicas_max)

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{field} must be an integer >= 1, got {value!r}", field=field)
    return value


def _number(value: Any, field: str, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{field} must be a number, got {value!r}", field=field)
    v = float(value)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        bound = ">" if strict else ">="
        raise InvalidRequestError(
            f"{field} must be {bound} {minimum:g}, got {value!r}", field=field
        )
    return v


def parse_threshold(value: float | str, field: str = "threshold") -> float:
    """A utilization threshold as a fraction.

    ``0.85``, ``85``, ``"85%"`` and ``"85% utilization"`` are all 0.85: a number above 1 without
    ``%`` can only be a percentage, since utilization is at most 1.

    Raises:
        InvalidRequestError: not a number or percentage in ``(0, 100%]``.
    """
    percent = False
    number: float
    if isinstance(value, str):
        match = _THRESHOLD.match(value)
        if match is None:
            raise InvalidRequestError(
                f"{field}: {value!r} is not a utilization; use e.g. 0.85 or '85% utilization'",
                field=field,
            )
        number, percent = float(match.group(1)), match.group(2) is not None
    else:
        number = _number(value, field, minimum=0.0, strict=True)
    fraction = number / 100.0 if percent or number > 1.0 else number
    if not 0.0 < fraction <= 1.0:
        raise InvalidRequestError(f"{field} must be in (0, 100%], got {value!r}", field=field)
    return fraction


def _bound(fields: Mapping[str, Any], general: str, gpu: str, prefix: str) -> int | None:
    """``replicas_min``/``gpu_min`` (or the max pair): one bound under two names."""
    a, b = fields.get(general), fields.get(gpu)
    a = None if a is None else _count(a, prefix + general)
    b = None if b is None else _count(b, prefix + gpu)
    if a is not None and b is not None and a != b:
        raise InvalidRequestError(
            f"{prefix}{gpu} ({b}) and {prefix}{general} ({a}) name the same bound; give one",
            field=prefix + gpu,
        )
    return a if a is not None else b


def _device_notes(fields: Mapping[str, Any], device: str, prefix: str) -> tuple[str, ...]:
    notes = []
    if device != "cuda" and (
        fields.get("gpu_min") is not None or fields.get("gpu_max") is not None
    ):
        notes.append(f"{prefix}gpu_min/gpu_max applied to the replicas of this {device} deployment")
    tpu = fields.get("tpu_enabled")
    if tpu is not None and not isinstance(tpu, bool):
        raise InvalidRequestError(
            f"{prefix}tpu_enabled must be true or false", field=prefix + "tpu_enabled"
        )
    if tpu and device != "xla":
        # Moving replicas to another device kind is a redeploy, not a scaling step.
        notes.append(
            f"{prefix}tpu_enabled: this deployment runs on {device}; replicas are added on "
            f"{device} (redeploy with resource_allocation.tpu to use XLA devices)"
        )
    return tuple(notes)


def _apply(current: ScalingPolicy, fields: Mapping[str, Any], prefix: str) -> ScalingPolicy:
    """``current`` with the given fields of an auto-scale request (or policy object) applied."""
    changes: dict[str, Any] = {"mode": "auto"}
    low = _bound(fields, "replicas_min", "gpu_min", prefix)
    high = _bound(fields, "replicas_max", "gpu_max", prefix)
    if low is not None:
        changes["replicas_min"] = low
    if high is not None:
        changes["replicas_max"] = high
    if fields.get("threshold") is not None:
        changes["threshold"] = parse_threshold(fields["threshold"], prefix + "threshold")
    if fields.get("queue_delay_ms") is not None:
        changes["queue_delay_ms"] = _number(
            fields["queue_delay_ms"], prefix + "queue_delay_ms", minimum=0.0, strict=True
        )
    for key in _WINDOW_KEYS:
        if fields.get(key) is not None:
            changes[key] = _number(fields[key], prefix + key, minimum=0.0)
    changes["notes"] = _device_notes(fields, current.device, prefix)
    if changes.get("replicas_min", current.replicas_min) > changes.get(
        "replicas_max", current.replicas_max
    ):
        raise InvalidRequestError(
            f"{prefix}replicas_min {changes.get('replicas_min', current.replicas_min)} is above "
            f"{prefix}replicas_max {changes.get('replicas_max', current.replicas_max)}",
            field=prefix + ("replicas_min" if low is not None else "replicas_max"),
        )
    return replace(current, **changes)


def _check_capacity(policy: ScalingPolicy, capacity: int | None, field: str) -> None:
    if capacity is not None and policy.replicas_max > capacity:
        raise ResourceError(
            f"{field}: {policy.replicas_max} replicas requested, this machine holds "
            f"{capacity} of this size on {policy.device}",
            field=field,
        )


def parse_scaling_policy(
    value: str | Mapping[str, Any] | None,
    *,
    replicas: int,
    device: str = "cpu",
    capacity: int | None = None,
) -> ScalingPolicy:
    """A deployment's ``scaling_policy`` (API.md 1.2).

    ``"fixed"`` (and ``None``) keeps ``replicas``. ``"auto"`` scales between 1 (an idle deployment
    gives its cores back) and ``max(replicas, 4)``: never below what was asked for, and no more
    than four times a single replica's footprint unattended (capped at ``capacity``). An object
    takes the fields of POST /models/auto-scale, ``mode`` and the windows; when its bounds exclude
    ``replicas`` the deployment starts ``policy.clamp(replicas)`` and a note says so.

    Args:
        value: ``"fixed"``, ``"auto"``, an object, or ``None``.
        replicas: The replicas the deployment starts with (its placement's).
        device: The device its replicas run on.
        capacity: The most replicas this machine holds (``Placement.max_replicas``).

    Raises:
        InvalidRequestError: an unknown mode or key, or a bad value.
        ResourceError: an explicit ``replicas_max`` above ``capacity``.
    """
    _count(replicas, "replicas")
    fixed = ScalingPolicy("fixed", replicas, replicas, device=device)
    high = max(replicas, min(DEFAULT_MAX_REPLICAS, capacity or DEFAULT_MAX_REPLICAS))
    auto = ScalingPolicy("auto", 1, high, device=device)
    if value is None or value == "fixed":
        return fixed
    if value == "auto":
        return auto
    if not isinstance(value, Mapping):
        raise InvalidRequestError(
            f"scaling_policy must be 'fixed', 'auto' or an object, got {value!r}",
            field="scaling_policy",
        )
    base = fixed if value.get("mode") == "fixed" else auto
    return _parse_object(value, base, replicas, capacity)


def _parse_object(
    value: Mapping[str, Any], base: ScalingPolicy, replicas: int, capacity: int | None
) -> ScalingPolicy:
    """The object form of ``scaling_policy``, on top of its mode's defaults."""
    prefix = "scaling_policy."
    for key in value:
        if key not in (*_REQUEST_KEYS, *_WINDOW_KEYS, "mode"):
            raise InvalidRequestError(f"unknown field {prefix}{key}", field=prefix + str(key))
    mode = value.get("mode", "auto")
    if mode not in MODES:
        raise InvalidRequestError(
            f"unknown {prefix}mode {mode!r}; use one of {', '.join(MODES)}", field=prefix + "mode"
        )
    policy = _apply(base, value, prefix)
    if mode == "fixed" and policy.replicas_min != policy.replicas_max:
        raise InvalidRequestError(
            f"a fixed {prefix[:-1]} has replicas_min equal to replicas_max", field=prefix + "mode"
        )
    _check_capacity(policy, capacity, prefix + "replicas_max")
    notes = policy.notes
    if policy.clamp(replicas) != replicas:
        # The bounds are the later, more specific word; the deploy response says what won.
        notes += (
            f"resource_allocation.nodes asked for {replicas} replicas, outside "
            f"{policy.replicas_min}..{policy.replicas_max}: starts {policy.clamp(replicas)}",
        )
    return replace(policy, mode=mode, notes=notes)


def parse_autoscale_request(
    *,
    replicas_min: int | None = None,
    replicas_max: int | None = None,
    gpu_min: int | None = None,
    gpu_max: int | None = None,
    tpu_enabled: bool | None = None,
    threshold: float | str | None = None,
    queue_delay_ms: float | None = None,
    current: ScalingPolicy,
    capacity: int | None = None,
) -> ScalingPolicy:
    """The policy after POST /models/auto-scale (API.md 3.1); fields left out keep their value.

    ``gpu_min``/``gpu_max`` are ``replicas_min``/``replicas_max`` under the sheet's names; on a
    deployment that is not on CUDA they bound its replicas all the same, and a note says so.

    Args:
        replicas_min: The fewest replicas.
        replicas_max: The most replicas.
        gpu_min: ``replicas_min`` by its 3.1 name.
        gpu_max: ``replicas_max`` by its 3.1 name.
        tpu_enabled: Whether replicas may be XLA devices; recorded, since a scaling step cannot
            move a deployment to another device kind.
        threshold: Target utilization: ``0.85``, ``85``, ``"85%"``, ``"85% utilization"``.
        queue_delay_ms: Scale up also when the median queue delay exceeds this.
        current: The deployment's policy now.
        capacity: The most replicas this machine holds (``Placement.max_replicas``).

    Returns:
        An ``"auto"`` policy.

    Raises:
        InvalidRequestError: a bad value, two names of one bound that disagree, or min above max.
        ResourceError: ``replicas_max`` above ``capacity``.
    """
    fields = {
        "replicas_min": replicas_min,
        "replicas_max": replicas_max,
        "gpu_min": gpu_min,
        "gpu_max": gpu_max,
        "tpu_enabled": tpu_enabled,
        "threshold": threshold,
        "queue_delay_ms": queue_delay_ms,
    }
    policy = _apply(current, fields, "")
    _check_capacity(policy, capacity, "gpu_max" if gpu_max is not None else "replicas_max")
    return policy


@dataclass(frozen=True)
class Sample:
    """One measurement of a deployment, taken every ``interval_s``.

    Attributes:
        time: When, in seconds of a monotonic clock.
        busy_fraction: The busy fraction of replica time since the last sample, averaged over
            the replicas.
        queue_delay_ms: The median queue delay since the last sample.
        replicas: Replicas running now.
    """

    time: float
    busy_fraction: float
    queue_delay_ms: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    """A new replica count, and why, with the numbers measured."""

    replicas: int
    reason: str


class Autoscaler:
    """Decides the replica count from measured utilization and queue delay, with stabilisation
    windows (the module docstring gives the rule)."""

    def __init__(self, policy: ScalingPolicy) -> None:
        """Start a controller with no history.

        Args:
            policy: The deployment's scaling policy.
        """
        self._policy = policy
        self._history: deque[tuple[float, int]] = deque()
        self._since: float | None = None
        self._last_time = -math.inf

    @property
    def policy(self) -> ScalingPolicy:
        """The policy in force."""
        return self._policy

    def set_policy(self, policy: ScalingPolicy) -> None:
        """Change the policy (POST /models/auto-scale); the windows restart."""
        self._policy = policy
        self._reset()

    def observe(self, sample: Sample) -> Decision | None:
        """Take one sample and decide.

        Args:
            sample: The latest measurement; times must not go backwards.

        Returns:
            A new replica count, or ``None`` to keep the current one.

        Raises:
            InvalidRequestError: a sample with a negative, non-finite or earlier value.
        """
        self._check(sample)
        policy, current = self._policy, sample.replicas
        if current != policy.clamp(current):
            self._reset()
            return Decision(
                policy.clamp(current),
                f"{current} replicas is outside replicas_min..replicas_max "
                f"{policy.replicas_min}..{policy.replicas_max}",
            )
        if policy.mode == "fixed":
            return None
        self._record(sample)
        decision = self._scale_up(sample) or self._scale_down(sample)
        if decision is not None:
            self._reset()
        return decision

    def _check(self, sample: Sample) -> None:
        for name in ("time", "busy_fraction", "queue_delay_ms"):
            lowest = -math.inf if name == "time" else 0.0
            value = getattr(sample, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < lowest:
                raise InvalidRequestError(f"sample {name} {value!r} is invalid", field=name)
        if isinstance(sample.replicas, bool) or not isinstance(sample.replicas, int):
            raise InvalidRequestError("sample replicas must be an integer", field="replicas")
        if sample.time < self._last_time:
            raise InvalidRequestError(
                f"sample time {sample.time} is before the last one, {self._last_time}", field="time"
            )
        self._last_time = sample.time

    def _recommend(self, sample: Sample) -> int:
        """This sample's replica count by the HPA formula, queue delay and bounds."""
        current, policy = sample.replicas, self._policy
        ratio = sample.busy_fraction / policy.threshold
        desired = current
        if abs(ratio - 1.0) > TOLERANCE:
            # The epsilon keeps float error in current * ratio from adding a replica.
            desired = math.ceil(current * ratio - 1e-9)
        if policy.queue_delay_ms is not None and sample.queue_delay_ms > policy.queue_delay_ms:
            desired = max(desired, current + 1)
        return policy.clamp(desired)

    def _record(self, sample: Sample) -> None:
        self._history.append((sample.time, self._recommend(sample)))
        if self._since is None:
            self._since = sample.time
        horizon = sample.time - max(self._policy.up_window_s, self._policy.down_window_s)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()

    def _window(self, now: float, seconds: float) -> list[int] | None:
        """The recommendations of the last ``seconds``, or ``None`` until samples cover them."""
        if self._since is None or now - self._since < seconds:
            return None
        return [rec for t, rec in self._history if t >= now - seconds]

    def _scale_up(self, sample: Sample) -> Decision | None:
        window = self._window(sample.time, self._policy.up_window_s)
        if not window or min(window) <= sample.replicas:
            return None
        target = min(window)
        why = f"every recommendation of the last {self._policy.up_window_s:g} s was >= {target}"
        return Decision(
            target, f"scale up {sample.replicas} -> {target}: {why}; {self._now(sample)}"
        )

    def _scale_down(self, sample: Sample) -> Decision | None:
        window = self._window(sample.time, self._policy.down_window_s)
        if not window or max(window) >= sample.replicas:
            return None
        target = max(window)
        why = f"every recommendation of the last {self._policy.down_window_s:g} s was <= {target}"
        return Decision(
            target, f"scale down {sample.replicas} -> {target}: {why}; {self._now(sample)}"
        )

    def _now(self, sample: Sample) -> str:
        """The latest measurement against its targets, in words."""
        p = self._policy
        text = f"utilization {sample.busy_fraction:.0%} vs target {p.threshold:.0%}"
        text += f", median queue delay {sample.queue_delay_ms:.1f} ms"
        if p.queue_delay_ms is not None:
            text += f" vs target {p.queue_delay_ms:g} ms"
        return text + f", bounds {p.replicas_min}..{p.replicas_max}"

    def _reset(self) -> None:
        self._history.clear()
        self._since = None
