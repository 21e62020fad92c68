"""Resource placement: a deployment's ``resource_allocation`` checked against this machine.

API.md 1.2: ``cpu`` is threads per replica, ``gpu`` the CUDA devices, ``tpu`` the XLA devices,
``memory`` a budget the planned memory must fit, ``nodes`` the replicas. Under ``placement:
"strict"`` (the default) asking for what does not exist is a :class:`ResourceError` naming the
field and what is available; under ``"best_effort"`` what exists is placed instead and every
substitution is written into :attr:`Placement.notes`, so the deploy response says what was placed.

Decisions:

- ``gpu`` and ``tpu`` count devices for the whole deployment; replicas are spread over them round
  robin. A replica runs on one device kind, so asking for both is refused under ``strict``.
- ``cpu`` defaults to ``min(2, cores // nodes)`` threads (at least 1): two threads give a replica
  most of the intra-op speed-up small serving batches get, and leave cores for more replicas,
  which is how throughput grows under load (the autoscaler adds replicas, not threads). The
  default always fits, so an omitted ``cpu`` never fails a strict placement.
- ``memory`` is compared with the smaller of physical memory and the cgroup limit: a container's
  limit is what the kernel enforces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from phi_engine._system import devices
from phi_engine.errors import InvalidRequestError, PhiEngineError, ResourceError

__all__ = [
    "PLACEMENTS",
    "Inventory",
    "Placement",
    "check_device_memory",
    "check_memory",
    "parse_memory",
    "place",
]

#: Placement modes (API.md 1.2).
PLACEMENTS = ("strict", "best_effort")

_KEYS = ("cpu", "gpu", "tpu", "memory", "nodes")
_FIELD = "resource_allocation"
# Backends that can run a replica on a CUDA device (API.md 1.2: CUDA kernels or Triton).
_GPU_BACKENDS = ("cuda", "triton")
_DEFAULT_THREADS = 2

# SI prefixes are powers of 1000 and IEC prefixes powers of 1024 (IEC 80000-13), as in Kubernetes
# quantities; letters are case-insensitive because a memory size in milli-bytes means nothing.
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "pi": 1024**5,
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]i?)?\s*(b|bytes?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Inventory:
    """What this machine offers a placement.

    Attributes:
        cpu_cores: CPU cores this process may run on.
        memory_bytes: Memory this process may use (physical memory or the cgroup limit).
        gpus: CUDA device names (``"cuda:0"``, ...).
        tpus: XLA device names (``"xla:0"``, ...).
    """

    cpu_cores: int
    memory_bytes: int
    gpus: tuple[str, ...] = ()
    tpus: tuple[str, ...] = ()

    @classmethod
    def detect(cls, *, xla: bool = True) -> Inventory:
        """Build the inventory of this machine from :func:`phi_engine.devices` and the OS
        (without XLA devices when ``xla`` is False: looking them up imports JAX)."""
        try:
            found = devices(xla=xla)
        except PhiEngineError:
            # Without the native core there are no accelerators to use; the CPU still counts.
            found = []
        return cls.from_devices(found, memory_bytes=_machine_memory())

    @classmethod
    def from_devices(cls, found: Sequence[Mapping[str, Any]], *, memory_bytes: int) -> Inventory:
        """Build an inventory from :func:`phi_engine.devices`-shaped entries.

        Args:
            found: ``{"kind": "cpu", "cores"}``, ``{"kind": "cuda", "index"}`` and
                ``{"kind": "xla", "index"}`` entries; without a cpu entry the OS's affinity counts.
            memory_bytes: Memory this process may use.
        """
        cores = next((int(d["cores"]) for d in found if d.get("kind") == "cpu"), 0)
        return cls(
            cpu_cores=cores or len(os.sched_getaffinity(0)),
            memory_bytes=memory_bytes,
            gpus=_named(found, "cuda"),
            tpus=_named(found, "xla"),
        )

    def describe(self, available_devices: Sequence[str] = ("cpu",)) -> str:
        """What a placement may use: ``"cpu (8 cores, 15.6 GiB memory), cuda (cuda:0)"``."""
        parts = [
            f"cpu ({_plural(self.cpu_cores, 'core')}, {format_bytes(self.memory_bytes)} memory)"
        ]
        if self.gpus and any(b in available_devices for b in _GPU_BACKENDS):
            parts.append(f"cuda ({', '.join(self.gpus)})")
        if self.tpus and "xla" in available_devices:
            parts.append(f"xla ({', '.join(self.tpus)})")
        return ", ".join(parts)


def _named(found: Sequence[Mapping[str, Any]], kind: str) -> tuple[str, ...]:
    of_kind = [d for d in found if d.get("kind") == kind]
    return tuple(f"{kind}:{d.get('index', i)}" for i, d in enumerate(of_kind))


def _machine_memory() -> int:
    """Physical memory, or the cgroup limit when that is smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        # cgroup v2 writes "max" for no limit; v1 writes a huge number, which min() ignores.
        if text.isdigit():
            total = min(total, int(text))
    return total


@dataclass(frozen=True)
class Placement:
    """What was really placed for a deployment.

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"xla"``: where the replicas run.
        replicas: Replicas started (``nodes``; on one machine all of them run here).
        threads_per_replica: CPU threads each replica uses.
        memory_budget_bytes: The budget the planned memory must fit, or ``None`` for none.
        gpus: CUDA devices the replicas are spread over.
        tpus: XLA devices the replicas are spread over.
        notes: Each substitution ``best_effort`` made, in words.
        machine_cores: The cores of the machine placed on (for :meth:`describe`).
    """

    device: str
    replicas: int
    threads_per_replica: int
    memory_budget_bytes: int | None = None
    gpus: tuple[str, ...] = ()
    tpus: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    machine_cores: int = 0

    @property
    def max_replicas(self) -> int:
        """The most replicas of this size the machine holds (a bound for the autoscaler)."""
        return max(self.replicas, self.machine_cores // self.threads_per_replica)

    def describe(self) -> str:
        """The deploy response's message: what was placed, then each substitution."""
        text = (
            f"{_plural(self.replicas, 'replica')} x {_plural(self.threads_per_replica, 'thread')}"
        )
        text += f" on {self.device}"
        used = self.replicas * self.threads_per_replica
        details = [f"{used} of {self.machine_cores} cores"] if self.machine_cores else []
        details.extend(self.gpus + self.tpus)
        if details:
            text += f" ({', '.join(details)})"
        if self.memory_budget_bytes is not None:
            text += f", memory budget {format_bytes(self.memory_budget_bytes)}"
        if self.notes:
            text += ". Best effort: " + "; ".join(self.notes)
        return text

    def to_dict(self) -> dict[str, Any]:
        """The placement as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def format_bytes(n: int) -> str:
    """A byte count in IEC units with at most one decimal: ``"512 MiB"``, ``"1.5 GiB"``."""
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit[0].lower() + "i"]
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} B"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_memory(value: str | int, field: str) -> int:
    """A memory size in bytes.

    ``"256GB"`` is 256·10⁹ and ``"512MiB"`` 512·2²⁰ (SI and IEC prefixes, IEC 80000-13); the ``B``
    is optional (``"100M"``, ``"1.5 Gi"``) and a bare number or integer is bytes.

    Args:
        value: The size, as a string with an optional unit or as an integer of bytes.
        field: The request field, named in the error.

    Returns:
        The size in bytes, rounded to a whole byte.

    Raises:
        InvalidRequestError: not a size, or not positive.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(f"{field} must be a size like '512MiB' or '256GB'", field=field)
    if isinstance(value, int):
        size = value
    else:
        match = _MEMORY.match(value)
        if match is None:
            raise InvalidRequestError(
                f"{field}: {value!r} is not a size; use e.g. '512MiB', '1.5 GiB' or '256GB'",
                field=field,
            )
        # The pattern admits only plain decimals, which Decimal multiplies exactly.
        number = Decimal(match.group(1))
        size = round(number * _UNITS[(match.group(2) or "").lower()])
    if size < 1:
        raise InvalidRequestError(f"{field} must be at least 1 byte, got {value!r}", field=field)
    return size


@dataclass(frozen=True)
class _Request:
    cpu: int | None
    gpu: int
    tpu: int
    memory: int | None
    nodes: int
    memory_text: str


def _count(allocation: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = allocation.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequestError(
            f"{_FIELD}.{key} must be an integer >= {minimum}, got {value!r}",
            field=f"{_FIELD}.{key}",
        )
    return value


def _parse_request(allocation: Mapping[str, Any] | None) -> _Request:
    if allocation is None:
        allocation = {}
    if not isinstance(allocation, Mapping):
        raise InvalidRequestError(f"{_FIELD} must be an object", field=_FIELD)
    for key in allocation:
        if key not in _KEYS:
            raise InvalidRequestError(
                f"unknown field {_FIELD}.{key}; use {', '.join(_KEYS)}", field=f"{_FIELD}.{key}"
            )
    memory = allocation.get("memory")
    return _Request(
        cpu=_count(allocation, "cpu", 1),
        gpu=_count(allocation, "gpu", 0) or 0,
        tpu=_count(allocation, "tpu", 0) or 0,
        memory=None if memory is None else parse_memory(memory, f"{_FIELD}.memory"),
        nodes=_count(allocation, "nodes", 1) or 1,
        memory_text=str(memory),
    )


@dataclass
class _Placer:
    """One placement in progress: refuses under strict, records substitutions under best_effort."""

    inventory: Inventory
    available_devices: Sequence[str]
    strict: bool
    notes: list[str]

    def refuse_or_note(self, key: str, problem: str, instead: str) -> None:
        if self.strict:
            available = self.inventory.describe(self.available_devices)
            raise ResourceError(
                f"{_FIELD}.{key}: {problem}; available: {available}", field=f"{_FIELD}.{key}"
            )
        self.notes.append(f"{problem}: {instead}")

    def accelerators(
        self, key: str, wanted: int, kind: str, have: tuple[str, ...]
    ) -> tuple[str, ...]:
        """The devices of one kind to use: ``wanted`` of them, or what exists under best_effort."""
        backends = _GPU_BACKENDS if kind == "cuda" else (kind,)
        usable = have if any(b in self.available_devices for b in backends) else ()
        if wanted <= len(usable):
            return usable[:wanted]
        noun = "GPU" if kind == "cuda" else "TPU"
        problem = f"{_plural(wanted, noun)} requested, this machine has {len(have)}"
        if have and not usable:
            problem += f" but no {kind} backend here"
        self.refuse_or_note(key, problem, f"placed on {len(usable)}" if usable else "placed on cpu")
        return usable

    def cpu(self, threads: int | None, replicas: int) -> tuple[int, int]:
        """Threads per replica and replicas that fit the cores."""
        cores = self.inventory.cpu_cores
        if threads is None:
            threads = max(1, min(_DEFAULT_THREADS, cores // replicas))
            if replicas <= cores:
                return threads, replicas
        if threads * replicas <= cores:
            return threads, replicas
        # Keep the replicas (they are the concurrency asked for) and shrink their threads first.
        fit_replicas = min(replicas, cores)
        fit_threads = max(1, cores // fit_replicas)
        key = "cpu" if threads > 1 and replicas <= cores else "nodes"
        self.refuse_or_note(
            key,
            f"{_plural(replicas, 'replica')} x {_plural(threads, 'thread')} need "
            f"{threads * replicas} cores, this machine has {cores}",
            f"placed {_plural(fit_replicas, 'replica')} x {_plural(fit_threads, 'thread')}",
        )
        return fit_threads, fit_replicas

    def memory(self, budget: int | None, asked: str) -> int | None:
        have = self.inventory.memory_bytes
        if budget is None or budget <= have:
            return budget
        self.refuse_or_note(
            "memory",
            f"{asked} ({format_bytes(budget)}) of memory requested, "
            f"this machine has {format_bytes(have)}",
            f"budget set to {format_bytes(have)}",
        )
        return have


def place(
    resource_allocation: Mapping[str, Any] | None,
    *,
    placement: str = "strict",
    inventory: Inventory | None = None,
    available_devices: Sequence[str] = ("cpu",),
) -> Placement:
    """Place a deployment's replicas on this machine.

    Args:
        resource_allocation: ``{cpu, gpu, tpu, memory, nodes}`` (API.md 1.2), all optional.
        placement: ``"strict"`` refuses what does not exist; ``"best_effort"`` places what exists.
        inventory: What the machine has; detected when omitted.
        available_devices: Backends the runtime can run this model on (``cpu``, ``cuda``,
            ``triton``, ``xla``).

    Returns:
        What was placed, with a note for each best-effort substitution.

    Raises:
        InvalidRequestError: an unknown key, a wrong type or value, an unknown placement mode, or
            (strict) both ``gpu`` and ``tpu``.
        ResourceError: (strict) more than exists, naming the field and what is available.
    """
    if placement not in PLACEMENTS:
        raise InvalidRequestError(
            f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}",
            field="placement",
        )
    request = _parse_request(resource_allocation)
    if request.gpu and request.tpu and placement == "strict":
        raise InvalidRequestError(
            f"a replica runs on one device kind: ask for {_FIELD}.gpu or {_FIELD}.tpu, not both",
            field=f"{_FIELD}.tpu",
        )
    inv = Inventory.detect(xla=bool(request.tpu)) if inventory is None else inventory
    placer = _Placer(inv, tuple(available_devices), placement == "strict", [])
    gpus = placer.accelerators("gpu", request.gpu, "cuda", inv.gpus) if request.gpu else ()
    tpus: tuple[str, ...] = ()
    if request.tpu and gpus:
        placer.notes.append(f"{_plural(request.tpu, 'TPU')} requested as well: not used")
    elif request.tpu:
        tpus = placer.accelerators("tpu", request.tpu, "xla", inv.tpus)
    threads, replicas = placer.cpu(request.cpu, request.nodes)
    return Placement(
        device="cuda" if gpus else "xla" if tpus else "cpu",
        replicas=replicas,
        threads_per_replica=threads,
        memory_budget_bytes=placer.memory(request.memory, request.memory_text),
        gpus=gpus,
        tpus=tpus,
        notes=tuple(placer.notes),
        machine_cores=inv.cpu_cores,
    )


def check_memory(placement: Placement, planned_bytes: int, field: str = f"{_FIELD}.memory") -> None:
    """Refuse a model whose planned memory does not fit the placement's budget.

    Args:
        placement: The placement, whose ``memory_budget_bytes`` is the budget (``None``: no check).
        planned_bytes: What the deployment will hold here (weights and every replica's arena), as
            the caller planned it.
        field: The request field named in the error.

    Raises:
        ResourceError: the plan exceeds the budget; the message says both numbers.
    """
    budget = placement.memory_budget_bytes
    if budget is None or planned_bytes <= budget:
        return
    raise ResourceError(
        f"{field}: the model needs {format_bytes(planned_bytes)} ({planned_bytes} bytes) "
        f"for weights and arenas, over the budget of {format_bytes(budget)} ({budget} bytes)",
        field=field,
    )


def check_device_memory(
    placement: Placement,
    planned_bytes: int,
    found: Sequence[Mapping[str, Any]] | None = None,
    field: str = f"{_FIELD}.gpu",
) -> None:
    """Refuse a GPU deployment whose planned memory exceeds the smallest of its GPUs' memory.

    Args:
        placement: The placement (its ``gpus``, ``"cuda:<index>"``, are checked).
        planned_bytes: Weights plus every replica's arena, as the caller planned them.
        found: :func:`phi_engine.devices`-shaped entries (default: this machine's).
        field: The request field named in the error.

    Raises:
        ResourceError: a GPU's memory is smaller than the plan; the message says both numbers.
    """
    entries = devices(xla=False) if found is None else found
    memory = {
        f"cuda:{d.get('index')}": int(d.get("memory_bytes", 0))
        for d in entries
        if d.get("kind") == "cuda"
    }
    for gpu in placement.gpus:
        have = memory.get(gpu, 0)
        if have and planned_bytes > have:
            raise ResourceError(
                f"{field}: the model needs {format_bytes(planned_bytes)} ({planned_bytes} bytes) "
                f"for weights and arenas, more than the {format_bytes(have)} of {gpu}",
                field=field,
            )
