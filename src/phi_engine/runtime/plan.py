"""Execution plans: ordered kernel calls over numbered values, run by the native executor.

A plan is built once (by the graph compiler, one per shape bucket, or by hand) and then run many
times, from any number of threads at once::

    b = PlanBuilder()
    x = b.add_input("x", "float32", (8, 64))
    w = b.add_constant(weights)                       # (64, 32) float32, copied
    (h,) = b.add_step("gemm", [x, w], {"activation": "relu"})
    b.mark_output(h, "y")
    plan = b.build()                                  # liveness + memory planning
    outputs = plan.run({"x": batch})                  # {"y": array (8, 32)}

Every step's kernel is prepared while building, so wrong shapes, dtypes and attributes fail there
with an error naming the step and op. A run checks its inputs, allocates the outputs, then runs
every kernel with the GIL released on an arena of the plan's own: values whose lifetimes do not
overlap share memory, and concurrent runs never share an arena.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError

__all__ = [
    "Constant",
    "MemoryRegion",
    "Plan",
    "PlanBuilder",
    "PlanRecord",
    "PlanStep",
    "ProfiledRun",
    "RecordedStep",
    "TensorSpec",
]

Inputs = Mapping[str, np.ndarray] | Sequence[np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """The dtype (numpy name, e.g. ``"float32"``) and exact shape of a value."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PlanStep:
    """One kernel call: its op, the slots it reads (None: absent input) and the slots it writes."""

    op: str
    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class MemoryRegion:
    """Where an arena value lives and for how long (steps ``first..last``, inclusive).

    ``slot`` is None for a step's workspace (scratch memory that lives for that step only).
    """

    slot: int | None
    step: int
    offset: int
    bytes: int
    first: int
    last: int


@dataclass(frozen=True)
class ProfiledRun:
    """The outputs of a timed run and the wall time of every step, in plan order."""

    outputs: dict[str, np.ndarray]
    step_ns: list[int]
    steps: list[PlanStep]

    @property
    def total_ns(self) -> int:
        """Sum of the step times (excludes input checks and output allocation)."""
        return sum(self.step_ns)


class Constant:
    """An immutable weight tensor that several plans can share without copying it.

    The plans of one model (one per shape bucket) hold the same weights: make each a
    ``Constant`` once and pass it to every builder's :meth:`PlanBuilder.add_constant`.
    """

    def __init__(self, value: np.ndarray) -> None:
        """Copy ``value`` into aligned native memory (its dtype is kept, never cast).

        Raises:
            InvalidRequestError: ``value`` is not array-like, or has an unsupported dtype.
        """
        self._native: Any = require_core().Constant(value)

    @property
    def spec(self) -> TensorSpec:
        """The constant's dtype and shape."""
        return TensorSpec(str(self._native.dtype), tuple(self._native.shape))

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return int(self._native.nbytes)

    def numpy(self) -> np.ndarray:
        """A read-only numpy view of the data (no copy; the view keeps the constant alive)."""
        view: np.ndarray = self._native.numpy()
        return view


@dataclass(frozen=True)
class RecordedStep:
    """A step as it was added: op, input slots (None: absent), output slots and attributes."""

    op: str
    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]
    attrs: dict[str, Any]


@dataclass
class PlanRecord:
    """What a recording :class:`PlanBuilder` saw, for backends that run the same steps elsewhere
    (the CUDA plan runs them on a GPU).

    Attributes:
        specs: The dtype and shape of every slot, by slot number.
        inputs: Input slots by name.
        constants: Each constant slot's value (the shared :class:`Constant` when one was given,
            else the array as added).
        steps: The steps in order.
        outputs: Output slots by name.
    """

    specs: dict[int, TensorSpec] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)
    constants: dict[int, np.ndarray | Constant] = field(default_factory=dict)
    steps: list[RecordedStep] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)


class PlanBuilder:
    """Builds a :class:`Plan` step by step; each step's output shapes come from its kernel.

    With ``record=True`` the builder also keeps a :class:`PlanRecord` of everything added
    (:attr:`record`), so that another backend can run the same steps.
    """

    def __init__(self, *, record: bool = False) -> None:
        self._native: Any = require_core().Plan()
        self.record: PlanRecord | None = PlanRecord() if record else None

    def add_input(self, name: str, dtype: DTypeLike, shape: Sequence[int]) -> int:
        """Declare a named input of a fixed dtype and shape.

        Args:
            name: The key :meth:`Plan.run` looks the input up by.
            dtype: A numpy dtype or its name (``"float32"``).
            shape: The exact shape (plans are per shape bucket: no symbolic dimensions).

        Returns:
            The input's slot.

        Raises:
            InvalidRequestError: a duplicate or non-str name, an unknown dtype, a shape that is
                not a sequence of non-negative integers, or the plan is built.
            ResourceError: a shape larger than one tensor may be (checked by the first step
                that reads it).
        """
        slot = int(self._native.add_input(name, dtype, _as_list(shape, "shape")))
        if self.record is not None:
            self.record.inputs[name] = slot
            self.record.specs[slot] = self.spec(slot)
        return slot

    def add_constant(self, value: np.ndarray | Constant) -> int:
        """Add a constant: a numpy array (copied now) or a shared :class:`Constant`.

        Returns:
            The constant's slot.

        Raises:
            InvalidRequestError: an unsupported dtype, or the plan is built.
        """
        native = value._native if isinstance(value, Constant) else value
        slot = int(self._native.add_constant(native))
        if self.record is not None:
            self.record.constants[slot] = value
            self.record.specs[slot] = self.spec(slot)
        return slot

    def add_step(
        self,
        op: str,
        inputs: Sequence[int | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        outputs: Sequence[tuple[DTypeLike, Sequence[int]]] | None = None,
    ) -> list[int]:
        """Append a call of the registered op ``op`` and prepare its kernel.

        Args:
            op: Op name (see ``phi_engine._native.core.op_names()``).
            inputs: Slots the op reads, in the op's input order; None for an absent optional
                input (e.g. gemm's bias).
            attrs: The op's attributes by name.
            outputs: Optionally the ``(dtype, shape)`` of each output as the caller's own shape
                inference predicts them: a mismatch is an error naming the step.

        Returns:
            One new slot per output of the op; :meth:`spec` gives their dtypes and shapes.

        Raises:
            InvalidRequestError: unknown slots, or shapes, dtypes or attributes the op refuses
                (the message starts with ``[op] step N:``), or the plan is built.
            ResourceError: an input or output larger than one tensor may be.
            NotFoundError: no op of that name.
        """
        if attrs is not None and not isinstance(attrs, Mapping):
            raise InvalidRequestError(
                f"[plan] attrs must be a mapping of name -> value, got {type(attrs).__name__}",
                field="attrs",
            )
        expected = None if outputs is None else _as_list(outputs, "outputs")
        ins = _as_list(inputs, "inputs")
        slots = [int(s) for s in self._native.add_step(op, ins, dict(attrs or {}), expected)]
        if self.record is not None:
            self.record.steps.append(RecordedStep(op, tuple(ins), tuple(slots), dict(attrs or {})))
            for s in slots:
                self.record.specs[s] = self.spec(s)
        return slots

    def mark_output(self, slot: int, name: str) -> None:
        """Make ``slot`` a named output of the plan.

        A step's result is written straight into the output array; an input or constant is
        copied. One slot may be an output under several names and still feed later steps.

        Raises:
            InvalidRequestError: an unknown slot, a duplicate name, or the plan is built.
        """
        self._native.mark_output(slot, name)
        if self.record is not None:
            self.record.outputs[name] = slot

    def spec(self, slot: int) -> TensorSpec:
        """The dtype and shape of a slot."""
        dtype, shape = self._native.desc(slot)
        return TensorSpec(str(dtype), tuple(shape))

    def kind(self, slot: int) -> str:
        """``"input"``, ``"constant"`` or ``"intermediate"`` (produced by a step)."""
        return str(self._native.kind(slot))

    @property
    def num_steps(self) -> int:
        """Steps added so far."""
        return int(self._native.num_steps)

    def build(self) -> Plan:
        """Plan the memory and freeze the plan; the builder accepts nothing more afterwards.

        Raises:
            InvalidRequestError: no output was marked, or the plan was already built.
            ResourceError: the values alive at once would need a larger arena than a plan may
                have.
        """
        self._native.finalize()
        return Plan(self._native)


class Plan:
    """A finalized plan: immutable, and safe to run from many threads at once."""

    def __init__(self, native: Any) -> None:
        """Wrap a finalized ``_core.Plan`` (use :meth:`PlanBuilder.build` to make one)."""
        if not native.finalized:
            raise InvalidRequestError(
                "[plan] Plan wraps a finalized native plan; use PlanBuilder.build()"
            )
        self._native = native

    @property
    def native(self) -> Any:
        """The ``_core.Plan`` this wraps (for native executors that take it directly)."""
        return self._native

    def run(self, inputs: Inputs, threads: int = 0) -> dict[str, np.ndarray]:
        """Run the plan on ``inputs`` with the GIL released.

        Args:
            inputs: Arrays by input name (or a sequence in input order); dtypes and shapes must
                match the declared ones exactly. Non-contiguous arrays are copied first.
            threads: Threads per kernel (0: the default, see :func:`phi_engine.set_num_threads`).

        Returns:
            A new array per output, by name.

        Raises:
            InvalidRequestError: a missing or unknown input, or a wrong dtype or shape.
        """
        result: dict[str, np.ndarray] = self._native.run(_as_native(inputs), _threads(threads))
        return result

    def run_profiled(self, inputs: Inputs, threads: int = 0) -> ProfiledRun:
        """Run like :meth:`run` and time every step (two clock reads per step).

        Returns:
            The outputs and each step's wall time in nanoseconds.
        """
        outputs, step_ns = self._native.run_profiled(_as_native(inputs), _threads(threads))
        return ProfiledRun(outputs, [int(t) for t in step_ns], self.steps)

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        """Every input's dtype and shape, by name, in input order."""
        return {name: TensorSpec(dt, tuple(shape)) for name, _, dt, shape in self._native.inputs}

    @property
    def output_specs(self) -> dict[str, TensorSpec]:
        """Every output's dtype and shape, by name, in output order."""
        return {name: TensorSpec(dt, tuple(shape)) for name, _, dt, shape in self._native.outputs}

    @property
    def steps(self) -> list[PlanStep]:
        """The kernel calls, in execution order."""
        return [
            PlanStep(op, tuple(None if s < 0 else s for s in ins), tuple(outs))
            for op, ins, outs in self._native.steps
        ]

    @property
    def num_steps(self) -> int:
        """Number of kernel calls."""
        return int(self._native.num_steps)

    @property
    def arena_bytes(self) -> int:
        """Bytes one run's arena takes (intermediates sharing memory, plus workspaces)."""
        return int(self._native.arena_bytes)

    @property
    def naive_bytes(self) -> int:
        """Bytes without reuse: each intermediate in its own buffer, plus the largest workspace."""
        return int(self._native.naive_bytes)

    @property
    def arena_count(self) -> int:
        """Arenas alive: one per run at the peak of concurrent runs, reused afterwards."""
        return int(self._native.arena_count)

    def memory_plan(self) -> list[MemoryRegion]:
        """Every arena value's offset, size and lifetime, by first step."""
        return [MemoryRegion(**r) for r in self._native.memory_plan()]

    def release_idle_arenas(self) -> None:
        """Free the arenas no run is using (e.g. when a cached plan goes quiet)."""
        self._native.release_idle_arenas()


def _as_list(value: Any, what: str) -> list[Any]:
    """Any iterable but a str as a list (the core checks the items); anything else is refused."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidRequestError(
            f"[plan] {what} must be a sequence, got {type(value).__name__}", field=what
        )
    return list(value)


def _as_native(inputs: Inputs) -> dict[str, np.ndarray] | list[np.ndarray]:
    if isinstance(inputs, dict):
        return inputs
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
        raise InvalidRequestError(
            "[plan] inputs must be a mapping of name -> array or a sequence of arrays",
            field="inputs",
        )
    return list(inputs)


def _threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise InvalidRequestError("[plan] threads must be a non-negative integer", field="threads")
    return threads
